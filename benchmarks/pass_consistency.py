"""Issue 19: does the base model's sample consistency find its wrong answers better than its own confidence?

    python benchmarks/pass_consistency.py [--samples 10] [--temperatures 0.5 1.0]
    # end to end on a tiny saved model in seconds:  ... --model DIR --limit 12 --results /tmp/pc/pass_consistency

No training. The base model answers the scored questions of issue 19's recipe (the test split's held-out
entities and the relations no split trains on) greedily, as `tokengraft eval` grades it, and then samples
``--samples`` more answers per question at each temperature (answer_cache.sampled_answers: seeded per
question and sample, cached). Two consistency scores per temperature, both higher when the model is less sure:

- ``disagreement@T``: the share of samples that disagree with the greedy answer (`answers_agree`: one contains
  the other as whole words, the grader's rule, so "Paris." and "The capital is Paris." agree);
- ``entropy@T``: the entropy of the samples over their distinct normalised texts (a semantic entropy whose
  meaning classes are exact matches; Kuhn et al., 2023, Farquhar et al., 2024).

Each is scored (AUROC, AURC for the base model's errors) beside the base model's max softmax and minimum
token probability (tasks.metrics), with its AUROC gain over the better of the two and a paired bootstrap
interval (metrics.auroc_gain). Why it matters for `<PASS>`: issue 19 asks for know-check labels from
several sampled answers, and a first-position probe trained to predict consistency (semantic-entropy
probes, Kossen et al., 2024) can only carry over what consistency itself knows about the errors.
Results: ``benchmarks/results/pass_consistency.{md,json}``.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from compare_results import fmt, run_script, save_report, table  # benchmarks/ is on sys.path when this script runs
from pass_probe import RECIPE, SCORED_SPLITS, add_gains, answerable_splits, gain_cell, scores_for

from tokengraft.answer_cache import sampled_answers
from tokengraft.config import load_recipe
from tokengraft.constants import BUILTIN_ALIAS
from tokengraft.evaluation.generative import add_base_answers, base_greedy_answers
from tokengraft.models import load_model
from tokengraft.tasks import metrics
from tokengraft.tasks.bank import answer_matches, normalize_answer
from tokengraft.tasks.pass_data import is_correct
from tokengraft.timing import phase, recording

ROOT = Path(__file__).resolve().parent.parent


def answers_agree(a: str, b: str) -> bool:
    """Two answers agree when their normalised texts are equal or one contains the other as whole words."""
    if normalize_answer(a) == normalize_answer(b):
        return True
    return answer_matches(a, b.strip()) or answer_matches(b, a.strip())


def disagreement(greedy: str, samples: list[str]) -> float:
    """The share of ``samples`` that disagree with the greedy answer (`answers_agree`)."""
    return sum(not answers_agree(greedy, s) for s in samples) / len(samples)


def sample_entropy(samples: list[str]) -> float:
    """Entropy (nats) of ``samples`` over their distinct normalised texts: 0 when all say the same."""
    counts = Counter(normalize_answer(s) for s in samples)
    return -sum(c / len(samples) * math.log(c / len(samples)) for c in counts.values())


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = ["# Sample consistency against the base model's own confidence (issue 19)", "",
             "```", result["command"], "```", ""]
    lines += [f"- {note}" for note in result["notes"]]
    splits = list(result["scores"])
    lines += ["", "Finding the base model's wrong answers: AUROC (higher is better) / AURC (lower is better):", ""]
    names = list(next(iter(result["scores"].values())))
    rows = [[name, *[cell for s in splits for cell in (
        f"{fmt(result['scores'][s][name]['auroc'])} / {fmt(result['scores'][s][name]['aurc'])}",
        gain_cell(result["scores"][s][name]))]] for name in names]
    lines += table(["score", *[h for s in splits for h in (
        f"{s} (n={result['splits'][s]['n']}, {result['splits'][s]['base_errors']} errors)",
        f"AUROC - {result['better_baseline'][s]} [95% CI]")]], rows)
    return lines + [""]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"base model (default: the recipe's, {BUILTIN_ALIAS})")
    parser.add_argument("--recipe", default=str(RECIPE), help="a pass recipe that generates its data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    parser.add_argument("--samples", type=int, default=10, help="sampled answers per question (default 10)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0],
                        help="sampling temperatures (default 0.5 1.0)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N answerable rows of each split")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "pass_consistency"),
                        help="results path without extension")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error("--samples: consistency needs at least 2 sampled answers per question")
    if any(t <= 0 for t in args.temperatures):
        parser.error("--temperatures: sampling needs temperatures above 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/pass_consistency.py", *(sys.argv[1:] if argv is None else argv)])
    recipe = load_recipe(args.recipe, [*args.set, *([f"model.name={args.model}"] if args.model else [])])
    result: dict[str, Any] = {"command": command, "recipe": str(args.recipe), "model": recipe.model.name,
                              "seed": recipe.seed, "samples": args.samples, "temperatures": args.temperatures,
                              "splits": {}, "scores": {}, "better_baseline": {}}
    with recording() as log:
        with phase("generate the data splits"):
            splits = {s: rows for s, rows in answerable_splits(recipe, args.limit).items() if s in SCORED_SPLITS}
        with phase("load the base model"):
            model, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=recipe.model.device,
                                          trust_remote_code=recipe.model.trust_remote_code)
        max_new_tokens = max(48, recipe.eval.max_new_tokens)  # the decoding of the greedy answers (base_greedy_answers)
        for name, rows in splits.items():
            with phase(f"base model: {name}"):
                greedy = base_greedy_answers(model, tokenizer, rows, recipe)
                errors = [not is_correct(a["text"], r) for a, r in zip(greedy, rows)]
                records = [dict(r) for r in rows]
                add_base_answers(records, model, tokenizer, recipe, greedy)
            baseline = [metrics.error_scores(r) for r in records]
            values = {b: np.array([s[b] for s in baseline], dtype=float) for b in metrics.BASELINE_SCORES}
            for temperature in args.temperatures:
                desc = f"sampled answers ({name}, T={temperature:g})"
                with phase(desc):
                    sampled = sampled_answers(model, tokenizer, [r["prompt"] for r in rows], samples=args.samples,
                                              temperature=temperature, seed=recipe.seed, system=recipe.data.system,
                                              max_new_tokens=max_new_tokens, batch_size=recipe.eval.batch_size,
                                              desc=desc)
                texts = [[a["text"] for a in answers] for answers in sampled]
                values[f"disagreement@{temperature:g}"] = np.array(
                    [disagreement(g["text"], t) for g, t in zip(greedy, texts)])
                values[f"entropy@{temperature:g}"] = np.array([sample_entropy(t) for t in texts])
            result["splits"][name] = {"n": len(rows), "base_errors": sum(errors)}
            result["scores"][name] = {score: scores_for(v, errors) for score, v in values.items()}
            result["better_baseline"][name] = add_gains(result["scores"][name], values, errors, recipe.seed)
    result["notes"] = [
        f"Data: {Path(args.recipe).name}'s generator (seed {recipe.seed}), answerable questions of the scored splits"
        + (f", the first {args.limit} of each" if args.limit else "") + ": `test` holds out entities and phrasings "
        "of the relations the <PASS> recipe trains on, `test_heldout_relations` asks relations no split trains on.",
        f"Model: {recipe.model.name}, untouched. Label: its greedy answer is wrong, graded as `tokengraft eval` "
        f"grades it. {args.samples} sampled answers per question and temperature (seed {recipe.seed}), "
        f"at most {max_new_tokens} new tokens, the greedy answers' prompt format.",
        "disagreement@T: share of the samples that disagree with the greedy answer (neither contains the other as "
        "whole words); entropy@T: entropy over the samples' distinct normalised texts. Baselines: max_softmax = 1 - "
        "the max softmax at the first answer token, min_token_prob = 1 - the smallest token probability of the "
        "greedy answer.",
        f"`AUROC - <baseline>`: paired percentile bootstrap 95% interval ({metrics.BOOTSTRAP_RESAMPLES} resamples, "
        f"seed {recipe.seed}).",
        f"machine: {platform.machine()}, Python {platform.python_version()}; CPU only; {log.seconds:.0f} s in all.",
    ]
    result["phases"] = log.to_dict()["phases"]
    save_report(args.results, report_lines(result), result)
    return 0


if __name__ == "__main__":
    run_script(main)
