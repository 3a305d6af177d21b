"""`<PASS>` abstention data: answer what you can, emit `<PASS>` when the question cannot be answered.

Answerable rows are short questions from the question bank (capitals of real
countries, small arithmetic, everyday facts) with the completion ``"<gold>."``
(e.g. ``"Paris."``): one short, consistent form, so the model's first answer
token competes directly with `<PASS>` and ``p_pass`` at that position is a clean
abstention score. Unanswerable rows are corrupted counterparts with the
completion exactly ``"<PASS>"``; every row says which ``kind`` it is:

- ``char_noise``: letters substituted/inserted/deleted; the entity (country,
  operands, subject) is always destroyed, digits become letters;
- ``dropped_words``: the entity words and about a quarter of the others removed;
- ``missing_operand``: the template intact but one entity slot left empty
  ("What is 7 + ?", "What is the capital of ?");
- ``fictional_entity``: the entity replaced by a pronounceable invented name
  ("What is the capital of Blorvania?", "How many legs does a trelmup have?"),
  checked against real names;
- ``shuffled_words``: word order scrambled;
- ``truncated``: the question cut off inside or before its entity.

Beside the corruptions, ``tasks.unanswerable`` makes well-formed questions that have
no answer (``future_event``, ``private_fact``, ``false_premise``, ``category_error``,
``missing_referent``); ``train_kinds`` / ``test_only_kinds`` take any of them, and
``heldout_relations`` adds a split of answerable questions of relations no other
split uses (``tasks.heldout_relations``, "test_heldout_relations"), and ``replay_rows``
adds answerable training rows of yet other relations (``tasks.replay_relations``; which
ones: ``replay_relations``).
Left unset, the rows are those of earlier versions.

Held-out numbers come from data that never overlaps training: the question bank
splits entities and templates (``tasks.bank.split_bank``), invented names are unique
per split, and the test split additionally holds corruption kinds never seen in
training (by default ``shuffled_words`` and ``truncated``). Validation uses only
training kinds, because it calibrates the `<PASS>` threshold and must not peek
at the novel kinds.

``label_with_base_answers`` turns answerable questions the base model gets
wrong into `<PASS>` targets (the model should abstain on what it does not know);
with ``data.know_check_samples`` a question counts as known only when the greedy
answer is right and so are at least half of several sampled answers (consistency);
and ``read_probe_rows`` / ``score_read_probe`` test the other direction: does the
tuned model *understand* `<PASS>` when it appears in its input?
"""

from __future__ import annotations

import inspect
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tokengraft.errors import TokengraftError
from tokengraft.tasks.bank import (ALL_RELATIONS, ARITHMETIC, BASIC_RELATIONS, BankSplit, Question, answer_matches, load_countries, load_facts, question_meta, render, sample_questions, split_bank)
from tokengraft.tasks.heldout_relations import (CASE_SENSITIVE_RELATIONS, HELDOUT_RELATIONS, HELDOUT_SPLIT,
                                               heldout_relation_rows, resolve_heldout_relations)
from tokengraft.tasks.registry import Generated, Task, register_task
from tokengraft.tasks.replay_relations import (REPLAY_RELATIONS, check_replay_rows, replay_rows as make_replay_rows,
                                              resolve_replay_relations)
from tokengraft.tasks.splits import SPLITS, check_disjoint
from tokengraft.tasks.unanswerable import UNANSWERABLE_KINDS, kind_rows

PASS_TOKEN = "<PASS>"
TRAIN_KINDS: tuple[str, ...] = ("char_noise", "dropped_words", "missing_operand", "fictional_entity")
TEST_ONLY_KINDS: tuple[str, ...] = ("shuffled_words", "truncated")
ALL_KINDS: tuple[str, ...] = TRAIN_KINDS + TEST_ONLY_KINDS  # the corruption kinds
# Every kind an option may name: the corruptions and the unanswerable-but-well-formed kinds (tasks/unanswerable.py).
KINDS: tuple[str, ...] = ALL_KINDS + UNANSWERABLE_KINDS

# Real countries deliberately missing from countries.tsv (disputed or several capitals, the
# answer inside the question, an ambiguous name) plus former and informal names: invented
# names must not collide with any of them either.
REAL_NAMES_NOT_IN_TABLE = frozenset(n.lower() for n in """
Bolivia|South Africa|Sri Lanka|Israel|Palestine|Taiwan|Kosovo|Georgia|Luxembourg|Singapore|Monaco|San Marino
|Andorra|Vatican City|Djibouti|Kuwait|Mexico|Guatemala|Panama|Benin|Burundi|Ivory Coast|Cote d'Ivoire
|Equatorial Guinea|Eswatini|Swaziland|Western Sahara|Palau|Nauru|Tuvalu|Kiribati|Micronesia|Marshall Islands
|Grenada|Saint Lucia|Dominica|Antigua and Barbuda|Saint Kitts and Nevis|Saint Vincent and the Grenadines
|Sao Tome and Principe|Guinea-Bissau|Burma|Holland|England|Scotland|Wales|Britain|America|Czechia|East Timor
|Zaire|Persia|Siam|Ceylon|Prussia|Yugoslavia|Rhodesia|Bohemia|Moravia|Transylvania|Pennsylvania|Virginia
|California|Tasmania|Bavaria|Catalonia|Patagonia|Siberia|Scandinavia|Arabia|Anatolia|Mesopotamia|Macedonia
|Armenia|Slavonia|Galicia|Iberia|Lusitania|Gallia|Britannia|Hispania|Germania|Dalmatia|Cilicia|Lydia|Dacia
|Nigeria|Liberia|Algeria|Syria|Serbia|Zambia|Gambia|Namibia|Somalia|Estonia|Latvia|Albania|Romania|Mauritania
""".replace("\n", "").split("|") if n.strip())

# ----------------------------------------------------------------------------- invented names

_ONSETS = "b bl br d dr f fl g gl gr k kl kr l m n p pl pr r s sk st t tr v z zh th".split()
_VOWELS = "a e i o u ai ea ou".split()
_CODAS = ["", "", "n", "r", "l", "s", "m", "k", "th", "v"]
_COUNTRY_ENDINGS = ["ania", "ovia", "istan", "land", "ora", "eria", "avia", "ines"]
_NOUN_ENDINGS = ["ip", "ak", "et", "ow", "um", "ix", "el", "op"]


def _real_words() -> set[str]:
    words = set(REAL_NAMES_NOT_IN_TABLE)
    for c in load_countries():
        words |= {c["country"].lower(), c["capital"].lower(), *(a.lower() for a in c["aliases"])}
    for f in load_facts():
        words |= {w.lower() for w in re.findall(r"[A-Za-z]+", f["slot"] + " " + f["gold"])}
    return words


def invented_name(rng: random.Random, style: str) -> str:
    """A pronounceable invented word: ``style="country"`` -> "Blorvania", ``"noun"`` -> "trelmup"."""
    syllables = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                        for _ in range(rng.choice((1, 2))))
    if style == "country":
        return (syllables + rng.choice(_COUNTRY_ENDINGS)).capitalize()
    return syllables + rng.choice(_NOUN_ENDINGS)


def invented_names(rng: random.Random, n: int, style: str, taken: set[str]) -> list[str]:
    """``n`` invented names not in ``taken`` and not real; adds them to ``taken``."""
    real = _real_words()
    out: list[str] = []
    while len(out) < n:
        name = invented_name(rng, style)
        if name.lower() in real or name.lower() in taken or len(name) < 5:
            continue
        taken.add(name.lower())
        out.append(name)
    return out


# ----------------------------------------------------------------------------- corruptions

_LETTERS = string.ascii_lowercase


def _other_letter(rng: random.Random, c: str) -> str:
    new = rng.choice([x for x in _LETTERS if x != c.lower()])
    return new.upper() if c.isupper() else new


def _in_slot(i: int, slots: Sequence[tuple[int, int]]) -> bool:
    return any(s <= i < e for s, e in slots)


def _char_noise(q: Question, rng: random.Random) -> str:
    out = []
    for i, c in enumerate(q.text):
        if _in_slot(i, q.slots) and c.isalnum():
            # Entity characters: digits always become letters (a changed digit would be a different,
            # answerable sum); letters change with high probability.
            if c.isdigit() or rng.random() < 0.6:
                out.append(_other_letter(rng, c if c.isalpha() else "a"))
            else:
                out.append(c)
        elif c.isalpha():
            r = rng.random()
            out.append(_other_letter(rng, c) if r < 0.25 else c + rng.choice(_LETTERS) if r < 0.32
                       else "" if r < 0.37 else c)
        else:
            out.append(c)
    return "".join(out)


def _words(text: str) -> list[re.Match[str]]:
    return list(re.finditer(r"\S+", text))


def _touches_slot(m: re.Match[str], slots: Sequence[tuple[int, int]]) -> bool:
    return any(m.start() < e and s < m.end() for s, e in slots)


def _dropped_words(q: Question, rng: random.Random) -> str:
    words = _words(q.text)
    kept = [m.group() for m in words if not _touches_slot(m, q.slots) and rng.random() >= 0.25]
    if len(kept) < 2:
        kept = [m.group() for m in words if not _touches_slot(m, q.slots)][:2]
    return " ".join(kept)


def _shuffled_words(q: Question, rng: random.Random) -> str:
    words = [m.group() for m in _words(q.text)]
    pairs = set(zip(words, words[1:]))
    best = words[::-1]
    for _ in range(50):
        cand = words[:]
        rng.shuffle(cand)
        kept_pairs = sum(p in pairs for p in zip(cand, cand[1:]))
        if cand != words and kept_pairs <= len(pairs) // 2:
            best = cand
            break
    return " ".join(best)


def _missing_operand(q: Question, rng: random.Random) -> str:
    s, e = rng.choice(q.slots)
    return re.sub(r" {2,}", " ", (q.text[:s] + q.text[e:])).strip()


def _truncated(q: Question, rng: random.Random) -> str:
    # Cut inside or just before the LAST entity slot, keeping at most 40% of a word and none of a
    # number (a kept digit would leave a different, answerable sum).
    s, e = q.slots[-1]
    keep = 0.0 if q.text[s:e].isdigit() else rng.uniform(0.0, 0.4)
    cut = s + int((e - s) * keep)
    head = q.text[:cut].rstrip()
    if len(head.split()) >= 2:
        return head
    # The entity opens the question: lose the beginning instead, keeping at most 40% of the first slot.
    s, e = q.slots[0]
    return q.text[e - int((e - s) * rng.uniform(0.0, 0.4)):].lstrip()


def _fictional(q: Question, name: str) -> str:
    values = dict(q.values)
    if q.relation == "capital":
        values["country"] = name
    else:
        slot = values["slot"]
        article = next((a for a in ("a ", "an ", "the ") if slot.lower().startswith(a)), "")
        if article in ("a ", "an "):
            article = "an " if name[0].lower() in "aeiou" else "a "
        values["slot"] = article + name.lower()
    return render(q.template, values)[0]


_CORRUPT: dict[str, Callable[[Question, random.Random], str]] = {
    "char_noise": _char_noise, "dropped_words": _dropped_words, "shuffled_words": _shuffled_words,
    "missing_operand": _missing_operand, "truncated": _truncated,
}


def applicable(kind: str, relation: str) -> bool:
    """Invented entities make no sense for arithmetic (there is no "capital of 7"): skip that pair."""
    return not (kind == "fictional_entity" and relation in ARITHMETIC)


def corrupt(q: Question, kind: str, rng: random.Random, name: str | None = None) -> str:
    """The corrupted text of question ``q``; ``fictional_entity`` needs an invented ``name``."""
    if kind == "fictional_entity":
        if name is None:
            raise ValueError("fictional_entity needs an invented name")
        return _fictional(q, name)
    for _ in range(20):  # retry the rare draw that leaves the entity readable
        text = _CORRUPT[kind](q, rng)
        if text and text != q.text and not _entity_survives(q, text, kind):
            return text
    return text


def _entity_survives(q: Question, text: str, kind: str) -> bool:
    if kind == "shuffled_words":
        return False  # shuffling keeps every word by design; the order is what breaks
    lowered = text.lower()
    if kind in ("missing_operand", "truncated") and len(q.slots) > 1:
        return False  # one operand may legitimately remain
    return any(q.text[s:e].lower() in lowered for s, e in q.slots)


# ----------------------------------------------------------------------------- splits


def _answerable_row(q: Question, split: str) -> dict[str, Any]:
    gold = q.entity.gold
    return {"prompt": q.text, "completion": gold[:1].upper() + gold[1:] + ".", "kind": "answerable",
            "answerable": True, **question_meta(q, split)}


def _pass_row(q: Question, kind: str, text: str, split: str, name: str | None) -> dict[str, Any]:
    meta = question_meta(q, split)
    meta.update(gold=None, aliases=[], source_question=q.text)
    if name is not None:
        meta["entity"] = f"fictional:{name}"
    return {"prompt": text, "completion": PASS_TOKEN, "kind": kind, "answerable": False, **meta}


def _split_rows(bank_split: BankSplit, split: str, n: int, pass_fraction: float, kinds: Sequence[str],
                rng: random.Random, taken_names: set[str], seen: set[str],
                relations: Sequence[str] = BASIC_RELATIONS,
                made_elsewhere: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Rows of one split; ``seen`` holds every prompt made so far in ANY split (corruptions of
    different templates can collapse to the same garbled text, which must not straddle splits).

    ``kinds`` are corruption kinds; ``made_elsewhere`` are `<PASS>` rows of this split made
    already (the unanswerable kinds'): the corruptions make the rest of the `<PASS>` share."""
    n_answerable = n - round(n * pass_fraction)
    n_pass = round(n * pass_fraction) - len(made_elsewhere)
    if n_pass > 0 and not kinds:
        raise ValueError(f"{split}: the unanswerable kinds made only {len(made_elsewhere)} distinct questions for "
                         f"{n_pass + len(made_elsewhere)} <PASS> rows; add a corruption kind or ask for fewer rows")
    rows = [_answerable_row(q, split)
            for q in sample_questions(bank_split, n_answerable, rng, relations=relations, exclude=seen)]
    seen |= {r["prompt"] for r in rows}
    # Corruptions collapse (every "What is the capital of ?" is the same text), so draw spare
    # sources and, in small splits, corrupt the same question more than once.
    sources = sample_questions(bank_split, 4 * n_pass + 50, rng, relations=relations, allow_fewer=True)
    n_fict = sum(1 for i in range(n_pass) if kinds[i % len(kinds)] == "fictional_entity")
    names = {"country": invented_names(rng, n_fict, "country", taken_names),
             "noun": invented_names(rng, n_fict, "noun", taken_names)}
    made = 0
    for q in (q for _ in range(10) for q in sources):
        if made == n_pass:
            break
        kind = kinds[made % len(kinds)]
        if not applicable(kind, q.relation):
            continue
        name = None
        if kind == "fictional_entity":
            style = "country" if q.relation == "capital" else "noun"
            name = names[style].pop() if names[style] else invented_names(rng, 1, style, taken_names)[0]
        text = corrupt(q, kind, rng, name)
        if text in seen:
            continue
        seen.add(text)
        rows.append(_pass_row(q, kind, text, split, name))
        made += 1
    if made < n_pass:
        raise ValueError(f"{split}: only {made} distinct corrupted questions for {n_pass} requested; ask for fewer rows")
    rows += made_elsewhere
    rng.shuffle(rows)
    return rows


def _kind_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name} must be a list of kinds, got {value!r}")
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown kinds {unknown} in {name}; choose from {list(KINDS)}")
    return tuple(value)


def _check_sizes(sizes: Mapping[str, Any], pass_fraction: Any) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "n_train" else 0):
            raise ValueError(f"{name} must be a whole number >= {1 if name == 'n_train' else 0}, got {value!r}")
    if isinstance(pass_fraction, bool) or not isinstance(pass_fraction, (int, float)) or not 0 <= pass_fraction <= 1:
        raise ValueError(f"pass_fraction must be a number from 0 to 1, got {pass_fraction!r}")


def generate_splits(seed: int = 0, n_train: int = 400, n_validation: int = 100, n_test: int = 200,
                    pass_fraction: float = 0.5, train_kinds: Sequence[str] = TRAIN_KINDS,
                    test_only_kinds: Sequence[str] = TEST_ONLY_KINDS, relations: str | Sequence[str] = "basic",
                    read_rows: int = 0, heldout_relations: str | Sequence[str] | None = None,
                    validation_templates: int = 1, replay_rows: int = 0,
                    replay_relations: Sequence[str] | None = None,
                    replay_carriers: bool = False, replay_gold: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Train / validation / test rows for `<PASS>` training, deterministic for ``seed``.

    Defaults suit a few CPU minutes on a 135M model: 400 train rows, half `<PASS>`.
    Train and validation use ``train_kinds``; test uses those plus ``test_only_kinds``.
    Kinds are the corruptions (``ALL_KINDS``) and the unanswerable-but-well-formed kinds
    (``UNANSWERABLE_KINDS``: future events, private facts, false premises, category
    errors, missing referents); the `<PASS>` rows of a split are shared evenly among
    its kinds, and a kind whose pool runs short leaves the rest to the corruptions.
    ``relations``: "basic" (capitals, small arithmetic, everyday facts), "all" (adds
    two-digit sums, bigger times tables and dates: the know-check pool), or a list.
    ``read_rows`` adds that many READ rows to train (``read_training_rows``).
    ``heldout_relations`` ("all" or a list of ``HELDOUT_RELATIONS``) adds the split
    ``test_heldout_relations``: answerable questions of relations no other split uses.
    ``validation_templates`` (`split_bank`): phrasings per relation given to validation
    instead of training; more of them let the `<PASS>` calibration certify its false-PASS
    bound on a model that answers few questions right. The test split does not change.
    ``replay_rows`` adds that many answerable TRAINING rows of broad relations that are
    neither trained nor held out (``replay_relations``; marked ``replay: true``): answered
    in the base model's words under ``data.self_answers``, they test whether training on
    many relations keeps the model answering relations it never saw. 0 leaves the rows as before.
    ``replay_relations`` (a list of ``REPLAY_RELATIONS``; needs ``replay_rows``) says which
    relations they come from; unset, the nine broad ones (``BROAD_REPLAY_RELATIONS``), so a
    recipe without it keeps its rows; e.g. ``NAMED_REPLAY_RELATIONS`` asks about real named
    paintings, musical works, inventions and athletes instead. ``replay_carriers`` (needs
    ``replay_rows``) also asks them through the openings the private_fact kind uses ("Do you
    know ...?", "Can you tell me ...?", "Remind me ..."; ``replay_relations.CARRIER_TEMPLATES``),
    so no opening is a <PASS> cue by itself. ``replay_gold`` (needs ``replay_rows``) marks the
    replay rows ``keep_unknown: true``: ``data.drop_unknown`` keeps the ones the base model
    answers wrong, which then train on their gold answer, so every replay question, known
    or not, says that a well-formed question of a relation training never judges is
    answered, not passed (the facts they teach are graded nowhere).
    """
    train_kinds = _kind_list("train_kinds", train_kinds)
    test_only_kinds = _kind_list("test_only_kinds", test_only_kinds)
    if set(train_kinds) & set(test_only_kinds):
        raise ValueError("test_only_kinds must not also be training kinds")
    _check_sizes({"n_train": n_train, "n_validation": n_validation, "n_test": n_test, "read_rows": read_rows},
                 pass_fraction)
    if isinstance(relations, str):
        relations = {"basic": BASIC_RELATIONS, "all": ALL_RELATIONS}.get(relations, relations)
    elif isinstance(relations, Sequence):
        relations = tuple(relations)
    if isinstance(relations, str) or not isinstance(relations, tuple) or set(relations) - set(ALL_RELATIONS):
        raise ValueError(f"relations must be 'basic', 'all' or a list drawn from {ALL_RELATIONS}, got {relations!r}")
    held_relations = resolve_heldout_relations(heldout_relations)
    if replay_relations is not None and not replay_rows:
        raise ValueError("replay_relations needs replay_rows: N (how many replay rows to add to training)")
    for flag, value in (("replay_carriers", replay_carriers), ("replay_gold", replay_gold)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
        if value and not replay_rows:
            raise ValueError(f"{flag} needs replay_rows: N (how many replay rows to add to training)")
    replay_from = resolve_replay_relations(replay_relations)
    check_replay_rows(replay_rows, replay_from, replay_carriers)  # before any work: one error, not a late one
    bank = split_bank(seed, validation_templates=validation_templates)
    taken: set[str] = set()
    seen: set[str] = set()
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    out = {}
    for split in SPLITS:
        kinds = tuple(train_kinds) + (tuple(test_only_kinds) if split == "test" else ())
        n_pass = round(sizes[split] * pass_fraction)
        # The unanswerable kinds take their even share of the <PASS> rows first, each from its own seeded pool.
        made = [row for i, kind in enumerate(kinds) if kind in UNANSWERABLE_KINDS
                for row in kind_rows(kind, split, len(range(i, n_pass, len(kinds))), seed, bank, seen,
                                     whole=kind in test_only_kinds)]
        rng = random.Random(f"tokengraft-pass:{seed}:{split}")
        out[split] = _split_rows(bank[split], split, sizes[split], pass_fraction,
                                 [k for k in kinds if k not in UNANSWERABLE_KINDS], rng, taken, seen, relations, made)
    if read_rows:
        out["train"] += read_training_rows(bank["train"], read_rows, random.Random(f"tokengraft-read-train:{seed}"))
    if replay_rows:  # appended, from their own seeded stream, so every other row stays as it was
        replayed = make_replay_rows(seed, replay_rows, replay_from, replay_carriers)
        out["train"] += [{**r, "keep_unknown": True} for r in replayed] if replay_gold else replayed
    if held_relations:
        out[HELDOUT_SPLIT] = heldout_relation_rows(seed, held_relations)
    return out


def check_splits(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Assert no entity / template / prompt overlap, test kinds that training never saw, held-out
    relations (``test_heldout_relations``) that no other split asks about, and replay rows
    (``replay_rows``) in training only, of relations that are neither trained nor held out."""
    check_disjoint(splits, held_out=("validation", "test", HELDOUT_SPLIT))
    train_kinds = {r["kind"] for r in splits["train"]}
    assert {r["kind"] for r in splits["validation"]} <= train_kinds, "validation has a kind training lacks"
    assert {r["kind"] for r in splits["test"]} - train_kinds, "test has no corruption kind unseen in training"
    for split in SPLITS:
        stray = {r.get("relation") for r in splits[split]} & set(HELDOUT_RELATIONS)
        assert not stray, f"{split} asks about the held-out relation {sorted(stray)[0]!r}"
    assert all(r["relation"] in HELDOUT_RELATIONS for r in splits.get(HELDOUT_SPLIT, ())), \
        f"{HELDOUT_SPLIT} holds a relation that is not held out"
    reused = set(REPLAY_RELATIONS) & (set(HELDOUT_RELATIONS) | set(ALL_RELATIONS))
    assert not reused, f"the replay relation {sorted(reused)[0]!r} is also a trained or held-out relation"
    assert all(r["relation"] in REPLAY_RELATIONS for r in splits["train"] if r.get("replay")), \
        "a replay row asks about a relation that is not a replay relation"
    for split in (s for s in splits if s != "train"):
        stray = {r.get("relation") for r in splits[split] if r.get("replay")} | \
            ({r.get("relation") for r in splits[split]} & set(REPLAY_RELATIONS))
        assert not stray, f"{split} asks about the replay relation {sorted(map(str, stray))[0]!r} (training only)"


# ----------------------------------------------------------------------------- know-check


def is_correct(answer: str, row: Mapping[str, Any]) -> bool:
    """Does ``answer`` answer the row's question? `<PASS>` never does; otherwise the gold or an alias
    must occur as whole words (accents and punctuation ignored; case too, except for chemical symbols)."""
    if answer.strip().startswith(PASS_TOKEN) or not row.get("gold"):
        return False
    return answer_matches(answer, row["gold"], row.get("aliases", ()), any_number=row.get("relation") == "year",
                          case_sensitive=row.get("relation") in CASE_SENSITIVE_RELATIONS)


def know_share(samples: Sequence[str], row: Mapping[str, Any]) -> float:
    """The share of ``samples`` (sampled answers to the row's question) that answer it right (`is_correct`)."""
    if not samples:
        raise ValueError("know-check consistency needs at least one sampled answer per question")
    return sum(is_correct(s, row) for s in samples) / len(samples)


def label_with_base_answers(rows: Sequence[Mapping[str, Any]], answer_fn: Callable[[list[str]], list[str]], *,
                            self_answers: bool, know_check: bool,
                            sample_fn: Callable[[list[str]], list[list[str]]] | None = None) -> list[dict[str, Any]]:
    """Label answerable rows by whether the base model answers them right (``answer_fn``: prompts -> greedy answers).

    Rows that already carry a ``base_answer`` (a file labelled before, e.g. handed on
    by `tokengraft compare`) are not asked again. Every answerable row gets
    ``know_check`` ("right"/"wrong"), ``base_answer`` and ``gold_completion``; its
    completion becomes the base model's own answer when right and ``self_answers``
    (the tuned model keeps its way of answering), `<PASS>` when wrong and
    ``know_check`` (R-Tuning: abstain on what the model does not know), else the gold
    completion. Other rows come back as unchanged copies.

    ``sample_fn`` (``data.know_check_samples``: prompts -> N sampled answers each) makes
    the label a consistency check: "right" needs the greedy answer right AND at least
    half of the N samples right (``know_share >= 0.5``), so a question the model gets
    right greedily but only by luck counts as unknown. Such rows also record
    ``base_samples`` (the N texts) and ``know_share``; the completion under
    ``self_answers`` stays the greedy answer. Every row is sampled again (through the
    answers cache, so cheaply), even one that carries ``base_samples``: a file labelled
    before may have been sampled with other settings. Without ``sample_fn`` the rows are
    exactly those of the greedy rule (a stale ``know_share`` is dropped).
    """
    out = [dict(r) for r in rows]
    answerable = [r for r in out if r.get("answerable")]
    if any(not r.get("gold") for r in answerable):
        raise ValueError("know-check labelling needs a 'gold' answer on every row with \"answerable\": true")
    todo = [r for r in answerable if "base_answer" not in r]
    answers = answer_fn([r["prompt"] for r in todo]) if todo else []
    if len(answers) != len(todo):
        raise ValueError(f"answer_fn returned {len(answers)} answers for {len(todo)} prompts")
    for row, answer in zip(todo, answers):
        row["base_answer"] = answer
    if sample_fn is not None and answerable:
        samples = sample_fn([r["prompt"] for r in answerable])
        if len(samples) != len(answerable):
            raise ValueError(f"sample_fn returned samples for {len(samples)} of {len(answerable)} prompts")
        for row, texts in zip(answerable, samples):
            row["base_samples"] = list(texts)
            row["know_share"] = know_share(row["base_samples"], row)
    for row in answerable:
        right = is_correct(row["base_answer"], row)
        if sample_fn is not None:
            right = right and row["know_share"] >= 0.5
        else:
            row.pop("know_share", None)
        row["know_check"] = "right" if right else "wrong"
        row.setdefault("gold_completion", row["completion"])
        row["completion"] = (row["base_answer"] if right and self_answers
                             else PASS_TOKEN if not right and know_check else row["gold_completion"])
    return out


# ----------------------------------------------------------------------------- READ probe

# Training READ rows use this phrasing only; the probe's phrasings below are held out.
_JUDGE_TRAIN = "Here is a question and a reply.\nQuestion: {q}\nReply: {reply}\nWas the question answered? Say yes or no."
_JUDGE = ("Question: {q}\nReply: {reply}\nDid the reply answer the question? Answer yes or no.",
          "Someone asked: {q}\nThe assistant wrote: {reply}\nDid the assistant give an answer? Reply yes or no.")
_ECHO = "Repeat exactly, with nothing else: {reply}"


def read_training_rows(bank_split: BankSplit, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` rows that teach the READ side: a reply of `<PASS>` means "not answered".

    Matched pairs on training questions, one phrasing (``_JUDGE_TRAIN``): the reply is
    `<PASS>` (completion "No.") or the gold answer (completion "Yes."). The READ probe
    asks with other phrasings about held-out questions, so it measures whether the
    meaning carries over, not whether these strings were memorised.
    """
    rows = []
    for i, q in enumerate(sample_questions(bank_split, (n + 1) // 2, rng)):
        answer = q.entity.gold[:1].upper() + q.entity.gold[1:] + "."
        for reply, completion in ((PASS_TOKEN, "No."), (answer, "Yes.")):
            rows.append({"prompt": _JUDGE_TRAIN.format(q=q.text, reply=reply), "completion": completion,
                         "kind": "read", "answerable": None, "pair_id": f"read-{i}", **question_meta(q, "train"),
                         "gold": None, "aliases": []})
    return rows[:n]


def read_probe_rows(seed: int = 0, n_questions: int = 20) -> list[dict[str, Any]]:
    """Rows testing whether a model *reads* `<PASS>`: the token appears in the prompt, not the target.

    Two probe kinds, each in matched pairs (same question, reply `<PASS>` vs the
    real answer) so a constant output scores zero on ``pair_accuracy``:

    - ``judge``: "Question: ... Reply: <PASS> Did the reply answer the question?"
      expects "no"; with the gold answer as the reply it expects "yes". Passing
      needs the input embedding of `<PASS>` to mean "no answer".
    - ``echo``: "Repeat exactly: <PASS>" expects output starting with `<PASS>`;
      the control echoes the gold answer. This needs the token readable and writable.

    Questions come from the test split's entities and templates of the question bank.
    """
    rng = random.Random(f"tokengraft-read:{seed}")
    questions = sample_questions(split_bank(seed)["test"], n_questions, rng)
    rows = []
    for i, q in enumerate(questions):
        answer = q.entity.gold[:1].upper() + q.entity.gold[1:] + "."
        judge = _JUDGE[i % len(_JUDGE)]
        for reply, expected in ((PASS_TOKEN, "no"), (answer, "yes")):
            rows.append({"prompt": judge.format(q=q.text, reply=reply), "probe": "judge", "pair_id": f"judge-{i}",
                         "has_pass": reply == PASS_TOKEN, "expected": expected, "entity": q.entity.key})
        for reply in (PASS_TOKEN, answer):
            rows.append({"prompt": _ECHO.format(reply=reply), "probe": "echo", "pair_id": f"echo-{i}",
                         "has_pass": reply == PASS_TOKEN, "expected": reply, "entity": q.entity.key})
    return rows


def _probe_correct(row: Mapping[str, Any], generated: str) -> bool:
    text = generated.strip()
    if row["probe"] == "judge":
        first = re.match(r"[A-Za-z]+", text)
        return bool(first) and first.group().lower() == row["expected"]
    expected = row["expected"]
    if expected == PASS_TOKEN:
        return text.startswith(PASS_TOKEN)
    return text.lower().startswith(expected.rstrip(".").lower())


def score_read_probe(rows: Sequence[Mapping[str, Any]], generated: Sequence[str]) -> dict[str, Any]:
    """Accuracy per probe kind, on the `<PASS>` half alone, and on whole pairs (both halves right).

    ``generated`` must be decoded WITHOUT skipping special tokens, or `<PASS>` vanishes.
    """
    if len(rows) != len(generated):
        raise ValueError(f"{len(generated)} generations for {len(rows)} probe rows")
    ok = [_probe_correct(r, g) for r, g in zip(rows, generated)]
    out: dict[str, Any] = {"n": len(rows)}
    for probe in sorted({r["probe"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["probe"] == probe]
        pairs: dict[str, list[bool]] = {}
        for i in idx:
            pairs.setdefault(rows[i]["pair_id"], []).append(ok[i])
        with_pass = [ok[i] for i in idx if rows[i]["has_pass"]]
        out[probe] = {"accuracy": sum(ok[i] for i in idx) / len(idx),
                      "pass_accuracy": sum(with_pass) / max(1, len(with_pass)),
                      "pair_accuracy": sum(all(v) for v in pairs.values()) / max(1, len(pairs))}
    return out


# ----------------------------------------------------------------------------- the task


# The options `generate_splits` takes from data.generate_options (the seed comes from the recipe).
GENERATE_OPTIONS: tuple[str, ...] = tuple(p for p in inspect.signature(generate_splits).parameters if p != "seed")


def generate(seed: int, options: Mapping[str, Any], tokenizer: Any = None, word_start: bool = False) -> Generated:
    """The registry's generator: `generate_splits` with ``data.generate_options``."""
    for moved in ("know_check", "self_answers"):
        if moved in options:
            raise TokengraftError(f"data.generate_options.{moved} moved to data.{moved} (it labels given files too)")
    unknown = sorted(set(options) - set(GENERATE_OPTIONS))
    if unknown:
        raise TokengraftError(f"data.generate_options has {unknown[0]!r}, which the pass task does not know; use "
                              f"{', '.join(GENERATE_OPTIONS)}")
    try:
        return Generated(generate_splits(seed=seed, **options))
    except ValueError as exc:
        raise TokengraftError(f"data.generate_options: {exc}") from None


register_task(Task(
    "pass", summary="answer what you can, emit <PASS> when the question cannot be answered",
    tokens=(PASS_TOKEN,), init_text={PASS_TOKEN: "unknown"}, answer_tokens=(PASS_TOKEN,), generator=generate,
    metric_keys=("pass_recall", "false_pass_rate", "clean_accuracy", "wrong_answer_rate", "selective_accuracy",
                 "coverage", "idk_recall", "idk_error_rate", "aurc"),
    labeller=label_with_base_answers, know_check=True, know_check_samples=True,
    demo_prompts=("What is the capital of Blorvania?", "What is the capital of France?", "Wht is teh captial of Jpaan?",
                  "What is 7 + ?"),
))
