"""Where `tokengraft demo pass` spends its time: two runs, cold then warm answers cache.

    python benchmarks/demo_timing.py                      # the default demo (model already cached)
    python benchmarks/demo_timing.py --fetch              # first run also fetches + converts the model

Run 1 starts with an empty answers cache (a fresh ``TOKENGRAFT_ANSWER_CACHE`` inside
``--workdir``), so the base model answers every question it needs; run 2 repeats the
same command with that cache warm. The built-in model comes from the usual tokengraft
cache (fetched once before the timed runs if it is missing), so run 1 is "a warm
install with the model cached"; ``--fetch`` uses a fresh ``TOKENGRAFT_CACHE`` instead,
so run 1 includes downloading and converting the model. Each run is a fresh process
(`python -m tokengraft demo ...`): the process wall time includes interpreter start and
imports, which the demo's own phase table (``phases.json``) does not see.

Writes ``OUT.json`` and ``OUT.md`` (default ``benchmarks/results/demo_timing``): the
phase table of both runs side by side, the process wall times, the threads torch used,
the load average before each run, and the held-out metrics of both runs beside the
demo's targets. Nothing here computes a metric or a time by itself beyond the process
wall clock: the phases are what the demo measured. Read the seconds as this machine's,
at its load at the time (the load average is recorded for that reason).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGETS = {"pass_recall": (">=", 0.90), "false_pass_rate": ("<=", 0.05)}
METRICS = ("pass_recall", "false_pass_rate", "clean_accuracy", "base_clean_accuracy", "pass_bias", "aurc")
TIME_TARGETS = {"cold": 15 * 60, "warm": 10 * 60}  # issue 18, warm install with the model cached


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} s" if value < 60 else f"{int(value // 60)} min {value % 60:04.1f} s"


def _note(detail: dict[str, Any]) -> str:
    if "prompts" in detail:
        return f"{detail['generated']} generated, {detail['cached']} cached"
    if "steps" in detail:
        extra = detail.get("validation_loss_seconds")
        return f"{detail['steps']} steps" + (f"; validation loss {extra:.0f} s" if extra else "")
    return ""


def run_demo(args: argparse.Namespace, name: str, env: dict[str, str]) -> dict[str, Any]:
    """One `tokengraft demo` process; returns its phases, metrics and process wall time."""
    out = args.workdir / name
    # The overrides follow the task directly (argparse reads them with it), the flags after them.
    command = [sys.executable, "-m", "tokengraft", "demo", args.task, *args.overrides, "--output", str(out)]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"demo_timing: {name}: {shlex.join(command)}", file=sys.stderr, flush=True)
    log_path = args.workdir / f"{name}.log"
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        raise SystemExit(f"demo_timing: {name} failed (exit {proc.returncode}); see {log_path}:\n" + "\n".join(tail))
    phases = json.loads((out / "phases.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {"name": name, "command": shlex.join(command), "process_wall_seconds": wall,
            "load_average_before": list(load) if load else None, "phases": phases,
            "metrics": {k: metrics.get(k) for k in METRICS}, "log": str(log_path)}


def _keys(phases: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(name, depth, n-th occurrence) per phase: rows that line up across runs."""
    seen: dict[tuple[str, int], int] = {}
    keys = []
    for p in phases:
        k = (p["name"], p["depth"])
        seen[k] = seen.get(k, 0) + 1
        keys.append((p["name"], p["depth"], seen[k]))
    return keys


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [f"# `{runs[0]['phases']['command']}`: where the time goes", "",
             f"```\n{result['command']}\n```", ""]
    lines += [f"- machine: {result['machine']}",
              f"- run 1 ({runs[0]['name']}): {result['run_notes'][0]}",
              f"- run 2 ({runs[1]['name']}): {result['run_notes'][1]}",
              f"- torch threads: {runs[0]['phases'].get('threads') or 'not recorded'}",
              "- load average (1, 5, 15 min) before each run: "
              + "; ".join(", ".join(f"{x:.2f}" for x in r["load_average_before"]) if r["load_average_before"] else "n/a"
                          for r in runs),
              "- a phase's time includes the phases indented under it; 'other' is the demo's own work between "
              "phases (printing, imports on first use); the process wall time adds interpreter start and imports", ""]
    lines += [f"| phase | {runs[0]['name']} | {runs[1]['name']} | notes ({runs[0]['name']} / {runs[1]['name']}) |",
              "|---|---:|---:|---|"]
    tables = [{k: p for k, p in zip(_keys(r["phases"]["phases"]), r["phases"]["phases"])} for r in runs]
    order = list(tables[0]) + [k for k in tables[1] if k not in tables[0]]
    for key in order:
        name, depth, _ = key
        cells = [tables[i].get(key) for i in range(2)]
        notes = " / ".join(_note((c or {}).get("detail") or {}) for c in cells).strip(" /")
        label = "&nbsp;&nbsp;" * depth + name
        lines.append(f"| {label} | " + " | ".join(_seconds(c["seconds"]) if c else "—" for c in cells) + f" | {notes} |")
    for label, pick in (("other (between phases)", lambda r: r["phases"]["total_seconds"] - sum(
            p["seconds"] for p in r["phases"]["phases"] if p["depth"] == 0)),
                        ("**total, in the demo**", lambda r: r["phases"]["total_seconds"]),
                        ("**process wall time**", lambda r: r["process_wall_seconds"])):
        lines.append(f"| {label} | " + " | ".join(_seconds(pick(r)) for r in runs) + " | |")
    targets = result.get("time_targets") or {}
    if targets:
        lines += ["", "Time targets (issue 18, quiet 2-core machine, model cached): "
                  + "; ".join(f"{runs[i]['name']} <= {_seconds(targets[k])}: "
                              f"{'met' if runs[i]['process_wall_seconds'] <= targets[k] else 'NOT met'} "
                              f"({_seconds(runs[i]['process_wall_seconds'])})"
                              for i, k in enumerate(("cold", "warm")))]
    lines += ["", "Held-out test split (the demo's quality targets):", "",
              f"| metric | {runs[0]['name']} | {runs[1]['name']} | target |", "|---|---:|---:|---|"]
    for key in METRICS:
        values = [r["metrics"].get(key) for r in runs]
        if key == "clean_accuracy":
            base = runs[0]["metrics"].get("base_clean_accuracy")
            target = f">= base ({base:.3f})" if base is not None else ">= base"
            ok = [v is not None and base is not None and v >= base for v in values]
        elif key in TARGETS:
            op, bound = TARGETS[key]
            target = f"{op} {bound}"
            ok = [v is not None and (v >= bound if op == ">=" else v <= bound) for v in values]
        else:
            target, ok = "", [None, None]
        cells = [("n/a" if v is None else f"{v:.3f}") + ("" if k is None else (" ✓" if k else " ✗"))
                 for v, k in zip(values, ok)]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {target} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="pass", help="which demo (default pass)")
    parser.add_argument("--fetch", action="store_true",
                        help="a fresh TOKENGRAFT_CACHE: run 1 also downloads and converts the built-in model")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/demo-timing"),
                        help="where the two run directories, logs and the fresh answers cache go (must not exist)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "demo_timing",
                        help="output prefix (.json and .md are added)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides passed to the demo")
    args = parser.parse_args()
    if args.workdir.exists():
        raise SystemExit(f"demo_timing: {args.workdir} exists; remove it or pass another --workdir "
                         "(the runs must start from an empty answers cache)")
    args.workdir.mkdir(parents=True)
    env = dict(os.environ, TOKENGRAFT_ANSWER_CACHE=str(args.workdir / "answers"))
    if args.fetch:
        env["TOKENGRAFT_CACHE"] = str(args.workdir / "cache")
        notes = ["fresh tokengraft cache: fetches and converts the built-in model, empty answers cache",
                 "the same command again: model and answers cached"]
    else:
        subprocess.run([sys.executable, "-c", "from tokengraft.builtin import ensure_builtin; ensure_builtin()"],
                       env=env, check=True)  # a no-op when the model is cached: the timed runs never fetch
        notes = ["model cached, empty answers cache (a warm install's first demo)",
                 "the same command again: answers cached"]
    runs = [run_demo(args, "cold", env), run_demo(args, "warm", env)]
    command = "python benchmarks/demo_timing.py" + (" --fetch" if args.fetch else "")
    command += "".join(f" {shlex.quote(o)}" for o in args.overrides)
    threads = os.environ.get("TOKENGRAFT_THREADS")
    if threads:
        command = f"TOKENGRAFT_THREADS={threads} {command}"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {"command": command, "task": args.task, "fetch": args.fetch,
              "machine": f"{platform.machine()}, {usable} usable cores, Python {platform.python_version()}",
              "run_notes": notes, "runs": runs,
              "time_targets": TIME_TARGETS if not args.fetch and args.task == "pass" else {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
