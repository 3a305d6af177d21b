"""Answerable "replay" questions of other relations, added to `<PASS>` training only.

Issue 19: a model tuned for `<PASS>` on a few relations (capitals, arithmetic,
colours, ...) passes on, or forgets, relations it never trained on. The hypothesis
these rows test: training also on answerable questions of many OTHER relations,
answered in the base model's own words (``data.self_answers`` relabels them like
every other answerable training row), teaches that an unfamiliar relation is not a
reason to pass.

Three groups of relations (``data/replay_facts.tsv``):

- ``BROAD_REPLAY_RELATIONS``, the default: plurals, past tenses, young animals,
  workers, body parts, what things are made of, calendar order, collective nouns,
  animal homes. No named entity in them.
- ``NAMED_REPLAY_RELATIONS``, chosen with ``replay_relations``: the painter of a famous
  painting, the composer of a famous work, the inventor of an invention, the sport of a
  famous athlete. The tuned model passes most on the held-out relations "author" and
  "landmark", questions about named works and places that it seems to take for the
  fictional-entity kind it trains on ("What is the capital of Blorvania?"); these rows
  test whether answering questions about REAL names of other relations teaches that an
  unfamiliar-looking real name is not a reason to pass.
- ``EXTRA_REPLAY_RELATIONS``, twenty more (Greek gods, sport terms, instrument families,
  superheroes, film directors, songs, cartoon animals, female counterparts, comparatives,
  holiday months, Roman numerals, tools, dishes' main ingredients, colour mixing, animated
  films' characters, Greek letters, product makers, company founders, animal products, team
  sizes): with them the probes of ``benchmarks/pass_probe.py`` learn from 44 relations instead
  of 24 (does detecting the base model's errors carry over better from more relations?).

Neither group is a question-bank relation or a held-out relation
(``tasks.heldout_relations``), nor near one: no authors, books or writers, chemistry,
countries, languages, currencies, shapes, landmarks (no building, monument or place is
a subject or an answer) or science facts. The named relations share the held-out
"author" relation's question shape ("Who composed X?" beside "Who wrote X?") on
purpose, never its facts: no work of literature is a subject, no writer an answer.
The rows never reach validation or test, so no phrasing is held out: every (fact,
phrasing) pair is available to training.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tokengraft.tasks.bank import Entity, Question, question_meta, render
from tokengraft.tasks.heldout_relations import read_relation_facts, relation_entities

REPLAY_FACTS_FILE = "replay_facts.tsv"

# Several phrasings per relation; all of them train (these relations are never evaluated).
REPLAY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "plural": (
        "What is the plural of {slot}?",
        'What is the plural of the word "{slot}"?',
        "What is the plural form of {slot}?",
        "One {slot}, two what?",
    ),
    "past_tense": (
        "What is the past tense of {slot}?",
        'What is the past tense of the verb "{slot}"?',
        "What is the simple past of {slot}?",
        "How do you say {slot} in the past tense?",
    ),
    "young_animal": (
        "What is a baby {slot} called?",
        "What do you call a young {slot}?",
        "What is the name for a baby {slot}?",
        "A baby {slot} is called what?",
    ),
    "worker": (
        "What do you call {slot}?",
        "What is the job of {slot} called?",
        "{Slot} is called what?",
        "What is the word for {slot}?",
    ),
    "body_part": (
        "Which part of the body do {slot}?",
        "What body part do {slot}?",
        "Name the part of the body {slot}.",
        "What part of your body do {slot}?",
    ),
    "made_of": (
        "What is {slot} made of?",
        "What is {slot} made from?",
        "{Slot} is made from what?",
        "What do people make {slot} from?",
    ),
    "calendar": (
        "What is the {slot}?",
        "Which is the {slot}?",
        "Name the {slot}.",
        "Can you tell me the {slot}?",
    ),
    "collective_noun": (
        "What is a group of {slot} called?",
        "What do you call a group of {slot}?",
        "A group of {slot} is called a what?",
        "What is the collective noun for {slot}?",
    ),
    "animal_home": (
        "What is the home of {slot} called?",
        "What do you call the home of {slot}?",
        "What is the name for the home of {slot}?",
        "{Slot} lives in what kind of home?",
    ),
    "painter": (
        "Who painted {slot}?",
        "Which artist painted {slot}?",
        "Who is the painter of {slot}?",
        "Name the painter of {slot}.",
    ),
    "composer": (
        "Who composed {slot}?",
        "Which composer wrote {slot}?",
        "Who is the composer of {slot}?",
        "Name the composer of {slot}.",
    ),
    "inventor": (
        "Who invented {slot}?",
        "Who is the inventor of {slot}?",
        "Which inventor created {slot}?",
        "Name the inventor of {slot}.",
    ),
    "athlete_sport": (
        "Which sport is {slot} famous for?",
        "What sport is {slot} known for?",
        "In which sport did {slot} become famous?",
        "Which sport made {slot} famous?",
    ),
    "greek_god": (
        "Who is the Greek god or goddess of {slot}?",
        "In Greek mythology, who is the god or goddess of {slot}?",
        "Which deity of Greek mythology rules over {slot}?",
        "Name the Greek god or goddess of {slot}.",
    ),
    "sport_term": (
        "In which sport can you score {slot}?",
        "In which sport can a player score {slot}?",
        "Which sport lets players score {slot}?",
        "{Slot} can be scored in which sport?",
    ),
    "instrument_family": (
        "To which family of musical instruments does {slot} belong?",
        "Which instrument family does {slot} belong to?",
        "{Slot} belongs to which family of instruments?",
        "What family of musical instruments is {slot} part of?",
    ),
    "superhero_identity": (
        "What is the secret identity of {slot}?",
        "What is the real name of {slot}?",
        "Who is secretly {slot}?",
        "What is the civilian name of {slot}?",
    ),
    "film_director": (
        "Who directed the film {slot}?",
        "Who is the director of the film {slot}?",
        "Which filmmaker directed {slot}?",
        "Name the director of the film {slot}.",
    ),
    "singer_song": (
        "Which singer or band recorded the song {slot}?",
        "Who recorded the song {slot}?",
        "Which artist is known for the song {slot}?",
        "Name the singer or band behind the song {slot}.",
    ),
    "cartoon_animal": (
        "What kind of animal is {slot}?",
        "What type of animal is {slot}?",
        "{Slot} is what kind of animal?",
        "What animal is {slot}?",
    ),
    "gender_counterpart": (
        "What is the female counterpart of {slot}?",
        "What is the female equivalent of {slot}?",
        "If he is {slot}, what is she?",
        "{Slot} is male; what is the female called?",
    ),
    "comparative": (
        "What is the comparative form of {slot}?",
        'What is the comparative of the word "{slot}"?',
        "What is the comparative degree of {slot}?",
        "Give the comparative form of {slot}.",
    ),
    "holiday_month": (
        "In which month is {slot} celebrated?",
        "{Slot} falls in which month?",
        "In what month of the year is {slot}?",
        "Which month is {slot} in?",
    ),
    "roman_numeral": (
        "What is the Roman numeral for {slot}?",
        "How do you write {slot} in Roman numerals?",
        "What is {slot} in Roman numerals?",
        "How is the number {slot} written in Roman numerals?",
    ),
    "tool_use": (
        "Which tool do you use to {slot}?",
        "What tool do you need to {slot}?",
        "What do you use to {slot}?",
        "Name the tool used to {slot}.",
    ),
    "main_ingredient": (
        "What is the main ingredient of {slot}?",
        "What is the key ingredient in {slot}?",
        "Which ingredient is the basis of {slot}?",
        "What is the chief ingredient used to make {slot}?",
    ),
    "colour_mix": (
        "What colour do you get when you mix {slot}?",
        "Which colour do you get by mixing {slot}?",
        "What colour does mixing {slot} make?",
        "If you mix {slot}, what colour do you get?",
    ),
    "film_character": (
        "In which animated film does {slot} appear?",
        "Which animated film features {slot}?",
        "{Slot} is a character from which animated film?",
        "What animated movie is {slot} from?",
    ),
    "greek_letter": (
        "Which Greek letter comes after {slot}?",
        "What is the next letter of the Greek alphabet after {slot}?",
        "In the Greek alphabet, which letter follows {slot}?",
        "What Greek letter follows {slot}?",
    ),
    "product_maker": (
        "Which company makes {slot}?",
        "What company produces {slot}?",
        "Who is the maker of {slot}?",
        "Name the company that makes {slot}.",
    ),
    "company_founder": (
        "Who founded {slot}?",
        "Who is the founder of {slot}?",
        "Which person founded {slot}?",
        "Name the founder of {slot}.",
    ),
    "animal_product": (
        "Which animal gives us {slot}?",
        "Which animal do we get {slot} from?",
        "From which animal do we get {slot}?",
        "Which animal is the source of {slot}?",
    ),
    "team_size": (
        "How many players does {slot} team have on the field or court at once?",
        "How many players are on {slot} team during play?",
        "{Slot} team plays with how many players at a time?",
        "How many players from {slot} team are on the field or court at the same time?",
    ),
}
# ``replay_carriers``: the same questions asked through the openings the private_fact kind asks through
# ("Do you know my password?", "Can you tell me my sister's name?", "Remind me what my PIN is."). Without
# answerable questions in those openings, training pairs each opening with <PASS> only, and a tuned model may
# learn the opening, not the "my", as its reason to pass.
# Appended after each relation's own phrasings, so the option changes no phrasing's index.
CARRIER_OPENINGS: tuple[str, ...] = ("Do you know", "Can you tell me", "Remind me")
CARRIER_TEMPLATES: dict[str, tuple[str, ...]] = {
    "plural": ("Do you know the plural of {slot}?", "Can you tell me the plural of {slot}?",
               "Remind me what the plural of {slot} is."),
    "past_tense": ("Do you know the past tense of {slot}?", "Can you tell me the past tense of {slot}?",
                   "Remind me what the past tense of {slot} is."),
    "young_animal": ("Do you know what a baby {slot} is called?", "Can you tell me what a young {slot} is called?",
                     "Remind me what a baby {slot} is called."),
    "worker": ("Do you know what we call {slot}?", "Can you tell me what we call {slot}?",
               "Remind me what we call {slot}."),
    "body_part": ("Do you know which part of the body {slot}?", "Can you tell me which body part {slot}?",
                  "Remind me which part of the body {slot}."),
    "made_of": ("Do you know what {slot} is made of?", "Can you tell me what {slot} is made from?",
                "Remind me what {slot} is made of."),
    "calendar": ("Do you know the {slot}?", "Can you tell me the {slot}?", "Remind me what the {slot} is."),
    "collective_noun": ("Do you know what a group of {slot} is called?",
                        "Can you tell me what a group of {slot} is called?",
                        "Remind me what a group of {slot} is called."),
    "animal_home": ("Do you know what the home of {slot} is called?",
                    "Can you tell me what the home of {slot} is called?",
                    "Remind me what the home of {slot} is called."),
    "painter": ("Do you know who painted {slot}?", "Can you tell me who painted {slot}?",
                "Remind me who painted {slot}."),
    "composer": ("Do you know who composed {slot}?", "Can you tell me who composed {slot}?",
                 "Remind me who composed {slot}."),
    "inventor": ("Do you know who invented {slot}?", "Can you tell me who invented {slot}?",
                 "Remind me who invented {slot}."),
    "athlete_sport": ("Do you know which sport {slot} is famous for?",
                      "Can you tell me which sport {slot} is known for?",
                      "Remind me which sport {slot} played."),
    "greek_god": ("Do you know the Greek god or goddess of {slot}?",
                  "Can you tell me who the Greek god or goddess of {slot} is?",
                  "Remind me who the Greek god or goddess of {slot} is."),
    "sport_term": ("Do you know in which sport you can score {slot}?",
                   "Can you tell me which sport lets you score {slot}?",
                   "Remind me in which sport you can score {slot}."),
    "instrument_family": ("Do you know which family of instruments {slot} belongs to?",
                          "Can you tell me which instrument family {slot} belongs to?",
                          "Remind me which family of instruments {slot} belongs to."),
    "superhero_identity": ("Do you know the secret identity of {slot}?",
                           "Can you tell me the real name of {slot}?",
                           "Remind me who {slot} really is."),
    "film_director": ("Do you know who directed the film {slot}?",
                      "Can you tell me who directed the film {slot}?",
                      "Remind me who directed the film {slot}."),
    "singer_song": ("Do you know who recorded the song {slot}?",
                    "Can you tell me which singer or band recorded the song {slot}?",
                    "Remind me who recorded the song {slot}."),
    "cartoon_animal": ("Do you know what kind of animal {slot} is?",
                       "Can you tell me what type of animal {slot} is?",
                       "Remind me what kind of animal {slot} is."),
    "gender_counterpart": ("Do you know the female counterpart of {slot}?",
                           "Can you tell me the female equivalent of {slot}?",
                           "Remind me what the female counterpart of {slot} is."),
    "comparative": ("Do you know the comparative form of {slot}?",
                    "Can you tell me the comparative of {slot}?",
                    "Remind me what the comparative form of {slot} is."),
    "holiday_month": ("Do you know which month {slot} is in?",
                      "Can you tell me in which month {slot} is celebrated?",
                      "Remind me which month {slot} falls in."),
    "roman_numeral": ("Do you know the Roman numeral for {slot}?",
                      "Can you tell me how to write {slot} in Roman numerals?",
                      "Remind me what the Roman numeral for {slot} is."),
    "tool_use": ("Do you know which tool you use to {slot}?",
                 "Can you tell me which tool is used to {slot}?",
                 "Remind me which tool I need to {slot}."),
    "main_ingredient": ("Do you know the main ingredient of {slot}?",
                        "Can you tell me the main ingredient in {slot}?",
                        "Remind me what the main ingredient of {slot} is."),
    "colour_mix": ("Do you know what colour you get when you mix {slot}?",
                   "Can you tell me what colour mixing {slot} makes?",
                   "Remind me what colour you get if you mix {slot}."),
    "film_character": ("Do you know which animated film {slot} appears in?",
                       "Can you tell me which animated film features {slot}?",
                       "Remind me which animated film {slot} is from."),
    "greek_letter": ("Do you know which Greek letter comes after {slot}?",
                     "Can you tell me which Greek letter follows {slot}?",
                     "Remind me which Greek letter comes after {slot}."),
    "product_maker": ("Do you know which company makes {slot}?",
                      "Can you tell me which company produces {slot}?",
                      "Remind me which company makes {slot}."),
    "company_founder": ("Do you know who founded {slot}?",
                        "Can you tell me who founded {slot}?",
                        "Remind me who founded {slot}."),
    "animal_product": ("Do you know which animal gives us {slot}?",
                       "Can you tell me which animal we get {slot} from?",
                       "Remind me which animal gives us {slot}."),
    "team_size": ("Do you know how many players {slot} team has on the field or court at once?",
                  "Can you tell me how many players {slot} team has on the field or court at once?",
                  "Remind me how many players {slot} team has on the field or court at once."),
}
REPLAY_RELATIONS: tuple[str, ...] = tuple(REPLAY_TEMPLATES)  # every name ``replay_relations`` may take
# The default: the relations of the first replay arm (pass_gen_replay.yaml), so its rows stay byte for byte.
BROAD_REPLAY_RELATIONS: tuple[str, ...] = ("plural", "past_tense", "young_animal", "worker", "body_part", "made_of",
                                           "calendar", "collective_noun", "animal_home")
# Questions about real named works, inventions and people (pass_gen_replay_named.yaml).
NAMED_REPLAY_RELATIONS: tuple[str, ...] = ("painter", "composer", "inventor", "athlete_sport")
# Twenty more relations for the relation curve of benchmarks/pass_probe.py (does a probe of the base model's
# errors carry over to unseen relations better when it learns from more relations?): mythology, sport, music,
# comics, films, songs, grammar, holidays, numerals, tools, dishes, colours, companies, animals' products.
EXTRA_REPLAY_RELATIONS: tuple[str, ...] = ("greek_god", "sport_term", "instrument_family", "superhero_identity",
    "film_director", "singer_song", "cartoon_animal", "gender_counterpart", "comparative", "holiday_month",
    "roman_numeral", "tool_use", "main_ingredient", "colour_mix", "film_character", "greek_letter",
    "product_maker", "company_founder", "animal_product", "team_size")


def replay_entities(relation: str) -> list[Entity]:
    """Every fact of one replay relation as a bank `Entity` (key ``relation:slot``), in table order."""
    if relation not in REPLAY_TEMPLATES:
        raise ValueError(f"unknown replay relation {relation!r}; choose from {REPLAY_RELATIONS}")
    return relation_entities(read_relation_facts(REPLAY_FACTS_FILE), relation)


def resolve_replay_relations(value: Any) -> tuple[str, ...]:
    """The ``replay_relations`` option: None -> ``BROAD_REPLAY_RELATIONS``, else a non-empty list of
    ``REPLAY_RELATIONS`` names, returned in table order without repeats (the rows depend on the set, not the order)."""
    if value is None:
        return BROAD_REPLAY_RELATIONS
    if isinstance(value, str) or not isinstance(value, Sequence) or not value or \
            not all(isinstance(v, str) for v in value) or set(value) - set(REPLAY_RELATIONS):
        raise ValueError(f"replay_relations must be a non-empty list drawn from {list(REPLAY_RELATIONS)}, "
                         f"got {value!r}")
    return tuple(rel for rel in REPLAY_RELATIONS if rel in value)


def replay_templates(relation: str, carriers: bool = False) -> tuple[str, ...]:
    """The phrasings of one replay relation; with ``carriers``, its `CARRIER_TEMPLATES` after them."""
    return REPLAY_TEMPLATES[relation] + (CARRIER_TEMPLATES[relation] if carriers else ())


def available_replay_rows(relations: Sequence[str] = BROAD_REPLAY_RELATIONS, carriers: bool = False) -> int:
    """How many distinct replay questions ``relations`` hold: facts x phrasings, summed over them."""
    return sum(len(replay_entities(rel)) * len(replay_templates(rel, carriers)) for rel in relations)


def check_replay_rows(n: Any, relations: Sequence[str] = BROAD_REPLAY_RELATIONS, carriers: bool = False) -> int:
    """The ``replay_rows`` option: a whole number from 0 to ``available_replay_rows(relations, carriers)``."""
    most = available_replay_rows(relations, carriers)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= most:
        raise ValueError(f"replay_rows must be a whole number from 0 to {most} (replay facts x phrasings), got {n!r}")
    return n


def _relation_order(seed: int, relation: str, carriers: bool) -> list[Question]:
    """Every (fact, phrasing) question of a relation, every fact once before any fact twice:
    a small ``replay_rows`` covers many facts rather than a few facts in every phrasing."""
    rng = random.Random(f"tokengraft-replay:{seed}:{relation}")
    entities = replay_entities(relation)
    rng.shuffle(entities)
    phrasings = replay_templates(relation, carriers)
    templates = list(range(len(phrasings)))
    rng.shuffle(templates)
    out = []
    for turn in range(len(templates)):
        for i, entity in enumerate(entities):
            t = templates[(i + turn) % len(templates)]  # a fact's next turn uses its next phrasing
            template = phrasings[t]
            text, spans = render(template, entity.variants[0])
            out.append(Question(entity, f"{relation}:{t}", template, dict(entity.variants[0]), text, spans))
    return out


def replay_rows(seed: int, n: int, relations: Sequence[str] = BROAD_REPLAY_RELATIONS,
                carriers: bool = False) -> list[dict[str, Any]]:
    """``n`` answerable training rows of ``relations``, spread evenly over them, deterministic for ``seed``;
    ``carriers`` adds the `CARRIER_TEMPLATES` to the phrasings they are drawn from.

    Rows look like the question bank's answerable rows (``kind: "answerable"``, gold,
    aliases, entity, template, ``split: "train"``, completion ``"<Gold>."``), so
    ``is_correct`` grades them and the know-check labeller relabels them the same way,
    plus ``replay: true`` so a run's data can count them.
    """
    relations = resolve_replay_relations(relations)
    check_replay_rows(n, relations, carriers)
    # Each relation's order comes from its own seeded stream, so adding relations to the table changes no other's.
    queues = {rel: _relation_order(seed, rel, carriers) for rel in relations}
    picked: list[Question] = []
    while len(picked) < n:  # round robin: equal shares until a relation runs out
        for rel in relations:
            if queues[rel] and len(picked) < n:
                picked.append(queues[rel].pop(0))
    rows = []
    for q in picked:
        gold = q.entity.gold
        rows.append({"prompt": q.text, "completion": gold[:1].upper() + gold[1:] + ".", "kind": "answerable",
                     "answerable": True, **question_meta(q, "train"), "replay": True})
    random.Random(f"tokengraft-replay:{seed}").shuffle(rows)
    return rows
