"""Run directories: save a graft, load it back, export a plain merged checkpoint.

A run directory holds:
- ``graft.json``        base model spec + fingerprint, tokens with ids, backend, methods, version;
- ``config.yaml``       the effective recipe (when trained from one);
- tokenizer files       with the new tokens and the chat template;
- ``rows.safetensors``  only the trained rows, by id (``ids``, ``input``, ``output`` when untied);
- ``embeddings.safetensors`` the whole matrices, for the ``full`` backend only;
- method weights        written by the methods registry (LoRA, adapters, ...).

Loading checks the base fingerprint first (a different base model is a clear
error, not a size-mismatch traceback), builds the graft the same way training
did, then restores the trained tensors. Nothing here unpickles.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tokengraft import __version__
from tokengraft.errors import TokengraftError
from tokengraft.core.graft import Graft, TokenSettings, effective_matrices
from tokengraft.core.rows import RowGraft, attach_rows
from tokengraft.methods.spec import unwrap_peft

GRAFT_FILE = "graft.json"
ROWS_FILE = "rows.safetensors"
EMBEDDINGS_FILE = "embeddings.safetensors"


def _settings_to_dict(settings: TokenSettings) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(settings)


def save_graft(g: Graft, run_dir: str | Path, *, base_spec: str, dtype: str = "float32",
               extra: dict[str, Any] | None = None) -> Path:
    """Write the graft's artifacts into ``run_dir`` (created if needed); returns the path.

    Files are written to a temporary sibling directory and moved in one rename per
    file, so an interrupted save never leaves a half-written file behind a valid name.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    added = set(g.report.added)  # a set: list membership per token is quadratic on a 20,000-token lexicon
    with tempfile.TemporaryDirectory(dir=run, prefix=".saving-") as tmp:
        staged = Path(tmp)
        g.tokenizer.save_pretrained(staged)
        rows = g.token_rows()
        save_file(rows, str(staged / ROWS_FILE))
        if g.settings.backend == "full":
            embedding, head = effective_matrices(g.model)
            full = {"input": embedding.detach().float().cpu().contiguous()}
            if head is not None and head is not embedding:
                full["output"] = head.detach().float().cpu().contiguous()
            save_file(full, str(staged / EMBEDDINGS_FILE))
        if g.methods is not None:
            g.methods.save(staged)
        meta = {
            "tokengraft_version": __version__,
            "base_model": base_spec,
            "dtype": dtype,
            "base_fingerprint": g.base_fingerprint,
            "tokens": [{"token": t, "id": g.report.ids[t], "new": t in added} for t in g.settings.add],
            "trainable_ids": g.trainable_ids,
            "settings": _settings_to_dict(g.settings),
            "methods": g.method_configs,
            "report": g.report.to_dict(),
            "total_rows": g.report.final_rows,
            "tied": bool(g.rows.tied) if g.rows is not None else None,
        }
        meta.update(extra or {})
        (staged / GRAFT_FILE).write_text(json.dumps(meta, indent=2))
        for item in staged.iterdir():
            target = run / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    return run


def read_graft_meta(run_dir: str | Path) -> dict[str, Any]:
    run = Path(run_dir)
    if not run.is_dir():
        raise TokengraftError(f"run directory {run} does not exist")
    path = run / GRAFT_FILE
    if not path.is_file():
        raise TokengraftError(f"{run} is not a tokengraft run directory: {GRAFT_FILE} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TokengraftError(f"{path} is damaged (invalid JSON at line {exc.lineno}); re-run training or restore it") from None
    for key in ("base_model", "base_fingerprint", "settings", "trainable_ids"):
        if key not in meta:
            raise TokengraftError(f"{path} is damaged: key {key!r} is missing")
    return meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TokengraftError(f"{path.parent} is incomplete: {path.name} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TokengraftError(f"{path} is damaged ({exc}); re-run training or restore it") from None


def load(run_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
         check_fingerprint: bool = True) -> tuple[Any, Any]:
    """Load a run directory as ``(model, tokenizer)``, ready for ``generate``."""
    g = load_graft(run_dir, device=device, dtype=dtype, check_fingerprint=check_fingerprint)
    return g.model, g.tokenizer


def load_graft(run_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
               check_fingerprint: bool = True, model: Any = None) -> Graft:
    """Like ``load`` but returns the whole ``Graft`` (rows, methods, report).

    ``model`` may pass an already loaded, untouched base model (saves a reload).
    """
    from transformers import AutoTokenizer

    from tokengraft.models import fingerprint, load_model

    run = Path(run_dir)
    meta = read_graft_meta(run)
    if meta.get("task") == "classification":  # a classifier (head + methods), rebuilt by classify.py
        from tokengraft.training.classifier import load_classifier

        return load_classifier(run, device=device, dtype=dtype, check_fingerprint=check_fingerprint, model=model)
    rows_state = _load_tensors(run / ROWS_FILE)
    if model is None:
        model, _ = load_model(meta["base_model"], dtype=dtype or meta.get("dtype", "float32"), device=device)
    if check_fingerprint:
        found = fingerprint(model)
        if found != meta["base_fingerprint"]:
            raise TokengraftError(
                f"{run} was trained on a different base model: fingerprint {meta['base_fingerprint']} expected, "
                f"{found} found for {meta['base_model']!r}; load it with the base it was trained on"
            )
    from tokengraft.models import has_tokenizer

    if not has_tokenizer(run):  # transformers 5 would build an empty tokenizer instead of failing
        raise TokengraftError(f"{run} is incomplete: its tokenizer (tokenizer.json) is missing; re-run training or restore it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(run))
    except (OSError, ValueError) as exc:
        raise TokengraftError(f"{run}: tokenizer files are missing or damaged ({str(exc).splitlines()[0]})") from None
    settings = TokenSettings(**meta["settings"])
    base_embedding, base_head = unwrap_peft(model).get_input_embeddings(), unwrap_peft(model).get_output_embeddings()
    _check_rows_file(run / ROWS_FILE, rows_state, base_embedding.weight.shape[1],
                     untied=base_head is not None and base_head.weight is not base_embedding.weight)
    ids = [int(i) for i in rows_state["ids"].tolist()]
    if sorted(ids) != sorted(meta["trainable_ids"]):
        raise TokengraftError(f"{run / ROWS_FILE} does not match {GRAFT_FILE} (different token ids); the run directory is damaged")
    total_rows = int(meta["total_rows"])
    if len(tokenizer) > total_rows:
        raise TokengraftError(f"{run}: tokenizer has {len(tokenizer)} tokens but the graft has {total_rows} rows")

    methods_state = None
    if meta.get("methods"):
        from tokengraft.core.graft import apply_method_configs

        model, methods_state = apply_method_configs(model, tokenizer, meta["methods"], str(run))
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(False)

    rows: RowGraft | None = None
    if settings.backend == "full":
        _restore_full(model, _load_tensors(run / EMBEDDINGS_FILE), total_rows)
    else:
        # The `peft` backend trains the same rows as `rows`; both load as the row overlay.
        rows = attach_rows(model, ids, rows_state["input"], rows_state.get("output"),
                           sides="both", total_rows=total_rows)
        for parameter in rows.parameters():
            parameter.requires_grad_(False)
    model.eval()
    report = _report_from_meta(meta)
    return Graft(model=model, tokenizer=tokenizer, settings=settings, report=report, trainable_ids=ids,
                 rows=rows, methods=methods_state, base_fingerprint=meta["base_fingerprint"],
                 method_configs=meta.get("methods") or [])


def _check_rows_file(path: Path, state: dict[str, torch.Tensor], hidden: int, *, untied: bool) -> None:
    """A rows file with a missing tensor or a wrong shape is damaged: say so before any indexing fails.

    An untied model without ``output`` rows would silently reuse the input rows as its head.
    """
    for key in ("ids", "input") + (("output",) if untied else ()):
        if key not in state:
            raise TokengraftError(f"{path} is damaged: tensor {key!r} is missing; re-run training or restore it")
    n = state["ids"].numel()
    for key in ("input", "output"):
        if key in state and tuple(state[key].shape) != (n, hidden):
            raise TokengraftError(f"{path} is damaged: tensor {key!r} has shape {tuple(state[key].shape)}, "
                                  f"expected ({n}, {hidden}) for {n} token ids and this base model's width")


def _report_from_meta(meta: dict[str, Any]):
    from tokengraft.core.vocab import AddReport

    r = meta.get("report", {})
    tokens = meta.get("tokens", [])
    return AddReport(
        requested=r.get("requested", len(tokens)),
        already_present=[t["token"] for t in tokens if not t.get("new")],
        added=[t["token"] for t in tokens if t.get("new")],
        ids={t["token"]: t["id"] for t in tokens},
        old_tokenizer_size=r.get("old_tokenizer_size", 0), final_tokenizer_size=r.get("final_tokenizer_size", 0),
        old_rows=r.get("old_rows", 0), final_rows=int(meta["total_rows"]),
    )


def _restore_full(model: Any, tensors: dict[str, torch.Tensor], total_rows: int) -> None:
    hf = unwrap_peft(model)
    hf.resize_token_embeddings(total_rows, mean_resizing=False)
    embedding, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    with torch.no_grad():
        embedding.weight.copy_(tensors["input"].to(embedding.weight))
        if head is not None and head.weight is not embedding.weight:
            head.weight.copy_(tensors.get("output", tensors["input"]).to(head.weight))
