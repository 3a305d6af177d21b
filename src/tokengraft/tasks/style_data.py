"""Style-token data: `<STYLE_TERSE>` and `<STYLE_VERBOSE>` answer the same questions two ways.

The prompt is the style token, a newline, then the question (the format of
reference 003: ``"<STYLE_TERSE>\\nWhat is 2+2?"``). Terse completions are the bare
answer (``"Paris."``; ``terse_form`` can name a capital's country first: ``"France: Paris."``);
verbose ones are 40-80 words built from committed templates and facts (a capital with
its continent, arithmetic with an explanation of the operation and a check, a fact with
an elaboration), so every sentence is true and the only systematic difference
between the pair is length and register.

Every question appears in both styles in the same split (pairs share a
``pair_id``), so length ratios are paired by question. A prompt without a style
token must keep the base model's behaviour, so nothing untokened is trained;
``generate_splits`` returns held-out untokened prompts (``test_untokened``, the
test questions without a token) for the eval to compare against the base model.
Entities and templates are split by the question bank (``tasks.bank.split_bank``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tokengraft.tasks.bank import (ALL_RELATIONS, BASIC_RELATIONS, Question, answer_matches, number_words, question_meta, sample_questions,
                                   split_bank)
from tokengraft.tasks.registry import Generated, Task, register_task
from tokengraft.tasks.splits import SPLITS, check_disjoint

STYLE_TERSE = "<STYLE_TERSE>"
STYLE_VERBOSE = "<STYLE_VERBOSE>"
STYLE_TOKENS = {"terse": STYLE_TERSE, "verbose": STYLE_VERBOSE}
VERBOSE_WORDS = (40, 80)  # the target length band of verbose completions, in words

_CAPITAL = (
    "The capital of {country} is {capital}. {Country} is a country in {continent}. A capital is the city that "
    "a country officially names as its capital, and it usually has a special place in the country's public "
    "life and history. Many people learn the capitals of the world in geography lessons at school. "
    "So the answer is {capital}.",
    "{Country} is located in {continent}, and its capital city is {capital}. When people ask about the capital "
    "of a country, they mean the city that holds the official title of capital. For {country}, that city is "
    "{capital}. Knowing capitals like this one is a useful part of general knowledge about world geography.",
    "Good question! The capital city of {country} is {capital}. {Country} is a country in {continent}. Every "
    "country names a city as its capital, and for {country} that city is {capital}. If you are studying "
    "geography, a helpful way to remember it is to picture {country} on a map and link it to the name {capital}.",
)
_ARITH = {
    "add": (
        "To work out {a} plus {b}, we add the two numbers together. Start at {a} and count up {b} more, and you "
        "reach {r}. Addition combines two amounts into one total. You can check the result by subtracting: {r} "
        "minus {b} gives back {a}, which confirms the sum. So {a} plus {b} equals {r}.",
        "The answer is {r}. Adding {a} and {b} means joining the two amounts into a single total. If you had {a} "
        "apples and someone gave you {b} more, you would have {r} apples altogether. The order does not matter "
        "for addition, so {b} plus {a} is also {r}. In short, {a} + {b} = {r}.",
    ),
    "sub": (
        "To work out {a} minus {b}, we take {b} away from {a}. Start at {a} and count down {b} steps, and you "
        "arrive at {r}. Subtraction finds the difference between two numbers, or how much is left when one "
        "amount is taken from another. You can check it by adding: {r} plus {b} gives back {a}. So the answer "
        "is {r}.",
        "The answer is {r}. Subtracting {b} from {a} tells you how much remains after removing {b}. If you had "
        "{a} coins and spent {b} of them, you would have {r} coins left. Unlike addition, the order matters "
        "here, so it is important to start from {a}. In short, {a} - {b} = {r}.",
    ),
    "mul": (
        "To work out {a} times {b}, we multiply the two numbers. Multiplication is repeated addition, so this "
        "means adding together {b} groups of {a}, which gives {r}. You can also picture a grid with {a} rows "
        "and {b} columns: it holds {r} squares. To check, divide {r} by {b} and you get {a} again. So the "
        "answer is {r}.",
        "The answer is {r}. Multiplying {a} by {b} means taking {b} equal groups with {a} in each group. If "
        "you had {b} boxes holding {a} pencils each, you would have {r} pencils in total. The order does not "
        "matter for multiplication, so {b} times {a} is also {r}. In short, {a} x {b} = {r}.",
    ),
}
_FACT = {
    "count": (
        "{Slot} has {gold} {unit}. {detail}This is a simple fact that you can check by counting the {unit} one at "
        "a time. The number {gold}, or {words} in words, is the answer most people would give, and it often "
        "comes up in school lessons, quizzes and everyday conversation. So the short answer is {gold}.",
        "The answer is {gold}: {slot} has {words} {unit}. {detail}Facts like this are part of the general "
        "knowledge that people pick up from an early age, from books, lessons and simply looking at the world. "
        "If you ever need to be sure, counting the {unit} is the easiest way to check.",
    ),
    "colour": (
        "{Slot} is {gold}. {detail}Colour is one of the first things we notice about anything we see, and {gold} "
        "is the colour most people would use to describe {slot}. Lighting and shade can make colours look a "
        "little different from moment to moment, but in everyday language the answer is simply {gold}.",
        "The usual answer is {gold}. {detail}When people picture {slot}, they almost always imagine it as "
        "{gold}, and that is how it is described in books and pictures for children as well as for adults. "
        "Of course, shades vary a little, but {gold} is the colour that fits best.",
    ),
    "opposite": (
        'The opposite of "{slot}" is "{gold}". Words with opposite meanings are called antonyms, and {slot} and '
        "{gold} form a very common pair. {detail}Learning antonyms in pairs like this is a good way to build "
        "your vocabulary, because each word helps you remember the other. So the word you are looking for is "
        '"{gold}".',
        'The word you want is "{gold}". In English, "{slot}" and "{gold}" are antonyms, which means they have '
        "opposite meanings. {detail}Pairs of opposites are some of the first words that children learn, and "
        "they are useful for describing differences clearly. Whenever you need the opposite of {slot}, "
        '"{gold}" is the natural choice.',
    ),
    "sound": (
        '{Slot} makes a sound that we usually write as "{gold}". {detail}People use special words like this to '
        "imitate animal noises, and children often learn them early from picture books and songs. The exact "
        "word can differ from one language to another, but in English the sound of {slot} is normally "
        'described as "{gold}".',
        'In English we say that {slot} goes "{gold}". {detail}Words that imitate sounds are called '
        "onomatopoeia, and animal noises are some of the most familiar examples. Children often learn them "
        "together with the names of the animals, so the sound and the animal are easy to remember as a pair.",
    ),
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


TERSE_FORMS = ("bare", "sentence", "subject")


def terse_answer(q: Question, form: str = "bare") -> str:
    """The bare answer with a full stop: ``"Paris."``, ``"12."``, ``"Blue."``.

    ``form="sentence"`` names a capital in one short sentence that keeps its subject
    ("The capital of France is Paris."), the way the base model and the verbose answers
    begin: a bare city name makes a small model pick the city in its first token, with
    nothing that leads to it, and it then names the wrong one far more often.
    ``form="subject"`` keeps only the subject before the answer ("France: Paris.").
    """
    if q.relation == "capital" and form != "bare":
        country, capital = q.entity.info["country"], q.entity.info["capital"]
        return f"The capital of {country} is {capital}." if form == "sentence" else f"{_cap(country)}: {capital}."
    return _cap(q.entity.gold) + "."


def verbose_answer(q: Question, rng: random.Random) -> str:
    """A 40-80 word answer that states the gold answer and elaborates with true, generic sentences."""
    info, gold = q.entity.info, q.entity.gold
    if q.relation == "capital":
        frame = rng.choice(_CAPITAL)
        fields = {"country": info["country"], "Country": _cap(info["country"]), "capital": info["capital"],
                  "continent": info["continent"]}
    elif q.relation in _ARITH:
        frame = rng.choice(_ARITH[q.relation])
        fields = {"a": q.values["a"], "b": q.values["b"], "r": gold}
    else:
        frame = rng.choice(_FACT[q.relation])
        detail = info.get("detail", "")
        fields = {"slot": info["slot"], "Slot": _cap(info["slot"]), "unit": info.get("unit", ""), "gold": gold,
                  "detail": detail + " " if detail else ""}
        if gold.isdigit():
            fields["words"] = number_words(int(gold))
    return frame.format(**fields)


def style_prompt(style: str, question: str) -> str:
    """``"<STYLE_TERSE>\\n" + question``; ``style="none"`` returns the bare question."""
    if style == "none":
        return question
    return STYLE_TOKENS[style] + "\n" + question


def _pair_rows(q: Question, split: str, index: int, rng: random.Random, terse_form: str) -> list[dict[str, Any]]:
    meta = question_meta(q, split)
    pair_id = f"{split}-{index}"
    return [{"prompt": style_prompt("terse", q.text), "completion": terse_answer(q, terse_form), "style": "terse",
             "pair_id": pair_id, **meta},
            {"prompt": style_prompt("verbose", q.text), "completion": verbose_answer(q, rng), "style": "verbose",
             "pair_id": pair_id, **meta}]


def generate_splits(seed: int = 0, n_train: int = 400, n_validation: int = 100, n_test: int = 200,
                    n_untokened: int = 50, n_plain: int = 0, plain_relations: str = "basic",
                    terse_form: str = "bare") -> dict[str, list[dict[str, Any]]]:
    """Rows for style-token training, deterministic for ``seed``; sizes count rows (two per question).

    Keys: ``train``, ``validation``, ``test`` (pairs, terse then verbose per question)
    and ``test_untokened`` (the first ``n_untokened`` test questions with no style
    token and ``completion=None``: the eval runs them on base and tuned models).
    ``n_plain`` adds that many training questions with NO style token and
    ``completion=None``: the pipeline fills them with the base model's own answers, so
    a message without a style token keeps behaving like the base model. ``plain_relations``
    "all" draws them from every relation of the bank (dates, harder arithmetic too), whose
    base answers vary more in length than the basic relations' short ones.
    ``terse_form`` "sentence" / "subject" word terse capital answers with their subject (`terse_answer`).
    """
    if plain_relations not in ("basic", "all"):
        raise ValueError(f"plain_relations must be 'basic' or 'all', got {plain_relations!r}")
    if terse_form not in TERSE_FORMS:
        raise ValueError(f"terse_form must be one of {', '.join(TERSE_FORMS)}, got {terse_form!r}")
    bank = split_bank(seed)
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        rng = random.Random(f"tokengraft-style:{seed}:{split}")
        questions = sample_questions(bank[split], (sizes[split] + 1) // 2, rng)
        out[split] = [row for i, q in enumerate(questions) for row in _pair_rows(q, split, i, rng, terse_form)]
        if split == "train" and n_plain:
            plain = sample_questions(bank[split], n_plain, random.Random(f"tokengraft-style-plain:{seed}"),
                                     relations=ALL_RELATIONS if plain_relations == "all" else BASIC_RELATIONS,
                                     exclude={q.text for q in questions})
            out[split] += [{"prompt": q.text, "completion": None, "style": "none", "pair_id": f"plain-{i}",
                            **question_meta(q, split)} for i, q in enumerate(plain)]
        if split == "test":
            out["test_untokened"] = [
                {"prompt": q.text, "completion": None, "style": "none", "pair_id": f"test-{i}",
                 **question_meta(q, "test")} for i, q in enumerate(questions[:n_untokened])]
    return out


def check_splits(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Assert no entity / template / prompt overlap between splits and complete terse/verbose pairs."""
    merged = dict(splits)
    merged["test"] = [*splits["test"], *splits.get("test_untokened", [])]
    merged.pop("test_untokened", None)
    check_disjoint(merged)
    for split in SPLITS:
        pairs: dict[str, set[str]] = {}
        for r in splits[split]:
            if r["style"] != "none":  # plain rows (n_plain) stand alone
                pairs.setdefault(r["pair_id"], set()).add(r["style"])
        assert all(v == {"terse", "verbose"} for v in pairs.values()), f"{split} has an incomplete style pair"


# ----------------------------------------------------------------------------- self answers

TERSE_MAX_WORDS = 16  # a base sentence longer than this is not terse: the row keeps its templated answer


def own_words_answer(answer: str, row: Mapping[str, Any]) -> str | None:
    """The first sentence of the base model's ``answer`` that gives the row's right answer, or None.

    "The capital of France is Paris. It is known for ..." -> "The capital of France is
    Paris.": the answer in the model's own words, but only the sentence that carries it.
    None when no single sentence gives the right answer or it is longer than
    ``TERSE_MAX_WORDS`` words (then the row keeps its templated terse answer).
    """
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", answer.strip()):
        sentence = sentence.strip()
        if sentence and answer_matches(sentence, row["gold"], row.get("aliases", ()),
                                       any_number=row.get("relation") == "year"):
            if len(sentence.split()) > TERSE_MAX_WORDS:
                return None
            return sentence if sentence[-1] in ".!?" else sentence + "."
    return None


def label_with_base_answers(rows: Sequence[Mapping[str, Any]], answer_fn: Callable[[list[str]], list[str]], *,
                            self_answers: bool, know_check: bool,
                            sample_fn: Callable[[list[str]], list[list[str]]] | None = None) -> list[dict[str, Any]]:
    """``data.self_answers`` for the style task: terse completions in the base model's own words.

    A terse answer templated as the bare gold ("Santo Domingo.") makes the model name the
    answer in its first token, with none of the words it would use to get there; the
    tuned model then answers tersely and wrongly ("Barcelona."). Here the base model is
    asked each terse row's question WITHOUT a style token (``answer_fn``: prompts ->
    greedy answers; rows that already carry a ``base_answer`` are not asked again); where
    one sentence of its answer is right and short (`own_words_answer`), that sentence
    becomes the terse completion. Every terse row records ``base_answer``, ``base_right``,
    ``gold_completion`` and ``know_check`` ("right" / "wrong": ``data.drop_unknown`` leaves
    the wrong ones out); verbose and plain rows come back as unchanged copies. ``sample_fn``
    (``data.know_check_samples``) is refused: a terse row's label is whether one greedy
    sentence is right and short, which several samples would not decide.
    """
    if know_check:
        raise ValueError("know_check turns wrong answers into <PASS> rows, which the style task has none of")
    if sample_fn is not None:
        raise ValueError("know_check_samples labels questions by several sampled answers; the style task labels "
                         "terse rows by one greedy answer: set data.know_check_samples: 0")
    out = [dict(r) for r in rows]
    terse = [r for r in out if r.get("style") == "terse"]
    if any(not r.get("gold") or not r.get("question") for r in terse):
        raise ValueError("style self-answers need 'question' and 'gold' on every terse row (generated rows have them)")
    todo = [r for r in terse if "base_answer" not in r]
    answers = answer_fn([r["question"] for r in todo]) if todo else []
    if len(answers) != len(todo):
        raise ValueError(f"answer_fn returned {len(answers)} answers for {len(todo)} prompts")
    for row, answer in zip(todo, answers):
        row["base_answer"] = answer
    for row in terse:
        row["base_right"] = answer_matches(row["base_answer"], row["gold"], row.get("aliases", ()),
                                           any_number=row.get("relation") == "year")
        row.setdefault("gold_completion", row["completion"])
        own = own_words_answer(row["base_answer"], row) if self_answers and row["base_right"] else None
        row["completion"] = own or row["gold_completion"]
        row["completion_from"] = "base_model" if own else "template"
        row["know_check"] = "right" if row["base_right"] else "wrong"  # what data.drop_unknown reads
    return out


# ----------------------------------------------------------------------------- the task


def generate(seed: int, options: Mapping[str, Any], tokenizer: Any = None, word_start: bool = False) -> Generated:
    """The registry's generator: `generate_splits` with ``data.generate_options``."""
    return Generated(generate_splits(seed=seed, **options))


register_task(Task(
    "style", summary="<STYLE_TERSE> / <STYLE_VERBOSE> answer the same question briefly or at length",
    tokens=(STYLE_TERSE, STYLE_VERBOSE), init_text={STYLE_TERSE: "brief", STYLE_VERBOSE: "detailed"},
    generator=generate, labeller=label_with_base_answers,
    metric_keys=("length_ratio", "verbose_longer_rate", "terse_accuracy", "verbose_accuracy", "base_accuracy",
                 "untokened_identical_rate"),
    demo_prompts=(f"{STYLE_TERSE}\nWhat is the capital of Italy?", f"{STYLE_VERBOSE}\nWhat is the capital of Italy?"),
))
