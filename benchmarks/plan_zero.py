"""Check `tokengraft plan --devices 2 --zero 2|3` against measured peak memory per rank (CPU, 2 processes).

    TOKENGRAFT_CACHE=/tmp/tgcache HF_HUB_OFFLINE=1 python benchmarks/plan_zero.py
    (options: --model builtin|small --only ddp,zero2,zero3 --steps 3 --workdir DIR --no-write)

Each configuration trains a few optimizer steps through ``tokengraft.api.train`` in two
processes started by ``accelerate launch --multi_gpu --num_processes 2`` (no GPU: gloo on
CPU), with the recipe's ``distributed`` section set to DDP, DeepSpeed ZeRO-2 or ZeRO-3.
The plan for the same recipe is made in this process (``plan(recipe, device="cpu",
devices=2)``).

What is measured per rank, and why this way
-------------------------------------------
Everything ``benchmarks/plan_vs_measured.py`` explains (``MALLOC_MMAP_THRESHOLD_=65536``
so freed tensors leave RSS at once; one thread; imports before the baseline; the model
load observed by wrapping the LM recipe's ``load_model`` inside the child only) holds,
with one difference. Under ZeRO-3 every process first loads the whole base and DeepSpeed
partitions it when the Trainer starts, so the loaded model is not a floor to measure
growth from. The quantity is therefore the **training peak counted from before the model
was loaded**: ``VmHWM`` reset when training begins (after DeepSpeed's init) and read at
every step boundary, minus ``VmRSS`` before ``load_model``. Its planned counterpart is
``Plan.total`` (per device). The start-up peak (load + engine init, the whole base on
every rank) is reported beside it, against the plan's loaded weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_token_rows import process_memory
from plan_vs_measured import LORA, bench_parser, child_env, mib, offline_env, recipe_dict, write_data, write_small_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEVICES = 2
CONFIGS: dict[str, dict[str, Any]] = {
    "ddp": {"engine": "ddp"},
    "zero2": {"engine": "deepspeed", "zero_stage": 2},
    "zero3": {"engine": "deepspeed", "zero_stage": 3},
}


# ----------------------------------------------------------------------------- the child (one rank)


def measure(recipe_path: Path, out_prefix: Path) -> None:
    """One rank: train the recipe and record its RSS before load, after load, at train begin and its peaks."""
    import gc

    import torch

    torch.set_num_threads(1)
    import deepspeed  # noqa: F401  (imported before the baseline: library code is not training memory)
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import tokengraft.training.lm as lm_recipe
    from tokengraft.api import train
    from tokengraft.config import load_recipe
    from transformers import TrainerCallback

    rank = int(os.environ.get("RANK", "0"))
    record: dict[str, Any] = {"rank": rank, "pre_load_rss": process_memory()["VmRSS"], "segments": []}
    original_load = lm_recipe.load_model

    def load_and_mark(*args: Any, **kwargs: Any):
        model, tokenizer = original_load(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():  # fault in every page: the loaded model is resident
                p.sum()
        gc.collect()
        record["loaded_rss"] = process_memory()["VmRSS"]
        Path("/proc/self/clear_refs").write_text("5")
        return model, tokenizer

    class Probe(TrainerCallback):
        """Reads and resets the high-water mark at every step boundary, from the start of training on."""

        def _segment(self, name: str) -> None:
            now = process_memory()
            record["segments"].append({"segment": name, "hwm": now["VmHWM"], "rss_after": now["VmRSS"]})
            Path("/proc/self/clear_refs").write_text("5")

        def on_train_begin(self, args, state, control, **kwargs):
            self._segment("start-up")  # load, graft, DeepSpeed init (the whole base, then its partition)
            record["train_begin_rss"] = process_memory()["VmRSS"]

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._segment("forward+backward")

        def on_step_end(self, args, state, control, **kwargs):
            self._segment("step")

        def on_train_end(self, args, state, control, **kwargs):
            self._segment("end")

    lm_recipe.load_model = load_and_mark
    recipe = load_recipe(recipe_path)
    started = time.perf_counter()
    train(recipe, recipe_path.with_suffix(".run"), quiet=True, callbacks=[Probe()])
    record["seconds"] = round(time.perf_counter() - started, 1)
    training = [s["hwm"] for s in record["segments"] if s["segment"] != "start-up"]
    record["training_peak"] = max(training) - record["pre_load_rss"]
    record["startup_peak"] = record["segments"][0]["hwm"] - record["pre_load_rss"]
    record["loaded_model"] = record["loaded_rss"] - record["pre_load_rss"]
    Path(f"{out_prefix}.rank{rank}.json").write_text(json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- the parent


def launch(recipe_path: Path, out_prefix: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = child_env()
    env.update({"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(DEVICES),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           __file__, "--measure", str(recipe_path), "--out", str(out_prefix)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"measurement of {recipe_path.name} failed")


def run(model: str, names: list[str], steps: int, workdir: Path) -> list[dict[str, Any]]:
    import yaml

    from tokengraft.config import load_recipe
    from tokengraft.planner import plan

    workdir.mkdir(parents=True, exist_ok=True)
    data = write_data(workdir / "train.jsonl")
    spec = "smollm2-135m-instruct" if model == "builtin" else str(write_small_model(workdir / "small-qwen2"))
    results = []
    for name in names:
        raw = recipe_dict(spec, data, {"methods": [LORA]}, steps)
        raw["distributed"] = CONFIGS[name]
        recipe_path = workdir / f"{model}-{name}.yaml"
        recipe_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        planned = plan(load_recipe(recipe_path), device="cpu", devices=DEVICES)
        print(f"[{name}] planned {mib(planned.total)} MiB per device; measuring ...", flush=True)
        out_prefix = workdir / f"{model}-{name}.measured"
        launch(recipe_path, out_prefix)
        ranks = [json.loads(Path(f"{out_prefix}.rank{r}.json").read_text()) for r in range(DEVICES)]
        measured = max(r["training_peak"] for r in ranks)
        row = {
            "name": name, "model": model, "devices": DEVICES, "sharding": planned.assumptions["sharding"],
            "planned_total_mib": mib(planned.total), "measured_training_peak_mib": mib(measured),
            "error_pct": round(100 * (planned.total - measured) / measured, 1),
            "planned_peak_phase": planned.peak_phase,
            "planned_items_mib": {i.key: mib(i.bytes) for i in planned.items},
            "planned_loaded_weights_mib": mib(planned.loaded_weights),
            "measured_per_rank": [{"rank": r["rank"], "training_peak_mib": mib(r["training_peak"]),
                                   "startup_peak_mib": mib(r["startup_peak"]), "loaded_model_mib": mib(r["loaded_model"]),
                                   "train_begin_mib": mib(r["train_begin_rss"] - r["pre_load_rss"]),
                                   "segments_mib": [[s["segment"], mib(s["hwm"] - r["pre_load_rss"])]
                                                    for s in r["segments"]],
                                   "seconds": r["seconds"]} for r in ranks],
        }
        print(f"[{name}] measured {row['measured_training_peak_mib']} MiB (worst rank), planned "
              f"{row['planned_total_mib']} MiB ({row['error_pct']:+.1f}%)", flush=True)
        results.append(row)
    return results


def write_results(results: list[dict[str, Any]], command: str, steps: int, model: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "steps_per_config": steps, "model": model,
               "quantity": "per-rank training peak RSS counted from before the model load (VmHWM reset at train "
                           "begin, minus VmRSS before load_model), worst rank; planned = Plan.total per device",
               "results": results}
    (RESULTS / "plan_zero.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# `tokengraft plan --devices 2` vs measured per-rank peak memory (CPU, DDP / ZeRO-2 / ZeRO-3)", "",
        f"Produced by: `{command}`", "",
        f"Each configuration: {steps} optimizer steps of `tokengraft.api.train` on {DEVICES} processes "
        "(`accelerate launch --multi_gpu`, gloo, no GPU), model "
        f"{'SmolLM2-135M (built-in)' if model == 'builtin' else 'small random qwen2'}, rows + LoRA r=16, "
        "batch 4 per rank, fp32, one thread. Measured = the worst rank's training peak RSS counted from before "
        "the model load; planned = `Plan.total` per device. Start-up = load + engine init (the whole base on "
        "every rank before ZeRO-3 partitions it).", "",
        "| config | planned MiB | measured MiB (worst rank) | error | start-up peak MiB (rank 0) | loaded weights (plan) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['planned_total_mib']} | {r['measured_training_peak_mib']} | "
                     f"{r['error_pct']:+.1f}% | {r['measured_per_rank'][0]['startup_peak_mib']} | "
                     f"{r['planned_loaded_weights_mib']} |")
    (RESULTS / "plan_zero.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = bench_parser(__doc__, "tokengraft-plan-zero")
    parser.add_argument("--model", choices=["builtin", "small"], default="builtin")
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.out)
        return
    env = offline_env()
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config {unknown[0]!r}; use {', '.join(CONFIGS)}")
    results = run(args.model, names, args.steps, args.workdir)
    if not args.no_write:
        command = f"{env} python benchmarks/plan_zero.py" + (
            f" --model {args.model}" if args.model != "builtin" else "") + (
            f" --only {args.only}" if args.only else "") + (f" --steps {args.steps}" if args.steps != 3 else "")
        write_results(results, command, args.steps, args.model)


if __name__ == "__main__":
    main()
