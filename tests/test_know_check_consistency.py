"""Know-check labels from several sampled answers (issue 19, ``data.know_check_samples``).

- the labelling rule (tasks/pass_data.label_with_base_answers with ``sample_fn``): known = greedy right AND at
  least half of the samples right; rows record ``base_samples`` and ``know_share``;
- sampling (generation.generate_batch with ``temperature`` / ``seeds``): a draw from the softmax, one generator
  per prompt, so a prompt's answer depends on its seed only (not its batch, order or decoding path);
- the answers cache (answer_cache.sampled_answers): deterministic for a seed, keyed apart from greedy answers;
- the recipe checks, and the data preparation: ``know_check_samples: 0`` leaves the rows as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import tiny_model, tiny_tokenizer
from tokengraft.answer_cache import base_answers, sampled_answers
from tokengraft.config import recipe_from_dict, validate_recipe
from tokengraft.errors import TokengraftError
from tokengraft.generation import generate_batch, row_generators, sample_tokens
from tokengraft.tasks import get_task
from tokengraft.tasks import pass_data as P
from tokengraft.tasks import style_data as S
from tokengraft.timing import phase
from tokengraft.training import prepare

GOLD = {"France": "Paris", "Peru": "Lima", "Japan": "Tokyo", "Chile": "Santiago"}


def _rows() -> list[dict]:
    rows = [{"prompt": f"What is the capital of {c}?", "completion": f"{g}.", "answerable": True, "gold": g,
             "aliases": [], "relation": "capital"} for c, g in GOLD.items()]
    return rows + [{"prompt": "What is the capital of Blorvania?", "completion": P.PASS_TOKEN, "answerable": False,
                    "kind": "fictional_entity"}]


def _greedy(prompts: list[str]) -> list[str]:
    """Right for every country but Chile."""
    return [f"It is {GOLD[p.split(' of ')[1][:-1]]}." if "Chile" not in p else "It is Lima." for p in prompts]


# How many of the samples are right, per country: France 3/5, Peru 2/5, Japan 2/4 (exactly half), Chile 5/5.
RIGHT_OF = {"France": (3, 5), "Peru": (2, 5), "Japan": (2, 4), "Chile": (5, 5)}


def _samples(prompts: list[str]) -> list[list[str]]:
    out = []
    for prompt in prompts:
        country = prompt.split(" of ")[1][:-1]
        right, n = RIGHT_OF[country]
        out.append([f"{GOLD[country]}!" if i < right else "Nowhere." for i in range(n)])
    return out


# ----------------------------------------------------------------------------- the labelling rule


def test_known_needs_the_greedy_answer_and_half_the_samples_right():
    labelled = P.label_with_base_answers(_rows(), _greedy, self_answers=True, know_check=True, sample_fn=_samples)
    by = {r["prompt"].split(" of ")[1][:-1]: r for r in labelled}
    expected = {"France": "right", "Peru": "wrong", "Japan": "right", "Chile": "wrong"}
    assert {c: by[c]["know_check"] for c in GOLD} == expected
    assert {c: by[c]["know_share"] for c in GOLD} == {"France": 0.6, "Peru": 0.4, "Japan": 0.5, "Chile": 1.0}
    assert by["France"]["base_samples"] == ["Paris!"] * 3 + ["Nowhere."] * 2
    # known: the greedy answer (never a sample) under self_answers; unknown: <PASS> under know_check
    assert by["France"]["completion"] == "It is Paris." and by["Japan"]["completion"] == "It is Tokyo."
    assert by["Peru"]["completion"] == by["Chile"]["completion"] == P.PASS_TOKEN
    assert by["Peru"]["gold_completion"] == "Lima." and by["Peru"]["base_answer"] == "It is Lima."
    blorvania = by["Blorvania"]
    assert blorvania == _rows()[-1]  # unanswerable rows come back unchanged: no samples asked for them
    # the same rule for drop_unknown / self_answers alone (know_check off): unknown keeps the gold completion
    kept = P.label_with_base_answers(_rows(), _greedy, self_answers=True, know_check=False, sample_fn=_samples)
    assert [r["completion"] for r in kept[:4]] == ["It is Paris.", "Lima.", "It is Tokyo.", "Santiago."]
    assert prepare.drop_unknown(kept) == [kept[0], kept[2], kept[4]]  # France, Japan, Blorvania


def test_without_samples_the_rule_is_the_greedy_one():
    greedy = P.label_with_base_answers(_rows(), _greedy, self_answers=True, know_check=True)
    assert [r.get("know_check") for r in greedy] == ["right", "right", "right", "wrong", None]
    assert not any("base_samples" in r or "know_share" in r for r in greedy)
    # a file labelled with samples before, labelled again without: a stale know_share does not outlive its rule
    sampled = P.label_with_base_answers(_rows(), _greedy, self_answers=True, know_check=True, sample_fn=_samples)
    again = P.label_with_base_answers(sampled, _greedy, self_answers=True, know_check=True)
    assert [r.get("know_check") for r in again] == ["right", "right", "right", "wrong", None]
    assert not any("know_share" in r for r in again)


def test_rows_labelled_before_are_sampled_again_and_bad_sample_lists_are_refused():
    first = P.label_with_base_answers(_rows(), _greedy, self_answers=False, know_check=True, sample_fn=_samples)
    all_right = lambda prompts: [[GOLD[p.split(" of ")[1][:-1]]] * 2 for p in prompts]  # noqa: E731
    again = P.label_with_base_answers(first, _greedy, self_answers=False, know_check=True, sample_fn=all_right)
    assert [r["know_check"] for r in again[:4]] == ["right", "right", "right", "wrong"]  # Chile: greedy wrong
    assert again[1]["base_samples"] == ["Lima", "Lima"] and again[1]["completion"] == "Lima."
    with pytest.raises(ValueError, match="samples for 3 of 4 prompts"):
        P.label_with_base_answers(_rows(), _greedy, self_answers=False, know_check=True,
                                  sample_fn=lambda prompts: _samples(prompts)[:-1])
    with pytest.raises(ValueError, match="at least one sampled answer"):
        P.label_with_base_answers(_rows(), _greedy, self_answers=False, know_check=True,
                                  sample_fn=lambda prompts: [[] for _ in prompts])


def test_the_style_labeller_refuses_samples_and_the_registry_says_which_task_samples():
    with pytest.raises(ValueError, match="know_check_samples: 0"):
        S.label_with_base_answers([], lambda p: p, self_answers=True, know_check=False, sample_fn=_samples)
    assert S.label_with_base_answers([], lambda p: p, self_answers=True, know_check=False) == []
    assert get_task("pass").know_check_samples and not get_task("style").know_check_samples


# ----------------------------------------------------------------------------- sampling


def test_sample_tokens_draws_from_the_tempered_softmax():
    # logits (0, log 3): p = (1/4, 3/4) at T = 1; at T = 0.5 the logits double: (1/10, 9/10)
    logits = torch.tensor([[0.0, float(torch.log(torch.tensor(3.0)))]]).repeat(4000, 1)
    for temperature, expected in ((1.0, 0.75), (0.5, 0.9)):
        chosen = sample_tokens(logits, temperature, row_generators(range(4000)))
        assert abs(chosen.float().mean().item() - expected) < 0.03
    # each row's draw is its generator's alone: the same seeds in another batch give the same tokens
    a = sample_tokens(logits[:6], 1.0, row_generators([7, 8, 9, 10, 11, 12]))
    b = sample_tokens(logits[:3], 1.0, row_generators([10, 11, 12]))
    assert a[3:].tolist() == b.tolist()
    # a row without a generator (finished, kept in the batch) gets no noise: the argmax
    assert sample_tokens(logits[:1], 1.0, [None]).tolist() == [1]


PROMPTS = ["what is 2+2?", "hi", "name a colour", "hi", "a much longer prompt about many things"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama"), tiny_tokenizer()


def test_a_prompts_sample_depends_on_its_seed_not_its_batch_order_or_path(tiny):
    model, tokenizer = tiny
    seeds = [11, 12, 13, 14, 15]
    ask = lambda prompts, seeds, **kw: [r["ids"] for r in generate_batch(  # noqa: E731
        model, tokenizer, prompts, max_new_tokens=6, temperature=1.0, seeds=seeds, **kw)]
    first = ask(PROMPTS, seeds)
    assert ask(PROMPTS, seeds) == first
    assert ask(PROMPTS, seeds, batch_size=2) == first
    assert ask(PROMPTS[::-1], seeds[::-1])[::-1] == first
    assert ask(PROMPTS, seeds, through_generate=True) == first  # model.generate + a noise processor: same draws
    assert first[1] != first[3]  # "hi" twice, two seeds: two draws
    assert ask(PROMPTS, [21, 22, 23, 24, 25]) != first
    greedy = [r["ids"] for r in generate_batch(model, tokenizer, PROMPTS, max_new_tokens=6)]
    assert greedy != first  # a random tiny model's greedy answer is one token repeated; samples vary
    with pytest.raises(TokengraftError, match="one seed per prompt"):
        generate_batch(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=1.0, seeds=seeds[:2])


@pytest.fixture()
def answers(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENGRAFT_ANSWER_CACHE", str(tmp_path / "answers"))
    return tmp_path / "answers"


def _sample(model, tokenizer, prompts=PROMPTS, **kwargs):
    settings = {"samples": 3, "temperature": 0.7, "seed": 42, "max_new_tokens": 6, **kwargs}
    with phase("samples") as record:
        out = sampled_answers(model, tokenizer, prompts, **settings)
    return [[a["text"] for a in per_prompt] for per_prompt in out], record.detail


def test_sampled_answers_are_deterministic_for_a_seed_and_cached_apart_from_greedy_answers(tiny, answers):
    model, tokenizer = tiny
    first, note = _sample(model, tokenizer)
    assert len(first) == 5 and all(len(s) == 3 for s in first)
    assert note == {"prompts": 15, "cached": 0, "generated": 12}  # "hi" twice: its 3 samples asked once
    assert first[1] == first[3] and len(set(first[0])) > 1
    again, note = _sample(model, tokenizer)
    assert again == first and note["cached"] == 15
    # the cache changes nothing: the same seed without it gives the same texts, in other batches
    assert _sample(model, tokenizer, use_cache=False, batch_size=2)[0] == first
    # another seed or temperature is another key (and other draws); more samples extend the first ones
    other, note = _sample(model, tokenizer, seed=43)
    assert note["generated"] == 12 and other != first
    assert _sample(model, tokenizer, temperature=1.3)[1]["generated"] == 12
    more, note = _sample(model, tokenizer, samples=5)
    assert note["generated"] == 8 and [m[:3] for m in more] == first
    # greedy answers never come from the sampled entries, nor sampled ones from greedy entries
    with phase("greedy") as record:
        greedy = base_answers(model, tokenizer, PROMPTS, max_new_tokens=6)
    assert record.detail["generated"] == 4
    assert [g["text"] for g in greedy] == [r["text"] for r in generate_batch(model, tokenizer, PROMPTS,
                                                                            max_new_tokens=6)]
    entries = json.loads(next(answers.glob("*.json")).read_text())["entries"]
    assert len(entries) == 12 + 12 + 12 + 8 + 4


# ----------------------------------------------------------------------------- the recipe


def _raw(**data) -> dict:
    return {"task": "pass", "tokens": {"add": ["<PASS>"]}, "data": {"generate": True, **data}}


@pytest.mark.parametrize("data, message", [
    ({"know_check": True, "know_check_samples": 1}, "know_check_samples must be 0 .* or at least 2"),
    ({"know_check": True, "know_check_samples": -2}, "know_check_samples must be >= 0"),
    ({"know_check": True, "know_check_samples": 5, "know_check_temperature": 0}, "know_check_temperature must be > 0"),
    ({"know_check_samples": 5}, "nothing reads here; set data.know_check .* data.drop_unknown .* data.self_answers"),
])
def test_recipe_checks_for_know_check_samples(data: dict, message: str):
    with pytest.raises(TokengraftError, match=message):
        validate_recipe(recipe_from_dict(_raw(**data)))


def test_recipe_accepts_samples_with_each_label_option_and_refuses_the_style_task():
    for option in ("know_check", "drop_unknown", "self_answers"):
        assert not any("know_check" in n for n in validate_recipe(recipe_from_dict(
            _raw(**{option: True, "know_check_samples": 3}))))
    assert "data.know_check_temperature is ignored" in " ".join(
        validate_recipe(recipe_from_dict(_raw(know_check=True, know_check_temperature=1.0))))
    style = {"task": "style", "tokens": {"add": ["<STYLE_TERSE>", "<STYLE_VERBOSE>"]},
             "data": {"generate": True, "self_answers": True, "know_check_samples": 3}}
    with pytest.raises(TokengraftError, match="task style labels its rows by one greedy answer; set "
                                              "data.know_check_samples: 0"):
        validate_recipe(recipe_from_dict(style))


# ----------------------------------------------------------------------------- data preparation


def _prepare(tiny, tmp_path: Path, name: str, seed: int = 3, **data):
    model, tokenizer = tiny
    recipe = recipe_from_dict({"seed": seed, "task": "pass", "tokens": {"add": ["<PASS>"]},
                               "data": {"generate": True, "know_check": True,
                                        "generate_options": {"n_train": 16, "n_validation": 4, "n_test": 4},
                                        **data},
                               "eval": {"max_new_tokens": 4, "batch_size": 8}})
    validate_recipe(recipe)
    prepared = prepare.prepare_data(recipe, tmp_path / name, tokenizer, model)
    return prepared, (tmp_path / name / "train.jsonl").read_bytes()


def test_know_check_samples_0_leaves_the_rows_as_they_were(tiny, tmp_path: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampled answers asked for with know_check_samples: 0")

    monkeypatch.setattr(prepare, "sampled_answers", refuse)
    prepared, written = _prepare(tiny, tmp_path, "greedy")
    model, tokenizer = tiny
    # the rows are exactly the greedy labeller's, called as before this option existed, and nothing new
    generated = get_task("pass").generate(3, {"n_train": 16, "n_validation": 4, "n_test": 4}).splits["train"]
    answer = lambda prompts: [a["text"] for a in base_answers(model, tokenizer, prompts,  # noqa: E731
                                                              max_new_tokens=48, batch_size=8)]
    expected = P.label_with_base_answers(generated, answer, self_answers=False, know_check=True)
    assert prepared.train == expected
    assert written == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in expected).encode()
    assert not any("base_samples" in r or "know_share" in r for r in prepared.train)


def test_prepared_rows_with_samples_are_the_same_for_the_same_seed(tiny, tmp_path: Path, monkeypatch):
    first, written = _prepare(tiny, tmp_path, "a", know_check_samples=3)
    answerable = [r for r in first.train if r.get("answerable")]
    assert answerable and all(len(r["base_samples"]) == 3 and "know_share" in r for r in answerable)
    assert all(r["know_check"] == "wrong" and r["completion"] == P.PASS_TOKEN for r in answerable)  # knows nothing
    monkeypatch.setenv("TOKENGRAFT_ANSWER_CACHE", "off")  # generated afresh, not read back
    assert _prepare(tiny, tmp_path, "b", know_check_samples=3)[1] == written
    other = _prepare(tiny, tmp_path, "c", know_check_temperature=1.5, know_check_samples=3)[0]
    assert [r.get("base_samples") for r in other.train] != [r.get("base_samples") for r in first.train]
