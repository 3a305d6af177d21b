"""Issue 19: what one <PASS> bias buys on each split of a trained `<PASS>` run, over a grid of biases.

    OMP_NUM_THREADS=2 python benchmarks/pass_bias_tradeoff.py RUN_DIR [RUN_DIR ...] \
        --results benchmarks/results/pass_bias_tradeoff

`tokengraft eval` reports each run at ONE bias, the one its validation split certifies. This asks
whether ANY bias would meet the issue's recall targets on the test split and keep the base model's
answers on the relations training never asks (``test_heldout_relations``). Per run: the <PASS>
margin at the first answer position of every row (one prefill, the margin `tokengraft eval`
thresholds), and whether the base model answers each answerable row right (the answers cache).
Per bias: recall on the test split's kinds held out of training and on its corrupted/fictional
kinds, false-PASS on its base-right questions, and on the held-out relations the share of the base
model's right answers passed and ``kept``: the share of the held-out-relation questions the base model
answers right and the run does not pass. ``kept`` is what clean accuracy there would be if the run
answered exactly as the base model does when it answers; the run's own answers can only add what the
base model gets wrong, so it bounds the clean accuracy of a run that forgets nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from compare_results import table  # benchmarks/ is on sys.path when this script runs
from pass_generalise import (CLEAN_SLACK, CORRUPTION_KINDS, HELD_OUT_RELATIONS, MAX_FALSE_PASS, MIN_RECALL_CORRUPTED,
                             MIN_RECALL_HELD_OUT_KINDS, kind_sets)

from tokengraft.evaluation.generative import base_correctness
from tokengraft.generation import generate_batch
from tokengraft.rundir import load_base, load_graft, read_graft_meta, read_run_recipe
from tokengraft.tasks.splits import read_jsonl

BIASES = tuple(b / 2 for b in range(-12, 3))  # -6.0 .. +1.0 in the calibration grid's 0.5 steps (no run here calibrates above 0)
SPLITS = ("test", HELD_OUT_RELATIONS)


def margins(run: Path) -> dict[str, list[dict[str, Any]]]:
    """Each split's rows with ``margin`` (the <PASS> logit minus the best other at the first answer position)
    and, for answerable rows, ``base_correct``."""
    recipe, meta = read_run_recipe(run), read_graft_meta(run)
    graft = load_graft(run, device="cpu")
    base, _ = load_base(meta, device="cpu")
    pass_id = graft.tokenizer.convert_tokens_to_ids("<PASS>")
    out = {}
    for split in SPLITS:
        rows = read_jsonl(run / "data" / f"{split}.jsonl")
        scored = generate_batch(graft.model, graft.tokenizer, [r["prompt"] for r in rows], max_new_tokens=1,
                                system=recipe.data.system, batch_size=32, score_token_id=pass_id,
                                desc=f"{run.name}: {split}")
        right = iter(base_correctness(base, graft.tokenizer, [r for r in rows if r["answerable"]], recipe))
        out[split] = [{"kind": r["kind"], "margin": s["margin"], "base_correct": next(right) if r["answerable"] else None}
                      for r, s in zip(rows, scored)]
    return out


def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def at_bias(rows: dict[str, list[dict[str, Any]]], bias: float, held_out_kinds: set[str]) -> dict[str, Any]:
    """The issue's recall / false-PASS quantities and the held-out relations' kept answers at one bias."""
    test, relations = rows["test"], rows[HELD_OUT_RELATIONS]
    passes = lambda r: r["margin"] + bias >= 0  # noqa: E731 - the eval's rule: <PASS> wins the first position
    return {
        "bias": bias,
        "recall_heldout_kinds": share([passes(r) for r in test if r["kind"] in held_out_kinds]),
        "recall_corrupted": share([passes(r) for r in test if r["kind"] in CORRUPTION_KINDS]),
        "false_pass_test": share([passes(r) for r in test if r["base_correct"]]),
        "false_pass_heldout_relations": share([passes(r) for r in relations if r["base_correct"]]),
        "kept_heldout_relations": share([bool(r["base_correct"]) and not passes(r) for r in relations]),
    }


def run_report(run: Path) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    _, held_out_kinds = kind_sets(run / "data")
    rows = margins(run)
    base = share([bool(r["base_correct"]) for r in rows[HELD_OUT_RELATIONS]])
    sweep = [at_bias(rows, b, held_out_kinds) for b in BIASES]
    recall_ok = [s for s in sweep if (s["recall_heldout_kinds"] or 0) >= MIN_RECALL_HELD_OUT_KINDS
                 and (s["recall_corrupted"] or 0) >= MIN_RECALL_CORRUPTED and (s["false_pass_test"] or 0) <= MAX_FALSE_PASS]
    best = max(recall_ok, key=lambda s: s["kept_heldout_relations"] or 0, default=None)
    calibrated = next((s for s in sweep if s["bias"] == metrics.get("pass_bias")), None)
    return {"run": run.name, "calibrated_bias": metrics.get("pass_bias"), "base_heldout_relations": base,
            "clean_heldout_relations": metrics.get("splits", {}).get(HELD_OUT_RELATIONS, {}).get("clean_accuracy"),
            "kept_at_calibrated_bias": calibrated and calibrated["kept_heldout_relations"],
            "held_out_kinds": sorted(held_out_kinds), "sweep": sweep,
            "best_bias_meeting_recall": best and best["bias"], "kept_there": best and best["kept_heldout_relations"],
            "biases_meeting_all_four": [s["bias"] for s in recall_ok
                                        if (s["kept_heldout_relations"] or 0) >= base - CLEAN_SLACK]}


def markdown(reports: list[dict[str, Any]], command: str) -> list[str]:
    lines = ["# <PASS> bias against recall and kept answers (issue 19)", "", "```", command, "```", "",
             "- Margins from one prefill per row; base correctness from the answers cache. `kept` = held-out-relation "
             "questions the base model answers right and the run does not pass (the clean accuracy of a run that "
             f"answered as the base model does; the target is base - {CLEAN_SLACK:.2f}). Recall is pooled over the test split's "
             "rows of each kind group; false-PASS over its base-right questions.",
             f"- machine: {platform.machine()}, Python {platform.python_version()}; CPU only", ""]
    lines += table(["run", "calibrated bias", "held-out relations: clean (its answers)", "kept at that bias",
                    "bias meeting recall and false-PASS, most kept", "kept there", "kept needed"],
                   [[r["run"], r["calibrated_bias"], r["clean_heldout_relations"], r["kept_at_calibrated_bias"],
                     r["best_bias_meeting_recall"], r["kept_there"], r["base_heldout_relations"] - CLEAN_SLACK] for r in reports])
    lines.append("")
    for rep in reports:
        bound = rep["base_heldout_relations"] - CLEAN_SLACK
        lines += [f"## {rep['run']}", "",
                  f"Calibrated bias {rep['calibrated_bias']}; held-out relations: base {rep['base_heldout_relations']:.3f}, "
                  f"kept must be >= {bound:.3f}. Biases meeting the recall, false-PASS and kept bounds at once: "
                  f"{', '.join(map(str, rep['biases_meeting_all_four'])) or 'none'}.", ""]
        lines += table(["bias", f"recall held-out kinds (>= {MIN_RECALL_HELD_OUT_KINDS:.2f})",
                        f"recall corrupted/fictional (>= {MIN_RECALL_CORRUPTED:.2f})",
                        f"false-PASS test (<= {MAX_FALSE_PASS:.2f})", "held-out relations: base-right passed", "kept"],
                       [[s["bias"], s["recall_heldout_kinds"], s["recall_corrupted"], s["false_pass_test"],
                         s["false_pass_heldout_relations"], s["kept_heldout_relations"]] for s in rep["sweep"]])
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of `tokengraft train` + `tokengraft eval`")
    parser.add_argument("--results", type=Path, required=True, help="write RESULTS.json and RESULTS.md")
    args = parser.parse_args(argv)
    for run in args.runs:
        for need in ("metrics.json", f"data/{HELD_OUT_RELATIONS}.jsonl"):
            if not (run / need).is_file():
                parser.error(f"{run} has no {need}: train with heldout_relations and run `tokengraft eval` first")
    command = "python benchmarks/pass_bias_tradeoff.py " + " ".join(str(r) for r in args.runs) + \
        f" --results {args.results}"
    reports = [run_report(run) for run in args.runs]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"command": command, "runs": reports}, indent=2))
    args.results.with_suffix(".md").write_text("\n".join(markdown(reports, command)))
    print(args.results.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
