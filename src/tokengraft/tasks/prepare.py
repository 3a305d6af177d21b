"""Where a run's data comes from: the task's generator, or the user's files.

With ``data.generate: true`` the task writes its seeded splits into the run's
data directory, ``RUN_DIR/data/`` (so the exact rows a run trained on stay beside it); otherwise
``data.train`` / ``data.validation`` are read, and a missing validation file is
carved from the training rows with ``data.validation_fraction``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokengraft.config import Recipe
from tokengraft.data import load_examples, split_rows
from tokengraft.errors import TokengraftError
from tokengraft.generation import greedy_answers
from tokengraft.tasks import classify_data, lexicon_data, pass_data, style_data, write_jsonl


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    extra_tokens: list[str] = field(default_factory=list)  # e.g. a mined lexicon


def _generate(recipe: Recipe, tokenizer: Any, model: Any) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    options = dict(recipe.data.generate_options)
    task = recipe.task
    if task == "pass":
        for moved in ("know_check", "self_answers"):
            if moved in options:
                raise TokengraftError(f"data.generate_options.{moved} moved to data.{moved} (it labels given files too)")
        return pass_data.generate_splits(seed=recipe.seed, **options), []
    if task == "style":
        return style_data.generate_splits(seed=recipe.seed, **options), []
    if task == "lexicon":
        mine = {k: options.pop(k) for k in ("min_pieces", "min_count", "max_words") if k in options}
        splits = lexicon_data.generate_splits(seed=recipe.seed, **options)
        words = lexicon_data.mine_lexicon([r["text"] for r in splits["train"]], tokenizer,
                                          after_space=recipe.tokens.word_start, **mine)
        if not words:
            raise TokengraftError("the lexicon miner found no word; lower data.generate_options.min_count or min_pieces")
        return splits, words
    if task == "classification":
        return classify_data.generate_splits(seed=recipe.seed, **options), []
    raise TokengraftError(f"task {task!r} has no data generator; set data.generate: false and give data.train")


def _label(recipe: Recipe, rows: list[dict[str, Any]], tokenizer: Any, model: Any) -> list[dict[str, Any]]:
    """``data.self_answers`` / ``data.know_check``: label answerable rows by the base model's own greedy answers."""

    def answer(prompts: list[str]) -> list[str]:
        return greedy_answers(model, tokenizer, prompts, system=recipe.data.system, batch_size=recipe.eval.batch_size,
                              max_new_tokens=max(48, recipe.eval.max_new_tokens),
                              desc="base model answers the training questions (know-check)")

    try:
        return pass_data.label_with_base_answers(rows, answer, self_answers=recipe.data.self_answers,
                                                 know_check=recipe.data.know_check)
    except ValueError as exc:
        raise TokengraftError(f"data.know_check / data.self_answers: {exc}") from None


def _complete_with_base_answers(recipe: Recipe, rows: list[dict[str, Any]], tokenizer: Any,
                                model: Any) -> list[dict[str, Any]]:
    """Generated rows with ``completion: None`` (the style task's plain rows) get the base model's own
    greedy answer: training on them keeps the model's behaviour where no new token is present."""
    todo = [i for i, r in enumerate(rows) if "prompt" in r and r.get("completion") is None]
    if not todo:
        return rows
    answers = greedy_answers(model, tokenizer, [rows[i]["prompt"] for i in todo], system=recipe.data.system,
                             max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size,
                             desc="base model answers the plain rows")
    rows = list(rows)
    for i, answer in zip(todo, answers):
        rows[i] = {**rows[i], "completion": answer, "completion_from": "base_model"}
    return rows


def prepare_data(recipe: Recipe, data_dir: Path, tokenizer: Any, model: Any) -> PreparedData:
    """The training and validation rows of a run; generated splits are written into ``data_dir``
    (the run directory's ``data/``, named by rundir: this layer sits below it)."""
    if recipe.data.generate:
        splits, extra = _generate(recipe, tokenizer, model)
        if recipe.data.know_check or recipe.data.self_answers:
            splits["train"] = _label(recipe, splits["train"], tokenizer, model)
        splits["train"] = _complete_with_base_answers(recipe, splits["train"], tokenizer, model)
        files = {name: data_dir / f"{name}.jsonl" for name in splits}
        if extra:
            files["lexicon"] = data_dir / "lexicon.txt"
        # Under a launcher (torchrun, accelerate launch) every process generates the same seeded
        # rows in memory; only global rank 0 writes them, so the run directory is written once.
        if os.environ.get("RANK", "0") == "0":
            for name, rows in splits.items():
                write_jsonl(rows, files[name])
            if extra:
                lexicon_data.write_lexicon(extra, files["lexicon"], header="mined from the training split")
        return PreparedData(train=splits["train"], validation=splits.get("validation", []), files=files,
                            extra_tokens=extra)
    if not recipe.data.train:
        raise TokengraftError("data.train is not set; give a JSONL file or set data.generate: true for a built-in task")
    train_rows: list[Any] = load_examples(recipe.data.train)  # errors name file and line
    if recipe.data.know_check or recipe.data.self_answers:
        if any(e.kind != "prompt" for e in train_rows):
            raise TokengraftError("data.know_check / data.self_answers need prompt/completion rows in data.train")
        train_rows = _label(
            recipe, [{"prompt": e.prompt, "completion": e.completion, **e.meta} for e in train_rows], tokenizer, model)
    if recipe.data.validation:
        validation: list[Any] = load_examples(recipe.data.validation)
    elif recipe.data.validation_fraction > 0:
        train_rows, validation = split_rows(train_rows, recipe.data.validation_fraction, recipe.seed)
    else:
        validation = []
    return PreparedData(train=train_rows, validation=validation, files={"train": Path(recipe.data.train)})
