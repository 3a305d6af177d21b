"""Answerable questions of relations the `<PASS>` training never uses: the held-out-relation test split.

The question bank's relations (capitals, arithmetic, everyday facts, dates) are what
`<PASS>` training answers; a held-out-entity test of those same relations cannot show
whether tuning costs general answering elsewhere. These relations never appear in
any training or validation row: chemical symbols, authors of famous books,
currencies, official languages, continents of countries, names of shapes, simple
science facts and the countries of landmarks (``data/heldout_facts.tsv``). Their
entities may be familiar (Kenya is a capital question in training; "On which
continent is Kenya?" is not): what is held out is the relation.

``generate_splits(heldout_relations=...)`` in ``pass_data`` adds the rows as the
split ``HELDOUT_SPLIT`` ("test_heldout_relations"): one question per fact, answerable,
with a gold answer and aliases. ``is_correct`` grades them like every other row;
chemical symbols are matched case-sensitively ("Au" answers, "au" in a sentence
would not; "He" is helium, "he" is not).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

from tokengraft.tasks.bank import Entity, Question, gold_aliases, question_meta, render

HELDOUT_SPLIT = "test_heldout_relations"

# Several phrasings per relation; the split is test-only, so no phrasing needs holding out of it.
HELDOUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "chemical_symbol": (
        "What is the chemical symbol for {slot}?",
        "Which chemical symbol stands for {slot}?",
        "What is the symbol of the element {slot}?",
        "Give the chemical symbol of {slot}.",
    ),
    "author": (
        "Who wrote {slot}?",
        "Who is the author of {slot}?",
        "Which writer wrote {slot}?",
        "Name the author of {slot}.",
    ),
    "currency": (
        "What is the currency of {slot}?",
        "What currency is used in {slot}?",
        "Which currency do people use in {slot}?",
        "What money do people pay with in {slot}?",
    ),
    "language": (
        "What is the official language of {slot}?",
        "What language do people speak in {slot}?",
        "Which language is spoken in {slot}?",
        "What is the main language of {slot}?",
    ),
    "continent": (
        "On which continent is {slot}?",
        "Which continent is {slot} in?",
        "{Slot} is on which continent?",
        "In which continent can you find {slot}?",
    ),
    "shape": (
        "What is the name of a shape with {slot}?",
        "Which shape has {slot}?",
        "What do you call a shape with {slot}?",
        "Name the shape that has {slot}.",
    ),
    "science": (
        "What is {slot}?",
        "Name {slot}.",
        "Tell me {slot}.",
        "Do you know {slot}?",
    ),
    "landmark": (
        "In which country is {slot}?",
        "Which country is {slot} in?",
        "{Slot} is in which country?",
        "In what country can you find {slot}?",
    ),
}
HELDOUT_RELATIONS: tuple[str, ...] = tuple(HELDOUT_TEMPLATES)
# Golds compared with case kept: a one- or two-letter symbol lower-cased is an ordinary word ("he", "s").
CASE_SENSITIVE_RELATIONS = frozenset({"chemical_symbol"})


@lru_cache(maxsize=None)
def read_relation_facts(name: str) -> tuple[dict[str, Any], ...]:
    """Rows of a relation table in ``data/`` (``heldout_facts.tsv``, ``replay_facts.tsv``) as dicts:
    relation, slot, gold, aliases. Lines starting with ``#`` are comments; the first other line is the header."""
    text = resources.files("tokengraft").joinpath("data", name).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    rows = [[c.strip() for c in r] for r in csv.reader(lines[1:], delimiter="\t", quoting=csv.QUOTE_NONE)]
    return tuple(dict(relation=r[0], slot=r[1], gold=r[2], aliases=[a.strip() for a in r[3].split("|") if a.strip()])
                 for r in rows)


def load_heldout_facts() -> tuple[dict[str, Any], ...]:
    """Rows of ``data/heldout_facts.tsv`` as dicts: relation, slot, gold, aliases."""
    return read_relation_facts("heldout_facts.tsv")


def relation_entities(facts: Sequence[dict[str, Any]], relation: str) -> list[Entity]:
    """Every fact of ``relation`` in ``facts`` as a bank `Entity` (key ``relation:slot``), in table order."""
    out = []
    for f in facts:
        if f["relation"] == relation:
            # "the United States": an answer without the article ("... in California, United States") is right too.
            bare = [f["gold"][4:]] if f["gold"].lower().startswith("the ") else []
            out.append(Entity(relation, f"{relation}:{f['slot']}", [{"slot": f["slot"]}], f["gold"],
                              gold_aliases(f["gold"], list(dict.fromkeys(bare + f["aliases"]))), {"slot": f["slot"]}))
    return out


def heldout_entities(relation: str) -> list[Entity]:
    """Every fact of one held-out relation as a bank `Entity` (key ``relation:slot``), in table order."""
    if relation not in HELDOUT_TEMPLATES:
        raise ValueError(f"unknown held-out relation {relation!r}; choose from {HELDOUT_RELATIONS}")
    return relation_entities(load_heldout_facts(), relation)


def resolve_heldout_relations(value: Any) -> tuple[str, ...]:
    """``heldout_relations`` option: None / "none" / [] -> none, "all" -> every relation, or a list of names."""
    if value is None or value == "none":
        return ()
    if value == "all":
        return HELDOUT_RELATIONS
    if isinstance(value, str) or not isinstance(value, Sequence) or \
            not all(isinstance(v, str) for v in value) or set(value) - set(HELDOUT_RELATIONS):
        raise ValueError(f"heldout_relations must be 'all', 'none' or a list drawn from {list(HELDOUT_RELATIONS)}, "
                         f"got {value!r}")
    return tuple(dict.fromkeys(value))


def heldout_relation_rows(seed: int, relations: Sequence[str]) -> list[dict[str, Any]]:
    """One answerable row per fact of ``relations``, phrasings spread evenly, deterministic for ``seed``.

    Rows look like the answerable rows of the other splits (``kind: "answerable"``, gold,
    aliases, entity, template) with ``split: "test_heldout_relations"``.
    """
    rows = []
    for relation in relations:
        rng = random.Random(f"tokengraft-heldout-relations:{seed}:{relation}")
        templates = list(range(len(HELDOUT_TEMPLATES[relation])))
        rng.shuffle(templates)
        for i, entity in enumerate(heldout_entities(relation)):
            t = templates[i % len(templates)]
            template = HELDOUT_TEMPLATES[relation][t]
            text, spans = render(template, entity.variants[0])
            q = Question(entity, f"{relation}:{t}", template, dict(entity.variants[0]), text, spans)
            gold = entity.gold
            rows.append({"prompt": text, "completion": gold[:1].upper() + gold[1:] + ".", "kind": "answerable",
                         "answerable": True, **question_meta(q, HELDOUT_SPLIT)})
    random.Random(f"tokengraft-heldout-relations:{seed}").shuffle(rows)
    return rows
