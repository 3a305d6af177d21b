"""Sequence-classification data: the ``{"text", "label"}`` row format and a seeded generator.

Row format. One JSON object per line, ``{"text": "...", "label": L}`` (extra keys are
kept and ignored). Labels are all integers (class ids, 0..n-1) or all strings (class
names, given ids in sorted order, so the same label set always gets the same ids
whatever order the rows come in). The mapping is fixed by the training rows and saved
beside the run (``labels.json``); a held-out row whose label training never saw is an
error, since no head output could ever predict it.

Generator (``data.generate: true``). Built from the `<PASS>` question bank
(``pass_data.generate_splits``), so it inherits its held-out guarantees: entities and
question templates never straddle splits, and the test split holds corruption kinds
training never saw (``shuffled_words``, ``truncated``). Two schemes:

- ``relation`` (default, 4 classes): ``capital`` / ``arithmetic`` / ``fact`` for
  answerable questions, ``corrupted`` for every corrupted or fictional one. The
  relation classes are easy surface cues; ``corrupted`` is not ("What is the capital of
  Blorvania?" is well formed and needs world knowledge), which is what separates the
  injection points of reference 002.
- ``answerable`` (2 classes): ``answerable`` / ``corrupted``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokengraft.errors import TokengraftError
from tokengraft.tasks.bank import relation_group
from tokengraft.tasks.pass_data import generate_splits as pass_splits
from tokengraft.tasks.registry import Generated, Task, register_task

SCHEMES = {"relation": 0.25, "answerable": 0.5}  # scheme -> default share of corrupted rows
CORRUPTED = "corrupted"
_GROUP_LABEL = {"capital": "capital", "arithmetic": "arithmetic", "facts": "fact"}


def generate_splits(seed: int = 0, n_train: int = 400, n_validation: int = 100, n_test: int = 200,
                    scheme: str = "relation", corrupted_fraction: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train / validation / test ``{"text", "label", ...}`` rows, deterministic for ``seed``.

    With the default ``corrupted_fraction`` the ``relation`` scheme is roughly balanced
    (about 30 / 22 / 22 / 25 % capital / arithmetic / fact / corrupted).
    """
    if scheme not in SCHEMES:
        raise TokengraftError(f"data.generate_options.scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    fraction = SCHEMES[scheme] if corrupted_fraction is None else corrupted_fraction
    if not 0.0 < fraction < 1.0:
        raise TokengraftError(f"data.generate_options.corrupted_fraction must be in (0, 1), got {fraction}")
    try:
        source = pass_splits(seed=seed, n_train=n_train, n_validation=n_validation, n_test=n_test,
                             pass_fraction=fraction)
    except ValueError as exc:  # the bank ran out of distinct questions
        raise TokengraftError(f"classification data: {exc}") from None
    return {split: [_row(r, scheme) for r in rows] for split, rows in source.items()}


def _row(row: dict[str, Any], scheme: str) -> dict[str, Any]:
    if not row["answerable"]:
        label = CORRUPTED
    elif scheme == "answerable":
        label = "answerable"
    else:
        label = _GROUP_LABEL[relation_group(row["relation"])]
    return {"text": row["prompt"], "label": label, "kind": row["kind"], "relation": row["relation"],
            "entity": row["entity"], "template": row["template"], "split": row["split"]}


# ----------------------------------------------------------------------------- labels


@dataclass
class LabelSet:
    """Class names in id order; ``kind`` says whether the rows wrote ids (int) or names (str)."""

    names: list[str]
    kind: str  # "int" | "str"

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def to_id(self, value: Any, where: str) -> int:
        check_label(value, where)
        if self.kind == "int":
            if not isinstance(value, int):
                raise TokengraftError(f"{where}: label {value!r} is a string but the training labels are integers")
            if value >= len(self.names):
                raise TokengraftError(f"{where}: label {value} is past the training labels (0..{len(self.names) - 1})")
            return value
        if not isinstance(value, str):
            raise TokengraftError(f"{where}: label {value!r} is an integer but the training labels are strings")
        if value not in self.names:
            raise TokengraftError(f"{where}: label {value!r} never occurs in the training data "
                                  f"(training labels: {', '.join(self.names)})")
        return self.names.index(value)

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.names, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSet:
        return cls(names=[str(n) for n in d["labels"]], kind=str(d["kind"]))


def check_label(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TokengraftError(f"{where}: 'label' must be an integer class id or a string class name, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise TokengraftError(f"{where}: label {value} is negative; class ids start at 0")
    if isinstance(value, str) and not value.strip():
        raise TokengraftError(f"{where}: 'label' is an empty string")


def label_set(labels: list[tuple[Any, str]]) -> LabelSet:
    """The label set of the training rows, from ``(label, where)`` pairs."""
    if not labels:
        raise TokengraftError("no training rows: classification needs {\"text\", \"label\"} rows")
    for value, where in labels:
        check_label(value, where)
    kinds = {type(v) for v, _ in labels}
    if len(kinds) > 1:
        first_int = next(w for v, w in labels if isinstance(v, int))
        first_str = next(w for v, w in labels if isinstance(v, str))
        raise TokengraftError(f"labels mix integers ({first_int}) and strings ({first_str}); use one kind")
    if kinds == {int}:
        top = max(v for v, _ in labels)
        if top < 1:
            raise TokengraftError("every training label is 0: classification needs at least two classes")
        return LabelSet([str(i) for i in range(top + 1)], "int")
    names = sorted({v for v, _ in labels})
    if len(names) < 2:
        raise TokengraftError(f"every training label is {names[0]!r}: classification needs at least two classes")
    return LabelSet(names, "str")


# ----------------------------------------------------------------------------- the task


def generate(seed: int, options: Mapping[str, Any], tokenizer: Any = None, word_start: bool = False) -> Generated:
    """The registry's generator: `generate_splits` with ``data.generate_options``."""
    return Generated(generate_splits(seed=seed, **options))


register_task(Task(
    "classification", summary="sequence classification: a label per text from a classifier head",
    generator=generate, metric_keys=("accuracy", "macro_accuracy"),
))
