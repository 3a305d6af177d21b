"""The <PASS> recipe: supervised-only head vs all-positions head, and tokengraft vs the reference-000 way.

    TOKENGRAFT_CACHE=/tmp/tgcache python benchmarks/bench_pass_recipe.py [--steps 8]

Same workload for every configuration: the <PASS> task's generated training rows
(seed 42), rendered through the chat template and masked exactly as `tokengraft
train` does, batch 8 in a fixed order, the built-in model, AdamW, one torch
thread, each configuration in its own subprocess:

- ``tokengraft``: the demo recipe's setup: row-sparse <PASS> rows + LoRA r=16 on
  attention+MLP, LM head on supervised positions only;
- ``all-positions``: the same, but the head runs at every position (ordinary
  ``model(...).logits``) and the loss picks the supervised ones;
- ``reference-000``: the reference's way: PEFT LoRA (same targets) with
  ``modules_to_save`` on the embedding and head (our ``full`` backend) and
  full-sequence logits.

Reported: median step time (CPU seconds of the process, less sensitive to other
load on the machine than wall time), tokens per second (all tokens of the batch /
median step), and peak memory over the loaded model (VmHWM reset after loading;
glibc mmap threshold 64 KiB so freed tensors leave RSS), as ratios to tokengraft.
Results: benchmarks/results/pass_recipe.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_token_rows import process_memory  # VmRSS / VmHWM, the same measurement as the token-row benchmark

CONFIGS = {
    "tokengraft": {"backend": "rows", "supervised": True},
    "all-positions": {"backend": "rows", "supervised": False},
    "reference-000": {"backend": "full", "supervised": False},
}
RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024


def run_child(name: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from tokengraft.data import Collator, encode_examples
    from tokengraft.core.graft import TokenSettings, graft
    from tokengraft.models import load_model
    from tokengraft.tasks import pass_data
    from tokengraft.training.engine import build_optimizer
    from tokengraft.training.lm import causal_lm_loss, full_logits, supervised_logits

    setup = CONFIGS[name]
    model, tokenizer = load_model(device="cpu")
    rows = pass_data.generate_splits(seed=42)["train"]
    base = process_memory()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")
    g = graft(model, tokenizer, TokenSettings(add=["<PASS>"], special=True, init_input="text", init_output="text",
                                               init_text={"<PASS>": "unknown"}, backend=setup["backend"]),
              [{"type": "lora", "targets": "attention_mlp", "r": 16, "alpha": 32, "dropout": 0.0}], verbose=False)
    items, _ = encode_examples(rows, tokenizer, 128, new_tokens=["<PASS>"])
    collate = Collator(tokenizer)
    train_cfg = argparse.Namespace(token_lr=3e-3, lr=3e-4, weight_decay=0.0, optimizer="adamw")
    optimizer = build_optimizer(g, train_cfg)
    select = supervised_logits if setup["supervised"] else full_logits
    g.model.train()
    times, tokens = [], []
    for step in range(steps):
        batch = collate(items[step * 8:(step + 1) * 8])
        start = time.process_time()
        logits, targets = select(g.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss = causal_lm_loss(logits, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.process_time() - start)
        tokens.append(int(batch["attention_mask"].sum()))
    peak = process_memory()["VmHWM"]
    steady = times[1:] or times  # the first step pays one-off allocation
    median = statistics.median(steady)
    return {"config": name, "median_step_s": median, "tokens_per_s": statistics.mean(tokens) / median,
            "peak_extra_mib": (peak - base) / MIB, "steps": steps, "loss_last": float(loss)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", choices=list(CONFIGS))
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(args.child, args.steps)))
        return 0
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    results = []
    for name in CONFIGS:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps)],
                              capture_output=True, text=True, env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(line[len("RESULT "):]))
        print(results[-1], file=sys.stderr)
    ref = results[0]
    for row in results:
        row["step_time_x"] = row["median_step_s"] / ref["median_step_s"]
        row["peak_x"] = row["peak_extra_mib"] / ref["peak_extra_mib"]
    RESULTS.mkdir(exist_ok=True)
    payload = {"command": f"TOKENGRAFT_CACHE=/tmp/tgcache python benchmarks/bench_pass_recipe.py --steps {args.steps}",
               "results": results}
    (RESULTS / "pass_recipe.json").write_text(json.dumps(payload, indent=2))
    lines = ["# <PASS> recipe: supervised-only head and the reference-000 way", "",
             f"Command: `{payload['command']}` (one torch thread; batch 8 of the <PASS> training rows; "
             "LoRA r=16 attention+MLP; CPU seconds per step, median of steps 2..N)", "",
             "| configuration | median step (CPU s) | x tokengraft | tokens/s | peak extra MiB | x tokengraft |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['config']} | {r['median_step_s']:.2f} | {r['step_time_x']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['peak_extra_mib']:.0f} | {r['peak_x']:.2f} |")
    (RESULTS / "pass_recipe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
