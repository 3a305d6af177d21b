"""Split names, JSONL files of rows, and the leak check every generator's splits pass.

Rows are plain dicts: ``{"prompt", "completion"}`` for prompt-completion training
(``prompt`` is the user message text, never chat markup: the training pipeline
renders it through the chat template) or ``{"text"}`` for plain text, plus
metadata keys kept for evaluation. Every generator returns ``{split: rows}`` over
``SPLITS``; these helpers are what they (and the run directory) share.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")

# ----------------------------------------------------------------------------- JSONL


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8, non-ASCII kept readable); creates parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_splits(splits: Mapping[str, Iterable[Mapping[str, Any]]], out_dir: str | Path) -> dict[str, Path]:
    """``<out_dir>/<split>.jsonl`` for every split of a ``generate_splits`` result."""
    return {name: write_jsonl(rows, Path(out_dir) / f"{name}.jsonl") for name, rows in splits.items()}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read rows written by ``write_jsonl`` (blank lines are skipped)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- split checks


def check_disjoint(splits: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str] = ("entity", "template"),
                   held_out: Sequence[str] = ("validation", "test")) -> None:
    """Assert that no value of ``keys`` (nor any prompt/text) is shared between train and a held-out split,
    nor between two held-out splits. Rows lacking a key are ignored for that key.

    Raises AssertionError naming the first shared value: a split that leaks makes
    every held-out number meaningless, so this fails loudly.
    """
    names = [s for s in ("train", *held_out) if s in splits]
    for key in (*keys, "prompt", "text"):
        values = {s: {str(r[key]) for r in splits[s] if r.get(key) is not None} for s in names}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = values[a] & values[b]
                assert not shared, f"{key} {sorted(shared)[0]!r} occurs in both {a} and {b}"
