"""Merged export: fold rows and method weights into an ordinary transformers checkpoint.

The output loads with plain ``AutoModelForCausalLM.from_pretrained`` (no tokengraft import) and is what
vLLM serves: the new tokens live in the resized base, not in an adapter. The task's answer tokens
(``<PASS>``) are written as normal added tokens, so servers that skip special tokens still show
them (visible.py); ``tokengraft_export.json`` beside it records the run it came from (info.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokengraft.core.graft import Graft
from tokengraft.methods.spec import unwrap_peft
from tokengraft.errors import TokengraftError
from tokengraft.export.info import export_info, write_export_info
from tokengraft.export.pass_bias import fold_run_pass_bias
from tokengraft.export.visible import resolve_visible_tokens, show_tokens
from tokengraft.rundir import load_graft


def merge_graft(g: Graft) -> Any:
    """A plain transformers model with everything folded in (rows written, LoRA merged)."""
    model = g.model
    if g.methods is not None:
        if not getattr(g.methods, "mergeable", True):
            raise TokengraftError(
                f"{getattr(g.methods, 'unmergeable_reason', 'a method in this run cannot be merged into plain weights')}; "
                "use the run directory with tokengraft.load(RUN_DIR) instead of export --merged"
            )
    if g.rows is not None:
        g.rows.merge_into(model)
    if g.methods is not None:
        model = g.methods.merge(model)
    return unwrap_peft(model)


def check_output_dir(out_dir: str | Path) -> Path:
    """Refuse a non-empty output directory before anything is loaded: an export never overwrites."""
    out = Path(out_dir)
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
    tokenizer = show_tokens(g.tokenizer, visible)
    model = merge_graft(g)
    out.mkdir(parents=True, exist_ok=True)
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
    fold = fold_run_pass_bias(run_dir, model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if fold:
        (out / "tokengraft_pass_bias.json").write_text(json.dumps(fold, indent=2))
    write_export_info(out, export_info(run_dir, tokenizer, visible, kind="merged", fold=fold))
    return out

