"""Where a run's data comes from: the task's generator, or the user's files.

With ``data.generate: true`` the task's registered generator (tasks/registry.py)
makes seeded splits, which are written into the run's data directory,
``RUN_DIR/data/`` (so the exact rows a run trained on stay beside it); otherwise
``data.train`` / ``data.validation`` are read, and a missing validation file is
carved from the training rows with ``data.validation_fraction``. Either way the
base model can label or complete training rows first (``data.know_check``, plain
style rows; ``data.know_check_samples`` adds seeded sampled answers to the labels); its
answers go through the answers cache (answer_cache.py), so a second run, or another
recipe on the same questions, does not ask again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokengraft.answer_cache import base_answers, sampled_answers
from tokengraft.config import Recipe
from tokengraft.data import load_examples, require_prompt_rows, split_rows
from tokengraft.errors import TokengraftError
from tokengraft.tasks import get_task, write_jsonl
from tokengraft.timing import phase
from tokengraft.training.ownership import is_rank_zero


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    extra_tokens: list[str] = field(default_factory=list)  # e.g. a mined lexicon


def _label(recipe: Recipe, rows: list[dict[str, Any]], tokenizer: Any, model: Any) -> list[dict[str, Any]]:
    """``data.self_answers`` / ``data.know_check`` / ``data.drop_unknown``: the task's labeller relabels rows by the base
    model's greedy answers (and ``drop_unknown`` leaves out those it answers wrong). ``data.know_check_samples``
    also hands it ``sample_fn``: that many answers per question at ``data.know_check_temperature``, seeded by
    the recipe seed (answer_cache.sampled_answers); with 0 the labeller is called exactly as before."""
    labeller = get_task(recipe.task).labeller
    if labeller is None:  # config refuses this; kept for recipes built without validation
        raise TokengraftError(f"data.self_answers / data.know_check: task {recipe.task} has no rows to relabel")

    def answer(prompts: list[str]) -> list[str]:
        with phase("base model answers the training questions"):
            return [a["text"] for a in base_answers(model, tokenizer, prompts, system=recipe.data.system,
                                                    batch_size=recipe.eval.batch_size,
                                                    max_new_tokens=max(48, recipe.eval.max_new_tokens),
                                                    desc="base model answers the training questions")]

    def sample(prompts: list[str]) -> list[list[str]]:
        desc = "base model samples answers to the training questions"
        with phase(desc):
            return [[a["text"] for a in answers] for answers in sampled_answers(
                model, tokenizer, prompts, samples=recipe.data.know_check_samples,
                temperature=recipe.data.know_check_temperature, seed=recipe.seed, system=recipe.data.system,
                batch_size=recipe.eval.batch_size, max_new_tokens=max(48, recipe.eval.max_new_tokens), desc=desc)]

    consistency = {"sample_fn": sample} if recipe.data.know_check_samples else {}
    try:
        labelled = labeller(rows, answer, self_answers=recipe.data.self_answers, know_check=recipe.data.know_check,
                            **consistency)
    except ValueError as exc:
        raise TokengraftError(f"data.know_check / data.self_answers: {exc}") from None
    return drop_unknown(labelled) if recipe.data.drop_unknown else labelled


def drop_unknown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``data.drop_unknown``: the labelled rows without the questions the base model answered wrong
    (``know_check: "wrong"``), except rows marked ``keep_unknown: true`` (the pass task's
    ``replay_gold``), which keep their gold answer; refuses to leave none of the questions it checked."""
    kept = [r for r in rows if r.get("know_check") != "wrong" or r.get("keep_unknown") is True]
    if any("know_check" in r for r in rows) and not any("know_check" in r for r in kept):
        raise TokengraftError("data.drop_unknown: the base model answers none of the training questions it was asked "
                              "right, so none would be left; turn drop_unknown off")
    return kept


def complete_with_base_answers(recipe: Recipe, rows: list[dict[str, Any]], tokenizer: Any,
                               model: Any) -> list[dict[str, Any]]:
    """Generated rows with ``completion: None`` (the style task's plain rows) get the base model's own
    greedy answer: training on them keeps the model's behaviour where no new token is present.

    A row the base model answers with nothing (a base model in the plain format may end its turn
    at once: Gemma 3 270M does on some questions) has nothing to train on; it is left out and said."""
    todo = [i for i, r in enumerate(rows) if "prompt" in r and r.get("completion") is None]
    if not todo:
        return rows
    with phase("base model answers the plain rows"):
        answers = [a["text"] for a in base_answers(model, tokenizer, [rows[i]["prompt"] for i in todo],
                                                   system=recipe.data.system, max_new_tokens=recipe.eval.max_new_tokens,
                                                   batch_size=recipe.eval.batch_size,
                                                   desc="base model answers the plain rows")]
    rows = list(rows)
    empty = {i for i, answer in zip(todo, answers) if not answer.strip()}
    for i, answer in zip(todo, answers):
        rows[i] = {**rows[i], "completion": answer, "completion_from": "base_model"}
    if empty:
        print(f"tokengraft: {len(empty)} of {len(todo)} plain rows left out: the base model's answer to them is "
              "empty, which leaves nothing to train on")
    return [row for i, row in enumerate(rows) if i not in empty]


def prepare_data(recipe: Recipe, data_dir: Path, tokenizer: Any, model: Any) -> PreparedData:
    """The training and validation rows of a run; generated splits are written into ``data_dir``
    (the run directory's ``data/``: ``rundir.data_dir(run)``)."""
    if recipe.data.generate:
        with phase("generate the data splits"):
            generated = get_task(recipe.task).generate(recipe.seed, recipe.data.generate_options, tokenizer,
                                                       recipe.tokens.word_start)
        splits = dict(generated.splits)
        if recipe.data.know_check or recipe.data.self_answers or recipe.data.drop_unknown:
            splits["train"] = _label(recipe, splits["train"], tokenizer, model)
        splits["train"] = complete_with_base_answers(recipe, splits["train"], tokenizer, model)
        generated = dataclasses.replace(generated, splits=splits)
        # Under a launcher (torchrun, accelerate launch) every process generates the same seeded
        # rows in memory; only global rank 0 writes them, so the run directory is written once.
        files = generated.write(data_dir) if is_rank_zero() else generated.files(data_dir)
        return PreparedData(train=splits["train"], validation=splits.get("validation", []), files=files,
                            extra_tokens=list(generated.tokens))
    if not recipe.data.train:
        raise TokengraftError("data.train is not set; give a JSONL file or set data.generate: true for a built-in task")
    train_rows: list[Any] = load_examples(recipe.data.train)  # errors name file and line
    train_file = Path(recipe.data.train)
    if recipe.data.know_check or recipe.data.self_answers or recipe.data.drop_unknown:
        require_prompt_rows(train_rows)
        train_rows = _label(
            recipe, [{"prompt": e.prompt, "completion": e.completion, **e.meta} for e in train_rows], tokenizer, model)
        # The relabelled rows (before any validation split) stay beside the run, like generated splits.
        labelled = Path(data_dir) / "train.jsonl"
        if labelled.resolve() != train_file.resolve():  # never overwrite the file read
            train_file = labelled
            if is_rank_zero():
                write_jsonl(train_rows, train_file)
    if recipe.data.validation:
        validation: list[Any] = load_examples(recipe.data.validation)
    elif recipe.data.validation_fraction > 0:
        train_rows, validation = split_rows(train_rows, recipe.data.validation_fraction, recipe.seed)
    else:
        validation = []
    return PreparedData(train=train_rows, validation=validation, files={"train": train_file})
