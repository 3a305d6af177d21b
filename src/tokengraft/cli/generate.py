"""`tokengraft generate RUN_DIR "prompt"`: try a trained run (saved <PASS> bias applied)."""

from __future__ import annotations

from pathlib import Path

from tokengraft.api import generate


def run_generate(run_dir: str, prompts: list[str], *, max_new_tokens: int = 64, system: str | None = None,
                 answers: str | None = None) -> int:
    outputs = generate(Path(run_dir), prompts, max_new_tokens=max_new_tokens, system=system, answers=answers)
    for prompt, out in zip(prompts, outputs):
        print(f"> {prompt}\n{out['text']}\n")
    return 0
