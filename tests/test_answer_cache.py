"""The answers cache (answer_cache.py): the base model's greedy answers are generated once,
read back afterwards, and a damaged cache file is never believed."""

from __future__ import annotations

import json

import pytest

from tokengraft.answer_cache import answers_dir, base_answers
from tokengraft.files import write_json
from tokengraft.generation import generate_batch
from tokengraft.timing import phase
from tiny import tiny_model, tiny_tokenizer

PROMPTS = ["what is 2+2?", "hi", "name a colour", "hi"]


@pytest.fixture()
def answers(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENGRAFT_ANSWER_CACHE", str(tmp_path / "answers"))
    return tmp_path / "answers"


def ask(model, tokenizer, prompts=PROMPTS, **kwargs):
    """(answers, the phase's note: prompts / cached / generated)."""
    with phase("base answers") as record:
        out = base_answers(model, tokenizer, prompts, max_new_tokens=kwargs.pop("max_new_tokens", 6), **kwargs)
    return out, record.detail


def test_answers_are_generated_once_then_read_back(answers):
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    fresh = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=6)
    first, note = ask(model, tokenizer)
    assert first == [{"text": r["text"], "ids": r["ids"]} for r in fresh]
    assert note == {"prompts": 4, "cached": 0, "generated": 3}  # "hi" twice is asked once
    again, note = ask(model, tokenizer)
    assert again == first and note == {"prompts": 4, "cached": 4, "generated": 0}
    files = list(answers.glob("*.json"))
    assert len(files) == 1 and len(json.loads(files[0].read_text())["entries"]) == 3


def test_the_key_covers_model_settings_and_system_prompt(answers):
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    ask(model, tokenizer)
    assert ask(model, tokenizer, max_new_tokens=7)[1]["generated"] == 3
    assert ask(model, tokenizer, system="Be brief.")[1]["generated"] == 3
    _, note = ask(tiny_model("llama", seed=1), tokenizer)
    assert note["generated"] == 3 and len(list(answers.glob("*.json"))) == 2  # one file per base model


@pytest.mark.parametrize("damage", ["not json", "tampered entry", "wrong format", "bad entry"])
def test_a_damaged_cache_file_is_ignored_with_a_warning_and_rewritten(answers, damage):
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    good, _ = ask(model, tokenizer)
    path = next(answers.glob("*.json"))
    data = json.loads(path.read_text())
    key = next(iter(data["entries"]))
    if damage == "not json":
        path.write_text("{ half a file")
    elif damage == "tampered entry":  # a plausible entry whose digest no longer matches
        data["entries"][key]["text"] = "Paris."
        write_json(path, data)
    elif damage == "wrong format":
        write_json(path, {**data, "format": 99})
    else:
        data["entries"][key] = {"text": 3}
        write_json(path, data)
    with pytest.warns(UserWarning, match="ignoring the answers cache"):
        again, note = ask(model, tokenizer)
    assert again == good and note["generated"] == 3  # recomputed, not believed
    assert ask(model, tokenizer)[1]["cached"] == 4  # and the file is whole again


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENGRAFT_ANSWER_CACHE", "off")
    assert answers_dir() is None
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    assert ask(model, tokenizer)[1]["generated"] == 4
    assert ask(model, tokenizer)[1]["generated"] == 4
