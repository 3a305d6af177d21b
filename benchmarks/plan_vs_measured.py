"""Check `tokengraft plan` against measured peak memory of real training steps on CPU.

    TOKENGRAFT_CACHE=/tmp/tgcache HF_HUB_OFFLINE=1 python benchmarks/plan_vs_measured.py
    (options: --only NAME[,NAME] --steps 3 --workdir DIR)

Each configuration trains for a few optimizer steps through the real entry point,
``tokengraft.api.train(recipe, run_dir)``, in a fresh Python process, and the plan
for the same recipe is made in this process (meta device, ``device=cpu``).

What is measured, and why this way
----------------------------------
The quantity is the **peak resident-set growth over the loaded model**: the kernel's
high-water mark (``VmHWM`` in /proc/self/status) minus ``VmRSS`` right after
``load_model`` returned, with the mark reset at that moment (``echo 5 >
/proc/self/clear_refs``). It covers everything training adds to a loaded model:
grafting (resized matrices, trainable copies), method weights, gradients, optimiser
state, activations, logits and the step temporaries, as well as Python/framework
growth. The planner's matching figure is ``Plan.growth_over_load`` (its total minus
the base weights as loaded).

Two process settings make RSS a faithful tensor-memory meter:
- ``MALLOC_MMAP_THRESHOLD_=65536``: glibc serves every allocation of 64 KiB or more
  with its own mmap and unmaps it on free. By default the threshold adapts upward
  (to 32 MiB) and freed tensors stay in malloc's heap, so RSS would report
  fragmentation history instead of live memory;
- ``OMP_NUM_THREADS=1`` / one torch thread: per-thread kernel buffers stay small and the
  shared 2-core machine is left alone.
Imports (torch, transformers, peft, matplotlib) happen before the baseline, and the
training loop is observed through a Trainer callback passed to ``train(..., callbacks=[...])``;
the model load is observed by wrapping the LM recipe's ``load_model``
(``tokengraft.training.lm.load_model``). The wrapper exists only inside the child process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_token_rows import process_memory  # VmRSS / VmHWM, the same measurement as the token-row benchmark

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
NEW_TOKENS = [f"<T{i}>" for i in range(8)]

# (name, model, recipe overrides). "builtin" = smollm2-135m-instruct; "small" = a random
# untied Qwen2-shaped model with a 295-token tokenizer and 32,768 rows (new ids land in
# the padding rows, the Qwen situation of reference 004).
LORA = {"type": "lora", "targets": "attention_mlp", "r": 16, "alpha": 32, "dropout": 0.05}
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("rows", "builtin", {"tokens.backend": "rows", "methods": []}),
    ("rows+lora", "builtin", {"tokens.backend": "rows", "methods": [LORA]}),
    ("rows+lora+ckpt", "builtin", {"tokens.backend": "rows", "methods": [LORA], "train.gradient_checkpointing": True}),
    ("rows+all-logits", "builtin", {"tokens.backend": "rows", "methods": [], "train.supervised_head_only": False}),
    ("rows+adapter+adafactor", "builtin", {"tokens.backend": "rows", "train.optimizer": "adafactor",
                                           "methods": [{"type": "adapter", "placement": "both"}]}),
    ("peft", "builtin", {"tokens.backend": "peft", "methods": []}),
    ("full", "builtin", {"tokens.backend": "full", "methods": []}),
    ("full+lora+ckpt", "builtin", {"tokens.backend": "full", "methods": [LORA], "train.gradient_checkpointing": True}),
    ("small rows+lora", "small", {"tokens.backend": "rows", "methods": [LORA]}),
    ("small peft+ckpt", "small", {"tokens.backend": "peft", "methods": [], "train.gradient_checkpointing": True}),
    ("small full", "small", {"tokens.backend": "full", "methods": []}),
]


# ----------------------------------------------------------------------------- inputs


def write_data(path: Path, seed: int = 0, rows: int = 16) -> Path:
    """Prompt/completion rows of similar length, every new token used in completions."""
    rng = random.Random(seed)
    # The same words in a new order every row: every example has (almost) the same length, so the
    # batches the Trainer draws are the batches the plan scans.
    words = ["the", "river", "stone", "light", "under", "over", "quiet", "market", "north", "garden", "letter",
             "window", "seven", "blue", "paper", "train", "winter", "coffee", "mountain", "signal"]
    lines = []
    for i in range(rows):
        prompt_words = words + words[:10]
        answer_words = words[:18]
        rng.shuffle(prompt_words)
        rng.shuffle(answer_words)
        prompt = " ".join(prompt_words)
        completion = " ".join(answer_words) + " " + " ".join(NEW_TOKENS[(i + k) % 8] for k in range(3))
        lines.append(json.dumps({"prompt": prompt, "completion": completion}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_small_model(directory: Path) -> Path:
    """A random untied qwen2 model (hidden 384, 4 blocks) with the test suite's tiny tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_tokenizer

    if (directory / "config.json").is_file():
        return directory
    config = AutoConfig.for_model("qwen2", vocab_size=32768, hidden_size=384, intermediate_size=1024,
                                  num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                                  tie_word_embeddings=False, max_position_embeddings=1024,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def recipe_dict(model: str, data: Path, overrides: dict[str, Any], steps: int) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "seed": 0, "task": "generic",
        "model": {"name": model, "dtype": "float32", "device": "cpu"},
        "tokens": {"add": NEW_TOKENS, "special": True, "init": "mean"},
        "methods": [],
        "data": {"train": str(data), "validation_fraction": 0.0, "max_length": 256},
        "train": {"max_steps": steps, "batch_size": 4, "grad_accum": 1, "logging_steps": 1, "save_steps": 0,
                  "eval_steps": 0, "warmup_ratio": 0.0, "lr": 1e-4, "token_lr": 1e-3},
    }
    for dotted, value in overrides.items():
        if dotted == "methods":
            recipe["methods"] = value
            continue
        section, key = dotted.split(".")
        recipe[section][key] = value
    return recipe


# ----------------------------------------------------------------------------- the child: measure


def measure(recipe_path: Path, out_path: Path) -> None:
    """Run the recipe's training steps and record peak RSS growth over the loaded model."""
    import gc

    import torch

    torch.set_num_threads(1)
    import matplotlib.pyplot  # noqa: F401  (train() plots the loss at the end; import cost is not training)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import tokengraft.training.lm as lm_recipe
    from tokengraft.api import train
    from tokengraft.config import load_recipe
    from transformers import TrainerCallback

    record: dict[str, Any] = {"pre_load_rss": process_memory()["VmRSS"], "steps": [], "segments": []}
    original_load = lm_recipe.load_model

    def load_and_mark(*args: Any, **kwargs: Any):
        model, tokenizer = original_load(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():  # fault in every page now, so the baseline holds the whole model
                p.sum()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        record["baseline_rss"] = process_memory()["VmRSS"]
        return model, tokenizer

    class Probe(TrainerCallback):
        """Splits each step at the optimizer: the high-water mark is read and reset at every
        boundary, so each segment's peak is known and the overall peak is their maximum."""

        def _segment(self, name: str) -> None:
            now = process_memory()
            record["segments"].append({"segment": name, "hwm": now["VmHWM"], "rss_after": now["VmRSS"]})
            Path("/proc/self/clear_refs").write_text("5")

        def on_train_begin(self, args, state, control, **kwargs):
            record["train_begin_rss"] = process_memory()["VmRSS"]
            self._segment("setup")

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._segment("forward+backward")

        def on_optimizer_step(self, args, state, control, **kwargs):
            self._segment("optimizer step")

        def on_step_end(self, args, state, control, **kwargs):
            record["steps"].append(process_memory())

        def on_train_end(self, args, state, control, **kwargs):
            self._segment("end")
            record["peak_hwm"] = max(s["hwm"] for s in record["segments"])

    lm_recipe.load_model = load_and_mark
    recipe = load_recipe(recipe_path)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        train(recipe, run_dir, quiet=True, callbacks=[Probe()])
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["growth"] = record["peak_hwm"] - record["baseline_rss"]
    record["loaded_model_rss"] = record["baseline_rss"] - record["pre_load_rss"]
    out_path.write_text(json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- the parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    env.setdefault("TOKENGRAFT_CACHE", "/tmp/tgcache")
    return env


def mib(n: float) -> float:
    return round(n / 1024**2, 1)


def run(names: list[str] | None, steps: int, workdir: Path, reuse: bool = False) -> list[dict[str, Any]]:
    import yaml

    from tokengraft.config import load_recipe
    from tokengraft.planner import plan

    workdir.mkdir(parents=True, exist_ok=True)
    data = write_data(workdir / "train.jsonl")
    small = write_small_model(workdir / "small-qwen2")
    results = []
    for name, model, overrides in CONFIGS:
        if names and name not in names:
            continue
        spec = "smollm2-135m-instruct" if model == "builtin" else str(small)
        recipe_path = workdir / f"{name.replace(' ', '_').replace('+', '_')}.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe_dict(spec, data, overrides, steps), sort_keys=False))
        planned = plan(load_recipe(recipe_path), device="cpu")
        out = recipe_path.with_suffix(".measured.json")
        if reuse and out.is_file():  # measurement and plan are independent: re-plan against a kept measurement
            print(f"[{name}] planned growth {mib(planned.growth_over_load)} MiB; reusing {out.name}", flush=True)
        else:
            print(f"[{name}] planned growth {mib(planned.growth_over_load)} MiB; measuring ...", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--measure", str(recipe_path), "--out", str(out)],
                                  env=child_env(), capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"measurement of {name} failed")
        measured = json.loads(out.read_text())
        error = (planned.growth_over_load - measured["growth"]) / measured["growth"]
        total_measured = measured["peak_hwm"] - measured["pre_load_rss"]
        row = {
            "name": name, "model": model, "overrides": overrides,
            "planned_growth_mib": mib(planned.growth_over_load), "measured_growth_mib": mib(measured["growth"]),
            "error_pct": round(100 * error, 1),
            "planned_total_mib": mib(planned.total), "measured_total_mib": mib(total_measured),
            "total_error_pct": round(100 * (planned.total - total_measured) / total_measured, 1),
            "planned_peak_phase": planned.peak_phase,
            "planned_items_mib": {i.key: mib(i.bytes) for i in planned.items},
            "planned_phases_mib": {k: mib(v) for k, v in planned.phases.items()},
            "workload": {k: planned.assumptions[k] for k in ("batch_size", "seq_len", "supervised_positions")},
            "measured": {"loaded_model_mib": mib(measured["loaded_model_rss"]),
                         "train_begin_growth_mib": mib(measured["train_begin_rss"] - measured["baseline_rss"]),
                         "step_rss_mib": [mib(s["VmRSS"] - measured["baseline_rss"]) for s in measured["steps"]],
                         "segment_peaks_mib": [[s["segment"], mib(s["hwm"] - measured["baseline_rss"])]
                                               for s in measured["segments"]],
                         "seconds": measured["seconds"]},
        }
        print(f"[{name}] measured {row['measured_growth_mib']} MiB, planned {row['planned_growth_mib']} MiB "
              f"({row['error_pct']:+.1f}%)", flush=True)
        results.append(row)
    return results


NOTES = """\
## Notes

- **Method.** Peak RSS growth is the right CPU quantity only when freed memory leaves RSS at
  once; with glibc's default (adaptive) mmap threshold the same `full` run read 644 MiB instead
  of 548 MiB, because freed tensors stayed in malloc's heap. Hence `MALLOC_MMAP_THRESHOLD_=65536`.
- **The first run missed the CPU resize cost.** The plans of that run for `peft`, `full` and
  `full+lora+ckpt` were -15.0 %, -11.3 % and -12.8 %: each missed ~108 MiB, one 49,160 x 576
  fp32 matrix. On CPU the weights are views of the memory-mapped safetensors file, so resizing
  the embedding allocates a new matrix while the old pages stay mapped and resident. The planner
  now counts the whole new matrix when it resizes and the weights are mapped (CPU, stored
  dtype); on a GPU only the added rows. The table re-plans against the same measurements
  (`--reuse-measurements`: same recipes, same data; no retraining).
- **Checkpointing.** `rows+lora+ckpt` is 13.5 MiB (-7.7 %) under the measurement: the step's
  transient measured 93.5 MiB against 82.2 MiB planned (30 block inputs 23.7 + logits 58.5).
  The missing ~11 MiB is not explained yet (a candidate: the logits gradient outliving the
  head's backward while the first recomputed block runs).
- **Framework.** About 14-26 MiB of RSS appears during a step that no tensor explains
  (allocator arenas, Trainer, autograd bookkeeping); the planner adds a constant 24 MiB on CPU.
- **Totals** count from before the model was loaded; the measured side also holds the
  tokenizer and the loader's leftovers (smollm2 loads as 548 MiB RSS against 513 MiB of
  weights), so totals read a few percent under.
"""


def write_results(results: list[dict[str, Any]], command: str, steps: int) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "steps_per_config": steps,
               "quantity": "peak RSS growth over the loaded model (VmHWM after clear_refs=5, minus VmRSS after load)",
               "results": results}
    (RESULTS / "plan_vs_measured.json").write_text(json.dumps(payload, indent=2) + "\n")
    within = sum(1 for r in results if abs(r["error_pct"]) <= 15)
    lines = [
        "# `tokengraft plan` vs measured peak memory (CPU)", "",
        f"Produced by: `{command}`" + (
            " (measurements from the first run, `python benchmarks/plan_vs_measured.py`; see the notes)"
            if "--reuse-measurements" in command else ""), "",
        f"Each configuration: {steps} optimizer steps of `tokengraft.api.train` in a fresh process, batch 4, "
        "fp32, one thread. Measured = peak RSS growth over the loaded model (VmHWM reset after load, "
        "glibc mmap threshold 64 KiB so freed tensors leave RSS); planned = `Plan.growth_over_load`. "
        "Total = the same peak counted from before the model was loaded, against `Plan.total`.", "",
        f"Within 15 %: {within} of {len(results)}.", "",
        "| config | batch x T (supervised) | planned MiB | measured MiB | error | planned total | measured total | error | peak phase |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        w = r["workload"]
        lines.append(f"| {r['name']} | {w['batch_size']} x {w['seq_len']} ({w['supervised_positions']}) | "
                     f"{r['planned_growth_mib']} | {r['measured_growth_mib']} | {r['error_pct']:+.1f}% | "
                     f"{r['planned_total_mib']} | {r['measured_total_mib']} | {r['total_error_pct']:+.1f}% | "
                     f"{r['planned_peak_phase']} |")
    (RESULTS / "plan_vs_measured.md").write_text("\n".join(lines) + "\n\n" + NOTES)


def bench_parser(doc: str, workdir: str) -> argparse.ArgumentParser:
    """The options every planner-vs-measured script shares (the child-process ones hidden)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--only", default=None, help="comma-separated config names")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / workdir)
    parser.add_argument("--no-write", action="store_true", help="print only; do not overwrite results/")
    return parser


def offline_env() -> str:
    """Run offline against a scratch model cache (unless set); returns the prefix that reproduces it."""
    os.environ.setdefault("TOKENGRAFT_CACHE", "/tmp/tgcache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return f"TOKENGRAFT_CACHE={os.environ['TOKENGRAFT_CACHE']} HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']}"


def main() -> None:
    parser = bench_parser(__doc__, "tokengraft-plan-bench")
    parser.add_argument("--reuse-measurements", action="store_true",
                        help="re-plan against measurements already in --workdir (no training; same recipes and data)")
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.out)
        return
    env = offline_env()
    names = args.only.split(",") if args.only else None
    results = run(names, args.steps, args.workdir, reuse=args.reuse_measurements)
    if not args.no_write:
        command = f"{env} python benchmarks/plan_vs_measured.py" + (
            f" --only '{args.only}'" if args.only else "") + (f" --steps {args.steps}" if args.steps != 3 else "") + (
            " --reuse-measurements" if args.reuse_measurements else "")
        write_results(results, command, args.steps)


if __name__ == "__main__":
    main()
