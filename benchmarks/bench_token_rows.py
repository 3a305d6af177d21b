"""Memory and time of the three token-row backends at 20,000 new tokens, against LoRA alone.

    TOKENGRAFT_CACHE=/tmp/tgcache python benchmarks/bench_token_rows.py

On the built-in model (SmolLM2-135M, tied, 49,152 rows), each configuration runs
in its own subprocess: LoRA r=16 on every block linear layer, alone or with
20,000 new tokens through the ``rows`` / ``peft`` / ``full`` backend. Same batch
for all (8 x 128 random ids, labels on the last 16 positions only), the loss
computed the way the trainer does (LM head on supervised positions only), AdamW
as ``train.build_optimizer`` builds it, 5 steps.

How memory is measured (and why it is sound): each child runs with
``MALLOC_MMAP_THRESHOLD_=65536``, so every tensor larger than 64 KiB is its own
mmap and goes back to the OS when freed — RSS then tracks live tensor bytes
instead of glibc's cached heap. After the base model is loaded the child reads
``VmRSS`` and resets the kernel's peak counter (``echo 5 > /proc/self/clear_refs``),
then grafts, builds the optimiser and trains; ``VmHWM`` afterwards is the peak.
``peak_extra`` = peak - RSS after load: everything the method adds on top of the
frozen base model (parameters, copies, gradients, optimiser state, activations).

Results go to benchmarks/results/token_rows.json and token_rows.md.

The child (``--child CONFIG``) is also the measurement of ``bench_gemma_rows.py``:
``--model`` picks another MODEL spec and ``--head full`` computes the LM head at every
position (the ordinary path) instead of at the supervised positions only.
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
from types import SimpleNamespace

# rows-lean: the rows backend with the AddReport's copy of the initial rows released after grafting,
# to measure what that copy costs (graft() keeps it: callers compare trained rows against it).
CONFIGS = ("lora", "rows", "rows-lean", "peft", "full")
HEADS = ("supervised", "full")  # the LM head at supervised positions only (the trainer's default), or everywhere
LORA = {"type": "lora", "targets": "all_linear", "r": 16}
RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- child: one configuration


def process_memory() -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _batch(vocab: int, args: argparse.Namespace, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=generator)
    labels = torch.full_like(ids, -100)
    labels[:, -args.supervised:] = ids[:, -args.supervised:]
    return ids, labels


def _dir_bytes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def run_child(config: str, args: argparse.Namespace) -> dict:
    import torch

    from tokengraft.core.graft import TokenSettings, apply_method_configs, graft
    from tokengraft.models import BUILTIN_ALIAS, load_model
    from tokengraft.training.engine import build_optimizer
    from tokengraft.training.lm import causal_lm_loss, full_logits, supervised_logits

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = getattr(args, "model", None) or BUILTIN_ALIAS
    logits_of = supervised_logits if getattr(args, "head", "supervised") == "supervised" else full_logits
    model, tok = load_model(spec, device="cpu")
    base_rows = model.get_input_embeddings().weight.shape[0]
    hidden = model.get_input_embeddings().weight.shape[1]
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad():  # weights may be mmapped from safetensors: fault every page in before the baseline
        for parameter in model.parameters():
            parameter.sum()
    loaded = process_memory()["VmRSS"]
    _reset_peak()

    start = time.perf_counter()
    g = None
    if config == "lora":
        model, methods = apply_method_configs(model, tok, [dict(LORA)], None)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW([{"params": params, "lr": 1e-4, "weight_decay": 0.0}])
        vocab = base_rows
    else:
        tokens = [f"<lex{i:05d}>" for i in range(args.tokens)]
        backend = "rows" if config == "rows-lean" else config
        g = graft(model, tok, TokenSettings(add=tokens, special=True, backend=backend), [dict(LORA)], verbose=False)
        if config == "rows-lean":
            g.report.init_input = g.report.init_output = None
        model = g.model
        optimizer = build_optimizer(g, SimpleNamespace(token_lr=1e-3, lr=1e-4, weight_decay=0.0, optimizer="adamw"))
        vocab = g.report.final_rows
    setup_s = time.perf_counter() - start
    built = process_memory()["VmRSS"]
    token_params = sum(p.numel() for p in g.token_parameters()) if g is not None else 0
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())

    model.train()
    step_s, step_cpu_s = [], []
    for step in range(args.steps):
        ids, labels = _batch(vocab, args, seed=step)
        t, c = time.perf_counter(), time.process_time()
        logits, targets = logits_of(model, ids, None, labels)
        loss = causal_lm_loss(logits, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t)
        step_cpu_s.append(time.process_time() - c)
    peak = process_memory()["VmHWM"]

    with tempfile.TemporaryDirectory() as tmp:
        if g is not None:
            from tokengraft.rundir import save_graft

            save_graft(g, tmp, base_spec=spec)
        else:
            methods.save(Path(tmp))
        files = _dir_bytes(Path(tmp))
    weights = sum(size for name, size in files.items() if name.endswith(".safetensors"))
    return {
        "config": config, "model": spec, "head": getattr(args, "head", "supervised"),
        "new_tokens": 0 if config == "lora" else args.tokens, "final_rows": vocab,
        "hidden": hidden, "tied": tied, "rss_after_load_mib": loaded / MIB,
        "static_extra_mib": (built - loaded) / MIB, "peak_extra_mib": (peak - loaded) / MIB,
        "token_parameters": token_params, "trainable_parameters": trainable,
        "setup_s": setup_s, "step_s": step_s, "median_step_s": statistics.median(step_s),
        "step_cpu_s": step_cpu_s, "median_step_cpu_s": statistics.median(step_cpu_s),
        "checkpoint_files": files, "checkpoint_weights_bytes": weights,
        "checkpoint_total_bytes": sum(files.values()), "final_loss": float(loss),
    }


# ----------------------------------------------------------------------------- parent: all configurations


def child_command(config: str, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The command and environment that measure one configuration in a fresh process (see the docstring)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", HF_HUB_OFFLINE="1")
    command = [sys.executable, __file__, "--child", config, "--tokens", str(args.tokens), "--steps", str(args.steps),
               "--batch", str(args.batch), "--seq", str(args.seq), "--supervised", str(args.supervised),
               "--threads", str(args.threads)]
    if getattr(args, "model", None):
        command += ["--model", str(args.model)]
    if getattr(args, "head", None):
        command += ["--head", args.head]
    return command, env


def _spawn(config: str, args: argparse.Namespace) -> dict:
    command, env = child_command(config, args)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{config} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _markdown(payload: dict) -> str:
    rows = payload["results"]
    lora = rows["lora"]
    s = payload["settings"]
    lines = [
        "# Token-row backends at 20,000 new tokens vs LoRA alone",
        "",
        f"Built-in model (SmolLM2-135M, tied, 49,152 rows, hidden 576), LoRA r=16 on all block linears in every "
        f"configuration; {s['new_tokens']:,} new tokens; batch {s['batch']} x {s['seq']} random ids, labels on the "
        f"last {s['supervised']}; AdamW; {s['steps']} steps; CPU, {payload['machine']['torch_threads']} torch threads.",
        "",
        "Command: `" + payload["command"] + "`",
        "",
        "| configuration | peak extra MiB | x LoRA | static extra MiB | median step CPU s | x LoRA | wall s "
        "| token params | checkpoint weights |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        label = "LoRA alone" if name == "lora" else f"{name} + LoRA"
        lines.append(
            f"| {label} | {r['peak_extra_mib']:.0f} | {r['peak_extra_mib'] / lora['peak_extra_mib']:.2f} "
            f"| {r['static_extra_mib']:.0f} | {r['median_step_cpu_s']:.2f} "
            f"| {r['median_step_cpu_s'] / lora['median_step_cpu_s']:.2f} | {r['median_step_s']:.1f} "
            f"| {r['token_parameters']:,} | {r['checkpoint_weights_bytes'] / MIB:.1f} MiB |"
        )
    a = payload["analysis"]
    lines += [
        "",
        "peak extra = peak RSS minus RSS after loading the base model (see the script's docstring for how it is "
        "measured); static extra = after grafting and building the optimiser, before the first step.",
        "",
        f"**rows vs LoRA alone**: +{a['rows_minus_lora_mib']:.0f} MiB at peak. The rows' own parameters, gradients "
        f"and AdamW state are 4 x {a['rows_tensor_mib']:.1f} = {a['rows_budget_mib']:.0f} MiB. The difference:",
        "",
        f"- {a['report_copy_mib']:.0f} MiB is the `AddReport`'s copy of the initial rows (`report.init_input`, "
        f"{a['rows_tensor_mib']:.1f} MiB), which `graft()` keeps for the whole run (row `rows-lean` releases it; "
        "tests compare trained rows against it). On a GPU it sits in host memory, not on the device.",
        f"- the remaining {a['lean_minus_lora_mib'] - a['rows_budget_mib']:.0f} MiB "
        f"(rows-lean: +{a['lean_minus_lora_mib']:.0f} MiB) is "
        f"{(a['lean_minus_lora_mib'] - a['rows_budget_mib']) / a['logit_block_mib']:.1f} copies of the new "
        f"vocabulary's logits at the {s['batch'] * s['supervised']} supervised positions ({a['logit_block_mib']:.1f} MiB "
        f"per fp32 [{s['batch'] * s['supervised']} x {s['new_tokens']:,}] block: the concatenated logits, "
        "log-softmax and their gradients), which any backend with that many more tokens pays. No vocab x hidden "
        "tensor is allocated (tests/test_rows.py checks it).",
        "",
        "peft (PEFT trainable tokens) resizes the matrices and rebuilds the merged vocab x hidden weight in every "
        "forward (so its gradient is vocab x hidden in backward); full (`modules_to_save`) keeps a trainable copy of the whole matrix with its gradient, AdamW state "
        "and the gradient mask that restricts updates to the new ids. Checkpoint weights include LoRA "
        f"(`methods.safetensors`, {lora['checkpoint_weights_bytes'] / MIB:.1f} MiB) in every configuration; full "
        "also saves the whole matrix (both when untied) in `embeddings.safetensors`.",
        "",
        "Step time is CPU seconds per step (forward, backward, AdamW step) on a shared machine (load average "
        f"{payload['machine']['load_average_at_end'][0]:.1f} at the end); wall seconds shown for reference.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--supervised", type=int, default=16)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    # One thread: on a shared 2-core machine a second OpenMP thread mostly spins waiting for
    # its descheduled partner (measured: 4x the CPU time per step, 4x the wall time).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="MODEL spec (default: the built-in model)")
    parser.add_argument("--head", choices=HEADS, default="supervised", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return 0

    import torch

    results = {}
    for config in args.configs.split(","):
        print(f"running {config} ...", file=sys.stderr, flush=True)
        results[config] = _spawn(config, args)
        r = results[config]
        print(f"  peak extra {r['peak_extra_mib']:.0f} MiB, median step {r['median_step_s']:.2f} s", file=sys.stderr)
    analysis = {}
    if {"lora", "rows", "rows-lean"} <= set(results):
        rows, lean, lora = results["rows"], results["rows-lean"], results["lora"]
        tensor_mib = rows["token_parameters"] * 4 / MIB
        analysis = {
            "rows_tensor_mib": tensor_mib, "rows_budget_mib": 4 * tensor_mib,
            "rows_minus_lora_mib": rows["peak_extra_mib"] - lora["peak_extra_mib"],
            "rows_ratio_to_budget": (rows["peak_extra_mib"] - lora["peak_extra_mib"]) / (4 * tensor_mib),
            "report_copy_mib": rows["peak_extra_mib"] - lean["peak_extra_mib"],
            "lean_minus_lora_mib": lean["peak_extra_mib"] - lora["peak_extra_mib"],
            # one fp32 [batch x supervised, new tokens] block: the new vocabulary's logits at the supervised positions
            "logit_block_mib": args.batch * args.supervised * args.tokens * 4 / MIB,
        }
    command = "TOKENGRAFT_CACHE=/tmp/tgcache python benchmarks/bench_token_rows.py" + (
        " " + " ".join(argv) if argv else "")
    payload = {
        "command": command,
        "settings": {"new_tokens": args.tokens, "steps": args.steps, "batch": args.batch, "seq": args.seq,
                     "supervised": args.supervised, "lora": LORA, "optimizer": "AdamW (train.build_optimizer)"},
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": args.threads,
                    "load_average_at_end": os.getloadavg()},
        "measurement": "peak RSS (VmHWM after clear_refs reset) minus RSS after base load; MALLOC_MMAP_THRESHOLD_=65536",
        "results": results,
        "analysis": analysis,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "token_rows.json").write_text(json.dumps(payload, indent=2) + "\n")
    if analysis:
        (args.out / "token_rows.md").write_text(_markdown(payload))
    print(json.dumps({k: {"peak_extra_mib": round(v["peak_extra_mib"]), "median_step_s": round(v["median_step_s"], 2)}
                      for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
