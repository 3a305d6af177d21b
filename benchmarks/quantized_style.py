"""The style demo on a 4-bit NF4 base against the same demo on the full-precision base.

    TOKENGRAFT_CACHE=~/.cache/tokengraft HF_HUB_OFFLINE=1 python benchmarks/quantized_style.py --workdir /tmp/qstyle
    (options: --variants nf4,fp32  --eval-limit N  --no-write)

Each variant is the LoRA style recipe (configs/style_lora.yaml: `tokengraft demo style`'s packaged
recipe until issue 20 made activated LoRA the demo's default; LoRA merges, which the merged-export
check below needs), the nf4 one with ``model.quantization=4bit`` (NF4, double quantisation, compute
dtype auto = float32 on CPU): the same data, seed and hyperparameters. Each trains in a fresh process
(``MALLOC_MMAP_THRESHOLD_=65536``, one thread, as in plan_vs_measured.py), then `tokengraft
eval` scores it on the held-out test split with the SAME greedy decoding for both styles.

Measured per variant, and reported as nf4 / fp32 ratios (this 2-core machine is shared, so
ratios within one run are what compares):
- quality: the held-out length ratio (median verbose / terse tokens), both accuracies, and
  the no-token length; the issue's target is a length ratio >= 10x on the 4-bit base;
- step time: median CPU seconds per optimizer step (the first step dropped), and wall time;
- memory: RSS of the loaded model, peak RSS growth during training, peak RSS in total.

The nf4 run is then exported with ``export --merged`` (de-quantised, float32); the measured
logit distance to the quantized model is taken from ``tokengraft_dequantization.json``, and a
separate process that imports only transformers (no tokengraft, no bitsandbytes) loads the
checkpoint and decodes the first test pairs greedily through the tokenizer's chat template:
the length ratio there shows the exported model keeps the behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_token_rows import process_memory
from plan_vs_measured import child_env

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RECIPE = HERE.parent / "configs" / "style_lora.yaml"  # the style demo's recipe when quantized_style.md was measured
VARIANTS = {"fp32": [], "nf4": ["model.quantization=4bit", "model.quant_type=nf4", "model.double_quant=true"]}
PLAIN_PAIRS = 20  # test pairs the plain-transformers check decodes


# ----------------------------------------------------------------------------- child: train, evaluate, export


def run_variant(variant: str, run_dir: Path, out: Path, eval_limit: int | None) -> None:
    import gc
    import importlib.util

    import torch

    torch.set_num_threads(1)
    import matplotlib.pyplot  # noqa: F401  (imports are not training memory)
    import transformers  # noqa: F401

    import tokengraft.quantization  # noqa: F401  (before peft: quiets bitsandbytes' import-time log line)
    import peft  # noqa: F401

    if importlib.util.find_spec("deepspeed") is not None:
        import deepspeed  # noqa: F401  (accelerate imports it while building the Trainer)
    import tokengraft.training.lm as lm_recipe
    from tokengraft.api import evaluate, export_merged, train
    from tokengraft.config import load_recipe
    from transformers import TrainerCallback

    record: dict[str, Any] = {"variant": variant, "overrides": VARIANTS[variant], "pre_load_rss": process_memory()["VmRSS"]}
    original_load = lm_recipe.load_model

    def load_and_mark(*args: Any, **kwargs: Any):
        started = time.perf_counter()
        model, tokenizer = original_load(*args, **kwargs)
        record["load_seconds"] = round(time.perf_counter() - started, 1)
        with torch.no_grad():
            for p in model.parameters():
                p.sum()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        record["baseline_rss"] = process_memory()["VmRSS"]
        return model, tokenizer

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.cpu: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.cpu.append(time.process_time() - self.start)

        def on_train_end(self, args, state, control, **kwargs):
            record["peak_hwm"] = process_memory()["VmHWM"]

    steps = Steps()
    lm_recipe.load_model = load_and_mark
    recipe = load_recipe(RECIPE, VARIANTS[variant])
    result = train(recipe, run_dir, quiet=True, callbacks=[steps])
    lm_recipe.load_model = original_load
    record.update({
        "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
        "step_cpu_seconds_median": round(statistics.median(steps.cpu[1:] or steps.cpu), 3),
        "loaded_model_rss": record["baseline_rss"] - record["pre_load_rss"],
        "peak_growth": record["peak_hwm"] - record["baseline_rss"],
        "peak_total": record["peak_hwm"] - record["pre_load_rss"],
    })
    record["metrics"] = {k: v for k, v in evaluate(run_dir, limit=eval_limit).items() if k != "examples"}
    if variant == "nf4":
        merged = Path(f"{run_dir}-merged")
        export_merged(run_dir, merged)
        record["merged_dir"] = str(merged)
        record["dequantization"] = json.loads((merged / "tokengraft_dequantization.json").read_text())
    out.write_text(json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- plain transformers on the export


PLAIN_CHECK = r"""
import json, statistics, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
merged, test, n, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
assert "tokengraft" not in sys.modules
tok = AutoTokenizer.from_pretrained(merged)
model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
rows = [json.loads(l) for l in open(test) if l.strip()]
verbose = {r["pair_id"]: r for r in rows if r.get("style") == "verbose"}
pairs = [(r, verbose[r["pair_id"]]) for r in rows if r.get("style") == "terse" and r["pair_id"] in verbose][:n]
stops = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(i, int) and i >= 0]
def length(prompt):
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=max_new, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
    new = out[0, ids.shape[1]:].tolist()
    return next((i for i, t in enumerate(new) if t in stops), len(new))
terse = [length(t["prompt"]) for t, _ in pairs]
verb = [length(v["prompt"]) for _, v in pairs]
print(json.dumps({"pairs": len(pairs), "terse_median_tokens": statistics.median(terse),
                  "verbose_median_tokens": statistics.median(verb),
                  "length_ratio": statistics.median(verb) / max(1, statistics.median(terse)),
                  "quantization_config_in_config": "quantization_config" in open(merged + "/config.json").read()}))
"""


def plain_transformers_check(merged: Path, run_dir: Path, max_new_tokens: int) -> dict[str, Any]:
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}  # no tokengraft on the path
    proc = subprocess.run([sys.executable, "-c", PLAIN_CHECK, str(merged), str(run_dir / "data" / "test.jsonl"),
                           str(PLAIN_PAIRS), str(max_new_tokens)], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- parent


def smoke_overrides(model_dir: Path) -> list[str]:
    return [f"model.name={model_dir}", "train.max_steps=2", "train.eval_steps=0", "train.save_steps=0",
            "data.generate_options={n_train: 24, n_validation: 4, n_test: 8, n_plain: 4}", "data.max_length=1024",
            "eval.max_new_tokens=8"]


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def mib(n: float) -> float:
    return round(n / 1024**2, 1)


def write_results(records: dict[str, dict[str, Any]], plain: dict[str, Any] | None, command: str) -> dict[str, Any]:
    nf4, fp32 = records.get("nf4"), records.get("fp32")
    summary: dict[str, Any] = {"command": command, "variants": records, "plain_transformers_check": plain}
    if nf4 and fp32:
        summary["ratios_nf4_over_fp32"] = {
            "step_cpu_seconds": ratio(nf4["step_cpu_seconds_median"], fp32["step_cpu_seconds_median"]),
            "train_seconds": ratio(nf4["train_seconds"], fp32["train_seconds"]),
            "loaded_model_rss": ratio(nf4["loaded_model_rss"], fp32["loaded_model_rss"]),
            "peak_growth": ratio(nf4["peak_growth"], fp32["peak_growth"]),
            "peak_total": ratio(nf4["peak_total"], fp32["peak_total"]),
            "length_ratio": ratio(nf4["metrics"].get("length_ratio"), fp32["metrics"].get("length_ratio")),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantized_style.json").write_text(json.dumps(summary, indent=2) + "\n")
    keys = ["length_ratio", "verbose_longer_rate", "terse_accuracy", "verbose_accuracy", "terse_median_tokens",
            "verbose_median_tokens", "untokened_median_tokens", "base_untokened_median_tokens"]
    names = [v for v in ("fp32", "nf4") if v in records]
    lines = ["# Style tokens on a 4-bit NF4 base vs the full-precision base (built-in model, CPU)", "",
             f"Produced by: `{command}`", "",
             "Both runs: the LoRA style recipe (configs/style_lora.yaml, the style demo's until issue 20); "
             "nf4 = the same with `model.quantization=4bit` (NF4 + double "
             "quantisation, float32 compute on CPU). Held-out test split, both styles with the same greedy decoding "
             "(no min_new_tokens). Step time = median CPU seconds per optimizer step (first dropped), one thread; "
             "memory = RSS (glibc mmap threshold 64 KiB). Target: length ratio >= 10 on the 4-bit base.", "",
             "| metric | " + " | ".join(names) + (" | nf4 / fp32 |" if len(names) == 2 else " |"),
             "|---|" + "---:|" * len(names) + ("---:|" if len(names) == 2 else "")]

    def row(label: str, values: list[Any], r: Any = "") -> None:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {'' if r is None else r} |" if len(names) == 2 else " |"))

    for key in keys:
        values = [records[v]["metrics"].get(key) for v in names]
        row(key, values, ratio(*values) if len(values) == 2 and key == "length_ratio" else "")
    row("steps", [records[v]["steps"] for v in names])
    row("median CPU s / step", [records[v]["step_cpu_seconds_median"] for v in names],
        summary.get("ratios_nf4_over_fp32", {}).get("step_cpu_seconds"))
    row("train wall s", [records[v]["train_seconds"] for v in names],
        summary.get("ratios_nf4_over_fp32", {}).get("train_seconds"))
    row("load s", [records[v].get("load_seconds") for v in names])
    for key, label in (("loaded_model_rss", "loaded model RSS MiB"), ("peak_growth", "peak growth in training MiB"),
                       ("peak_total", "peak RSS total MiB")):
        row(label, [mib(records[v][key]) for v in names], summary.get("ratios_nf4_over_fp32", {}).get(key))
    if nf4 and "dequantization" in nf4:
        d = nf4["dequantization"]
        lines += ["", f"**Merged export of the nf4 run** (`tokengraft export RUN --merged OUT`): the base ({d['described']}) "
                      f"de-quantised and written as {d['merged_dtype']}; logits against the quantized model on "
                      f"{d['positions']} probe positions: max |diff| {d['max_abs_logit_diff']:.2e}, mean "
                      f"{d['mean_abs_logit_diff']:.2e}, greedy top-1 agreement {100 * d['top1_agreement']:.1f} %."]
    if plain:
        if "error" in plain:
            lines += ["", f"Plain transformers could not load/decode the export: {plain['error']}"]
        else:
            lines += ["", f"Loaded in a process that imports only transformers (no tokengraft, no bitsandbytes; "
                          f"quantization_config in config.json: {plain['quantization_config_in_config']}), the first "
                          f"{plain['pairs']} test pairs through the tokenizer's chat template, greedy: terse median "
                          f"{plain['terse_median_tokens']} tokens, verbose {plain['verbose_median_tokens']}, length ratio "
                          f"{plain['length_ratio']:.1f}."]
    (RESULTS / "quantized_style.md").write_text("\n".join(lines) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variants", default="nf4,fp32", help="which runs to train (comma-separated: nf4, fp32)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tokengraft-quantized-style")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N test pairs")
    parser.add_argument("--no-write", action="store_true", help="print only; do not overwrite results/")
    parser.add_argument("--smoke-model", type=Path, default=None,
                        help="check the script end to end on a small model directory in a minute (2 steps, tiny data); "
                             "implies --no-write")
    args = parser.parse_args()
    if args.smoke_model:
        VARIANTS["fp32"] = VARIANTS["fp32"] + smoke_overrides(args.smoke_model)
        VARIANTS["nf4"] = VARIANTS["nf4"] + smoke_overrides(args.smoke_model)
        args.no_write = True
    if args.variant:
        run_variant(args.variant, args.run_dir, args.out, args.eval_limit)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    for variant in args.variants.split(","):
        run_dir, out = args.workdir / f"style-{variant}", args.workdir / f"style-{variant}.json"
        if out.is_file():
            print(f"[{variant}] reusing {out}", flush=True)
        else:
            if run_dir.exists():
                raise SystemExit(f"{run_dir} exists without {out.name}: remove it (an interrupted run) and start again")
            print(f"[{variant}] training the style demo recipe in a fresh process -> {run_dir} ...", flush=True)
            cmd = [sys.executable, __file__, "--variant", variant, "--run-dir", str(run_dir), "--out", str(out)]
            if args.eval_limit:
                cmd += ["--eval-limit", str(args.eval_limit)]
            if args.smoke_model:
                cmd += ["--smoke-model", str(args.smoke_model)]
            proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"the {variant} run failed")
        records[variant] = json.loads(out.read_text())
        m = records[variant]["metrics"]
        print(f"[{variant}] length ratio {m.get('length_ratio')}, {records[variant]['steps']} steps, "
              f"median {records[variant]['step_cpu_seconds_median']} CPU s/step, "
              f"peak {mib(records[variant]['peak_total'])} MiB", flush=True)
    plain = None
    if "nf4" in records and records["nf4"].get("merged_dir"):
        from tokengraft.config import load_recipe

        max_new = load_recipe(RECIPE, VARIANTS["nf4"]).eval.max_new_tokens
        plain = plain_transformers_check(Path(records["nf4"]["merged_dir"]), args.workdir / "style-nf4", max_new)
        print(f"[nf4 merged, plain transformers] {plain}", flush=True)
    command = ("TOKENGRAFT_CACHE=~/.cache/tokengraft HF_HUB_OFFLINE=1 python benchmarks/quantized_style.py "
               f"--workdir {args.workdir}" + (f" --variants {args.variants}" if args.variants != "nf4,fp32" else "")
               + (f" --eval-limit {args.eval_limit}" if args.eval_limit else ""))
    if not args.no_write:
        summary = write_results(records, plain, command)
        print(json.dumps(summary.get("ratios_nf4_over_fp32", {}), indent=2))


if __name__ == "__main__":
    main()
