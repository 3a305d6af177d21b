"""`tokengraft generate RUN_DIR "prompt"`: try a trained run (saved <PASS> bias applied)."""

from __future__ import annotations

from pathlib import Path

from tokengraft.generation import generate_batch
from tokengraft.rundir import load, read_graft_meta


def run_generate(run_dir: str, prompts: list[str], *, max_new_tokens: int = 64, system: str | None = None) -> int:
    run = Path(run_dir)
    model, tokenizer = load(run)
    meta = read_graft_meta(run)
    bias = meta.get("pass_bias")
    logit_bias = {tokenizer.convert_tokens_to_ids("<PASS>"): bias} if bias else None
    outputs = generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=system,
                             logit_bias=logit_bias)
    for prompt, out in zip(prompts, outputs):
        print(f"> {prompt}\n{out['text']}\n")
    return 0
