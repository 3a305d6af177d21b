"""`tokengraft compare A.yaml B.yaml ...`: the same data, split and seed, side by side.

Each recipe is trained in turn into ``OUT/<name>/``. Data comes from the FIRST
recipe's generated (or given) splits and is handed to every other recipe as
files, with the first recipe's seed, so differences come from the methods, not
from the data. The table (markdown + JSON) has trainable parameters, peak memory
(process peak RSS growth during training, measured per run in a fresh
subprocess so runs do not inherit each other's peak), time per step, final eval
loss and the task's metrics; a PNG overlays the eval-loss curves.

``own_data`` (``--own-data``) compares DATA recipes instead: every recipe generates
its own splits from its own options and seed (e.g. one adds replay rows to training).
Whether the held-out splits then match is the generators' business (the pass task's
optional extras leave every other row as it was for a seed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tokengraft import api
from tokengraft.config import Recipe, load_recipe
from tokengraft.errors import TokengraftError
from tokengraft.tasks import get_task

# Run in a fresh interpreter: trains one recipe and prints a JSON line with its measurements.
_CHILD = r"""
import json, resource, sys, time
from tokengraft.config import load_recipe
from tokengraft.api import train
from tokengraft.threads import configure_threads
configure_threads()
recipe = load_recipe(sys.argv[1], json.loads(sys.argv[3]))
result = train(recipe, sys.argv[2], quiet=True, overwrite=sys.argv[4] == "overwrite")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from tokengraft.core.guard import audit
losses = [h["eval_loss"] for h in result.log_history if "eval_loss" in h]
print("TOKENGRAFT_COMPARE " + json.dumps({
    "trainable": audit(result.graft).trainable, "steps": result.steps, "train_seconds": result.train_seconds,
    "peak_rss_mb": peak / 1024,
    "final_eval_loss": losses[-1] if losses else None,
    "eval_curve": [(h["step"], h["eval_loss"]) for h in result.log_history if "eval_loss" in h]}))
"""


def _child(recipe_path: Path, out: Path, overrides: list[str], overwrite: bool) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(recipe_path), str(out), json.dumps(overrides),
                           "overwrite" if overwrite else "keep"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("TOKENGRAFT_COMPARE "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise TokengraftError(f"compare: training {recipe_path} failed: {tail}")


def compare(recipes: list[str], output: str | Path, *, evaluate: bool = True, eval_limit: int | None = None,
            overrides: list[str] | None = None, overwrite: bool = False, own_data: bool = False) -> dict[str, Any]:
    if len(recipes) < 2:
        raise TokengraftError("compare needs at least two recipes")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    loaded = [load_recipe(r, overrides or []) for r in recipes]
    tasks = {r.task for r in loaded}
    if len(tasks) != 1:
        raise TokengraftError(f"compare needs recipes of one task, got {sorted(tasks)}")
    names = [Path(r).stem for r in recipes]
    if len(set(names)) != len(names):
        raise TokengraftError("compare: recipe file names must differ (they name the run directories)")
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    shared: list[str] = []
    for index, (path, recipe, name) in enumerate(zip(recipes, loaded, names)):
        run = out / name
        print(f"tokengraft compare: [{index + 1}/{len(recipes)}] {name}", file=sys.stderr)
        measured = _child(Path(path), run, list(overrides or []) + shared, overwrite)
        if not own_data:
            if index == 0:
                shared = _shared_data_overrides(run, loaded[0])
            else:
                _copy_eval_splits(out / names[0] / "data", run / "data")
        row = {"recipe": name, **measured,
               "seconds_per_step": measured["train_seconds"] / max(1, measured["steps"])}
        metric_keys = get_task(recipe.task).metric_keys
        if evaluate and metric_keys:
            metrics = api.evaluate(run, limit=eval_limit)
            row.update({k: metrics.get(k) for k in metric_keys})
        rows.append(row)
        # After every arm, not only at the end: a comparison of hours that stops early keeps what it measured.
        result = {"task": loaded[0].task, "recipes": recipes, "own_data": own_data, "rows": rows}
        (out / "compare.json").write_text(json.dumps(result, indent=2))
        (out / "compare.md").write_text(markdown_table(result))
    _plot_curves(rows, out / "compare_eval_loss.png")
    return result


def _shared_data_overrides(first_run: Path, first: Recipe) -> list[str]:
    """Point later recipes at the first run's data files and seed (same data, same split)."""
    data = first_run / "data"
    extra = [f"seed={first.seed}"]
    if (data / "train.jsonl").is_file():
        extra += [f"data.train={data / 'train.jsonl'}", "data.generate=false"]
        if (data / "validation.jsonl").is_file():
            extra.append(f"data.validation={data / 'validation.jsonl'}")
    return extra


def _copy_eval_splits(source: Path, target: Path) -> None:
    """Later runs read their data from the first run's files; give them its held-out splits too."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.jsonl"):
        if not (target / path.name).exists():
            shutil.copy2(path, target / path.name)


def markdown_table(result: dict[str, Any]) -> str:
    keys = ["trainable", "peak_rss_mb", "seconds_per_step", "final_eval_loss"] + list(get_task(result["task"]).metric_keys)
    lines = ["| recipe | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in result["rows"]:
        cells = []
        for key in keys:
            value = row.get(key)
            cells.append("n/a" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:.4g}"))
        lines.append(f"| {row['recipe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r.get("eval_curve") for r in rows):
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for row in rows:
        if row.get("eval_curve"):
            ax.plot(*zip(*row["eval_curve"]), marker="o", label=row["recipe"])
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
