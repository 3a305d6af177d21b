"""The base model's greedy answers, computed once: a JSON cache in the tokengraft cache directory.

A run asks the unmodified base model the same questions again and again: the
``<PASS>`` demo's ~700 training questions (``data.self_answers`` / ``data.know_check``),
the validation and test questions its evaluation compares against, the style task's
plain rows, the demo's before/after prompts; and a second demo, `compare` (several
recipes on one data set) or `eval` repeat all of them. Greedy decoding of the same
weights on the same input with the same settings gives the same answer, so each answer
is generated once and read back after that.

An entry's key is a SHA-256 over everything the answer depends on: the model's weight
fingerprint (models.fingerprint), its dtype and device type, the rendered prompt text
and its token ids (template, system prompt and tokenizer included), the decoding
settings (max_new_tokens, stop ids, pad id), ``generation.GENERATION_VERSION`` and the
torch / transformers versions. One file per base model,
``<cache>/answers/<fingerprint>.json`` (``TOKENGRAFT_ANSWER_CACHE`` moves the directory, or
turns the cache ``off``), holds its entries and a digest of them; it is
written atomically under a file lock (concurrent runs merge, never clobber). A file
that does not parse, has another format, or whose digest does not match is ignored
with a warning and rewritten: the cache is only ever a shortcut, never trusted over
recomputing.

Only an *unmodified* base model may use it (a fine-tuned model changes every run);
callers pass the base model, never a graft.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from filelock import FileLock

from tokengraft.builtin import cache_dir
from tokengraft.data import ChatFormat
from tokengraft.files import write_json
from tokengraft.generation import DEFAULT_BATCH_SIZE, GENERATION_VERSION, generate_batch, pad_id, stop_ids
from tokengraft.models import fingerprint
from tokengraft.timing import note

CACHE_FORMAT = 1
ANSWERS_DIR = "answers"
ANSWERS_ENV = "TOKENGRAFT_ANSWER_CACHE"


def answers_dir() -> Path | None:
    """Where the answers cache files live: ``TOKENGRAFT_ANSWER_CACHE`` (a directory, or ``off`` for
    no cache), else ``answers/`` in the tokengraft cache (``TOKENGRAFT_CACHE`` / ``~/.cache/tokengraft``)."""
    value = os.environ.get(ANSWERS_ENV, "").strip()
    if value.lower() in ("off", "0", "no", "false"):
        return None
    return Path(value).expanduser() if value else cache_dir() / ANSWERS_DIR


def _digest(entries: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _valid_entry(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("text"), str) and isinstance(value.get("ids"), list)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in value["ids"]))


def read_entries(path: Path, model_fingerprint: str, *, warn: bool = True) -> dict[str, dict[str, Any]]:
    """The entries of one cache file, or ``{}`` (with a warning) when it cannot be trusted."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise ValueError(f"not an answers cache of format {CACHE_FORMAT}")
        if data.get("model") != model_fingerprint:
            raise ValueError("written for another model")
        entries = data.get("entries")
        if not isinstance(entries, dict) or data.get("sha256") != _digest(entries):
            raise ValueError("its digest does not match its entries")
        if not all(isinstance(k, str) and _valid_entry(v) for k, v in entries.items()):
            raise ValueError("an entry is malformed")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        if warn:
            warnings.warn(f"tokengraft: ignoring the answers cache {path} ({exc}); the answers are generated again "
                          "and the file rewritten", stacklevel=3)
        return {}
    return entries


def _store(path: Path, model_fingerprint: str, new: dict[str, dict[str, Any]]) -> None:
    """Merge ``new`` into the file under a lock (another process may have added entries meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        entries = read_entries(path, model_fingerprint, warn=False)  # warned about when first read
        entries.update(new)
        write_json(path, {"format": CACHE_FORMAT, "model": model_fingerprint, "sha256": _digest(entries),
                          "entries": entries}, indent=None)


def answer_keys(model: Any, tokenizer: Any, prompts: Sequence[Any], *, max_new_tokens: int,
                system: str | None, model_fingerprint: str) -> list[str]:
    """One key per prompt: a hash of everything its greedy answer depends on."""
    fmt = ChatFormat(tokenizer, system=system)
    parameter = next(model.parameters())
    settings = {"generation": GENERATION_VERSION, "model": model_fingerprint, "dtype": str(parameter.dtype),
                "device": parameter.device.type, "max_new_tokens": max_new_tokens,
                "stops": stop_ids(tokenizer, fmt), "pad": pad_id(tokenizer),
                "torch": torch.__version__, "transformers": transformers.__version__}
    keys = []
    for prompt in prompts:
        material = {"settings": settings, "prompt": fmt.prompt_text(prompt), "ids": fmt.encode_prompt(prompt)}
        keys.append(hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest())
    return keys


def base_answers(model: Any, tokenizer: Any, prompts: Sequence[Any], *, max_new_tokens: int,
                 system: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, desc: str | None = None,
                 use_cache: bool = True) -> list[dict[str, Any]]:
    """``generation.generate_batch`` results (``text``, ``ids``) for an unmodified base model, in
    prompt order: answers already in the cache are read, the others generated (each distinct
    prompt once) and stored. ``use_cache=False`` (or ``TOKENGRAFT_ANSWER_CACHE=off``) generates
    everything and touches no file.

    Adds ``prompts`` / ``cached`` / ``generated`` to the innermost timing phase.
    """
    directory = answers_dir() if use_cache else None
    if directory is None or not prompts:
        note(prompts=len(prompts), cached=0, generated=len(prompts))
        return generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=system,
                              batch_size=batch_size, desc=desc)
    model_fingerprint = fingerprint(model)
    keys = answer_keys(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=system,
                       model_fingerprint=model_fingerprint)
    path = directory / f"{model_fingerprint}.json"
    entries = read_entries(path, model_fingerprint)
    missing: dict[str, Any] = {}
    for key, prompt in zip(keys, prompts):
        if key not in entries and key not in missing:
            missing[key] = prompt
    if missing:
        generated = generate_batch(model, tokenizer, list(missing.values()), max_new_tokens=max_new_tokens,
                                   system=system, batch_size=batch_size, desc=desc)
        new = {key: {"text": out["text"], "ids": out["ids"]} for key, out in zip(missing, generated)}
        _store(path, model_fingerprint, new)
        entries = {**entries, **new}
    note(prompts=len(prompts), cached=sum(1 for k in keys if k not in missing), generated=len(missing))
    return [{"text": entries[k]["text"], "ids": list(entries[k]["ids"])} for k in keys]
