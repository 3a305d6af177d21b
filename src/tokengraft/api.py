"""The library's entry points: train a recipe, load a run, evaluate it, generate from it, export it, serve-check it.

This is the only module that branches on the task: a ``task: classification``
recipe trains a sequence classifier (training/classifier.py) and its run loads and
evaluates as one (rundir.load_classifier, evaluation/classification.py); every
other task is a causal LM (training/lm.py, rundir.load_graft,
evaluation/generative.py). Below this layer each path is written once, for its
own kind of model; the CLI (cli/) calls only these functions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokengraft.config import Recipe, check_answers
from tokengraft.core.graft import Graft
from tokengraft.data import check_data_files
from tokengraft.errors import TokengraftError
from tokengraft.evaluation.classification import evaluate_classification
from tokengraft.evaluation.generative import evaluate_run
from tokengraft.export.info import read_export_info
from tokengraft.export.merged import check_output_dir, save_merged
from tokengraft.export.visible import resolve_visible_tokens
from tokengraft.generation import generate_batch, pass_gated_generate
from tokengraft.rundir import (CLASSIFICATION_TASK, CONFIG_FILE, GRAFT_FILE, is_classifier_meta, load_base,
                               load_classifier, read_graft_meta, read_run_recipe, run_answers, split_file)
from tokengraft.serving.adapters import AdapterCase, serve_check_adapters
from tokengraft.serving.check import serve_check as check_export
from tokengraft.serving.runner import vllm_python
from tokengraft.tasks import read_jsonl
from tokengraft.rundir import load_graft as load_lm_graft
from tokengraft.training.classifier import train_classifier
from tokengraft.training.engine import TrainResult
from tokengraft.training.lm import train_lm
from tokengraft.training.ownership import own_run_dir


def train(recipe: Recipe, output_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, callbacks: list[Any] | None = None) -> TrainResult:
    """Run a recipe end to end and leave a complete run directory at ``output_dir``.

    The data files are checked first (as ``tokengraft validate`` does), then the run
    directory is claimed for the whole run (training/ownership.py): locked against a
    second training, and refused when it already holds something unless ``resume``
    (continue the run there, from its newest checkpoint that verifies) or ``overwrite``
    (remove it first). ``callbacks`` are extra ``transformers.TrainerCallback`` objects
    (they see the model, state and control like any Trainer callback).
    """
    check_data_files(recipe)
    recipe_fn = train_classifier if recipe.task == CLASSIFICATION_TASK else train_lm
    with own_run_dir(output_dir, resume=resume, overwrite=overwrite, quiet=quiet):
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
             pass_bias: float | None = None, answers: str | None = None) -> dict[str, Any]:
    """The task's metrics on the run's held-out test split, also written to ``RUN_DIR/metrics.json``.

    ``base`` compares with the base model, ``pass_bias`` overrides the saved <PASS> bias and
    ``answers`` the recipe's ``eval.answers`` (generative tasks only: a classifier has none of them).
    """
    if is_classifier_meta(read_graft_meta(run_dir)):
        return evaluate_classification(run_dir, limit=limit)
    return evaluate_run(run_dir, limit=limit, base=base, pass_bias=pass_bias, answers=answers)


def generate(run_dir: str | Path, prompts: list[str], *, max_new_tokens: int = 64,
             system: str | None = None, answers: str | None = None) -> list[dict[str, Any]]:
    """Greedy answers from a trained causal-LM run, with its calibrated <PASS> bias applied (if any).

    ``answers`` (default: the run's ``eval.answers``) "base": the tuned model only decides whether
    to pass, and the base model the run was trained on writes every other answer."""
    meta = read_graft_meta(run_dir)
    if is_classifier_meta(meta):
        raise TokengraftError(f"{run_dir} is a classification run: a classifier has no LM head to generate "
                              "with; score it with `tokengraft eval RUN_DIR`")
    answers = answers or run_answers(run_dir)
    if answers == "base" and not (Path(run_dir) / CONFIG_FILE).is_file():
        raise TokengraftError(f"answers: base needs a run directory (the tuned model beside its base); {run_dir} is "
                              "an export, which holds the tuned model alone")
    check_answers(answers, meta.get("task", "generic"))
    model, tokenizer = load(run_dir)
    bias = meta.get("pass_bias")
    if answers == "base":
        base, _ = load_base(meta)
        return pass_gated_generate(model, base, tokenizer, prompts, bias=bias or 0.0, max_new_tokens=max_new_tokens,
                                   system=system)
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


def _held_out_rows(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` rows; for <PASS> rows half unanswerable and half answerable, so both rates exist."""
    if not limit or limit >= len(rows):
        return rows
    if not any("answerable" in r for r in rows):
        return rows[:limit]
    una = [i for i, r in enumerate(rows) if r.get("answerable") is False][: (limit + 1) // 2]
    ans = [i for i, r in enumerate(rows) if r.get("answerable") is not False][: limit - len(una)]
    return [rows[i] for i in sorted(una + ans)]


def serve_check(target: str | Path, *, data: str | Path | None = None, limit: int | None = None,
                python: str | None = None, server: bool = False, max_new_tokens: int | None = None,
                threads: int | None = None, dtype: str = "float32", max_model_len: int = 1024,
                kv_cache_gib: float = 1.0, export_dir: str | Path | None = None, log_dir: str | Path | None = None,
                say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """vLLM against transformers on a run's held-out prompts (``tokengraft serve-check``; serving/check.py).

    ``target`` is a run directory (exported first, as ``export --merged`` would, into ``export_dir``
    or a temporary directory) or a merged export (its ``tokengraft_export.json`` names the run whose
    test split is used). ``data`` replaces the held-out rows with a JSONL file of prompt rows;
    ``python`` is the interpreter that has vLLM (default: this one).
    """
    say = say or (lambda message: None)
    target = Path(target)
    if (target / "base" / "config.json").is_file() and (target / "adapters").is_dir():
        return _serve_check_adapters(target, data=data, limit=limit, python=python, max_new_tokens=max_new_tokens,
                                     threads=threads, dtype=dtype, max_model_len=max_model_len,
                                     kv_cache_gib=kv_cache_gib, log_dir=log_dir, say=say)
    if (target / GRAFT_FILE).is_file():
        run_dir: Path | None = target
        if is_classifier_meta(read_graft_meta(target)):
            raise TokengraftError(f"{target} is a classification run: serve-check compares generated text")
    elif (target / "config.json").is_file():
        info = read_export_info(target) or {}
        run_dir = Path(info["run_dir"]) if info.get("run_dir") and (Path(info["run_dir"]) / GRAFT_FILE).is_file() else None
    else:
        raise TokengraftError(f"{target} is neither a run directory (graft.json) nor a merged export (config.json)")
    recipe = read_run_recipe(run_dir) if run_dir is not None and (run_dir / CONFIG_FILE).is_file() else None
    if data is not None:
        if not Path(data).is_file():
            raise TokengraftError(f"--data {data} does not exist")
        rows = read_jsonl(data)
    elif run_dir is not None and split_file(run_dir, "test").is_file():
        rows = read_jsonl(split_file(run_dir, "test"))
    else:
        where = f"{run_dir} has no {split_file(run_dir, 'test').relative_to(run_dir)}" if run_dir is not None else (
            f"{target} names no run directory that still exists (tokengraft_export.json)")
        raise TokengraftError(f"no held-out prompts: {where}; pass --data FILE.jsonl with prompt rows")
    rows = _held_out_rows(rows, limit)
    vllm_python(python)  # no vLLM there: say how to install it before exporting anything
    options = dict(task=recipe.task if recipe else None, system=recipe.data.system if recipe else None,
                   python=python, server=server, threads=threads, dtype=dtype, max_model_len=max_model_len,
                   kv_cache_gib=kv_cache_gib, log_dir=log_dir, say=say,
                   max_new_tokens=max_new_tokens or (recipe.eval.max_new_tokens if recipe else 32),
                   batch_size=recipe.eval.batch_size if recipe else 16)
    if (target / GRAFT_FILE).is_file():
        with tempfile.TemporaryDirectory(prefix="tokengraft-serve-") as tmp:
            out = Path(export_dir) if export_dir else Path(tmp) / "merged"
            say(f"exporting {target} to {out} (export --merged, answer tokens visible)")
            export = export_merged(target, out)
            report = check_export(export, rows, **options)
            report["export"] = str(export) if export_dir else f"(temporary) export --merged of {target}"
    else:
        report = check_export(target, rows, **options)
    report["run_dir"] = str(run_dir) if run_dir is not None else None
    return report


def _serve_check_adapters(out: Path, *, data: str | Path | None, limit: int | None, python: str | None,
                          max_new_tokens: int | None, threads: int | None, dtype: str, max_model_len: int,
                          kv_cache_gib: float, log_dir: str | Path | None,
                          say: Callable[[str], None]) -> dict[str, Any]:
    """``export --lora-adapter OUT``: each adapter on its run's held-out prompts (or ``data``), all on OUT/base."""
    cases: list[AdapterCase] = []
    budget = 0
    for adapter in sorted(p for p in (out / "adapters").iterdir() if (p / "adapter_config.json").is_file()):
        info = read_export_info(adapter) or {}
        run = Path(info["run_dir"]) if info.get("run_dir") else None
        recipe = read_run_recipe(run) if run is not None and (run / CONFIG_FILE).is_file() else None
        if data is not None:
            rows = read_jsonl(data)
        elif run is not None and split_file(run, "test").is_file():
            rows = read_jsonl(split_file(run, "test"))
        else:
            raise TokengraftError(f"no held-out prompts for adapter {adapter.name}: its run "
                                  f"{run or '(unknown)'} has no data/test.jsonl; pass --data FILE.jsonl")
        cases.append(AdapterCase(name=adapter.name, path=adapter, rows=_held_out_rows(rows, limit),
                                 system=recipe.data.system if recipe else None, task=recipe.task if recipe else None))
        budget = max(budget, recipe.eval.max_new_tokens if recipe else 32)
    vllm_python(python)
    return serve_check_adapters(out / "base", cases, python=python, max_new_tokens=max_new_tokens or budget,
                                threads=threads, dtype=dtype, max_model_len=max_model_len,
                                kv_cache_gib=kv_cache_gib, log_dir=log_dir, say=say)
