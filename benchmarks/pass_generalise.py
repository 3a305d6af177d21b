"""Issue 19's recipes side by side: `tokengraft compare` on configs/compare/pass_gen_*.yaml, then results (JSON + markdown).

    OMP_NUM_THREADS=2 python benchmarks/pass_generalise.py --output /tmp/pass-generalise
    # later, report again from the same runs without training:  ... --report-only
    # end to end on a tiny saved model in a minute:  ... --quick --model DIR --output /tmp/pg --results /tmp/pg/results

Trains every arm on the first arm's generated data (same questions, split and seed), evaluates each
on the same held-out splits (`tokengraft eval` scores test.jsonl and every other held-out split file
of the run, e.g. the relations never trained on), and writes ``benchmarks/results/pass_generalise.{md,json}``:
compare's table, <PASS> recall by kind (held-out kinds marked), false-PASS, clean accuracy against the
base model on every held-out split, how well p(<PASS>) finds the base model's wrong answers against the
base model's own confidence (max softmax, minimum token probability), and the issue's targets arm by arm.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from compare_results import fmt, table, write_results  # benchmarks/ is on sys.path when this script runs

from tokengraft.tasks.pass_data import ALL_KINDS

ROOT = Path(__file__).resolve().parent.parent
# The first arm generates the data every arm trains on: the control, the default recipe.
ARMS = ("pass_gen_default", "pass_gen_kl", "pass_gen_known_kl")
# Arms whose DATA differs: with one of them every arm generates its own data (`compare --own-data`); their
# held-out splits are the default arm's, row for row. What differs, for the report:
OWN_DATA_ARMS = {
    "pass_gen_replay": "pass_gen_replay adds 200 answerable training rows of nine broad relations neither trained "
                       "nor held out, answered by the base model",
    "pass_gen_replay_named": "pass_gen_replay_named adds 200 answerable training rows about real named entities "
                             "(painters, composers, inventors, athletes' sports), answered by the base model",
    "pass_gen_replay_named_known_kl": "pass_gen_replay_named_known_kl is pass_gen_replay_named with "
                                      "pass_gen_known_kl's additions (a KL term to the base model, drop_unknown)",
    "pass_gen_replay_all_known_kl": "pass_gen_replay_all_known_kl is pass_gen_replay_named_known_kl with 400 replay "
                                    "rows from all 13 replay relations (the nine broad and the four named ones)",
    "pass_gen_replay_named_kl03": "pass_gen_replay_named_kl03 is pass_gen_replay_named_known_kl with the KL weight "
                                  "0.3 instead of 1.0",
    "pass_gen_replay_named_kl03_val250": "pass_gen_replay_named_kl03_val250 is pass_gen_replay_named_kl03 with a "
                                         "250-row validation split (same trained weights; calibration only)",
    "pass_gen_replay_named_known": "pass_gen_replay_named_known is pass_gen_replay_named_known_kl without the KL "
                                   "term (drop_unknown kept) and with the 250-row validation split",
    "pass_gen_replay_named_kl03_300": "pass_gen_replay_named_kl03_300 is pass_gen_replay_named_kl03_val250 trained "
                                      "300 steps instead of 150",
    "pass_gen_replay_named_kl1_300": "pass_gen_replay_named_kl1_300 is pass_gen_replay_named_kl03_300 with the KL "
                                     "weight 1.0",
    "pass_gen_replay_named_kl05_300": "pass_gen_replay_named_kl05_300 is pass_gen_replay_named_kl03_300 with the KL "
                                      "weight 0.5",
    "pass_gen_replay_named_kl03_300_attention": "pass_gen_replay_named_kl03_300_attention is "
                                                "pass_gen_replay_named_kl03_300 with LoRA on the attention "
                                                "projections only (no MLP)",
    "pass_gen_replay_named_kl03_300_carriers": "pass_gen_replay_named_kl03_300_carriers is "
                                               "pass_gen_replay_named_kl03_300 with replay_carriers: its replay "
                                               "questions also asked as \"Do you know ...?\", \"Can you tell me "
                                               "...?\", \"Remind me ...\" (the private_fact kind's openings)",
    "pass_gen_replay_all_kl03_300_carriers": "pass_gen_replay_all_kl03_300_carriers is "
                                             "pass_gen_replay_named_kl03_300_carriers with 400 replay rows from all "
                                             "13 replay relations",
    "pass_gen_replay_all_kl03_300_carriers_gold": "pass_gen_replay_all_kl03_300_carriers_gold is "
                                                  "pass_gen_replay_all_kl03_300_carriers with replay_gold: the "
                                                  "replay questions the base model answers wrong train on their "
                                                  "gold answer instead of being dropped",
    "pass_gen_replay_named_max_kl03_300_carriers": "pass_gen_replay_named_max_kl03_300_carriers is "
                                                   "pass_gen_replay_named_kl03_300_carriers with 1036 replay rows "
                                                   "(every named fact in every phrasing) instead of 200",
    "pass_gen_gemma_replay_named_max_kl03_300_carriers": "pass_gen_gemma_replay_named_max_kl03_300_carriers is "
                                                         "pass_gen_replay_named_max_kl03_300_carriers on Gemma 3 "
                                                         "270M (its own answers label and replay; validation loss "
                                                         "at the end only)",
    "pass_gen_replay_named_max_kl03_300_carriers_base_answers": "pass_gen_replay_named_max_kl03_300_carriers_base_"
                                                                "answers is pass_gen_replay_named_max_kl03_300_"
                                                                "carriers with eval.answers: base (the base model "
                                                                "answers what the run does not pass on)",
    "pass_gen_replay_named_max_kl03_600_carriers_base_answers": "pass_gen_replay_named_max_kl03_600_carriers_base_"
                                                                "answers is pass_gen_replay_named_max_kl03_300_"
                                                                "carriers_base_answers trained 600 steps",
    "pass_gen_replay_named_max_kl03_600_carriers_base_answers_recall90": "pass_gen_replay_named_max_kl03_600_"
                                                                         "carriers_base_answers_recall90 is the "
                                                                         "600-step arm calibrated with "
                                                                         "eval.target_recall 0.90, as the demo recipe",
    "pass_gen_gemma_replay_named_max_kl03_300_carriers_base_answers": "pass_gen_gemma_replay_named_max_kl03_300_"
                                                                      "carriers_base_answers is the Gemma arm with "
                                                                      "eval.answers: base",
    "pass_gen_gemma": "pass_gen_gemma is Gemma 3 270M, whose own answers label its answerable training rows "
                      "(300 steps, as its demo recipe)",
    "pass_gen_consistency": "pass_gen_consistency turns answerable training questions into <PASS> unless the base "
                            "model answers them right greedily and in at least 3 of 5 samples at temperature 0.7 "
                            "(know_check + know_check_samples)",
}
HELD_OUT_RELATIONS = "test_heldout_relations"
"""The split of answerable questions of relations training never uses (pass_data: `heldout_relations`)."""
CORRUPTION_KINDS = ALL_KINDS
"""The corrupted / fictional kinds the <PASS> task had before issue 19 (their recall target stays 0.90)."""
BASELINES = ("max_softmax", "min_token_prob")
# The bounds.
MIN_RECALL_HELD_OUT_KINDS = 0.80
MIN_RECALL_CORRUPTED = 0.90
MAX_FALSE_PASS = 0.05
CLEAN_SLACK = 0.02
"""How far below the base model's clean accuracy on held-out relations the tuned model may fall."""
AUROC_GAIN = 0.05
"""How far above the better base-confidence baseline the AUROC of p(<PASS>) must be."""
QUICK = ["train.max_steps=2", "train.eval_steps=0", "train.batch_size=4", "data.generate_options.n_train=40",
         "data.generate_options.n_validation=12", "data.generate_options.n_test=16",
         "data.generate_options.read_rows=2", "eval.max_new_tokens=6", "eval.batch_size=16", "model.device=cpu"]
"""--quick: two steps on a few rows (for a tiny saved model: the script end to end, not the numbers)."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def kind_sets(data: Path) -> tuple[dict[str, int], set[str]]:
    """Test rows per unanswerable kind, and the kinds training never saw (held out whole)."""
    test = [r for r in read_rows(data / "test.jsonl") if r.get("answerable") is False]
    counts: dict[str, int] = {}
    for row in test:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    trained = {r.get("kind") for r in read_rows(data / "train.jsonl")}
    return counts, set(counts) - trained


def pooled_recall(by_kind: dict[str, float | None], counts: dict[str, int], kinds: set[str]) -> float | None:
    """PASS recall over the test rows of ``kinds`` together (each kind weighted by its rows)."""
    rows = sum(counts[k] for k in kinds if by_kind.get(k) is not None)
    hits = sum(by_kind[k] * counts[k] for k in kinds if by_kind.get(k) is not None)
    return hits / rows if rows else None


def relation_split(m: dict[str, Any]) -> str | None:
    """The held-out-relation split of a run's metrics: HELD_OUT_RELATIONS, else the only split beside test."""
    others = [s for s in m.get("splits", {}) if s != "test"]
    return HELD_OUT_RELATIONS if HELD_OUT_RELATIONS in others else (others[0] if len(others) == 1 else None)


def detection(m: dict[str, Any], split: str | None, score: str, key: str = "auroc") -> float | None:
    return (m.get("error_detection", {}).get(split or "", {}).get(score) or {}).get(key)


def targets(m: dict[str, Any], counts: dict[str, int], held_out: set[str]) -> list[tuple[str, Any, Any, bool]]:
    """(target, value, bound, met) for the issue's targets on one run."""
    by_kind = m.get("pass_recall_by_kind", {})
    rel = relation_split(m)
    split = m.get("splits", {}).get(rel or "", {})
    baseline = max((v for v in (detection(m, rel, s) for s in BASELINES) if v is not None), default=None)
    rows = [
        (f"recall on held-out kinds >= {MIN_RECALL_HELD_OUT_KINDS:.2f}", pooled_recall(by_kind, counts, held_out),
         MIN_RECALL_HELD_OUT_KINDS),
        (f"recall on corrupted/fictional >= {MIN_RECALL_CORRUPTED:.2f}",
         pooled_recall(by_kind, counts, set(CORRUPTION_KINDS) & set(counts)), MIN_RECALL_CORRUPTED),
        (f"false-PASS <= {MAX_FALSE_PASS:.2f}", m.get("false_pass_rate"), MAX_FALSE_PASS),
        (f"held-out relations: clean accuracy >= base - {CLEAN_SLACK:.2f}", split.get("clean_accuracy"),
         None if split.get("base_clean_accuracy") is None else split["base_clean_accuracy"] - CLEAN_SLACK),
        (f"held-out relations: AUROC p(<PASS>) >= best baseline + {AUROC_GAIN:.2f}", detection(m, rel, "p_pass"),
         None if baseline is None else baseline + AUROC_GAIN),
    ]
    out = []
    for name, value, bound in rows:
        upper = name.startswith("false-PASS")
        met = value is not None and bound is not None and (value <= bound if upper else value >= bound)
        out.append((name, value, bound, met))
    return out


def relation_lines(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Per relation of the held-out-relation split: which relations a run passes on or forgets (runs evaluated
    before `tokengraft eval` reported ``by_relation`` show blanks)."""
    per_run = {n: m.get("splits", {}).get(relation_split(m) or "", {}).get("by_relation") or {}
               for n, m in metrics.items()}
    relations = sorted({r for d in per_run.values() for r in d})
    if not relations:
        return []
    sizes = {r: next(d[r]["n"] for d in per_run.values() if r in d) for r in relations}
    base = {r: next((d[r]["base_clean_accuracy"] for d in per_run.values() if r in d), None) for r in relations}
    # Runs of one base model share its accuracy (the header says it); runs of other bases say their own per cell.
    shared = all(d[r]["base_clean_accuracy"] == base[r] for d in per_run.values() for r in d)
    where = "in the header" if shared else "third, per run: the runs have different base models"
    lines = ["", f"Held-out relations one by one: passed share / clean accuracy (the base model's clean accuracy {where}):",
             ""]
    header = ["recipe", *[f"{r} (n={sizes[r]}" + (f", base {fmt(base[r])})" if shared else ")") for r in relations]]
    rows = [[n, *[f"{fmt(d[r]['passed'])} / {fmt(d[r]['clean_accuracy'])}" +
                  ("" if shared else f" / {fmt(d[r]['base_clean_accuracy'])}") if r in d else "" for r in relations]]
            for n, d in per_run.items()]
    return lines + table(header, rows)


def target_lines(metrics: dict[str, dict[str, Any]], data: Path) -> list[str]:
    counts, held_out = kind_sets(data)
    names = list(metrics)
    lines = ["", "The issue's targets (value / bound, `ok` = met; held-out kinds pooled over their rows):", ""]
    per_run = {n: targets(m, counts, held_out) for n, m in metrics.items()}
    header = ["recipe"] + [t[0] for t in next(iter(per_run.values()), [])] + ["met"]
    lines += table(header, [[n, *[f"{fmt(v)} / {fmt(b)} {'ok' if ok else 'miss'}" for _, v, b, ok in rows],
                             f"{sum(r[3] for r in rows)}/{len(rows)}"] for n, rows in per_run.items()])
    kinds = sorted(counts)
    lines += ["", "<PASS> recall by unanswerable kind on the test split (* = kind held out of training):", ""]
    lines += table(["recipe", *[f"{k}{'*' if k in held_out else ''} (n={counts[k]})" for k in kinds]],
                   [[n, *[metrics[n].get("pass_recall_by_kind", {}).get(k) for k in kinds]] for n in names])
    splits = sorted({s for m in metrics.values() for s in m.get("splits", {})}, key=lambda s: (s != "test", s))
    lines += ["", "Answerable questions per held-out split (test = held-out entities and phrasings of the trained "
              "relations): clean accuracy tuned / base, false-PASS, answered share:", ""]
    header = ["recipe"] + [f"{s} (n={next((m['splits'][s].get('n_answerable') for m in metrics.values() if s in m.get('splits', {})), '?')})"
                           for s in splits]
    rows = []
    for n in names:
        cells = []
        for s in splits:
            d = metrics[n].get("splits", {}).get(s, {})
            cells.append(f"{fmt(d.get('clean_accuracy'))} / {fmt(d.get('base_clean_accuracy'))}, "
                         f"{fmt(d.get('false_pass_rate'))}, {fmt(d.get('coverage'))}")
        rows.append([n, *cells])
    lines += table(header, rows)
    lines += relation_lines(metrics)
    lines += ["", "Finding the base model's wrong answers (answerable rows; label: its greedy answer is wrong). "
              "AUROC (higher is better) / AURC (lower is better) of p(<PASS>) at the first answer position (the raw "
              "probability; the calibrated bias does not change either area) against 1 - the base model's max "
              "softmax at its first answer token and 1 - its minimum token probability over its answer:", ""]
    header = ["recipe", "split", "base errors", "p(<PASS>)", "max softmax", "min token prob",
              "p(<PASS>) AUROC - better baseline [95% CI]", "AURC random / oracle"]
    rows = []
    for n in names:
        for s, d in metrics[n].get("error_detection", {}).items():
            gain = d.get("p_pass_gain")  # evals before tokengraft reported it have none
            rows.append([n, s, f"{d['base_errors']}/{d['n']}",
                         *[f"{fmt(d[k]['auroc'])} / {fmt(d[k]['aurc'])}" for k in ("p_pass", *BASELINES)],
                         f"{gain['gain']:+.3f} vs {gain['over']} [{gain['ci95'][0]:+.3f}, {gain['ci95'][1]:+.3f}]"
                         if gain else "n/a",
                         f"{fmt(d['error_rate'])} / {fmt(d['aurc_optimal'])}"])
    lines += table(header, rows)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/pass-generalise", help="compare's output directory (one run per arm)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS + tuple(OWN_DATA_ARMS),
                        help="arms to run (the first one generates the data); default: the first three. "
                             f"With {', '.join(OWN_DATA_ARMS)} every arm generates its own data")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "pass_generalise"),
                        help="results path without extension")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N rows of each split")
    parser.add_argument("--report-only", action="store_true", help="write the results from an existing --output")
    parser.add_argument("--quick", action="store_true", help="two steps on a few rows: checks the script, not the numbers")
    parser.add_argument("--model", default=None, help="another base model (a directory or hub id) for every arm")
    args = parser.parse_args(argv)
    own_data = [OWN_DATA_ARMS[arm] for arm in args.arms if arm in OWN_DATA_ARMS]
    recipes = [str(Path("configs") / "compare" / f"{arm}.yaml") for arm in args.arms]
    output = Path(args.output).resolve()
    overrides = (QUICK if args.quick else []) + ([f"model.name={args.model}"] if args.model else [])
    command = ["tokengraft", "compare", *recipes, "--output", str(output), *(["--own-data"] if own_data else [])]
    command += [x for o in overrides for x in ("--set", o)]
    limit = args.eval_limit or (12 if args.quick else None)
    if limit:
        command += ["--eval-limit", str(limit)]
    if not args.report_only:
        print("running: " + shlex.join(command), file=sys.stderr)
        # `python -m tokengraft` is the `tokengraft` command of this interpreter's environment
        subprocess.run([sys.executable, "-m", *command], check=True, cwd=ROOT)
    data = output / args.arms[0] / "data"
    data_note = ("Every arm generates its own data with the same seed (--own-data: " + "; ".join(own_data) +
                 "; every other row of every split is the default arm's)" if own_data else
                 "Every arm trains on the first arm's generated data and seed")
    notes = [data_note + " (the default recipe's: 1000 "
             "training questions, 30 % unanswerable over seven kinds, 120 READ rows, 150 steps (unless said) in length-grouped "
             "batches; the test split adds four kinds held out whole; a split of eight relations no other split asks); the base model's answers label the "
             "answerable training questions (self_answers) and are shared through the answers cache.",
             "Each run is evaluated by `tokengraft eval` with its own <PASS> bias calibrated on the validation split "
             "(false-PASS target 0.05); every held-out split file of the run is scored.",
             *(["--quick: two steps on a few rows; the numbers mean nothing."] if args.quick else [])]
    write_results(output, Path(args.results), shlex.join(command), notes, lambda m: target_lines(m, data))
    print(f"wrote {args.results}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
