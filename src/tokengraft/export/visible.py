"""Which of a run's tokens an export shows to clients, and how it writes them so.

Servers drop special tokens from the text they return: vLLM (``skip_special_tokens=True`` by
default, chat and completions alike), transformers' ``decode(skip_special_tokens=True)`` and
llama.cpp (a CONTROL token is printed only when asked). A ``<PASS>`` added as a special token is
the model's whole answer to an unanswerable question, so a client of a served ``<PASS>`` model
receives ``""``. What decides it is the added token's ``special`` flag in ``tokenizer.json``
(measured under transformers 5.19 and 5.24 and in vLLM's incremental detokenizer): a NON-special
added token keeps its id, still tokenizes as one piece (the tokenizer matches every added token
before the model's own splitting, special or not), and is printed.

So an export writes the task's *answer tokens* (``Task.answer_tokens``: ``<PASS>``; tokens the
model writes, not ones a user puts in the prompt) as normal added tokens and changes nothing else:
the same id, ``normalized`` as it was, the same chat template. ``export --keep-special`` (or
``visible_tokens=[]``) writes the tokenizer exactly as the run has it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tokengraft.errors import TokengraftError
from tokengraft.rundir import CONFIG_FILE, read_graft_meta, read_run_recipe
from tokengraft.tasks import get_task

# Lists of special tokens that transformers writes beside tokenizer.json (5.x: extra_special_tokens).
_SPECIAL_LIST_KEYS = ("extra_special_tokens", "additional_special_tokens")


def run_task(run_dir: str | Path) -> str | None:
    """The task a run was trained for (its recipe), or None for a run saved without one."""
    return read_run_recipe(run_dir).task if (Path(run_dir) / CONFIG_FILE).is_file() else None


def resolve_visible_tokens(run_dir: str | Path, requested: list[str] | None) -> list[str]:
    """The run's tokens an export writes as normal added tokens.

    ``requested`` None: the task's answer tokens the run added (``<PASS>`` for task pass, none
    for the others); a list: exactly those, each of which must be one of the run's tokens.
    """
    run_tokens = [t["token"] for t in read_graft_meta(run_dir).get("tokens", [])]
    if requested is None:
        task = run_task(run_dir)
        return [t for t in get_task(task).answer_tokens if t in run_tokens] if task else []
    unknown = [t for t in requested if t not in run_tokens]
    if unknown:
        raise TokengraftError(f"--visible-tokens names {unknown}, which the run did not add "
                              f"(its tokens: {', '.join(run_tokens[:10]) or 'none'}); list only the run's own tokens")
    return list(dict.fromkeys(requested))


def special_flags(tokenizer: Any, tokens: list[str]) -> dict[str, bool]:
    """Token -> whether the tokenizer holds it as a special token (decode(skip_special_tokens) drops it)."""
    decoder = tokenizer.added_tokens_decoder
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return {t: bool(decoder[i].special) if i in decoder else False for t, i in zip(tokens, ids)}


def rewrite_special_flags(directory: str | Path, tokens: list[str]) -> list[str]:
    """Mark ``tokens`` non-special in the tokenizer files of ``directory``; returns the tokens changed.

    ``tokenizer.json`` decides (its added token's ``special``); the lists in
    ``tokenizer_config.json`` / ``special_tokens_map.json`` only add ids to ``all_special_ids``,
    so they are made to agree with it.
    """
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise TokengraftError(f"{directory} has no tokenizer.json: showing special tokens needs a fast tokenizer")
    spec = json.loads(path.read_text(encoding="utf-8"))
    wanted = set(tokens)
    changed = []
    for added in spec.get("added_tokens", []):
        if added.get("content") in wanted and added.get("special"):
            added["special"] = False
            changed.append(added["content"])
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        side = directory / name
        if not side.is_file():
            continue
        config = json.loads(side.read_text(encoding="utf-8"))
        for key in _SPECIAL_LIST_KEYS:
            value = config.get(key)
            if isinstance(value, list):
                config[key] = [v for v in value if (v.get("content") if isinstance(v, dict) else v) not in wanted]
            elif isinstance(value, dict):
                config[key] = {k: v for k, v in value.items() if v not in wanted}
        for entry in (config.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, dict) and entry.get("content") in wanted:
                entry["special"] = False
        side.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return changed


def show_tokens(tokenizer: Any, tokens: list[str]) -> Any:
    """A copy of ``tokenizer`` in which ``tokens`` are normal added tokens; refuses any other change.

    The copy goes through files (save, rewrite the flags, load), the same files an export writes,
    so what is checked here is what a server reads: every id, the one-piece tokenization of each
    token and the chat template are those of the run's tokenizer.
    """
    from transformers import AutoTokenizer

    if not tokens:
        return tokenizer
    with tempfile.TemporaryDirectory(prefix="tokengraft-visible-") as tmp:
        tokenizer.save_pretrained(tmp)
        rewrite_special_flags(tmp, tokens)
        shown = AutoTokenizer.from_pretrained(tmp)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    problems = []
    if len(shown) != len(tokenizer) or shown.get_vocab() != tokenizer.get_vocab():
        problems.append("the vocabulary changed")
    for token, i in zip(tokens, ids):
        if shown(token, add_special_tokens=False)["input_ids"] != [i]:
            problems.append(f"{token!r} no longer tokenizes as the one id {i}")
        if special_flags(shown, [token])[token]:
            problems.append(f"{token!r} is still special")
    if getattr(shown, "chat_template", None) != getattr(tokenizer, "chat_template", None):
        problems.append("the chat template changed")
    if problems:
        raise TokengraftError(f"could not write {tokens} as normal tokens: {'; '.join(problems)}; "
                              "export with --keep-special instead")
    return shown
