"""Task data generators: determinism, sizes, split hygiene, corruption kinds, lexicon mining."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from tokengraft.errors import TokengraftError
from tokengraft.tasks.bank import (BASIC_RELATIONS, TEMPLATES, answer_matches, bank_entities, load_countries, load_facts, make_question, split_bank)
from tokengraft.tasks.splits import check_disjoint, read_jsonl, write_jsonl, write_splits
from tokengraft.tasks import lexicon_data as L
from tokengraft.tasks import pass_data as P
from tokengraft.tasks import style_data as S
from tiny import tiny_tokenizer

CHAT_MARKUP = re.compile(r"<\|im_start\|>|<\|im_end\|>|<s>|</s>|\bassistant\n")


@pytest.fixture(scope="module")
def pass_splits():
    return P.generate_splits(seed=0)


@pytest.fixture(scope="module")
def style_splits():
    return S.generate_splits(seed=0)


@pytest.fixture(scope="module")
def lexicon_splits():
    return L.generate_splits(seed=0)


# ----------------------------------------------------------------------------- tables and bank


def test_country_table_is_large_clean_and_never_leaks_the_answer():
    rows = load_countries()
    assert len(rows) >= 120
    assert len({r["country"] for r in rows}) == len(rows)
    assert {r["continent"] for r in rows} <= {"Europe", "Asia", "Africa", "North America", "South America",
                                              "Oceania", "Europe and Asia"}
    for r in rows:
        assert r["capital"] and r["article"] in ("", "the")
        # Echoing the question must not count as answering it ("Tunis" is not a word of "Tunisia").
        assert not answer_matches(f"{r['article']} {r['country']}", r["capital"], r["aliases"]), r


def test_fact_table_has_every_relation_and_numeric_golds_get_words():
    facts = load_facts()
    assert Counter(f["relation"] for f in facts).keys() == {"count", "colour", "opposite", "sound", "year"}
    spider = next(e for e in bank_entities("count") if e.key == "count:a spider|legs")
    assert spider.gold == "8" and "eight" in spider.aliases


def test_commutative_sums_are_one_entity():
    keys = [e.key for e in bank_entities("add")]
    assert len(keys) == len(set(keys)) == 210  # unordered pairs 1..20 with repetition
    seven_five = next(e for e in bank_entities("add") if e.key == "add:5+7")
    assert {(v["a"], v["b"]) for v in seven_five.variants} == {("5", "7"), ("7", "5")}


def test_bank_split_partitions_entities_and_templates():
    bank = split_bank(3)
    for rel in TEMPLATES:
        ents = [{e.key for e in bank[s].entities[rel]} for s in ("train", "validation", "test")]
        tmpl = [set(bank[s].templates[rel]) for s in ("train", "validation", "test")]
        assert not (ents[0] & ents[1] or ents[0] & ents[2] or ents[1] & ents[2])
        assert set().union(*ents) == {e.key for e in bank_entities(rel)}
        assert not (tmpl[0] & tmpl[1] or tmpl[0] & tmpl[2] or tmpl[1] & tmpl[2])
        assert all(tmpl)


def test_more_validation_templates_grow_validation_and_leave_test_alone():
    one, two = split_bank(3), split_bank(3, validation_templates=2)
    for rel in TEMPLATES:
        assert two["test"].templates[rel] == one["test"].templates[rel]
        assert two["test"].entities[rel] == one["test"].entities[rel]
        assert set(one["validation"].templates[rel]) < set(two["validation"].templates[rel])
        assert set(two["train"].templates[rel]) < set(one["train"].templates[rel]) and two["train"].templates[rel]
    small = P.generate_splits(seed=3, n_train=50, n_validation=40, n_test=60, relations="all")
    grown = P.generate_splits(seed=3, n_train=50, n_validation=40, n_test=60, relations="all", validation_templates=2)
    assert grown["test"] == small["test"]
    for bad in (0, 4, True, 1.5):
        with pytest.raises(ValueError, match="validation_templates must be a whole number from 1 to 3"):
            split_bank(3, validation_templates=bad)


def test_answer_matching_is_whole_word_and_accent_blind():
    assert answer_matches("The capital of France is Paris.", "Paris")
    assert answer_matches("It is BOGOTÁ", "Bogota")
    assert answer_matches("Washington, D.C.", "Washington D.C.")
    assert not answer_matches("18", "8")
    # Numeric golds: the last number written in digits is the answer.
    assert answer_matches("To add 4 and 11, we get 15.", "15")
    assert not answer_matches("7 + 5 = 12", "7") and not answer_matches("4 and 11", "15")
    # A decimal is one number: "100.0" is 100 (not a last number 0), "2.5" is neither 2 nor 5.
    assert answer_matches("Water boils at approximately 100.0 degrees Celsius.", "100")
    assert not answer_matches("It is 2.5", "5") and not answer_matches("It is 2.5", "2", any_number=True)
    assert answer_matches("It ended in 1969.", "1969") and answer_matches("In 1,969.0 years", "1969")
    assert not answer_matches("Parisian", "Paris")
    assert answer_matches("Spiders have eight legs", "8", ["eight"])


def test_jsonl_roundtrip(tmp_path):
    rows = [{"prompt": "Qué?", "completion": "<PASS>", "kind": "x"}, {"prompt": "b", "completion": None}]
    path = write_jsonl(rows, tmp_path / "sub" / "rows.jsonl")
    assert read_jsonl(path) == rows
    paths = write_splits({"train": rows[:1], "test": rows[1:]}, tmp_path / "splits")
    assert sorted(p.name for p in paths.values()) == ["test.jsonl", "train.jsonl"]
    assert read_jsonl(paths["test"]) == rows[1:]


# ----------------------------------------------------------------------------- PASS data


def test_pass_generator_is_deterministic(pass_splits):
    assert P.generate_splits(seed=0) == pass_splits
    other = P.generate_splits(seed=1)
    assert [r["prompt"] for r in other["train"]] != [r["prompt"] for r in pass_splits["train"]]


def test_pass_sizes_balance_and_targets(pass_splits):
    assert {k: len(v) for k, v in pass_splits.items()} == {"train": 400, "validation": 100, "test": 200}
    for rows in pass_splits.values():
        assert sum(not r["answerable"] for r in rows) == len(rows) // 2
        for r in rows:
            assert not CHAT_MARKUP.search(r["prompt"])
            if r["answerable"]:
                assert r["kind"] == "answerable" and answer_matches(r["completion"], r["gold"])
                assert r["completion"] != P.PASS_TOKEN
            else:
                assert r["completion"] == P.PASS_TOKEN and r["gold"] is None
                assert r["prompt"] != r["source_question"]
    small = P.generate_splits(seed=0, n_train=40, n_validation=10, n_test=20, pass_fraction=0.25)
    assert [len(small[s]) for s in ("train", "validation", "test")] == [40, 10, 20]
    assert sum(not r["answerable"] for r in small["train"]) == 10


def test_pass_splits_never_overlap_and_test_has_unseen_kinds(pass_splits):
    P.check_splits(pass_splits)
    train_kinds = {r["kind"] for r in pass_splits["train"]}
    test_kinds = {r["kind"] for r in pass_splits["test"]}
    assert train_kinds == {"answerable", *P.TRAIN_KINDS}
    assert test_kinds - train_kinds == set(P.TEST_ONLY_KINDS)
    prompts = [r["prompt"] for rows in pass_splits.values() for r in rows]
    assert len(prompts) == len(set(prompts))


def test_overlap_check_catches_a_leak(pass_splits):
    leaked = dict(pass_splits)
    leaked["test"] = [*pass_splits["test"], dict(pass_splits["train"][0])]
    with pytest.raises(AssertionError, match="both train and test"):
        check_disjoint(leaked)
    no_novel = P.generate_splits(seed=0, n_train=40, n_validation=10, n_test=20, test_only_kinds=())
    with pytest.raises(AssertionError, match="unseen"):
        P.check_splits(no_novel)


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown kinds"):
        P.generate_splits(n_train=10, train_kinds=("char_noise", "typo"))


def _questions(relation, n=15, seed=0):
    rng = random.Random(seed)
    return [make_question(e, t, rng) for e in bank_entities(relation)[:n] for t in range(len(TEMPLATES[relation]))]


@pytest.mark.parametrize("kind", ["char_noise", "dropped_words", "missing_operand", "truncated"])
@pytest.mark.parametrize("relation", ["capital", "add", "mul", "count", "sound"])
def test_corruptions_destroy_the_entity(kind, relation):
    rng = random.Random(0)
    for q in _questions(relation):
        text = P.corrupt(q, kind, rng)
        assert text and text != q.text
        slots = [q.text[s:e].lower() for s, e in q.slots]
        if kind in ("char_noise", "dropped_words") or len(slots) == 1:
            assert not any(s in text.lower() for s in slots), (q.text, text)
        if kind == "char_noise" and relation in ("add", "mul"):
            assert not re.search(r"\d", text), (q.text, text)  # a changed digit would be a new answerable sum
        if kind == "truncated" and relation in ("add", "mul"):
            assert len(re.findall(r"\d+", text)) <= 1, (q.text, text)


def test_shuffled_words_keep_the_words_but_break_the_order():
    rng = random.Random(0)
    for q in _questions("capital") + _questions("sub"):
        text = P.corrupt(q, "shuffled_words", rng)
        assert sorted(text.split()) == sorted(q.text.split()) and text != q.text


def test_fictional_entities_are_invented_and_unique_across_splits(pass_splits):
    real = {c["country"].lower() for c in load_countries()} | P.REAL_NAMES_NOT_IN_TABLE
    names = {s: {r["entity"] for r in rows if r["kind"] == "fictional_entity"} for s, rows in pass_splits.items()}
    assert all(names.values())
    assert not (names["train"] & names["test"] or names["train"] & names["validation"])
    for name in set().union(*names.values()):
        assert name.startswith("fictional:") and name.split(":", 1)[1].lower() not in real
    # Arithmetic has no fictional counterpart.
    assert not any(r["kind"] == "fictional_entity" and r["relation"] in ("add", "sub", "mul")
                   for rows in pass_splits.values() for r in rows)


def test_is_correct_and_know_check_relabelling(pass_splits):
    rows = pass_splits["validation"]
    answerable = [r for r in rows if r["answerable"]]
    asked: list[list[str]] = []

    def answer_fn(prompts):  # right on every other answerable question, then a wrong guess
        asked.append(prompts)
        return [f"I think it is {r['gold']}." if i % 2 == 0 else "Bananas." for i, r in enumerate(answerable)]

    before = [dict(r) for r in rows]
    out = P.label_with_base_answers(rows, answer_fn, self_answers=False, know_check=True)
    assert len(out) == len(rows) and out is not rows
    for i, r in enumerate(r for r in out if r["answerable"]):
        assert r["know_check"] == ("right" if i % 2 == 0 else "wrong")
        assert r["completion"] == (answerable[i]["completion"] if i % 2 == 0 else P.PASS_TOKEN)
    assert all("know_check" not in r and r["completion"] == P.PASS_TOKEN for r in out if not r["answerable"])
    assert rows == before  # the input rows are not modified
    # self_answers: right answers become the base model's own words; wrong ones keep the gold.
    both = P.label_with_base_answers(out, lambda p: pytest.fail("labelled rows must not be asked again"),
                                     self_answers=True, know_check=False)
    for i, r in enumerate(r for r in both if r["answerable"]):
        assert r["completion"] == (f"I think it is {answerable[i]['gold']}." if i % 2 == 0
                                   else answerable[i]["completion"])
    assert len(asked) == 1
    with pytest.raises(ValueError, match="answers for"):
        P.label_with_base_answers(rows, lambda prompts: prompts[:-1], self_answers=False, know_check=True)
    # A year is right wherever it appears among the numbers ("in July 1969 with Apollo 11").
    assert P.is_correct("It was in July 1969 with Apollo 11.", {"gold": "1969", "relation": "year"})
    assert not P.is_correct("It was in July 1969 with Apollo 11.", {"gold": "1969", "relation": "add"})
    row = {"gold": "8", "aliases": ["eight"]}
    assert P.is_correct("A spider has eight legs.", row) and not P.is_correct("<PASS> 8", row)
    assert not P.is_correct("18", row)


def test_read_probe_scoring():
    rows = P.read_probe_rows(seed=0, n_questions=6)
    assert len(rows) == 24 and sum(r["has_pass"] for r in rows) == 12
    assert all(P.PASS_TOKEN in r["prompt"] for r in rows if r["has_pass"])
    perfect = [("No." if r["expected"] == "no" else "Yes.") if r["probe"] == "judge" else r["expected"]
               for r in rows]
    score = P.score_read_probe(rows, perfect)
    assert score["judge"]["pair_accuracy"] == 1.0 and score["echo"]["accuracy"] == 1.0
    constant = P.score_read_probe(rows, ["Yes, it did."] * len(rows))
    assert constant["judge"]["accuracy"] == 0.5 and constant["judge"]["pair_accuracy"] == 0.0
    assert constant["judge"]["pass_accuracy"] == 0.0
    with pytest.raises(ValueError):
        P.score_read_probe(rows, perfect[:-1])


# ----------------------------------------------------------------------------- style data


def test_style_generator_pairs_and_format(style_splits):
    assert S.generate_splits(seed=0) == style_splits
    assert {k: len(v) for k, v in style_splits.items()} == {"train": 400, "validation": 100, "test": 200,
                                                           "test_untokened": 50}
    S.check_splits(style_splits)
    for split in ("train", "validation", "test"):
        for r in style_splits[split]:
            token = S.STYLE_TOKENS[r["style"]]
            assert r["prompt"] == token + "\n" + r["question"]
            assert not CHAT_MARKUP.search(r["prompt"])
            assert answer_matches(r["completion"], r["gold"], r["aliases"])
            n_words = len(r["completion"].split())
            assert n_words <= 3 if r["style"] == "terse" else S.VERBOSE_WORDS[0] <= n_words <= S.VERBOSE_WORDS[1]
    untokened = style_splits["test_untokened"]
    assert all(r["prompt"] == r["question"] and r["completion"] is None for r in untokened)
    assert {r["entity"] for r in untokened} <= {r["entity"] for r in style_splits["test"]}
    assert not any(r["style"] == "none" for s in ("train", "validation", "test") for r in style_splits[s])


def test_every_verbose_frame_fits_the_length_band_for_every_entity():
    for relation in BASIC_RELATIONS:  # the style task draws from the basic relations only
        for q in _questions(relation, n=1000):
            for i in range(4):
                class Pick:  # choose frame i (wrapping) instead of a random one
                    @staticmethod
                    def choice(seq):
                        return seq[i % len(seq)]
                text = S.verbose_answer(q, Pick())
                assert S.VERBOSE_WORDS[0] <= len(text.split()) <= S.VERBOSE_WORDS[1], text
                assert answer_matches(text, q.entity.gold) and "{" not in text


def test_style_split_checks_catch_a_broken_pair(style_splits):
    broken = dict(style_splits)
    broken["train"] = style_splits["train"][1:]
    with pytest.raises(AssertionError, match="incomplete style pair"):
        S.check_splits(broken)


# ----------------------------------------------------------------------------- lexicon data


def test_lexicon_corpus_split_by_topic_with_no_shared_text(lexicon_splits):
    assert L.generate_splits(seed=0) == lexicon_splits
    L.check_splits(lexicon_splits)
    total = sum(len(r["text"]) for rows in lexicon_splits.values() for r in rows)
    for split in ("validation", "test"):
        share = sum(len(r["text"]) for r in lexicon_splits[split]) / total
        assert 0.04 < share < 0.2, (split, share)
    # The augmented-assignment paragraph lives in two topics; both must land in one split.
    groups = L.topic_groups(L.corpus_topics())
    assert any({"assignment", "augassign"} <= set(g) for g in groups)
    assert L.generate_splits(seed=1) != lexicon_splits


def test_chunks_respect_size_and_paragraph_boundaries():
    text = "alpha beta\n\n" + "x" * 25 + "\n" + "y" * 5 + "\n\ngamma"
    chunks = L.chunk_text(text, chunk_chars=12)
    assert all(len(c) <= 12 for c in chunks)
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")
    assert chunks[0] == "alpha beta"
    with pytest.raises(TokengraftError):
        L.chunk_text(text, chunk_chars=0)


def test_mine_lexicon_with_tiny_tokenizer(lexicon_splits):
    tok = tiny_tokenizer()
    train = [r["text"] for r in lexicon_splits["train"]]
    words = L.mine_lexicon(train, tok, min_pieces=3, min_count=4, max_words=300)
    counts = L.word_counts(train)
    assert 0 < len(words) <= 300 and len(set(words)) == len(words)
    assert all(counts[w] >= 4 and L.piece_count(tok, w) >= 3 for w in words)
    assert [counts[w] for w in words] == sorted((counts[w] for w in words), reverse=True)
    # Frequent words that cost 1-2 pieces are excluded; the space before a word is not counted.
    assert L.piece_count(tok, "the") == 2 and "the" not in words
    held_out_only = L.word_counts(r["text"] for r in lexicon_splits["test"]).keys() - counts.keys()
    assert held_out_only and not held_out_only & set(words)
    with pytest.raises(TokengraftError):
        L.mine_lexicon(train, tok, min_pieces=1)


def test_read_and_write_lexicon(tmp_path):
    path = tmp_path / "lex.txt"
    path.write_text("# mined words\nfoo\n\n  bar  \nfoo\nC#\n", encoding="utf-8")
    assert L.read_lexicon(path) == ["foo", "bar", "C#"]
    out = L.write_lexicon(["a1", "b2"], tmp_path / "out.txt", header="from pydoc\nseed 0")
    assert L.read_lexicon(out) == ["a1", "b2"]
    with pytest.raises(TokengraftError, match="not found"):
        L.read_lexicon(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(TokengraftError, match="no words"):
        L.read_lexicon(tmp_path / "empty.txt")


@pytest.mark.network
def test_mine_lexicon_with_builtin_tokenizer(lexicon_splits):
    from transformers import AutoTokenizer

    from tokengraft.models import BUILTIN_ALIAS, resolve_model_dir

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(BUILTIN_ALIAS))
    words = L.mine_lexicon([r["text"] for r in lexicon_splits["train"]], tok, min_pieces=3, min_count=3)
    assert "__getattribute__" in words and "the" not in words
    assert all(L.piece_count(tok, w) >= 3 for w in words)


def test_style_plain_rows_have_no_token_and_leave_the_pairs_unchanged(style_splits):
    with_plain = S.generate_splits(seed=0, n_plain=30)
    assert with_plain["train"][:len(style_splits["train"])] == style_splits["train"]
    plain = with_plain["train"][len(style_splits["train"]):]
    assert len(plain) == 30 and all(r["completion"] is None and r["style"] == "none" for r in plain)
    assert all(r["prompt"] == r["question"] and not r["prompt"].startswith("<STYLE") for r in plain)
    assert not {r["question"] for r in plain} & {r["question"] for r in style_splits["train"]}
    S.check_splits(with_plain)


@pytest.mark.parametrize("form", ["sentence", "subject"])
def test_style_terse_forms_reword_only_terse_capital_answers(style_splits, form):
    worded_splits = S.generate_splits(seed=0, terse_form=form)
    changed = 0
    for split in ("train", "validation", "test"):
        for bare, worded in zip(style_splits[split], worded_splits[split]):
            assert {k: v for k, v in bare.items() if k != "completion"} == \
                {k: v for k, v in worded.items() if k != "completion"}
            if bare["style"] == "terse" and bare["relation"] == "capital":
                assert bare["completion"] == bare["gold"] + "." and len(worded["completion"].split()) <= 12
                assert worded["completion"].endswith((" is " if form == "sentence" else ": ") + bare["gold"] + ".")
                assert worded["completion"].startswith("The capital of ") == (form == "sentence")
                changed += 1
            else:
                assert worded["completion"] == bare["completion"]
    assert changed
    with pytest.raises(ValueError, match="terse_form must be one of bare, sentence, subject"):
        S.generate_splits(seed=0, terse_form="short")


def test_word_counts_after_a_space_only_count_what_a_space_led_token_can_match():
    text = "object.__dict__ holds the __dict__ and (__dict__) of the object"
    assert L.word_counts([text])["__dict__"] == 3
    assert L.word_counts([text], after_space=True)["__dict__"] == 1
    assert L.word_counts([text], after_space=True)["object"] == 1  # the first "object" opens the text
