"""Gemma 3 270M: token rows vs PEFT trainable tokens vs modules_to_save vs LoRA alone, 1 and 20,000 new tokens.

    TOKENGRAFT_CACHE=/tmp/tgcache python benchmarks/bench_gemma_rows.py            # the committed run
    TOKENGRAFT_CACHE=/tmp/tgcache python benchmarks/bench_gemma_rows.py --quick    # a smaller batch, 2 steps

Why Gemma: its tied 262,144 x 640 embedding is 63 % of its 268M parameters, the
shape behind PEFT issue 2898 (a 322 MB adapter from ``modules_to_save`` to teach a
few tokens). Expectation to confirm or refute: the rows' checkpoint in kilobytes
where ``modules_to_save`` writes hundreds of MB, and a large step-time gap from
computing the LM head over a 262k vocabulary at every position.

One configuration per fresh process, measured by ``bench_token_rows.py``'s child
(same batch of random ids with labels on the last positions, AdamW as the trainer
builds it, LoRA r=16 on every block linear in every configuration, peak RSS above
the loaded base with ``MALLOC_MMAP_THRESHOLD_`` so freed tensors leave RSS; see that
script's docstring), for every combination of

- configuration: LoRA alone, ``rows`` + LoRA, ``peft`` (PEFT trainable tokens) +
  LoRA, ``full`` (``modules_to_save`` on the embedding, the references' way) + LoRA;
- new tokens: 1 and 20,000 (LoRA alone adds none: it runs once per head mode);
- LM head: at supervised positions only (the trainer's default) or at every position.

Reported per run: peak extra memory, median step time (wall and CPU), checkpoint
size (the run directory's safetensors: ``rows.safetensors``, LoRA's weights, and for
``full`` the whole matrix in ``embeddings.safetensors``). Results:
benchmarks/results/gemma_rows.json and gemma_rows.md. A configuration that fails
(out of memory, say) is recorded with its error and the others still run.

``--model`` runs the same matrix on another MODEL spec (a tiny saved model in the
tests); ``--tokens``, ``--configs`` and ``--heads`` narrow it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_token_rows import HEADS, LORA, MIB, RESULTS, child_command  # noqa: E402  the measurement is shared

CONFIGS = ("lora", "rows", "peft", "full")
LABELS = {"lora": "LoRA alone", "rows": "rows + LoRA", "peft": "PEFT trainable tokens + LoRA",
          "full": "modules_to_save + LoRA"}
DEFAULT_MODEL = "gemma3-270m"


def _size(n: int) -> str:
    if n >= MIB:
        return f"{n / MIB:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB"


def _measure(config: str, tokens: int, head: str, args: argparse.Namespace) -> dict:
    child = argparse.Namespace(tokens=tokens, steps=args.steps, batch=args.batch, seq=args.seq,
                               supervised=args.supervised, threads=args.threads, model=args.model, head=head)
    command, env = child_command(config, child)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"config": config, "new_tokens": tokens, "head": head, "error": done.stderr.strip()[-2000:],
                "wall_s": time.perf_counter() - started}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def runs(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """(configuration, new tokens, head) in the order they run; LoRA alone once per head."""
    order = []
    for head in args.heads:
        if "lora" in args.configs:
            order.append(("lora", 0, head))
        for tokens in args.tokens:
            order += [(config, tokens, head) for config in args.configs if config != "lora"]
    return order


def analysis(results: list[dict]) -> dict:
    """The two expectations, in numbers: checkpoint ratio full / rows, and step-time ratio full head / supervised."""
    ok = {(r["config"], r["new_tokens"], r["head"]): r for r in results if "error" not in r}
    out: dict = {"checkpoint_full_over_rows": {}, "step_full_head_over_supervised": {}}
    for (config, tokens, head), r in ok.items():
        if config == "full" and ("rows", tokens, head) in ok:
            rows = ok[("rows", tokens, head)]
            out["checkpoint_full_over_rows"][f"{tokens}/{head}"] = (
                r["checkpoint_weights_bytes"] / max(1, rows["checkpoint_weights_bytes"]))
        if head == "full" and (config, tokens, "supervised") in ok:
            base = ok[(config, tokens, "supervised")]
            out["step_full_head_over_supervised"][f"{config}/{tokens}"] = (
                r["median_step_s"] / max(1e-9, base["median_step_s"]))
    return out


def markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = [
        "# Gemma 3 270M: token-row backends vs LoRA alone, 1 and 20,000 new tokens",
        "",
        f"Model `{s['model']}`; LoRA r={s['lora']['r']} on all block linears in every configuration; batch "
        f"{s['batch']} x {s['seq']} random ids, labels on the last {s['supervised']}; AdamW; {s['steps']} steps; "
        f"CPU, {payload['machine']['torch_threads']} torch thread(s); load average "
        f"{payload['machine']['load_average_at_end'][0]:.1f} at the end.",
        "",
        "Command: `" + payload["command"] + "`",
        "",
        "peak extra = peak RSS minus RSS after loading the base model (bench_token_rows.py's measurement); "
        "step = forward, backward and AdamW step; checkpoint = the safetensors a run directory holds "
        "(rows, LoRA, and for modules_to_save the whole matrix).",
    ]
    for head in s["heads"]:
        title = "supervised positions only (the trainer's default)" if head == "supervised" else "every position"
        lines += ["", f"## LM head at {title}", "",
                  "| configuration | new tokens | peak extra MiB | median step s | median step CPU s "
                  "| token params | checkpoint |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in payload["results"]:
            if r["head"] != head:
                continue
            label = LABELS.get(r["config"], r["config"])
            if "error" in r:
                last = r["error"].splitlines()[-1] if r["error"] else "failed"
                lines.append(f"| {label} | {r['new_tokens']:,} | failed: {last[:80]} | | | | |")
                continue
            lines.append(f"| {label} | {r['new_tokens']:,} | {r['peak_extra_mib']:,.0f} | {r['median_step_s']:.2f} "
                         f"| {r['median_step_cpu_s']:.2f} | {r['token_parameters']:,} "
                         f"| {_size(r['checkpoint_weights_bytes'])} |")
    a = payload["analysis"]
    if a["checkpoint_full_over_rows"] or a["step_full_head_over_supervised"]:
        lines += ["", "## The expectations", ""]
        for key, ratio in sorted(a["checkpoint_full_over_rows"].items()):
            tokens, head = key.split("/")
            lines.append(f"- checkpoint, {int(tokens):,} new token(s), {head} head: modules_to_save writes "
                         f"{ratio:,.0f}x the bytes of rows")
        for key, ratio in sorted(a["step_full_head_over_supervised"].items()):
            config, tokens = key.split("/")
            lines.append(f"- step time, {LABELS.get(config, config)}, {int(tokens):,} new token(s): the head at every "
                         f"position takes {ratio:.2f}x the supervised-only step")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="MODEL spec (default the built-in gemma3-270m)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="batch 4 x 64 with 8 supervised positions, 2 steps")
    parser.add_argument("--tokens", default="1,20000", help="comma-separated new-token counts")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--heads", default=",".join(HEADS), help=f"subset of {','.join(HEADS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1 on a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.tokens = [int(t) for t in args.tokens.split(",")]
    args.configs = args.configs.split(",")
    args.heads = args.heads.split(",")
    unknown = (set(args.configs) - set(CONFIGS)) | (set(args.heads) - set(HEADS))
    if unknown:
        parser.error(f"unknown configuration or head: {', '.join(sorted(unknown))}")
    args.batch, args.seq, args.supervised = (4, 64, 8) if args.quick else (8, 128, 16)
    args.steps = args.steps or (2 if args.quick else 5)

    import torch

    results = []
    for config, tokens, head in runs(args):
        print(f"running {config}, {tokens} new tokens, {head} head ...", file=sys.stderr, flush=True)
        r = _measure(config, tokens, head, args)
        results.append(r)
        if "error" in r:
            print(f"  FAILED: {r['error'].splitlines()[-1] if r['error'] else '?'}", file=sys.stderr)
        else:
            print(f"  peak extra {r['peak_extra_mib']:.0f} MiB, median step {r['median_step_s']:.2f} s, "
                  f"checkpoint {_size(r['checkpoint_weights_bytes'])}", file=sys.stderr)
    given = sys.argv[1:] if argv is None else argv
    payload = {
        "command": f"TOKENGRAFT_CACHE={os.environ.get('TOKENGRAFT_CACHE', '~/.cache/tokengraft')} "
                   "python benchmarks/bench_gemma_rows.py" + "".join(f" {a}" for a in given),
        "settings": {"model": args.model, "new_tokens": args.tokens, "configs": args.configs, "heads": args.heads,
                     "steps": args.steps, "batch": args.batch, "seq": args.seq, "supervised": args.supervised,
                     "quick": args.quick, "lora": LORA, "optimizer": "AdamW (training.engine.build_optimizer)"},
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": args.threads,
                    "load_average_at_end": os.getloadavg()},
        "measurement": "peak RSS (VmHWM after clear_refs reset) minus RSS after base load; MALLOC_MMAP_THRESHOLD_=65536",
        "results": results,
        "analysis": analysis(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gemma_rows.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "gemma_rows.md").write_text(markdown(payload))
    print(f"wrote {args.out / 'gemma_rows.json'} and gemma_rows.md", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
