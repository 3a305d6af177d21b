"""The base model's greedy (and seeded sampled) answers, computed once: a JSON cache in the tokengraft cache directory.

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
torch / transformers versions. A SAMPLED answer (``sampled_answers``: ``data.know_check_samples``)
adds a ``sampling`` entry to that material — the temperature, the seed, which sample of the
prompt it is and ``generation.SAMPLING_VERSION`` — so it never shares a key with the greedy
answer or with a sample of other settings; the greedy key material is unchanged, so caches
written before sampling existed stay valid. Sampling draws each answer with its own generator
seeded from (seed, sample index, prompt) (generation.py, "Sampling"), so sample ``j`` of a
prompt is the same whatever other prompts, batch size or sample count it was asked with: the
key needs the index, not the count, and 5 samples are the first 5 of 10. One file per base model,
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from filelock import FileLock

from tokengraft.builtin import cache_dir
from tokengraft.data import ChatFormat
from tokengraft.files import write_json
from tokengraft.errors import TokengraftError
from tokengraft.generation import (DEFAULT_BATCH_SIZE, GENERATION_VERSION, SAMPLING_VERSION, generate_batch, pad_id,
                                   stop_ids)
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
                system: str | None, model_fingerprint: str,
                sampling: Sequence[Mapping[str, Any]] | None = None) -> list[str]:
    """One key per prompt: a hash of everything its greedy answer depends on. ``sampling`` (one mapping per
    prompt, `sampling_settings`) keys sampled answers instead; None leaves the greedy key as it always was."""
    fmt = ChatFormat(tokenizer, system=system)
    parameter = next(model.parameters())
    settings = {"generation": GENERATION_VERSION, "model": model_fingerprint, "dtype": str(parameter.dtype),
                "device": parameter.device.type, "max_new_tokens": max_new_tokens,
                "stops": stop_ids(tokenizer, fmt), "pad": pad_id(tokenizer),
                "torch": torch.__version__, "transformers": transformers.__version__}
    keys = []
    for index, prompt in enumerate(prompts):
        material = {"settings": settings, "prompt": fmt.prompt_text(prompt), "ids": fmt.encode_prompt(prompt)}
        if sampling is not None:
            material["sampling"] = dict(sampling[index])
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
    def generate(indices: list[int]) -> list[dict[str, Any]]:
        return generate_batch(model, tokenizer, [prompts[i] for i in indices], max_new_tokens=max_new_tokens,
                              system=system, batch_size=batch_size, desc=desc)

    return _cached(model, tokenizer, prompts, generate, max_new_tokens=max_new_tokens, system=system,
                   use_cache=use_cache, sampling=None)


def sampling_settings(temperature: float, seed: int, index: int) -> dict[str, Any]:
    """What a sampled answer depends on beyond a greedy one (its cache key's ``sampling`` entry)."""
    return {"scheme": SAMPLING_VERSION, "temperature": float(temperature), "seed": int(seed), "sample": int(index)}


def sample_seed(prompt: Any, seed: int, index: int) -> int:
    """The generator seed of sample ``index`` of ``prompt`` under the run seed ``seed`` (63 bits of a SHA-256):
    the same for the same three whatever else is asked, different for each sample and prompt."""
    material = json.dumps({"prompt": prompt, "seed": int(seed), "sample": int(index)}, sort_keys=True)
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big") >> 1


def sampled_answers(model: Any, tokenizer: Any, prompts: Sequence[Any], *, samples: int, temperature: float, seed: int,
                    max_new_tokens: int, system: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    desc: str | None = None, use_cache: bool = True) -> list[list[dict[str, Any]]]:
    """``samples`` sampled answers (``text``, ``ids``) per prompt at ``temperature``, in prompt order: like
    `base_answers`, through the cache, keyed apart from greedy answers (module docstring).

    Deterministic for ``seed``: sample ``j`` of a prompt is drawn with its own generator seeded by
    `sample_seed` (prompt, seed, j), so a second call, a cache hit and a fresh generation agree.
    """
    if samples < 1 or temperature <= 0:
        raise TokengraftError(f"sampled answers need samples >= 1 and temperature > 0; got {samples} and {temperature}")
    flat = [prompt for prompt in prompts for _ in range(samples)]
    indices = [j for _ in prompts for j in range(samples)]
    seeds = [sample_seed(prompt, seed, j) for prompt, j in zip(flat, indices)]

    def generate(chosen: list[int]) -> list[dict[str, Any]]:
        return generate_batch(model, tokenizer, [flat[i] for i in chosen], max_new_tokens=max_new_tokens,
                              system=system, batch_size=batch_size, desc=desc, temperature=temperature,
                              seeds=[seeds[i] for i in chosen])

    answers = _cached(model, tokenizer, flat, generate, max_new_tokens=max_new_tokens, system=system,
                      use_cache=use_cache, sampling=[sampling_settings(temperature, seed, j) for j in indices])
    return [answers[i:i + samples] for i in range(0, len(answers), samples)]


def _cached(model: Any, tokenizer: Any, prompts: Sequence[Any], generate: Callable[[list[int]], list[dict[str, Any]]],
            *, max_new_tokens: int, system: str | None, use_cache: bool,
            sampling: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Answers for ``prompts`` (each with its ``sampling`` settings, or all greedy): read from the cache,
    the rest made by ``generate(indices into prompts)`` (each distinct key once) and stored."""
    directory = answers_dir() if use_cache else None
    if directory is None or not prompts:
        note(prompts=len(prompts), cached=0, generated=len(prompts))
        return generate(list(range(len(prompts))))
    model_fingerprint = fingerprint(model)
    keys = answer_keys(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=system,
                       model_fingerprint=model_fingerprint, sampling=sampling)
    path = directory / f"{model_fingerprint}.json"
    entries = read_entries(path, model_fingerprint)
    missing: dict[str, int] = {}  # key -> the first prompt with it
    for index, key in enumerate(keys):
        if key not in entries and key not in missing:
            missing[key] = index
    if missing:
        generated = generate(list(missing.values()))
        new = {key: {"text": out["text"], "ids": out["ids"]} for key, out in zip(missing, generated)}
        _store(path, model_fingerprint, new)
        entries = {**entries, **new}
    note(prompts=len(prompts), cached=sum(1 for k in keys if k not in missing), generated=len(missing))
    return [{"text": entries[k]["text"], "ids": list(entries[k]["ids"])} for k in keys]
