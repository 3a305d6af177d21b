"""Issue 20's arms side by side: `tokengraft compare` on configs/compare/style_*.yaml, then results (JSON + markdown).

    OMP_NUM_THREADS=2 python benchmarks/style_arms.py --output /tmp/style-arms
    # later, report again from the same runs without training:  ... --report-only
    # the trained arms on a bigger held-out split (copies the runs, regenerates test, re-evaluates):
    #   ... --report-only --retest 240 --results benchmarks/results/style_arms_test240

Trains every arm on the first arm's generated data (same questions, split and seed), evaluates
each on the same held-out questions, and writes ``benchmarks/results/style_arms.{md,json}``:
compare's table, the issue's targets arm by arm, accuracy per relation against the base model,
and a few held-out examples. benchmarks/style_arms.md is the plan (what each arm tests, runtime).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from compare_results import complete_compare, fmt, table, write_results  # benchmarks/ is on sys.path when this script runs

ROOT = Path(__file__).resolve().parent.parent
# The first arm generates the data every arm trains on; the control (today's recipe) comes last.
ARMS = ("style_alora", "style_alora_self_answers", "style_rows_expand", "style_lora_kl", "style_lora_self_answers", "style_lora")
EXTRA_ARMS = ("style_alora_known", "style_alora_sentence", "style_alora_subject")
"""Arms measured after the comparison (`--extra`): trained with `tokengraft train` (on the first arm's data files, or
generating the same questions from the same seed with their own terse wording), evaluated with `tokengraft eval`,
in the same output directory (see benchmarks/style_arms.md)."""
# The targets (held-out questions, the same greedy decoding for every style).
TARGETS: tuple[tuple[str, str, Any], ...] = (
    ("untokened_identical_rate", ">=", 0.99),
    ("length_ratio", ">=", 10.0),
    ("verbose_longer_rate", ">=", 0.90),
    ("terse_accuracy", ">=", "base_accuracy"),
    ("verbose_accuracy", ">=", "base_accuracy"),
)


def target_lines(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """One row per arm: each target's value and whether it is met (values missing from a run count as not met)."""
    header = ["recipe"] + [f"{key} {op} {bound}" for key, op, bound in TARGETS] + ["met"]
    rows = []
    for name, m in metrics.items():
        cells, met = [], 0
        for key, _, bound in TARGETS:
            value = m.get(key)
            limit = m.get(bound) if isinstance(bound, str) else bound
            ok = value is not None and limit is not None and value >= limit
            met += ok
            cells.append(f"{fmt(value)} {'ok' if ok else 'miss'}")
        rows.append([name, *cells, f"{met}/{len(TARGETS)}"])
    lines = ["", "The issue's targets (`ok` = met):", ""] + table(header, rows)
    lines += ["", "Lengths in generated tokens (medians; the untokened prompts on the tuned model vs the base model):", ""]
    keys = ("terse_median_tokens", "verbose_median_tokens", "untokened_median_tokens", "base_untokened_median_tokens")
    lines += table(["recipe", *keys], [[n, *[m.get(k) for k in keys]] for n, m in metrics.items()])
    for name, m in metrics.items():
        examples = m.get("examples") or []
        if examples:
            lines += ["", f"Held-out examples, {name}:", ""]
            lines += [f"- {e['question']} terse: {e['terse']!r} | verbose: {e['verbose'][:160]!r}" for e in examples[:3]]
    return lines


def retest(output: Path, names: list[str], n_test: int) -> Path:
    """Copy each arm's run to ``output``-test``n_test`` with its held-out split regenerated at ``n_test`` rows (same
    seed and generator: the same held-out entities, more of them) and run `tokengraft eval` on the copy.

    One question is 1/60 of the default split; a bigger one tells arms within a question or two of a target apart.
    Training data and weights are the originals'; the base model's answers come from the answers cache."""
    from tokengraft.config import load_recipe
    from tokengraft.tasks.splits import write_jsonl
    from tokengraft.tasks.style_data import generate_splits

    target = output.with_name(f"{output.name}-test{n_test}")
    for name in names:
        copy = target / name
        if not (copy / "metrics.json").is_file():  # a finished re-evaluation is kept (the command resumes)
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(output / name, copy, ignore=shutil.ignore_patterns("checkpoint-*", "snapshots"))
            (copy / "metrics.json").unlink(missing_ok=True)
            recipe = load_recipe(copy / "config.yaml")
            options = {**recipe.data.generate_options, "n_test": n_test}
            splits = generate_splits(seed=recipe.seed, **options)
            for split in ("test", "test_untokened"):
                write_jsonl(splits[split], copy / "data" / f"{split}.jsonl")
            subprocess.run(["tokengraft", "eval", str(copy)], check=True, cwd=ROOT)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/style-arms", help="compare's output directory (one run per arm)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run (first one "
                        "generates the data); default: all six")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "style_arms"),
                        help="results path without extension")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N test pairs")
    parser.add_argument("--report-only", action="store_true", help="write the results from an existing --output")
    parser.add_argument("--note", action="append", default=[], help="a line of context for the results (repeat)")
    parser.add_argument("--extra", nargs="*", default=[], choices=EXTRA_ARMS,
                        help="with --report-only: also report these arms, trained in --output outside compare")
    parser.add_argument("--retest", type=int, default=None, metavar="N_TEST",
                        help="with --report-only: re-evaluate the trained arms on a held-out split of N_TEST rows "
                             "(copies under OUTPUT-testN_TEST) and report those")
    args = parser.parse_args(argv)
    if args.retest is not None and not args.report_only:
        parser.error("--retest re-evaluates trained arms: use it with --report-only")
    recipes = [str(Path("configs") / "compare" / f"{arm}.yaml") for arm in args.arms]
    output = Path(args.output).resolve()
    command = ["tokengraft", "compare", *recipes, "--output", str(output)]
    if args.eval_limit:
        command += ["--eval-limit", str(args.eval_limit)]
    if not args.report_only:
        print("running: " + shlex.join(command), file=sys.stderr)
        subprocess.run(command, check=True, cwd=ROOT)
    else:  # a compare stopped early, or arms trained beside it: rows measured from their run directories
        if args.retest is not None:
            output = retest(output, args.arms + args.extra, args.retest)
            command = ["python", "benchmarks/style_arms.py", *(argv if argv is not None else sys.argv[1:])]
        complete_compare(output, args.arms + args.extra, "style")
    pairs = (args.retest or 120) // 2
    notes = [f"Every arm trains 120 steps on the first arm's generated data (400 styled rows + 100 plain rows "
             f"answered by the base model), same seed; {pairs} held-out question pairs, both styles decoded greedily with "
             "max_new_tokens 120, no min_new_tokens; the untokened check runs the first 50 test questions without a "
             "style token on the tuned and the base model in the same batches.",
             "base_accuracy: the base model asked the same held-out questions without a style token, same decoding."]
    write_results(output, Path(args.results), shlex.join(command), args.note + notes, target_lines)
    print(f"wrote {args.results}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
