"""Turn a `tokengraft compare` output directory into committed results (markdown + JSON + PNG).

    python benchmarks/compare_results.py /tmp/cmp-cls benchmarks/results/compare_cls \
        --command "tokengraft compare ... --output /tmp/cmp-cls" [--note "..."]

The markdown starts with the exact command, then `compare`'s own table, then the
per-run task details `compare` leaves out of its table (per-class accuracy and
accuracy by corruption kind for classification; <PASS> recall by kind, the calibrated
bias and the READ probe for pass; answer accuracy per relation for style), all read from each run's
``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any, NoReturn

from tokengraft.errors import TokengraftError


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + \
        ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]


def run_metrics(out: Path, recipe: str) -> dict[str, Any]:
    path = out / recipe / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _kind_counts(out: Path, first: str) -> dict[str, int]:
    """Test rows per ``kind`` (the first run's test split, which every run was scored on)."""
    path = out / first / "data" / "test.jsonl"
    counts: dict[str, int] = {}
    for line in (path.read_text().splitlines() if path.is_file() else []):
        kind = json.loads(line).get("kind") if line.strip() else None
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def details(task: str, metrics: dict[str, dict[str, Any]], counts: dict[str, int]) -> list[str]:
    lines: list[str] = []
    names = list(metrics)

    def head(kind: str) -> str:
        return f"{kind} (n={counts[kind]})" if kind in counts else kind
    if task == "classification":
        classes = sorted({c for m in metrics.values() for c in m.get("per_class", {})})
        lines += ["", "Per-class accuracy (recall of each true class) on the test split:", ""]
        lines += table(["recipe", *classes, "majority baseline", "test rows"],
                        [[n, *[metrics[n].get("per_class", {}).get(c, {}).get("accuracy") for c in classes],
                          metrics[n].get("majority_baseline"), metrics[n].get("test_rows")] for n in names])
        kinds = sorted({k for m in metrics.values() for k in m.get("accuracy_by_kind", {})})
        if kinds:
            lines += ["", "Accuracy by row kind (answerable, and each corruption; `shuffled_words` and `truncated` "
                      "never occur in training):", ""]
            lines += table(["recipe", *map(head, kinds)], [[n, *[metrics[n].get("accuracy_by_kind", {}).get(k) for k in kinds]]
                                                 for n in names])
    elif task == "style":
        relations = sorted({r for m in metrics.values() for r in m.get("accuracy_by_relation", {})})
        lines += ["", "Answer accuracy per relation, terse / verbose / base model on the same held-out questions "
                  "(the base model asked without a style token, same greedy decoding):", ""]
        sizes: dict[str, int] = {}
        for m in metrics.values():
            for relation, cell in m.get("accuracy_by_relation", {}).items():
                sizes.setdefault(relation, cell["n"])
        header = ["recipe"] + [f"{r} (n={sizes[r]})" for r in relations]
        rows = []
        for n in names:
            by = metrics[n].get("accuracy_by_relation", {})
            rows.append([n] + ["/".join(fmt(by.get(r, {}).get(k)) for k in ("terse", "verbose", "base")) for r in relations])
        lines += table(header, rows)
    elif task == "pass":
        kinds = sorted({k for m in metrics.values() for k in m.get("pass_recall_by_kind", {})})
        lines += ["", "Calibrated <PASS> bias, READ probe and <PASS> recall by corruption kind "
                  "(`shuffled_words` and `truncated` never occur in training):", ""]
        lines += table(["recipe", "pass_bias", "base_clean_accuracy", "read_probe_accuracy", *map(head, kinds)],
                        [[n, metrics[n].get("pass_bias"), metrics[n].get("base_clean_accuracy"),
                          metrics[n].get("read_probe_accuracy"),
                          *[metrics[n].get("pass_recall_by_kind", {}).get(k) for k in kinds]] for n in names])
    return lines


def run_row(run: Path, metric_keys: tuple[str, ...]) -> dict[str, Any]:
    """compare's row for an arm measured from its run directory alone (trained outside `tokengraft compare`, or by a
    compare that was stopped before it wrote compare.json): steps and training time from graft.json, eval losses from
    log_history.json, trainable = the elements of the saved row and method tensors; peak RSS was not measured."""
    from safetensors import safe_open

    meta = json.loads((run / "graft.json").read_text())
    history = json.loads((run / "log_history.json").read_text())
    trainable = 0
    for name in ("rows.safetensors", "methods.safetensors"):
        if (run / name).is_file():
            with safe_open(str(run / name), "np") as handle:
                trainable += sum(handle.get_tensor(key).size for key in handle.keys() if key != "ids")
    curve = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    steps = meta.get("steps") or 0
    metrics = run_metrics(run.parent, run.name)
    return {"recipe": run.name, "trainable": trainable, "steps": steps, "train_seconds": meta.get("train_seconds"),
            "peak_rss_mb": None, "final_eval_loss": curve[-1][1] if curve else None, "eval_curve": curve,
            "seconds_per_step": (meta.get("train_seconds") or 0.0) / max(1, steps),
            **{k: metrics.get(k) for k in metric_keys}}


def complete_compare(out: Path, names: list[str], task: str) -> None:
    """Rewrite compare.json / compare.md for the arms ``names`` (in order): compare's own rows where it wrote them,
    `run_row` for the others (so the table says which figures compare did not measure: peak RSS n/a)."""
    from tokengraft.cli.compare import markdown_table
    from tokengraft.tasks import get_task

    path = out / "compare.json"
    measured = {row["recipe"]: row for row in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    result = {"task": task, "recipes": names, "rows": [measured.get(n) or run_row(out / n, get_task(task).metric_keys)
                                                        for n in names]}
    path.write_text(json.dumps(result, indent=2))
    (out / "compare.md").write_text(markdown_table(result))


def write_results(out: Path, prefix: Path, command: str, notes: list[str],
                  extra: Callable[[dict[str, dict[str, Any]]], list[str]] | None = None) -> dict[str, Any]:
    """``prefix``.md / .json (+ the eval-loss PNG) from the compare directory ``out``; ``extra`` adds markdown lines
    computed from the runs' metrics (a benchmark's own tables). Returns what the JSON holds."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    result = json.loads((out / "compare.json").read_text())
    names = [row["recipe"] for row in result["rows"]]
    metrics = {n: run_metrics(out, n) for n in names}
    lines = [f"# tokengraft compare: {result['task']}", "", "```", command, "```", ""]
    lines += [f"- {note}" for note in notes]
    lines += [f"- machine: {platform.machine()}, Python {platform.python_version()}; CPU only", ""]
    lines += (out / "compare.md").read_text().rstrip("\n").splitlines()
    lines += details(result["task"], metrics, _kind_counts(out, names[0]))
    lines += extra(metrics) if extra is not None else []
    curves = out / "compare_eval_loss.png"  # only `tokengraft compare` draws it; runs trained alone have none
    if curves.is_file():
        shutil.copy2(curves, prefix.parent / f"{prefix.name}_eval_loss.png")
        lines += ["", f"Eval-loss curves: `{prefix.name}_eval_loss.png`.", ""]
    prefix.with_suffix(".md").write_text("\n".join(lines))
    slim = {n: {k: v for k, v in m.items() if k not in ("examples", "sweep")} for n, m in metrics.items()}
    saved = {"command": command, "notes": notes, **result, "metrics": slim}
    prefix.with_suffix(".json").write_text(json.dumps(saved, indent=2))
    return saved


def save_report(prefix: str | Path, lines: list[str], result: dict[str, Any]) -> None:
    """A benchmark script's results: ``prefix``.md (the report's ``lines``) and ``prefix``.json (``result``)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".md").write_text("\n".join(lines))
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(f"wrote {prefix}.md and .json", file=sys.stderr)


def run_script(main: Callable[[], int]) -> NoReturn:
    """A benchmark script's entry point: a user mistake (TokengraftError) is one line on stderr and exit code 2."""
    try:
        raise SystemExit(main())
    except TokengraftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir")
    parser.add_argument("prefix", help="output path without extension, e.g. benchmarks/results/compare_cls")
    parser.add_argument("--command", required=True, help="the exact command that produced compare_dir")
    parser.add_argument("--note", action="append", default=[], help="a line of context (repeatable)")
    args = parser.parse_args()
    write_results(Path(args.compare_dir), Path(args.prefix), args.command, args.note)


if __name__ == "__main__":
    main()
