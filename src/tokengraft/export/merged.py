"""Merged export: fold rows and method weights into an ordinary transformers checkpoint.

The output loads with plain ``AutoModelForCausalLM.from_pretrained`` (no tokengraft import) and is what
vLLM serves: the new tokens live in the resized base, not in an adapter. The task's answer tokens
(``<PASS>``) are written as normal added tokens, so servers that skip special tokens still show
them (visible.py); ``tokengraft_export.json`` beside it records the run it came from (info.py).

A run on a quantized base (``model.quantization: 4bit | 8bit``) is exported de-quantised, in
float32: its block linears are bitsandbytes layers, which a plain checkpoint cannot hold, and
merging LoRA *into* them would re-quantize the sum (PEFT does that; it moved logits by 0.34 on
NF4). The order is therefore: take the rows off, remove PEFT's LoRA layers (the bitsandbytes
layers come back), de-quantise the base, re-apply the same LoRA to the float32 copies with its
trained weights, merge it, write the rows. How far the result is from the quantized model the
run trained is measured on a few probe texts and written beside the checkpoint
(``tokengraft_dequantization.json``): de-quantising an NF4 weight is exact in float32, so the
distance is rounding (~1e-6); LLM.int8 also quantizes activations at inference, so 8-bit runs
differ by ~1e-2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tokengraft.core.arch import describe
from tokengraft.core.graft import Graft
from tokengraft.errors import TokengraftError
from tokengraft.export.info import export_info, write_export_info
from tokengraft.export.pass_bias import fold_run_pass_bias
from tokengraft.export.visible import resolve_visible_tokens, show_tokens
from tokengraft.methods import reapply_methods
from tokengraft.methods.spec import unwrap_peft
from tokengraft.quantization import dequantize_base, is_quantized, spec_of
from tokengraft.rundir import load_graft, split_file

DEQUANTIZATION_FILE = "tokengraft_dequantization.json"
MERGED_DTYPE = torch.float32  # what a de-quantised export is written in (exact for NF4 / int8 codes)
PROBE_TEXTS = 4  # probe texts from the run's data, plus one holding the run's tokens
PROBE_TOKENS = 48  # tokens per probe: logits are kept for every position until the merged model answers
FALLBACK_TEXTS = ("The capital of France is Paris, and the capital of Italy is Rome.",
                  "def add(a, b):\n    return a + b\n",
                  "Question: how many legs does a spider have?\nAnswer: eight.")


def merge_graft(g: Graft) -> Any:
    """A plain transformers model with everything folded in (rows written, LoRA merged).

    A quantized base comes back de-quantised in float32 (`merge_quantized`).
    """
    model = g.model
    if g.methods is not None:
        if not getattr(g.methods, "mergeable", True):
            raise TokengraftError(
                f"{getattr(g.methods, 'unmergeable_reason', 'a method in this run cannot be merged into plain weights')}; "
                "use the run directory with tokengraft.load(RUN_DIR) instead of export --merged"
            )
    if is_quantized(model):
        return merge_quantized(g)
    if g.rows is not None:
        g.rows.merge_into(model)
    if g.methods is not None:
        model = g.methods.merge(model)
    return unwrap_peft(model)


def merge_quantized(g: Graft, dtype: torch.dtype = MERGED_DTYPE) -> Any:
    """De-quantise the base, then merge the methods and rows in ``dtype`` (see the module docstring for the order)."""
    model = g.model
    tensors = g.methods.tensors() if g.methods is not None else {}
    if g.rows is not None:
        g.rows.detach(model)  # the base's own embedding and head back; the trained rows stay in g.rows
    if callable(getattr(model, "get_base_model", None)):  # a PeftModel (LoRA)
        model = model.unload()  # PEFT's LoRA layers off: the bitsandbytes layers are back in place
    base = dequantize_base(model, dtype)
    if g.methods is not None:
        base, state = reapply_methods(base, describe(base, g.tokenizer), g.methods.specs, tensors,
                                      source="the run's method weights")
        base = state.merge(base)
    if g.rows is not None:
        g.rows.merge_into(base)
    for p in base.parameters():
        p.requires_grad_(False)
    return unwrap_peft(base)


def check_output_dir(out_dir: str | Path) -> Path:
    """Refuse a non-empty output directory before anything is loaded: an export never overwrites."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TokengraftError(f"{out} is an existing file; --merged writes a directory, choose a new path")
    if out.exists() and any(out.iterdir()):
        raise TokengraftError(f"{out} exists and is not empty; choose a new output directory")
    return out


def export_merged(run_dir: str | Path, out_dir: str | Path, *, device: str = "cpu",
                  visible_tokens: list[str] | None = None) -> Path:
    """Write an ordinary checkpoint + tokenizer that plain ``from_pretrained`` loads (vLLM-servable).

    ``visible_tokens``: the run's tokens to write as normal added tokens (None: the task's answer
    tokens, ``<PASS>``; ``[]``: the tokenizer exactly as the run has it).
    """
    out = check_output_dir(out_dir)
    resolve_visible_tokens(run_dir, visible_tokens)  # a wrong token name fails before the model loads
    return save_merged(load_graft(run_dir, device=device), run_dir, out, visible_tokens=visible_tokens)


def save_merged(g: Graft, run_dir: str | Path, out_dir: str | Path, *, visible_tokens: list[str] | None = None) -> Path:
    """`export_merged` for an already loaded graft (``tokengraft.api`` loads classifiers too)."""
    out = check_output_dir(out_dir)
    visible = resolve_visible_tokens(run_dir, visible_tokens)
    quant = spec_of(g.model)
    probes = probe_inputs(g, run_dir) if quant is not None else []
    before = probe_logits(g.model, probes) if quant is not None else []
    tokenizer = show_tokens(g.tokenizer, visible)
    model = merge_graft(g)
    report = None
    if quant is not None:  # measured before the <PASS> bias fold, which moves logits on purpose
        report = {"base_quantization": quant.to_record(), "described": quant.describe(),
                  "merged_dtype": str(MERGED_DTYPE).replace("torch.", ""),
                  **logit_distance(before, probe_logits(model, probes))}
    out.mkdir(parents=True, exist_ok=True)
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
    fold = fold_run_pass_bias(run_dir, model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if fold:
        (out / "tokengraft_pass_bias.json").write_text(json.dumps(fold, indent=2))
    write_export_info(out, export_info(run_dir, tokenizer, visible, kind="merged", fold=fold))
    if report is not None:
        (out / DEQUANTIZATION_FILE).write_text(json.dumps(report, indent=2))
    return out


# ----------------------------------------------------------------------------- how far the de-quantised model moved


def _row_text(row: dict[str, Any]) -> str:
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("messages"), list):
        return "\n".join(str(m.get("content", "")) for m in row["messages"] if isinstance(m, dict))
    return f"{row.get('prompt', '')} {row.get('completion', '')}".strip()


def probe_inputs(g: Graft, run_dir: str | Path) -> list[torch.Tensor]:
    """A few token sequences to compare logits on: texts from the run's data, and one holding its tokens."""
    texts: list[str] = []
    for split in ("test", "validation", "train"):
        path = split_file(run_dir, split)
        if path.is_file() and len(texts) < PROBE_TEXTS:
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and len(texts) < PROBE_TEXTS:
                    text = _row_text(json.loads(line))
                    if text:
                        texts.append(text)
    texts = texts or list(FALLBACK_TEXTS)
    tokens = [t for t in g.settings.add[:16]]
    if tokens:
        texts.append("Here are the new tokens: " + " ".join(tokens) + " and some text after them.")
    ids = [g.tokenizer(t, add_special_tokens=False)["input_ids"][:PROBE_TOKENS] for t in texts]
    return [torch.tensor([i], dtype=torch.long) for i in ids if i]


@torch.no_grad()
def probe_logits(model: Any, probes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Float32 logits ``[T, V]`` of each probe, in eval mode (dropout off), on CPU."""
    model.eval()
    device = next(p.device for p in model.parameters())
    return [model(input_ids=ids.to(device)).logits[0].float().cpu() for ids in probes]


def logit_distance(before: list[torch.Tensor], after: list[torch.Tensor]) -> dict[str, Any]:
    """Max / mean absolute logit difference and greedy (top-1) agreement over every probe position."""
    if not before:
        return {"positions": 0}
    a, b = torch.cat(before), torch.cat(after)
    if a.shape != b.shape:
        raise TokengraftError(f"internal: the merged model's logits have shape {tuple(b.shape)}, "
                              f"the quantized model's {tuple(a.shape)}")
    diff = (a - b).abs()
    return {"positions": int(a.shape[0]), "vocab": int(a.shape[1]), "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean()), "max_abs_logit": float(a.abs().max()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def dequantization_summary(report: dict[str, Any]) -> str:
    """One line for the export's printed summary."""
    return (f"de-quantised base ({report['described']}) written as {report['merged_dtype']}; logits against the "
            f"quantized model on {report['positions']} probe positions: max |diff| {report['max_abs_logit_diff']:.2e}, "
            f"mean {report['mean_abs_logit_diff']:.2e} (logits up to {report['max_abs_logit']:.1f}), "
            f"greedy top-1 agreement {100 * report['top1_agreement']:.1f} %")


def read_dequantization_report(out_dir: str | Path) -> dict[str, Any] | None:
    """The report a quantized run's export wrote beside the checkpoint (None for a full-precision run)."""
    path = Path(out_dir) / DEQUANTIZATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None
