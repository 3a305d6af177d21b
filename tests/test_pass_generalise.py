"""`<PASS>` data beyond corrupted questions (issue 19): unanswerable kinds, held-out kinds and relations,
replay relations in training.

No model: the generators, their splits, the grading of held-out relations and the option errors.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tokengraft.config import load_recipe
from tokengraft.errors import TokengraftError
from tokengraft.tasks import get_task
from tokengraft.tasks import pass_data as P
from tokengraft.tasks.bank import ALL_RELATIONS, bank_entities, split_bank
from tokengraft.tasks.heldout_relations import (HELDOUT_RELATIONS, HELDOUT_SPLIT, heldout_entities,
                                                load_heldout_facts)
from tokengraft.tasks.metrics import pass_metrics
from tokengraft.tasks.replay_relations import (BROAD_REPLAY_RELATIONS, CARRIER_OPENINGS, CARRIER_TEMPLATES,
                                               EXTRA_REPLAY_RELATIONS,
                                               NAMED_REPLAY_RELATIONS, REPLAY_RELATIONS, REPLAY_TEMPLATES,
                                               available_replay_rows, replay_entities, replay_rows)
from tokengraft.tasks.splits import SPLITS, check_disjoint
from tokengraft.tasks.unanswerable import FAMILIES, UNANSWERABLE_KINDS, load_deeds, split_families

TRAINED_NEW = ("future_event", "private_fact", "category_error")
HELD_NEW = ("false_premise", "missing_referent")
OPTIONS = dict(n_train=240, n_validation=80, n_test=200, pass_fraction=0.5,
               train_kinds=P.TRAIN_KINDS + TRAINED_NEW, test_only_kinds=P.TEST_ONLY_KINDS + HELD_NEW,
               heldout_relations="all")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def splits():
    return P.generate_splits(seed=7, **OPTIONS)


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


# sha256 of the rows generated before the new kinds existed (main at b217732): the demo's results depend on them.
BEFORE = {
    "defaults@0": "d34ba0e7c35c8c1e3fea04eb2fbe89bee286eb9f4843313d5ff43c6a2439cc78",
    "demo@42": "8964d84b30ca1fc8c15ce78215b4cc1abf0ead246353fc653426592b5bd2a726",
}


def test_default_rows_are_unchanged_by_the_new_options():
    assert _digest(P.generate_splits(seed=0)) == BEFORE["defaults@0"]
    demo = dict(n_train=1000, n_validation=150, n_test=300, pass_fraction=0.3, relations="all", read_rows=120)
    assert _digest(P.generate_splits(seed=42, **demo)) == BEFORE["demo@42"]  # src/tokengraft/configs/pass.yaml


def test_every_kind_is_generated_where_it_belongs(splits):
    P.check_splits(splits)
    kinds = {s: {r["kind"] for r in rows} for s, rows in splits.items()}
    assert kinds["train"] == kinds["validation"] == {"answerable", *P.TRAIN_KINDS, *TRAINED_NEW}
    assert kinds["test"] - kinds["train"] == {*P.TEST_ONLY_KINDS, *HELD_NEW}
    for kind in HELD_NEW:  # a held-out kind never reaches training or calibration
        assert not any(r["kind"] == kind for s in ("train", "validation") for r in splits[s])
    for split in SPLITS:
        n_pass = sum(not r["answerable"] for r in splits[split])
        assert n_pass == round(OPTIONS[f"n_{split}"] * 0.5) and len(splits[split]) == OPTIONS[f"n_{split}"]
        for r in splits[split]:
            if r["kind"] in UNANSWERABLE_KINDS:
                assert r["completion"] == P.PASS_TOKEN and not r["answerable"] and r["gold"] is None
                assert r["split"] == split and r["template"].startswith(r["kind"] + ":")
                assert r["prompt"].endswith(("?", ".")) and "{" not in r["prompt"], r["prompt"]
    # The <PASS> share is spread evenly: every kind of the test split has its turn.
    per_kind = {k: sum(r["kind"] == k for r in splits["test"]) for k in kinds["test"] - {"answerable"}}
    assert min(per_kind.values()) >= 8, per_kind
    prompts = [r["prompt"] for rows in splits.values() for r in rows]
    assert len(prompts) == len(set(prompts))


def test_the_unanswerable_families_split_by_subject_and_template():
    bank = split_bank(3)
    for kind in UNANSWERABLE_KINDS:
        parts = {s: split_families(3, kind, s, bank) for s in SPLITS}
        whole = split_families(3, kind, "test", bank, whole=True)
        for i, family in enumerate(f for f in FAMILIES if f.kind == kind):
            subjects = [{x.key for x in parts[s][i].subjects} for s in SPLITS]
            templates = [set(parts[s][i].templates) for s in SPLITS]
            for a in range(3):
                assert subjects[a] and templates[a], (kind, family.name)
                for b in range(a + 1, 3):
                    assert not subjects[a] & subjects[b] and not templates[a] & templates[b], (kind, family.name)
            assert set().union(*templates) == set(range(len(family.templates))) == set(whole[i].templates)
            if family.bank_relation is None:
                assert set().union(*subjects) == {x.key for x in family.subjects} == {x.key for x in whole[i].subjects}
            else:  # bank-built false premises keep to the bank's split: a test country stays in test
                for s, keys in zip(SPLITS, subjects):
                    assert keys == {e.key for e in bank[s].entities[family.bank_relation]}
                assert {x.key for x in whole[i].subjects} == subjects[2]


def test_false_premises_pair_a_real_subject_with_an_attribute_it_lacks(splits):
    rows = [r for r in splits["test"] if r["kind"] == "false_premise"]
    assert {r["family"] for r in rows} == {"deed", "capital", "count", "year"}
    deeds = dict(load_deeds())
    golds = {e.key: e for rel in ("capital", "count", "year") for e in bank_entities(rel)}
    for r in rows:
        if r["family"] == "deed":
            person = r["entity"].split(":", 2)[2]
            assert person in r["prompt"] and deeds[person] not in r["prompt"]
            assert any(d in r["prompt"] for p, d in deeds.items() if p != person)
        else:
            entity = golds[r["entity"]]
            if r["family"] == "capital":
                assert not re.search(rf"\b{re.escape(entity.gold)}\b", r["prompt"]), r["prompt"]
            else:
                assert entity.gold not in re.findall(r"\d+", r["prompt"]), r["prompt"]


def test_generation_is_deterministic_for_a_seed(splits):
    assert P.generate_splits(seed=7, **OPTIONS) == splits
    other = P.generate_splits(seed=8, **OPTIONS)
    new = lambda s: [r["prompt"] for r in s["train"] if r["kind"] in UNANSWERABLE_KINDS]  # noqa: E731
    assert new(other) != new(splits)


def test_held_out_relations_are_a_split_of_their_own(splits):
    rows = splits[HELDOUT_SPLIT]
    assert {r["relation"] for r in rows} == set(HELDOUT_RELATIONS) and not set(HELDOUT_RELATIONS) & set(ALL_RELATIONS)
    assert len(rows) == len(load_heldout_facts()) and all(15 <= len(heldout_entities(r)) <= 30 for r in HELDOUT_RELATIONS)
    for r in rows:
        assert r["answerable"] and r["kind"] == "answerable" and r["split"] == HELDOUT_SPLIT
        assert P.is_correct(r["completion"], r), r
        # Echoing the question never answers it ("On which continent is Kenya?" -> "Kenya.").
        assert not P.is_correct(r["prompt"], r), r
    check_disjoint(splits, held_out=("validation", "test", HELDOUT_SPLIT))
    # No training or validation text names a book or an element the held-out split asks about.
    trained = " ".join(r.get("source_question") or r["prompt"] for s in ("train", "validation") for r in splits[s])
    for fact in load_heldout_facts():
        if fact["relation"] in ("author", "chemical_symbol"):
            assert not re.search(rf"\b{re.escape(fact['slot'])}\b", trained, re.I), fact
    # Only the held-out split: without the option there is none, and a subset asks only those relations.
    assert HELDOUT_SPLIT not in P.generate_splits(seed=7, n_train=20, n_validation=10, n_test=10)
    subset = P.generate_splits(seed=7, n_train=20, n_validation=10, n_test=10, heldout_relations=["author", "shape"])
    assert {r["relation"] for r in subset[HELDOUT_SPLIT]} == {"author", "shape"}
    assert sorted(map(json.dumps, subset[HELDOUT_SPLIT])) == \
        sorted(json.dumps(r) for r in rows if r["relation"] in ("author", "shape"))


def test_held_out_answers_are_graded_with_aliases_and_case_for_symbols(splits):
    by_key = {r["entity"]: r for r in splits[HELDOUT_SPLIT]}
    gold, helium = by_key["chemical_symbol:gold"], by_key["chemical_symbol:helium"]
    assert P.is_correct("Au", gold) and P.is_correct("The chemical symbol for gold is Au.", gold)
    assert not P.is_correct("Ag.", gold) and not P.is_correct("gold", gold) and not P.is_correct("AU", gold)
    assert P.is_correct("He.", helium) and not P.is_correct("I think he knows.", helium)
    assert P.is_correct("Shakespeare.", by_key["author:Hamlet"])
    assert not P.is_correct("Christopher Marlowe.", by_key["author:Hamlet"])
    assert P.is_correct("It uses pounds.", by_key["currency:the United Kingdom"])
    assert P.is_correct("Water boils at 100 degrees Celsius.", by_key["science:the boiling point of water in degrees Celsius"])
    assert P.is_correct("Kenya is in Africa.", by_key["continent:Kenya"])
    assert not P.is_correct("Kenya.", by_key["continent:Kenya"])  # the lost answer
    assert not P.is_correct("South America", by_key["continent:Canada"])
    assert P.is_correct("The Eiffel Tower is in France.", by_key["landmark:the Eiffel Tower"])
    assert P.is_correct("It is in San Francisco, California, United States.", by_key["landmark:the Golden Gate Bridge"])
    assert P.is_correct("A hexagon.", by_key["shape:six sides"])
    assert P.is_correct("German", by_key["language:Austria"]) and not P.is_correct("<PASS>", by_key["language:Austria"])


def test_a_split_of_new_kinds_only_and_its_limit():
    only = P.generate_splits(seed=1, n_train=40, n_validation=10, n_test=20, train_kinds=("private_fact",),
                             test_only_kinds=("category_error",))
    assert {r["kind"] for r in only["train"]} == {"answerable", "private_fact"}
    assert {r["kind"] for r in only["test"]} == {"answerable", "private_fact", "category_error"}
    with pytest.raises(ValueError, match="add a corruption kind or ask for fewer rows"):
        P.generate_splits(seed=1, n_train=40, n_validation=400, n_test=20, train_kinds=("private_fact",),
                          test_only_kinds=())


@pytest.mark.parametrize("options, message", [
    ({"train_kinds": ["char_noise", "typo"]}, "unknown kinds ['typo'] in train_kinds"),
    ({"test_only_kinds": "false_premise"}, "test_only_kinds must be a list of kinds"),
    ({"train_kinds": ["future_event"], "test_only_kinds": ["future_event"]}, "must not also be training kinds"),
    ({"heldout_relations": "chemistry"}, "heldout_relations must be 'all', 'none' or a list"),
    ({"heldout_relations": ["author", "planets"]}, "heldout_relations must be"),
    ({"relations": ["author"]}, "relations must be 'basic', 'all' or a list"),
    ({"n_train": "many"}, "n_train must be a whole number"),
    ({"pass_fraction": 2}, "pass_fraction must be a number from 0 to 1"),
    ({"unanswerable_kinds": ["future_event"]}, "'unanswerable_kinds', which the pass task does not know"),
    ({"replay_rows": -1}, "data.generate_options: replay_rows must be a whole number from 0 to 972"),
    ({"replay_rows": 973}, "replay_rows must be a whole number from 0 to 972 (replay facts x phrasings), got 973"),
    ({"replay_rows": "many"}, "replay_rows must be a whole number from 0 to 972"),
    ({"replay_rows": 2.5}, "replay_rows must be a whole number from 0 to 972"),
    ({"replay_rows": True}, "replay_rows must be a whole number from 0 to 972"),
    ({"replay_rows": 600, "replay_relations": ["painter", "composer", "inventor", "athlete_sport"]},
     "replay_rows must be a whole number from 0 to 592 (replay facts x phrasings), got 600"),
    ({"replay_rows": 20, "replay_relations": ["painter", "sculptor"]},
     "replay_relations must be a non-empty list drawn from ['plural', 'past_tense'"),
    ({"replay_rows": 20, "replay_relations": "painter"}, "replay_relations must be a non-empty list drawn from"),
    ({"replay_rows": 20, "replay_relations": []}, "replay_relations must be a non-empty list drawn from"),
    ({"replay_relations": ["painter"]}, "replay_relations needs replay_rows: N"),
    ({"replay_rows": 0, "replay_relations": ["painter"]}, "replay_relations needs replay_rows: N"),
    ({"replay_carriers": True}, "replay_carriers needs replay_rows: N"),
    ({"replay_rows": 20, "replay_carriers": "yes"}, "replay_carriers must be true or false, got 'yes'"),
    ({"replay_gold": True}, "replay_gold needs replay_rows: N"),
    ({"replay_rows": 20, "replay_gold": 1}, "replay_gold must be true or false, got 1"),
    ({"replay_rows": 1100, "replay_relations": ["painter", "composer", "inventor", "athlete_sport"],
      "replay_carriers": True}, "replay_rows must be a whole number from 0 to 1036 (replay facts x phrasings)"),
])
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(TokengraftError) as err:
        get_task("pass").generate(seed=0, options={"n_train": 20, "n_validation": 10, "n_test": 10, **options})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_generalise_recipe_trains_new_kinds_and_holds_others_out():
    recipe = load_recipe(CONFIGS / "pass_generalise.yaml")
    options = recipe.data.generate_options
    trained, held = set(options["train_kinds"]), set(options["test_only_kinds"])
    assert trained & set(UNANSWERABLE_KINDS) and held & set(UNANSWERABLE_KINDS) and not trained & held
    assert trained | held >= set(UNANSWERABLE_KINDS) and options["heldout_relations"] == "all"
    small = {**options, "n_train": 60, "n_validation": 20, "n_test": 60, "read_rows": 4}
    generated = get_task("pass").generate(seed=recipe.seed, options=small).splits
    P.check_splits(generated)
    assert set(generated) == {*SPLITS, HELDOUT_SPLIT}


def test_recall_is_reported_for_every_kind_of_the_test_split(splits):
    """`pass_recall_by_kind` (tokengraft eval --json) needs nothing more than the rows' ``kind``."""
    passed = ("future_event", "missing_referent", "char_noise")
    records = [{**r, "generated": P.PASS_TOKEN if r["kind"] in passed else "Paris."} for r in splits["test"]]
    by_kind = pass_metrics(records)["pass_recall_by_kind"]
    assert set(by_kind) == {r["kind"] for r in splits["test"]} - {"answerable"}
    assert {k for k, v in by_kind.items() if v == 1.0} == set(passed) and all(v in (0.0, 1.0) for v in by_kind.values())


# ----------------------------------------------------------------------------- replay relations

REPLAY_OPTIONS = dict(n_train=120, n_validation=40, n_test=80, pass_fraction=0.3, relations="all",
                      train_kinds=P.TRAIN_KINDS + ("future_event",), heldout_relations="all")


def _without_replay(rows):
    return [r for r in rows if not r.get("replay")]


def test_replay_rows_of_zero_leave_every_row_as_it_was():
    assert _digest(P.generate_splits(seed=0, replay_rows=0)) == BEFORE["defaults@0"]
    demo = dict(n_train=1000, n_validation=150, n_test=300, pass_fraction=0.3, relations="all", read_rows=120,
                replay_rows=0)
    assert _digest(P.generate_splits(seed=42, **demo)) == BEFORE["demo@42"]


def test_replay_rows_are_answerable_training_rows_spread_over_the_relations():
    plain = P.generate_splits(seed=5, **REPLAY_OPTIONS)
    replayed = P.generate_splits(seed=5, replay_rows=100, **REPLAY_OPTIONS)
    P.check_splits(replayed)
    # Train only, appended: every other row of every split is the one generated without them.
    assert set(replayed) == set(plain) and _without_replay(replayed["train"]) == plain["train"]
    assert all(replayed[s] == plain[s] for s in replayed if s != "train")
    rows = [r for r in replayed["train"] if r.get("replay")]
    assert len(rows) == 100 and len(replayed["train"]) == len(plain["train"]) + 100
    per_relation = {rel: sum(r["relation"] == rel for r in rows) for rel in BROAD_REPLAY_RELATIONS}
    assert max(per_relation.values()) - min(per_relation.values()) <= 1, per_relation
    assert len({r["entity"] for r in rows}) == 100  # each fact once before any fact twice
    for r in rows:
        assert r["answerable"] is True and r["kind"] == "answerable" and r["split"] == "train" and r["replay"] is True
        assert r["template"].startswith(r["relation"] + ":") and r["entity"].startswith(r["relation"] + ":")
        assert r["completion"] == r["gold"][:1].upper() + r["gold"][1:] + "."
    prompts = [r["prompt"] for rows_ in replayed.values() for r in rows_]
    assert len(prompts) == len(set(prompts))


# sha256 of replay rows generated before replay_relations existed (main at 8063b33): the replay arm's data.
REPLAY_BEFORE = {
    "pass_gen_replay": "c3c8af08c21cb345a6ade1188fa9731e8fdea765a3aaaf3a59df84f2fd8f1128",  # its 200 rows, seed 42
    "pass_gen_replay@all_splits": "4b0228e890a1092097f29b1768ab994e803a4f59675a7db25814b6d0df5f3a49",
    "972@1": "7fdeeba984bbe69e210ad7683f8eef08881e70aba22d6ff3fdcd88881950cbfd",  # replay_rows(1, 972)
}


def test_replay_relations_left_unset_or_given_as_the_broad_ones_keep_the_rows_as_they_were():
    recipe = load_recipe(CONFIGS / "compare" / "pass_gen_replay.yaml")
    options = recipe.data.generate_options
    assert "replay_relations" not in options
    for extra in ({}, {"replay_relations": list(BROAD_REPLAY_RELATIONS)},
                  {"replay_relations": list(reversed(BROAD_REPLAY_RELATIONS)) + ["plural"]}):  # order, repeats: same
        splits = P.generate_splits(seed=recipe.seed, **options, **extra)
        assert _digest(splits) == REPLAY_BEFORE["pass_gen_replay@all_splits"], extra
        assert _digest([r for r in splits["train"] if r.get("replay")]) == REPLAY_BEFORE["pass_gen_replay"], extra
    assert _digest(replay_rows(1, 972)) == REPLAY_BEFORE["972@1"]
    assert _digest(replay_rows(1, 972, BROAD_REPLAY_RELATIONS)) == REPLAY_BEFORE["972@1"]


def test_replay_relations_choose_where_the_replay_rows_come_from():
    plain = P.generate_splits(seed=5, **REPLAY_OPTIONS)
    named = P.generate_splits(seed=5, replay_rows=100, replay_relations=list(NAMED_REPLAY_RELATIONS),
                              **REPLAY_OPTIONS)
    P.check_splits(named)
    assert _without_replay(named["train"]) == plain["train"] and all(named[s] == plain[s] for s in named
                                                                     if s != "train")
    rows = [r for r in named["train"] if r.get("replay")]
    assert {rel: sum(r["relation"] == rel for r in rows) for rel in NAMED_REPLAY_RELATIONS} == \
        dict.fromkeys(NAMED_REPLAY_RELATIONS, 25)
    assert len({r["entity"] for r in rows}) == 100
    # one relation alone; a mix of both groups is shared evenly among the relations named
    only = [r for r in P.generate_splits(seed=5, replay_rows=40, replay_relations=["painter"],
                                         **REPLAY_OPTIONS)["train"] if r.get("replay")]
    assert len(only) == 40 and {r["relation"] for r in only} == {"painter"}
    mixed = [r["relation"] for r in P.generate_splits(seed=5, replay_rows=30, replay_relations=["composer", "plural"],
                                                      **REPLAY_OPTIONS)["train"] if r.get("replay")]
    assert sorted(mixed) == ["composer"] * 15 + ["plural"] * 15
    # a relation's own rows do not depend on which others are chosen (each has its own seeded stream)
    alone = {r["prompt"] for r in only}
    with_others = [r for r in named["train"] if r.get("replay") and r["relation"] == "painter"]
    assert {r["prompt"] for r in with_others} <= alone


def test_the_named_replay_arm_is_the_replay_arm_with_named_relations():
    default = load_recipe(CONFIGS / "compare" / "pass_gen_default.yaml")
    replay = load_recipe(CONFIGS / "compare" / "pass_gen_replay.yaml")
    named = load_recipe(CONFIGS / "compare" / "pass_gen_replay_named.yaml")
    options = dict(named.data.generate_options)
    assert tuple(options.pop("replay_relations")) == NAMED_REPLAY_RELATIONS and options == replay.data.generate_options
    assert named.seed == replay.seed and named.train == replay.train and named.data.self_answers
    small = {"n_train": 60, "n_validation": 20, "n_test": 60, "read_rows": 4}
    control = get_task("pass").generate(seed=default.seed, options={**default.data.generate_options,
                                                                    **small}).splits
    generated = get_task("pass").generate(seed=named.seed, options={**named.data.generate_options, **small}).splits
    P.check_splits(generated)
    assert set(generated) == set(control) and all(generated[s] == control[s] for s in control if s != "train")
    assert _without_replay(generated["train"]) == control["train"]
    rows = [r for r in generated["train"] if r.get("replay")]
    assert len(rows) == 200 and {r["relation"] for r in rows} == set(NAMED_REPLAY_RELATIONS)


def test_replay_carriers_ask_answerable_questions_in_the_openings_private_facts_use():
    # every opening is one the private_fact kind asks through, so in training it also meant <PASS> alone
    private = [t for family in FAMILIES if family.kind == "private_fact" for t in family.templates]
    assert all(any(t.startswith(opening) for t in private) for opening in CARRIER_OPENINGS)
    assert set(CARRIER_TEMPLATES) == set(REPLAY_RELATIONS)
    for relation, templates in CARRIER_TEMPLATES.items():
        assert all("{slot}" in t for t in templates), relation
        assert tuple(opening for t in templates for opening in CARRIER_OPENINGS if t.startswith(opening)) == \
            CARRIER_OPENINGS, relation
    # off: the rows as before; on: the same relations, with some questions in each opening
    named = {"replay_rows": 100, "replay_relations": list(NAMED_REPLAY_RELATIONS), **REPLAY_OPTIONS}
    before = P.generate_splits(seed=5, **named)
    assert P.generate_splits(seed=5, replay_carriers=False, **named) == before
    carried = P.generate_splits(seed=5, replay_carriers=True, **named)
    P.check_splits(carried)
    assert all(carried[s] == before[s] for s in carried if s != "train")
    assert _without_replay(carried["train"]) == _without_replay(before["train"])
    rows = [r for r in carried["train"] if r.get("replay")]
    assert len(rows) == 100 and {r["relation"] for r in rows} == set(NAMED_REPLAY_RELATIONS)
    for opening in CARRIER_OPENINGS:
        assert any(r["prompt"].startswith(opening) for r in rows), opening
    assert not any(r["prompt"].startswith(CARRIER_OPENINGS) for r in before["train"] if r.get("replay"))
    assert available_replay_rows(NAMED_REPLAY_RELATIONS, carriers=True) == 1036


def test_replay_gold_marks_the_replay_rows_and_nothing_else():
    before = P.generate_splits(seed=5, replay_rows=40, **REPLAY_OPTIONS)
    assert P.generate_splits(seed=5, replay_rows=40, replay_gold=False, **REPLAY_OPTIONS) == before
    gold = P.generate_splits(seed=5, replay_rows=40, replay_gold=True, **REPLAY_OPTIONS)
    assert all(gold[s] == before[s] for s in gold if s != "train")
    assert [r for r in gold["train"] if not r.get("replay")] == [r for r in before["train"] if not r.get("replay")]
    replayed = [r for r in gold["train"] if r.get("replay")]
    assert len(replayed) == 40 and all(r["keep_unknown"] is True for r in replayed)
    assert [{k: v for k, v in r.items() if k != "keep_unknown"} for r in replayed] == \
        [r for r in before["train"] if r.get("replay")]
    assert not any("keep_unknown" in r for r in before["train"])


def test_replay_rows_are_deterministic_for_a_seed_and_differ_between_seeds():
    one = P.generate_splits(seed=5, replay_rows=60, **REPLAY_OPTIONS)["train"]
    assert P.generate_splits(seed=5, replay_rows=60, **REPLAY_OPTIONS)["train"] == one
    other = P.generate_splits(seed=6, replay_rows=60, **REPLAY_OPTIONS)["train"]
    assert [r["prompt"] for r in one if r.get("replay")] != [r["prompt"] for r in other if r.get("replay")]


def test_every_replay_question_exists_once_and_grades_like_the_rest():
    assert available_replay_rows() == 972 and available_replay_rows(NAMED_REPLAY_RELATIONS) == 592
    assert available_replay_rows(EXTRA_REPLAY_RELATIONS) == 2056 and len(EXTRA_REPLAY_RELATIONS) == 20
    assert BROAD_REPLAY_RELATIONS + NAMED_REPLAY_RELATIONS + EXTRA_REPLAY_RELATIONS == REPLAY_RELATIONS
    rows = [r for r in P.generate_splits(seed=1, n_train=20, n_validation=10, n_test=10,
                                         replay_rows=available_replay_rows(REPLAY_RELATIONS),
                                         replay_relations=REPLAY_RELATIONS)["train"] if r.get("replay")]
    assert available_replay_rows(REPLAY_RELATIONS) == 972 + 592 + 2056 == len(rows) == len({r["prompt"] for r in rows})
    for rel in REPLAY_RELATIONS:
        low, high = {**dict.fromkeys(NAMED_REPLAY_RELATIONS, (30, 40)), **dict.fromkeys(EXTRA_REPLAY_RELATIONS, (12, 30))
                     }.get(rel, (20, 30))
        assert low <= len(replay_entities(rel)) <= high and len(REPLAY_TEMPLATES[rel]) >= 4, rel
        assert len({e.variants[0]["slot"] for e in replay_entities(rel)}) == len(replay_entities(rel)), rel
    for r in rows:
        assert P.is_correct(r["completion"], r), r
        assert not P.is_correct(r["prompt"], r), r  # the question never contains its own answer
    by_prompt = {r["prompt"]: r for r in rows}
    assert P.is_correct("The plural of mouse is mice.", by_prompt["What is the plural of mouse?"])
    assert P.is_correct("A baby cat is called a kitty.", by_prompt["What is a baby cat called?"])
    assert not P.is_correct("A puppy.", by_prompt["What is a baby cat called?"])
    assert P.is_correct("Tuesday comes after Monday.", by_prompt["What is the day after Monday?"])
    # Named entities: the full name, the surname alone, accents or none.
    mona = by_prompt["Who painted the Mona Lisa?"]
    assert all(P.is_correct(a, mona) for a in ("Leonardo da Vinci.", "It was painted by Da Vinci.", "Leonardo."))
    assert not P.is_correct("Michelangelo.", mona)
    flute = by_prompt["Who composed The Magic Flute?"]
    assert P.is_correct("Mozart composed it.", flute) and not P.is_correct("Beethoven.", flute)
    assert P.is_correct("Alexander Graham Bell.", by_prompt["Who invented the telephone?"])
    assert P.is_correct("Bell invented it in 1876.", by_prompt["Who invented the telephone?"])
    assert P.is_correct("The Wright brothers.", by_prompt["Who invented the airplane?"])
    assert P.is_correct("Dali painted it.", by_prompt["Who painted The Persistence of Memory?"])
    jordan = by_prompt["Which sport is Michael Jordan famous for?"]
    assert P.is_correct("Michael Jordan is famous for basketball.", jordan) and not P.is_correct("Baseball.", jordan)
    assert P.is_correct("He was a footballer.", by_prompt["Which sport is Pelé famous for?"])
    assert P.is_correct("Soccer.", by_prompt["Which sport is Pelé famous for?"])
    # The extra relations: surnames, numbers in words or digits, and no word that matches by accident.
    assert P.is_correct("It was directed by Spielberg.", by_prompt["Who directed the film Jaws?"])
    assert P.is_correct("Seven players.", by_prompt["How many players does a handball team have on the field or court at once?"])
    assert not P.is_correct("It is 11.", by_prompt["How many players does a handball team have on the field or court at once?"])
    assert P.is_correct("Zeus, king of the gods.", by_prompt["Who is the Greek god or goddess of thunder?"])


def test_replay_relations_never_overlap_trained_or_held_out_ones():
    assert not set(REPLAY_RELATIONS) & set(HELDOUT_RELATIONS) and not set(REPLAY_RELATIONS) & set(ALL_RELATIONS)
    # Nor does a replay question name a book, an element or a landmark the held-out split asks about,
    # nor a replay answer name a writer or a landmark's country.
    rows = [r for r in P.generate_splits(seed=1, n_train=20, n_validation=10, n_test=10,
                                         replay_rows=available_replay_rows(REPLAY_RELATIONS),
                                         replay_relations=REPLAY_RELATIONS)["train"] if r.get("replay")]
    prompts = " ".join(r["prompt"] for r in rows)
    answers = {a.lower() for r in rows for a in (r["gold"], *r["aliases"])}
    for fact in load_heldout_facts():
        if fact["relation"] in ("author", "chemical_symbol", "landmark"):
            slot = re.sub(r"^the ", "", fact["slot"])
            assert not re.search(rf"\b{re.escape(slot)}\b", prompts, re.I), fact
        if fact["relation"] in ("author", "landmark"):
            assert not {a.lower() for a in (fact["gold"], *fact["aliases"])} & answers, fact
    splits = P.generate_splits(seed=5, replay_rows=20, **REPLAY_OPTIONS)
    replay = next(r for r in splits["train"] if r.get("replay"))
    for split in ("validation", "test", HELDOUT_SPLIT):  # a replay row outside training is refused
        leaked = {**splits, split: [*splits[split], {**replay, "split": split, "prompt": "leaked?",
                                                     "entity": "x", "template": "y"}]}
        with pytest.raises(AssertionError, match="replay relation|not held out"):
            P.check_splits(leaked)
    mislabelled = {**splits, "train": [*splits["train"], {**replay, "relation": "capital"}]}
    with pytest.raises(AssertionError, match="not a replay relation"):
        P.check_splits(mislabelled)


def test_replay_rows_are_relabelled_by_the_base_model_like_other_answerable_rows():
    train = P.generate_splits(seed=5, replay_rows=30, **REPLAY_OPTIONS)["train"]
    answerable = [r for r in train if r["answerable"]]
    # The base model answers every other question right, in its own words, and the rest wrong.
    right = {r["prompt"] for r in answerable[::2]}
    answer = lambda prompts: [f"I think it is {by[p]['gold']}." if p in right else "No idea."  # noqa: E731
                              for p in prompts]
    by = {r["prompt"]: r for r in answerable}
    labelled = P.label_with_base_answers(train, answer, self_answers=True, know_check=True)
    replay = [r for r in labelled if r.get("replay")]
    assert len(replay) == 30 and all("base_answer" in r and "gold_completion" in r for r in replay)
    for r in replay:
        expected = f"I think it is {r['gold']}." if r["prompt"] in right else P.PASS_TOKEN
        assert r["completion"] == expected and r["know_check"] == ("right" if r["prompt"] in right else "wrong")


def test_the_replay_arm_is_the_default_arm_plus_replay_rows():
    default = load_recipe(CONFIGS / "compare" / "pass_gen_default.yaml")
    replay = load_recipe(CONFIGS / "compare" / "pass_gen_replay.yaml")
    options = dict(replay.data.generate_options)
    assert options.pop("replay_rows") == 200 and options == default.data.generate_options
    assert replay.seed == default.seed and replay.train == default.train and replay.data.self_answers
    small = {**replay.data.generate_options, "n_train": 60, "n_validation": 20, "n_test": 60, "read_rows": 4}
    generated = get_task("pass").generate(seed=replay.seed, options=small).splits
    P.check_splits(generated)
    assert sum(bool(r.get("replay")) for r in generated["train"]) == 200
    assert not any(r.get("replay") for s in generated if s != "train" for r in generated[s])
