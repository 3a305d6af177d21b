"""``export RUN_DIR --lora-adapter OUT``: one resized base + a plain PEFT LoRA adapter per run.

vLLM serves many LoRA adapters on one base (``--enable-lora --lora-modules a=DIR b=DIR``), but it
refuses what PEFT writes for new tokens: ``modules_to_save`` (only ``classifier`` / ``score``),
trainable-token tensors (``trainable_tokens_delta``) and the whole-matrix copies that
``save_embedding_layers=True`` adds; and adapters carry no extra vocabulary. So the new tokens'
rows live in the base (resized, rows written in, the calibrated ``<PASS>`` bias folded, as
``export --merged`` does, but with the LoRA NOT merged) and the adapter is plain LoRA on the
run's linear layers, saved with ``save_embedding_layers=False`` and pointing at that base::

    OUT/base/                 resized base + tokenizer (answer tokens visible) + tokengraft_export.json
    OUT/adapters/NAME/        adapter_config.json + adapter_model.safetensors (+ tokengraft_export.json)

A run on a quantized base (``model.quantization``) writes its base de-quantised, in float32 (see
merged.py): the adapter trained on the bitsandbytes layers applies to their exact float copies.

Several runs export into one OUT when they share the base: the same base model (fingerprint), the
same tokens at the same ids, shown the same way. The base is written by the first; each later
run's token rows are compared with the base's. Rows that differ (two runs train their own
``<PASS>`` row, and each folds its own bias) are refused, unless ``rows_in_adapter``: the
difference then goes into the adapter as an exact rank-k LoRA on ``embed_tokens`` and
``lm_head`` (k = the number of differing rows: row ``i`` of ``B @ A`` is the difference for
token id ``i``, every other row is zero), which vLLM applies like any other LoRA module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tokengraft.constants import vllm_max_lora_rank
from tokengraft.core.arch import is_tied
from tokengraft.errors import TokengraftError
from tokengraft.export.info import export_info, read_export_info, write_export_info
from tokengraft.export.pass_bias import fold_run_pass_bias
from tokengraft.export.visible import resolve_visible_tokens, show_tokens
from tokengraft.methods.spec import unwrap_peft
from tokengraft.quantization import dequantize_base, is_quantized
from tokengraft.rundir import load_graft, read_graft_meta

BASE_DIR = "base"
ADAPTERS_DIR = "adapters"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ROW_TOLERANCE = 1e-6  # float32 rows written from the same source agree exactly; anything larger is another row
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class AdapterExport:
    """What `export_lora_adapter` wrote (the CLI prints it as the vLLM command)."""

    base: Path
    adapter: Path
    name: str
    base_written: bool
    rank: int
    rows_in_adapter: list[str]
    max_row_difference: float

    @property
    def vllm_max_lora_rank(self) -> int:
        return vllm_max_lora_rank(self.rank)


def _check_run(run_dir: str | Path) -> dict[str, Any]:
    """Only LoRA on top of token rows splits into base + adapter; say what to do otherwise."""
    meta = read_graft_meta(run_dir)
    methods = meta.get("methods") or []
    if meta.get("task") == "classification":
        raise TokengraftError(f"{run_dir} is a classification run; --lora-adapter writes causal-LM adapters")
    if not methods:
        raise TokengraftError(f"{run_dir} trained no LoRA (only token rows): there is no adapter to write; "
                              "export --merged OUT serves it as one checkpoint")
    other = sorted({m.get("type", "?") for m in methods} - {"lora"})
    if other:
        raise TokengraftError(f"{run_dir} trained {', '.join(other)}: only plain LoRA fits a vLLM adapter; "
                              "export --merged OUT instead")
    backend = (meta.get("settings") or {}).get("backend")
    if backend == "full":
        raise TokengraftError(f"{run_dir} used tokens.backend: full (whole embedding matrices); --lora-adapter "
                              "shares one base between runs and supports the rows and peft backends")
    return meta


def _check_shared_base(base: Path, info: dict[str, Any], meta: dict[str, Any], visible: list[str]) -> None:
    """A later run may join OUT only when the base there was made from the same base model and tokens."""
    mine = [(t["token"], int(t["id"])) for t in meta.get("tokens", [])]
    theirs = [(t["token"], int(t["id"])) for t in info.get("tokens", [])]
    if info.get("kind") != "lora-base":
        raise TokengraftError(f"{base} is not a base written by export --lora-adapter; choose another OUT")
    if info.get("base_fingerprint") != meta["base_fingerprint"]:
        raise TokengraftError(f"{base} was made from another base model (fingerprint {info.get('base_fingerprint')}, "
                              f"this run {meta['base_fingerprint']}); runs share a base only when they share the "
                              "base model: export this run to another OUT")
    if mine != theirs:
        raise TokengraftError(f"{base} holds the tokens {theirs[:6]}, this run added {mine[:6]}; runs share a base "
                              "only with the same new tokens at the same ids: export this run to another OUT")
    if sorted(info.get("visible_tokens") or []) != sorted(visible):
        raise TokengraftError(f"{base} shows {info.get('visible_tokens') or 'no tokens'} as text, this export "
                              f"would show {visible or 'none'}; pass the same --visible-tokens / --keep-special")


def _token_rows(model: Any, ids: list[int]) -> dict[str, torch.Tensor]:
    """The rows of ``ids`` in a plain (or LoRA-injected) model: input, and output when untied."""
    hf = unwrap_peft(model)
    index = torch.tensor(ids, dtype=torch.long)
    rows = {"input": hf.get_input_embeddings().weight.detach()[index].float().cpu()}
    head = hf.get_output_embeddings()
    if head is not None and not is_tied(hf):
        rows["output"] = head.weight.detach()[index].float().cpu()
    return rows


def _base_rows(base: Path, ids: list[int]) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return _token_rows(model, ids)


def row_delta_tensors(prefix: str, embed_name: str, head_name: str | None, ids: list[int],
                      delta_in: torch.Tensor, delta_out: torch.Tensor | None, vocab: int) -> dict[str, torch.Tensor]:
    """PEFT LoRA tensors whose product adds ``delta_in[j]`` to embedding row ``ids[j]`` and ``delta_out[j]``
    to head row ``ids[j]``; rank k = len(ids), scaling 1 (alpha = r per module).

    PEFT's embedding LoRA adds ``(A.T[token] @ B.T) * scaling``: A (k x vocab) is one-hot at the ids and
    B (hidden x k) holds the deltas. Its linear LoRA adds ``x @ A.T @ B.T``: for the head A (k x hidden)
    holds the deltas and B (vocab x k) is one-hot at the ids.
    """
    k, hidden = delta_in.shape
    onehot = torch.zeros(k, vocab)
    onehot[torch.arange(k), torch.tensor(ids)] = 1.0
    # clone(): every tensor its own storage (safetensors refuses shared memory; with k = 1 a transpose is a view)
    tensors = {f"{prefix}{embed_name}.lora_embedding_A": onehot.clone(),
               f"{prefix}{embed_name}.lora_embedding_B": delta_in.T.clone(memory_format=torch.contiguous_format)}
    if head_name is not None and delta_out is not None:
        tensors[f"{prefix}{head_name}.lora_A.weight"] = delta_out.clone(memory_format=torch.contiguous_format)
        tensors[f"{prefix}{head_name}.lora_B.weight"] = onehot.T.clone(memory_format=torch.contiguous_format)
    return tensors


def _module_name(model: Any, module: Any) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _add_rows_to_adapter(adapter: Path, model: Any, ids: list[int], delta: dict[str, torch.Tensor]) -> None:
    """Append the embedding / head row differences to a saved PEFT adapter (config and weights)."""
    hf = unwrap_peft(model)
    embed_name = _module_name(hf, hf.get_input_embeddings())
    head = hf.get_output_embeddings()
    # Tied: the one row is both READ and WRITTEN, so the head moves by the input difference too.
    head_name = _module_name(hf, head) if head is not None else None
    delta_out = delta.get("output", delta["input"]) if head is not None else None
    vocab = hf.get_input_embeddings().weight.shape[0]
    weights = load_file(str(adapter / ADAPTER_WEIGHTS))
    prefix = "base_model.model."
    weights.update(row_delta_tensors(prefix, embed_name, head_name, ids, delta["input"], delta_out, vocab))
    save_file(weights, str(adapter / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    names = [embed_name] + ([head_name] if head_name else [])
    targets = config.get("target_modules") or []
    config["target_modules"] = sorted(set(targets) | set(names)) if isinstance(targets, list) else targets
    # Rank k with alpha k: scaling 1, the deltas as they are. PEFT and vLLM match a pattern key as a
    # dotted suffix of the module name, so the escaped full name selects exactly that module.
    for key in ("rank_pattern", "alpha_pattern"):
        config[key] = {**(config.get(key) or {}), **{re.escape(n): len(ids) for n in names}}
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))


def _plain_adapter_check(adapter: Path) -> None:
    """What vLLM refuses must not be in the adapter: say so here rather than at server start."""
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    for key in ("modules_to_save", "trainable_token_indices"):
        if config.get(key):
            raise TokengraftError(f"the adapter would carry {key}={config[key]}, which vLLM refuses")
    if config.get("use_dora") or config.get("lora_bias"):
        raise TokengraftError("the adapter would use DoRA or LoRA biases, which vLLM refuses")
    bad = [k for k in load_file(str(adapter / ADAPTER_WEIGHTS)) if "lora_" not in k]
    if bad:
        raise TokengraftError(f"the adapter would carry non-LoRA tensors ({bad[:3]}), which vLLM refuses")


def export_lora_adapter(run_dir: str | Path, out_dir: str | Path, *, name: str | None = None, device: str = "cpu",
                        visible_tokens: list[str] | None = None, rows_in_adapter: bool = False) -> AdapterExport:
    """Write ``OUT/base`` (once) and ``OUT/adapters/NAME`` for a LoRA run; see the module docstring."""
    run = Path(run_dir)
    meta = _check_run(run)
    name = name or run.resolve().name
    if not _NAME.match(name):
        raise TokengraftError(f"adapter name {name!r} must be letters, digits, '.', '_' or '-'; pass --adapter-name")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TokengraftError(f"{out} is an existing file; --lora-adapter writes a directory, choose a new path")
    base, adapter = out / BASE_DIR, out / ADAPTERS_DIR / name
    if adapter.exists():
        raise TokengraftError(f"{adapter} exists; choose another --adapter-name or OUT (an export never overwrites)")
    if out.exists() and any(out.iterdir()) and not base.is_dir():
        raise TokengraftError(f"{out} exists, is not empty and holds no {BASE_DIR}/ from export --lora-adapter; "
                              "choose a new output directory")
    visible = resolve_visible_tokens(run, visible_tokens)
    info = read_export_info(base) if base.is_dir() else None
    if base.is_dir() and info is None:
        raise TokengraftError(f"{base} has no tokengraft_export.json: it was not written by export --lora-adapter")
    if info is not None:
        _check_shared_base(base, info, meta, visible)

    g = load_graft(run, device=device, dtype="float32")
    model = g.model
    if not hasattr(model, "unload"):
        raise TokengraftError(f"{run}: its LoRA did not load as a PEFT model; export --merged OUT instead")
    tokenizer = show_tokens(g.tokenizer, visible)
    if g.rows is not None:
        g.rows.merge_into(model)  # the rows go into the (resized) base matrices under the LoRA
    fold = fold_run_pass_bias(run, model, tokenizer)  # with the LoRA active: the decision it moves is the served one
    ids = sorted(int(i) for i in g.trainable_ids)
    rows = _token_rows(model, ids)
    differing: list[str] = []
    worst = 0.0
    delta: dict[str, torch.Tensor] = {}
    if info is not None:
        shared = _base_rows(base, ids)
        for side, mine in rows.items():
            if side not in shared:
                raise TokengraftError(f"{base} ties its embeddings and this run's do not (or the reverse); "
                                      "export this run to another OUT")
            delta[side] = mine - shared[side]
            worst = max(worst, float(delta[side].abs().max()) if delta[side].numel() else 0.0)
        if worst > ROW_TOLERANCE:
            by_id = {i: t["token"] for t in meta.get("tokens", []) for i in [int(t["id"])]}
            moved = [j for j in range(len(ids)) if any(float(d[j].abs().max()) > ROW_TOLERANCE for d in delta.values())]
            differing = [by_id.get(ids[j], str(ids[j])) for j in moved]
            if not rows_in_adapter:
                raise TokengraftError(
                    f"this run's rows for {', '.join(differing[:6])} differ from those in {base} (largest difference "
                    f"{worst:.3g}): runs trained their own token rows (and fold their own <PASS> bias). Pass "
                    "--rows-in-adapter to carry the difference in this adapter (an exact LoRA on embed_tokens and "
                    "lm_head), or export this run to another OUT")
            delta = {side: d[moved] for side, d in delta.items()}
            ids = [ids[j] for j in moved]

    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTERS_DIR).mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".exporting-"))
    try:
        staged_adapter = staging / "adapter"
        model.save_pretrained(str(staged_adapter), save_embedding_layers=False)
        config = json.loads((staged_adapter / ADAPTER_CONFIG).read_text())
        config["base_model_name_or_path"] = str(base.resolve())
        (staged_adapter / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        rank = int(config.get("r", 0))
        if differing:
            _add_rows_to_adapter(staged_adapter, model, ids, delta)
            rank = max(rank, len(ids))
        _plain_adapter_check(staged_adapter)
        write_export_info(staged_adapter, {**export_info(run, tokenizer, visible, kind="lora-adapter", fold=fold),
                                           "rows_in_adapter": differing})
        base_written = info is None
        if base_written:
            staged_base = staging / "base"
            plain = model.unload()  # the LoRA layers removed, NOT merged: the base the adapter applies to
            if is_quantized(plain):  # a bitsandbytes base is written de-quantised (float32), as export --merged does
                plain = dequantize_base(plain)
            plain.config.vocab_size = plain.get_input_embeddings().weight.shape[0]
            plain.save_pretrained(str(staged_base))
            tokenizer.save_pretrained(str(staged_base))
            if fold:
                (staged_base / "tokengraft_pass_bias.json").write_text(json.dumps(fold, indent=2))
            write_export_info(staged_base, export_info(run, tokenizer, visible, kind="lora-base", fold=fold))
            os.replace(staged_base, base)
        os.replace(staged_adapter, adapter)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return AdapterExport(base=base, adapter=adapter, name=name, base_written=base_written, rank=rank,
                         rows_in_adapter=differing, max_row_difference=worst)
