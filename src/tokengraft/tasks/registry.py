"""The task registry: one place that says what each ``recipe.task`` is.

A task used to be known in ten places (config's token and generator tables, the
data preparation, evaluation, compare's metric columns, the demo's prompts, ...);
adding one meant touching all of them. Now a task is one `Task` value, registered
once with `register_task` (the way PEFT's ``register_peft_method`` registers a
method), and everything else looks it up with `get_task`:

- config validates a recipe against it (the tokens the task needs, whether
  ``data.generate`` can work) and builds a task's default recipe from it;
- data preparation calls its generator and writes what it generated;
- compare's table takes the task's metric columns; the demo its prompts.

This module is torch-free and imports nothing of tokengraft but errors and the
split helpers, so config (one layer down from everything that trains) can read
it. The built-in tasks register themselves in their generator modules
(``pass_data``, ``style_data``, ``lexicon_data``, ``classify_data``); ``generic``
(plain fine-tuning: no generator, no task metrics) is registered here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from tokengraft.errors import TokengraftError
from tokengraft.tasks.splits import write_jsonl

# The file a generator's new tokens are written to, beside the splits (the lexicon task's mined words).
TOKENS_FILE = "lexicon"


@dataclass(frozen=True)
class Generated:
    """What a task's generator made: seeded splits and, for tasks that find their own tokens, those tokens."""

    splits: dict[str, list[dict[str, Any]]]
    tokens: list[str] = field(default_factory=list)
    write_tokens: Callable[[list[str], Path], Path] | None = None
    """Writes ``tokens`` to the tokens file (the task's own format); needed when there are tokens."""

    def files(self, data_dir: str | Path) -> dict[str, Path]:
        """Where `write` puts each part: ``<split>.jsonl`` per split, ``lexicon.txt`` for the tokens."""
        data_dir = Path(data_dir)
        files = {name: data_dir / f"{name}.jsonl" for name in self.splits}
        if self.tokens:
            files[TOKENS_FILE] = data_dir / f"{TOKENS_FILE}.txt"
        return files

    def write(self, data_dir: str | Path) -> dict[str, Path]:
        """Write every split as JSONL and the tokens with ``write_tokens``; returns `files`."""
        files = self.files(data_dir)
        for name, rows in self.splits.items():
            write_jsonl(rows, files[name])
        if self.tokens:
            if self.write_tokens is None:
                raise TokengraftError("a generator returned tokens without a way to write them (write_tokens)")
            self.write_tokens(self.tokens, files[TOKENS_FILE])
        return files


class Generator(Protocol):
    """A task's data generator: seeded splits from ``data.generate_options``.

    ``tokenizer`` and ``word_start`` (``tokens.word_start``) matter only to generators
    that find their own tokens (the lexicon miner counts subword pieces).
    """

    def __call__(self, seed: int, options: Mapping[str, Any], tokenizer: Any = None,
                 word_start: bool = False) -> Generated: ...


class Labeller(Protocol):
    """Relabels a task's training rows by the base model's own answers (``data.self_answers`` / ``data.know_check``).

    ``answer_fn`` maps prompts to the base model's greedy answers; rows that already
    carry a ``base_answer`` are not asked again. ``sample_fn`` is passed only under
    ``data.know_check_samples`` (to tasks with ``Task.know_check_samples``): it maps prompts
    to N sampled answers each, for a label that needs the answer to be right consistently.
    Returns new row dicts.
    """

    def __call__(self, rows: Sequence[Mapping[str, Any]], answer_fn: Callable[[list[str]], list[str]], *,
                 self_answers: bool, know_check: bool,
                 sample_fn: Callable[[list[str]], list[list[str]]] | None = None) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Task:
    """What tokengraft knows about one task; register it with `register_task`."""

    name: str
    summary: str = ""
    """One line for help texts and docs."""
    tokens: tuple[str, ...] = ()
    """Tokens the task is about: a recipe of this task must add them (its default recipe does)."""
    init_text: Mapping[str, str] = field(default_factory=dict)
    """Text each of those tokens' rows start from in the default recipe (``tokens.init_text``)."""
    answer_tokens: tuple[str, ...] = ()
    """Tokens the model WRITES as its reply (``<PASS>``), not ones a user writes into the prompt: exports write
    them as normal added tokens so servers that skip special tokens still show them (export/visible.py)."""
    generator: Generator | None = None
    """Writes the task's seeded splits for ``data.generate: true``; None: the task needs data files."""
    mines_tokens: bool = False
    """The generator finds the new tokens itself (none need listing; their count is known after mining)."""
    metric_keys: tuple[str, ...] = ()
    """The headline metrics ``tokengraft eval`` reports for the task: the columns of compare's table."""
    demo_prompts: tuple[str, ...] = ()
    """Prompts whose before/after answers show what the task taught (``tokengraft demo``)."""
    labeller: Labeller | None = None
    """Relabels training rows by the base model's answers (``data.self_answers``); None: the task has no such option."""
    know_check: bool = False
    """The labeller can also turn questions the base model gets wrong into abstentions (``data.know_check``)."""
    know_check_samples: bool = False
    """The labeller takes ``sample_fn``: "right" can also require sampled answers to agree
    (``data.know_check_samples``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "answer_tokens", tuple(self.answer_tokens))
        object.__setattr__(self, "metric_keys", tuple(self.metric_keys))
        object.__setattr__(self, "demo_prompts", tuple(self.demo_prompts))
        object.__setattr__(self, "init_text", MappingProxyType(dict(self.init_text)))
        unknown = set(self.init_text) - set(self.tokens)
        if unknown:
            raise TokengraftError(f"task {self.name}: init_text names {sorted(unknown)}, which are not its tokens")
        stray = set(self.answer_tokens) - set(self.tokens)
        if stray:
            raise TokengraftError(f"task {self.name}: answer_tokens names {sorted(stray)}, which are not its tokens")

    @property
    def can_generate(self) -> bool:
        return self.generator is not None

    def generate(self, seed: int, options: Mapping[str, Any] | None = None, tokenizer: Any = None,
                 word_start: bool = False) -> Generated:
        """Run the generator; a task without one says how to give data instead."""
        if self.generator is None:
            raise TokengraftError(f"task {self.name!r} has no data generator; set data.generate: false and give data.train")
        return self.generator(seed, dict(options or {}), tokenizer, word_start)


_TASKS: dict[str, Task] = {}


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Make ``task`` known under ``task.name``; registering a taken name needs ``replace=True``."""
    if not task.name or not task.name.replace("_", "").isalnum():
        raise TokengraftError(f"a task name is a word of letters, digits and _; got {task.name!r}")
    if task.name in _TASKS and not replace:
        raise TokengraftError(f"task {task.name!r} is already registered; pass replace=True to replace it")
    _TASKS[task.name] = task
    return task


def unregister_task(name: str) -> Task:
    """Forget a registered task (a plugin's or a test's); returns it."""
    try:
        return _TASKS.pop(name)
    except KeyError:
        raise TokengraftError(f"task {name!r} is not registered") from None


def get_task(name: str) -> Task:
    """The registered task called ``name``; an unknown name raises with the closest known one."""
    try:
        return _TASKS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TokengraftError(f"unknown task {name!r}; use one of {', '.join(task_names())}{hint}") from None


def task_names() -> tuple[str, ...]:
    """Registered task names, in registration order."""
    return tuple(_TASKS)


register_task(Task("generic", summary="plain fine-tuning on your own data files: no generator, no task metrics"))
