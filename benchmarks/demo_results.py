"""Collect finished demo runs (`tokengraft demo pass|style|lexicon --output DIR`) into committed results.

    python benchmarks/demo_results.py /tmp/demo-pass --out benchmarks/results/pass_demo \
        --command "OMP_NUM_THREADS=1 tokengraft demo pass --output /tmp/demo-pass"

Reads each run's ``metrics.json`` (written by `tokengraft eval` on the held-out test
split), ``log_history.json`` (training time) and ``data/`` (what the run trained on),
and writes ``OUT.json`` + ``OUT.md`` (one column per run, the issue's targets beside
them) and copies the run's PNG plots next to them as ``OUT_<plot>.png``. Nothing
here computes a metric: it only gathers what the runs measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from compare_results import fmt  # benchmarks/ is on sys.path when this script runs

TARGETS = {
    "pass": {"pass_recall": ">= 0.90", "false_pass_rate": "<= 0.05", "clean_accuracy": ">= base",
             "base_clean_accuracy": "reference", "wrong_answer_rate": "<= 0.05 (issue 9)",
             "selective_accuracy": ">= 0.95 (issue 9)", "idk_error_rate": "<= 0.05 (issue 9)",
             "idk_recall": "", "coverage": "", "aurc": "lower is better", "pass_bias": "calibrated",
             "read_probe_accuracy": ""},
    "style": {"length_ratio": ">= 10", "verbose_longer_rate": "", "terse_accuracy": "", "verbose_accuracy": "",
              "terse_median_tokens": "", "verbose_median_tokens": "", "untokened_median_tokens": "= base",
              "base_untokened_median_tokens": "reference"},
    "lexicon": {"tokens_per_byte": "", "base_tokens_per_byte": "reference",
                "tokens_per_byte_reduction": ">= 0.15", "bits_per_byte": "<= base", "base_bits_per_byte": "reference",
                "generated_new_token_rate": "", "continuation_new_token_rate": "",
                "test_text_new_token_rate": "reference"},
}
PLOTS = ("loss.png", "pass_sweep.png", "style_lengths.png", "row_drift.png")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def collect(run: Path) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "log_history.json").read_text()) if (run / "log_history.json").is_file() else []
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    out: dict[str, Any] = {"run": str(run), "metrics": metrics, "train_seconds": summary.get("train_runtime"),
                           "steps": summary.get("step")}
    train = _read_jsonl(run / "data" / "train.jsonl")
    if metrics.get("task") == "pass" and train:
        out["train_rows"] = dict(Counter(r.get("kind", "?") for r in train))
        labelled = [r for r in train if r.get("know_check")]
        if labelled:
            out["know_check"] = {"answerable": len(labelled),
                                 "base_right": sum(r["know_check"] == "right" for r in labelled),
                                 "base_right_by_relation": {
                                     rel: f"{sum(r['know_check'] == 'right' for r in rows)}/{len(rows)}"
                                     for rel in sorted({r['relation'] for r in labelled})
                                     for rows in [[r for r in labelled if r['relation'] == rel]]}}
    if (run / "data" / "lexicon.txt").is_file():
        words = [w for w in (run / "data" / "lexicon.txt").read_text().splitlines() if w and not w.startswith("#")]
        out["lexicon_words"] = len(words)
    return out


def markdown(task: str, runs: list[dict[str, Any]], names: list[str], title: str, commands: list[str],
             notes: list[str]) -> str:
    lines = [f"# {title}", ""] + [line for note in notes for line in (note, "")]
    for name, run, command in zip(names, runs, commands):
        seconds = run.get("train_seconds")
        took = f", trained in {seconds / 60:.1f} min ({run.get('steps')} steps)" if seconds else ""
        lines.append(f"- **{name}**: `{command or run['run']}`{took}")
    lines += ["", "| metric | " + " | ".join(names) + " | target |", "|---" + "|---:" * len(names) + "|---|"]
    keys = list(TARGETS.get(task, {}))
    keys += sorted({k for r in runs for k, v in r["metrics"].items() if isinstance(v, (int, float)) and k not in keys})
    for key in keys:
        values = [r["metrics"].get(key) for r in runs]
        if all(v is None for v in values):
            continue
        lines.append(f"| {key} | " + " | ".join(fmt(v) for v in values) + f" | {TARGETS.get(task, {}).get(key, '')} |")
    first = runs[0]
    m = first["metrics"]
    if m.get("pass_recall_by_kind"):
        lines += ["", f"PASS recall by corruption kind ({names[0]}): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(m["pass_recall_by_kind"].items()))]
    if first.get("know_check"):
        kc = first["know_check"]
        lines += ["", f"Know-check labelling ({names[0]}): the base model answered {kc['base_right']} of "
                  f"{kc['answerable']} answerable training questions right; by relation: "
                  + ", ".join(f"{k} {v}" for k, v in kc["base_right_by_relation"].items())]
    for name, run in zip(names, runs):
        if not run["metrics"].get("sweep"):
            continue
        lines += ["", f"Logit-bias sweep on the test split ({name}):", "",
                  "| bias | PASS recall | false-PASS | coverage | selective accuracy | wrong answers |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for row in run["metrics"]["sweep"]:
            lines.append(f"| {row['bias']:+g} | " + " | ".join(fmt(row.get(k)) for k in (
                "pass_recall", "false_pass_rate", "coverage", "selective_accuracy", "wrong_answer_rate")) + " |")
    if isinstance(m.get("read_probe"), dict):
        parts = [f"{k}: accuracy {v['accuracy']:.2f}, on the <PASS> half {v['pass_accuracy']:.2f}, "
                 f"whole pairs {v['pair_accuracy']:.2f}" for k, v in m["read_probe"].items() if isinstance(v, dict)]
        lines += ["", f"READ probe ({names[0]}): " + "; ".join(parts)]
    if m.get("examples"):
        lines += ["", f"Examples ({names[0]}, held-out):", ""]
        for ex in m["examples"][:8]:
            lines.append("- " + json.dumps(ex, ensure_ascii=False)[:400])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path, help="output prefix, e.g. benchmarks/results/pass_demo")
    parser.add_argument("--names", nargs="*", help="column names (default: run directory names)")
    parser.add_argument("--command", action="append", default=[], help="the command each run came from (repeat)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--note", action="append", default=[], help="a paragraph to add under the title (repeat)")
    args = parser.parse_args()
    runs = [collect(r) for r in args.runs]
    task = runs[0]["metrics"]["task"]
    names = args.names or [r.name for r in args.runs]
    commands = args.command + [""] * (len(runs) - len(args.command))
    title = args.title or f"`tokengraft demo {task}`: held-out results (built-in model, CPU)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"task": task, "names": names, "commands": commands,
                                                          "notes": args.note, "runs": runs}, indent=2))
    args.out.with_suffix(".md").write_text(markdown(task, runs, names, title, commands, args.note))
    for plot in PLOTS:
        if (args.runs[0] / plot).is_file():
            shutil.copy2(args.runs[0] / plot, args.out.parent / f"{args.out.name}_{plot}")
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
