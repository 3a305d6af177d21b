"""The library's entry points: train a recipe, load a run, evaluate it, generate from it, export it.

This is the only module that branches on the task: a ``task: classification``
recipe trains a sequence classifier (training/classifier.py) and its run loads and
evaluates as one (rundir.load_classifier, evaluation/classification.py); every
other task is a causal LM (training/lm.py, rundir.load_graft,
evaluation/generative.py). Below this layer each path is written once, for its
own kind of model; the CLI (cli/) calls only these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokengraft.config import Recipe
from tokengraft.core.graft import Graft
from tokengraft.errors import TokengraftError
from tokengraft.evaluation.classification import evaluate_classification
from tokengraft.evaluation.generative import evaluate_run
from tokengraft.export.merged import check_output_dir, save_merged
from tokengraft.export.visible import resolve_visible_tokens
from tokengraft.generation import generate_batch
from tokengraft.rundir import CLASSIFICATION_TASK, is_classifier_meta, load_classifier, read_graft_meta
from tokengraft.rundir import load_graft as load_lm_graft
from tokengraft.training.classifier import train_classifier
from tokengraft.training.engine import TrainResult
from tokengraft.training.lm import train_lm


def train(recipe: Recipe, output_dir: str | Path, *, resume: bool = False, quiet: bool = False,
          callbacks: list[Any] | None = None) -> TrainResult:
    """Run a recipe end to end and leave a complete run directory at ``output_dir``.

    ``resume`` continues from the latest complete checkpoint there; ``callbacks`` are
    extra ``transformers.TrainerCallback`` objects (they see the model, state and
    control like any Trainer callback).
    """
    recipe_fn = train_classifier if recipe.task == CLASSIFICATION_TASK else train_lm
    return recipe_fn(recipe, output_dir, resume=resume, quiet=quiet, callbacks=callbacks)


def load_graft(run_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
               check_fingerprint: bool = True, model: Any = None) -> Graft:
    """A run directory as a whole ``Graft`` (model, tokenizer, rows, methods, report), frozen for inference.

    ``model`` may pass an already loaded, untouched base model (saves a reload).
    A classification run comes back as a ``ClassifierGraft`` (its ``labels`` name the classes).
    """
    loader = load_classifier if is_classifier_meta(read_graft_meta(run_dir)) else load_lm_graft
    return loader(run_dir, device=device, dtype=dtype, check_fingerprint=check_fingerprint, model=model)


def load(run_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
         check_fingerprint: bool = True) -> tuple[Any, Any]:
    """Load a run directory as ``(model, tokenizer)``, ready for ``generate`` (or, for a classifier, a forward)."""
    g = load_graft(run_dir, device=device, dtype=dtype, check_fingerprint=check_fingerprint)
    return g.model, g.tokenizer


def evaluate(run_dir: str | Path, *, limit: int | None = None, base: bool = True,
             pass_bias: float | None = None) -> dict[str, Any]:
    """The task's metrics on the run's held-out test split, also written to ``RUN_DIR/metrics.json``.

    ``base`` compares with the base model and ``pass_bias`` overrides the saved <PASS>
    bias (generative tasks only: a classifier has neither).
    """
    if is_classifier_meta(read_graft_meta(run_dir)):
        return evaluate_classification(run_dir, limit=limit)
    return evaluate_run(run_dir, limit=limit, base=base, pass_bias=pass_bias)


def generate(run_dir: str | Path, prompts: list[str], *, max_new_tokens: int = 64,
             system: str | None = None) -> list[dict[str, Any]]:
    """Greedy answers from a trained causal-LM run, with its calibrated <PASS> bias applied (if any)."""
    meta = read_graft_meta(run_dir)
    if is_classifier_meta(meta):
        raise TokengraftError(f"{run_dir} is a classification run: a classifier has no LM head to generate "
                              "with; score it with `tokengraft eval RUN_DIR`")
    model, tokenizer = load(run_dir)
    bias = meta.get("pass_bias")
    logit_bias = {tokenizer.convert_tokens_to_ids("<PASS>"): bias} if bias else None
    return generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=system,
                          logit_bias=logit_bias)


def export_merged(run_dir: str | Path, out_dir: str | Path, *, device: str = "cpu",
                  visible_tokens: list[str] | None = None) -> Path:
    """An ordinary transformers checkpoint (rows written in, methods merged) that plain ``from_pretrained`` loads.

    ``visible_tokens``: the run's tokens written as normal added tokens, shown by servers that skip
    special tokens (None: the task's answer tokens, ``<PASS>``; ``[]``: as the run has them).
    """
    out = check_output_dir(out_dir)
    resolve_visible_tokens(run_dir, visible_tokens)  # a wrong token name fails before the model loads
    return save_merged(load_graft(run_dir, device=device), run_dir, out, visible_tokens=visible_tokens)
