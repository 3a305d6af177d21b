"""``tokengraft_export.json``: what an export was made from, written beside the checkpoint.

A merged checkpoint is a plain transformers directory that nothing of tokengraft is needed to
load; this small file only records where it came from: the run directory (so ``tokengraft
serve-check EXPORT`` finds the run's held-out test split and system prompt), the task, the
grafted tokens with their ids and whether clients see them, the base fingerprint (a shared LoRA
base is checked against it) and the folded ``<PASS>`` bias, if any.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokengraft import __version__
from tokengraft.errors import TokengraftError
from tokengraft.export.visible import run_task, special_flags
from tokengraft.rundir import CONFIG_FILE, read_graft_meta, read_run_recipe, write_json

EXPORT_INFO_FILE = "tokengraft_export.json"


def export_info(run_dir: str | Path, tokenizer: Any, visible: list[str], *, kind: str,
                fold: dict[str, Any] | None) -> dict[str, Any]:
    """The record for an export of ``run_dir`` whose tokenizer (as written) is ``tokenizer``."""
    meta = read_graft_meta(run_dir)
    tokens = [t["token"] for t in meta.get("tokens", [])]
    flags = special_flags(tokenizer, tokens)
    system = read_run_recipe(run_dir).data.system if (Path(run_dir) / CONFIG_FILE).is_file() else None
    return {
        "tokengraft_version": __version__,
        "kind": kind,
        "run_dir": str(Path(run_dir).resolve()),
        "task": run_task(run_dir),
        "system": system,
        "base_model": meta["base_model"],
        "base_fingerprint": meta["base_fingerprint"],
        "tokens": [{"token": t, "id": int(i), "special": flags[t]}
                   for t, i in zip(tokens, tokenizer.convert_tokens_to_ids(tokens))],
        "visible_tokens": list(visible),
        "pass_bias_folded": fold.get("bias") if fold else None,
    }


def write_export_info(directory: str | Path, info: dict[str, Any]) -> Path:
    return write_json(Path(directory) / EXPORT_INFO_FILE, info)


def read_export_info(directory: str | Path) -> dict[str, Any] | None:
    """The record of an export directory, or None when it has none (a checkpoint made elsewhere)."""
    path = Path(directory) / EXPORT_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TokengraftError(f"{path} is damaged (invalid JSON at line {exc.lineno}); export the run again") from None
    if not isinstance(info, dict):
        raise TokengraftError(f"{path} is damaged: it holds a {type(info).__name__}, not an object")
    return info
