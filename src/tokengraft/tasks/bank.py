"""The question bank the field tasks share: short questions with short gold answers.

Capitals, small arithmetic and everyday facts, rendered from templates, each
question tagged with its ``entity`` (the thing asked about) and ``template`` (the
phrasing). ``split_bank`` splits entities AND templates deterministically into
train / validation / test, so a held-out number never comes from an entity or a
phrasing seen in training. ``answer_matches`` is the lenient matcher that data
relabelling and the metrics use to compare an answer with a gold one.
"""

from __future__ import annotations

import csv
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from tokengraft.tasks.splits import SPLITS

# ----------------------------------------------------------------------------- answer matching


def normalize_answer(text: str, keep_case: bool = False) -> str:
    """Lower-case (unless ``keep_case``), strip accents, turn punctuation into spaces, collapse whitespace.

    "N'Djaména" and "n djamena", "Washington, D.C." and "washington d c" compare
    equal, so aliases need not list every spelling variant.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    if keep_case:
        return " ".join(re.sub(r"[^0-9A-Za-z]+", " ", text).split())
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def answer_matches(answer: str, gold: str, aliases: Sequence[str] = (), any_number: bool = False,
                   case_sensitive: bool = False) -> bool:
    """True when ``answer`` gives the gold answer.

    Text golds: the gold or an alias occurs in ``answer`` as whole words, so
    "Parisian" is not "Paris". Numeric golds: the LAST number written in digits
    must equal the gold (the convention of math evals: "4 + 11 is 15" answers 15
    but not 4, and "18" is not 8; a decimal is one number, so "100.0 degrees"
    answers 100 and "2.5" is neither 2 nor 5); an answer with no digits is matched on the
    aliases as words ("eight legs"). ``any_number`` accepts the gold anywhere
    among the numbers instead: for years ("landed in July 1969 with Apollo 11").
    ``case_sensitive`` keeps case on both sides: chemical symbols ("He" is helium, "he" a pronoun).
    """
    norm_answer = normalize_answer(answer, keep_case=case_sensitive)
    if gold.isdigit():
        numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", answer.replace(",", ""))]
        if numbers:
            return int(gold) in numbers if any_number else numbers[-1] == int(gold)
        targets: Sequence[str] = aliases
    else:
        targets = (gold, *aliases)
    hay = f" {norm_answer} "
    for target in targets:
        norm = normalize_answer(target, keep_case=case_sensitive)
        if norm and f" {norm} " in hay:
            return True
    return False


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 1000 ("fifty-two", "one hundred and forty-four")."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_words supports 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def gold_aliases(gold: str, aliases: Sequence[str] = ()) -> list[str]:
    """Aliases plus the English words of a numeric gold (a model may say "eight" for 8)."""
    out = [a for a in aliases if a]
    if gold.isdigit() and int(gold) < 1000:
        words = number_words(int(gold))
        out += [words] + ([words.replace(" and ", " ")] if " and " in words else [])
    return out


# ----------------------------------------------------------------------------- question bank

# Question templates per relation. ``{Name}`` (capitalised) renders the value with
# its first letter upper-cased (sentence start). Every template has >= 4 words so
# word-level corruptions (shuffle, drop) always have something to work on.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": (
        "What is the capital of {country}?",
        "What is the capital city of {country}?",
        "Which city is the capital of {country}?",
        "Name the capital of {country}.",
        "{Country}'s capital is which city?",
        "Tell me the capital of {country}.",
    ),
    "add": (
        "What is {a} + {b}?",
        "What is {a} plus {b}?",
        "How much is {a} plus {b}?",
        "Calculate {a} + {b}.",
        "What do you get if you add {a} and {b}?",
        "What is the sum of {a} and {b}?",
    ),
    "sub": (
        "What is {a} - {b}?",
        "What is {a} minus {b}?",
        "How much is {a} minus {b}?",
        "Calculate {a} - {b}.",
        "What do you get if you subtract {b} from {a}?",
        "What is {a} take away {b}?",
    ),
    "mul": (
        "What is {a} * {b}?",
        "What is {a} times {b}?",
        "How much is {a} times {b}?",
        "Calculate {a} * {b}.",
        "What do you get if you multiply {a} by {b}?",
        "What is the product of {a} and {b}?",
    ),
    "count": (
        "How many {unit} does {slot} have?",
        "{Slot} has how many {unit}?",
        "What is the number of {unit} that {slot} has?",
        "Tell me how many {unit} {slot} has.",
        "Do you know how many {unit} {slot} has?",
    ),
    "colour": (
        "What colour is {slot}?",
        "What color is {slot}?",
        "Which colour is {slot}?",
        "{Slot} is usually what colour?",
        "What is the colour of {slot}?",
    ),
    "opposite": (
        "What is the opposite of {slot}?",
        'What is the opposite of the word "{slot}"?',
        "Which word means the opposite of {slot}?",
        "Give me the opposite of {slot}.",
        "What word is the opposite of {slot}?",
    ),
    "sound": (
        "What sound does {slot} make?",
        "What noise does {slot} make?",
        "Which sound does {slot} make?",
        "{Slot} makes what sound?",
        "What does {slot} say?",
    ),
    # The relations below are opt-in (not in BASIC_RELATIONS): the <PASS> know-check pool uses them
    # for harder arithmetic and dates. Their phrasings differ from every basic template, so a
    # held-out phrasing of one relation is never a training phrasing of another.
    "add_hard": (
        "What is the total of {a} and {b}?",
        "Work out {a} + {b}.",
        "Add {a} to {b}. What is the result?",
        "Compute {a} plus {b}.",
        "{A} plus {b} equals what?",
        "Find the total of {a} and {b}.",
    ),
    "mul_hard": (
        "What is {a} multiplied by {b}?",
        "Work out {a} x {b}.",
        "Compute {a} multiplied by {b}.",
        "{A} multiplied by {b} equals what?",
        "Find the product of {a} and {b}.",
        "Multiply {a} by {b}. What is the result?",
    ),
    "year": (
        "In what year was {slot}?",
        "What year was {slot}?",
        "In which year was {slot}?",
        "{Slot} was in which year?",
        "Tell me the year of {slot}.",
        "When was {slot}? Give the year.",
    ),
}
ARITHMETIC = ("add", "sub", "mul", "add_hard", "mul_hard")
FACTS = ("count", "colour", "opposite", "sound", "year")
# What the tasks draw from by default; harder arithmetic and dates are opt-in (``relations=ALL_RELATIONS``).
BASIC_RELATIONS = ("capital", "add", "sub", "mul", "count", "colour", "opposite", "sound")
ALL_RELATIONS = tuple(TEMPLATES)
# Placeholders that carry the entity (what corruptions destroy); {unit} is phrasing.
SLOT_NAMES = frozenset({"country", "a", "b", "slot"})
# Default share of each relation group in generated rows.
GROUP_WEIGHTS = {"capital": 0.4, "arithmetic": 0.3, "facts": 0.3}


@dataclass
class Entity:
    """One thing that can be asked about; ``variants`` are slot-value dicts (e.g. 7+5 and 5+7)."""

    relation: str
    key: str
    variants: list[dict[str, str]]
    gold: str
    aliases: list[str]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Question:
    """A rendered question; ``slots`` are the character spans of the entity values in ``text``."""

    entity: Entity
    template_id: str
    template: str
    values: dict[str, str]
    text: str
    slots: list[tuple[int, int]]

    @property
    def relation(self) -> str:
        return self.entity.relation


def _data_lines(name: str) -> list[list[str]]:
    text = resources.files("tokengraft").joinpath("data", name).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [[c.strip() for c in r] for r in rows[1:]]  # rows[0] is the header


def _split_aliases(cell: str) -> list[str]:
    return [a.strip() for a in cell.split("|") if a.strip()]


@lru_cache(maxsize=None)
def load_countries() -> tuple[dict[str, Any], ...]:
    """Rows of ``data/countries.tsv`` as dicts: country, article, capital, continent, aliases."""
    return tuple(dict(country=r[0], article=r[1], capital=r[2], continent=r[3], aliases=_split_aliases(r[4]))
                 for r in _data_lines("countries.tsv"))


@lru_cache(maxsize=None)
def load_facts() -> tuple[dict[str, Any], ...]:
    """Rows of ``data/facts.tsv`` as dicts: relation, slot, unit, gold, aliases, detail."""
    return tuple(dict(relation=r[0], slot=r[1], unit=r[2], gold=r[3], aliases=_split_aliases(r[4]), detail=r[5])
                 for r in _data_lines("facts.tsv"))


def bank_entities(relation: str) -> list[Entity]:
    """All entities of a relation, in a fixed order (the split shuffles them with its seed)."""
    if relation == "capital":
        out = []
        for c in load_countries():
            name = f"{c['article']} {c['country']}".strip()
            out.append(Entity("capital", f"capital:{c['country']}", [{"country": name}], c["capital"],
                              gold_aliases(c["capital"], c["aliases"]),
                              {"country": name, "continent": c["continent"], "capital": c["capital"]}))
        return out
    if relation in ARITHMETIC:
        out = []
        # add/mul are commutative: 7+5 and 5+7 are ONE entity (two variants) so they never straddle splits.
        # The *_hard relations: two-digit sums and teen-to-thirty times tables, where a small model errs more.
        pairs = {"add": [(a, b) for a in range(1, 21) for b in range(a, 21)],
                 "sub": [(a, b) for a in range(2, 21) for b in range(1, a)],
                 "mul": [(a, b) for a in range(2, 13) for b in range(a, 13)],
                 "add_hard": [(a, b) for a in range(21, 100, 3) for b in range(a, 100, 4)],
                 "mul_hard": [(a, b) for a in range(13, 31) for b in range(3, 10)]}[relation]
        sym = "-" if relation == "sub" else "*" if relation.startswith("mul") else "+"
        for a, b in pairs:
            r = a - b if relation == "sub" else a * b if relation.startswith("mul") else a + b
            variants = [{"a": str(a), "b": str(b)}]
            if relation != "sub" and a != b:
                variants.append({"a": str(b), "b": str(a)})
            out.append(Entity(relation, f"{relation}:{a}{sym}{b}", variants, str(r), gold_aliases(str(r)),
                              {"result": r}))
        return out
    if relation in FACTS:
        out = []
        for f in load_facts():
            if f["relation"] != relation:
                continue
            key = f"{relation}:{f['slot']}" + (f"|{f['unit']}" if f["unit"] else "")
            values = {"slot": f["slot"], **({"unit": f["unit"]} if f["unit"] else {})}
            out.append(Entity(relation, key, [values], f["gold"], gold_aliases(f["gold"], f["aliases"]),
                              {"slot": f["slot"], "unit": f["unit"], "detail": f["detail"]}))
        return out
    raise ValueError(f"unknown relation {relation!r}")


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(template: str, values: Mapping[str, str]) -> tuple[str, list[tuple[int, int]]]:
    """Fill a template; return the text and the spans of the entity slots in it."""
    out, spans, pos = [], [], 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(template[pos:m.start()])
        name = m.group(1)
        value = values[name.lower()]
        if name[0].isupper():
            value = value[:1].upper() + value[1:]
        start = sum(len(p) for p in out)
        if name.lower() in SLOT_NAMES and value:
            spans.append((start, start + len(value)))
        out.append(value)
        pos = m.end()
    out.append(template[pos:])
    return "".join(out), spans


def make_question(entity: Entity, template_index: int, rng: random.Random) -> Question:
    template = TEMPLATES[entity.relation][template_index]
    values = rng.choice(entity.variants)
    text, spans = render(template, values)
    return Question(entity, f"{entity.relation}:{template_index}", template, dict(values), text, spans)


@dataclass
class BankSplit:
    """Entities and template indices of one split, per relation."""

    entities: dict[str, list[Entity]]
    templates: dict[str, list[int]]

    def questions(self, relation: str, rng: random.Random) -> list[Question]:
        """Every (entity, template) pair of the relation in this split, in a seeded order."""
        qs = [make_question(e, t, rng) for e in self.entities[relation] for t in self.templates[relation]]
        rng.shuffle(qs)
        return qs


def split_bank(seed: int, fractions: tuple[float, float, float] = (0.6, 0.15, 0.25),
               relations: Sequence[str] = tuple(TEMPLATES), validation_templates: int = 1) -> dict[str, BankSplit]:
    """Split every relation's entities by ``fractions`` and its templates 1 test /
    ``validation_templates`` validation / rest train.

    Deterministic for a seed. Splitting templates too means a held-out score
    measures generalisation to new phrasings, not recall of trained strings.
    ``validation_templates`` > 1 grows the validation split (more phrasings of the
    validation entities) at the cost of training phrasings; the test split stays the
    same for every value, so runs with different values are compared on one test set.
    """
    fewest = min(len(TEMPLATES[rel]) for rel in relations)
    if isinstance(validation_templates, bool) or not isinstance(validation_templates, int) \
            or not 1 <= validation_templates <= fewest - 2:
        raise ValueError(f"validation_templates must be a whole number from 1 to {fewest - 2} (one template stays "
                         f"for test and one for training), got {validation_templates!r}")
    out = {s: BankSplit({}, {}) for s in SPLITS}
    for rel in relations:
        rng = random.Random(f"tokengraft-bank:{seed}:{rel}")
        ents = bank_entities(rel)
        rng.shuffle(ents)
        n_test = max(1, round(len(ents) * fractions[2]))
        n_val = max(1, round(len(ents) * fractions[1]))
        parts = {"test": ents[:n_test], "validation": ents[n_test:n_test + n_val], "train": ents[n_test + n_val:]}
        tmpl = list(range(len(TEMPLATES[rel])))
        rng.shuffle(tmpl)
        end_val = 1 + validation_templates
        tparts = {"test": tmpl[:1], "validation": tmpl[1:end_val], "train": tmpl[end_val:]}
        for s in SPLITS:
            out[s].entities[rel] = parts[s]
            out[s].templates[rel] = sorted(tparts[s])
    return out


def relation_group(relation: str) -> str:
    return "arithmetic" if relation in ARITHMETIC else "facts" if relation in FACTS else relation


def sample_questions(split: BankSplit, n: int, rng: random.Random, relations: Sequence[str] = BASIC_RELATIONS,
                     weights: Mapping[str, float] = GROUP_WEIGHTS, exclude: set[str] | None = None,
                     allow_fewer: bool = False) -> list[Question]:
    """Draw ``n`` distinct questions, mixing relation groups by ``weights``.

    Groups share their weight equally among their relations. A relation that
    runs out of (entity, template) pairs drops out and the rest fill the gap.
    When all run out: return what there is if ``allow_fewer``, else raise.
    """
    exclude = set() if exclude is None else exclude
    pools = {r: [q for q in split.questions(r, rng) if q.text not in exclude] for r in relations}
    group_sizes = {g: sum(1 for r in relations if relation_group(r) == g) for g in weights}
    w = {r: weights.get(relation_group(r), 0.0) / max(1, group_sizes.get(relation_group(r), 1)) for r in relations}
    out: list[Question] = []
    seen: set[str] = set()
    while len(out) < n:
        live = [r for r in relations if pools[r] and w[r] > 0]
        if not live:
            if allow_fewer:
                break
            raise ValueError(f"only {len(out)} distinct questions available, {n} requested; ask for fewer rows")
        rel = rng.choices(live, weights=[w[r] for r in live])[0]
        q = pools[rel].pop()
        if q.text not in seen:
            seen.add(q.text)
            out.append(q)
    return out


def question_meta(q: Question, split: str) -> dict[str, Any]:
    """Metadata every task row carries: what was asked, in which phrasing, and its gold answer."""
    return {"relation": q.relation, "entity": q.entity.key, "template": q.template_id, "split": split,
            "question": q.text, "gold": q.entity.gold, "aliases": list(q.entity.aliases)}
