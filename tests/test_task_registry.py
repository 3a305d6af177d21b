"""The task registry: the built-in tasks, config agreeing with it, and a task registered from outside."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from tiny import tiny_tokenizer
from tokengraft.config import Recipe, default_recipe
from tokengraft.errors import TokengraftError
from tokengraft.tasks import Generated, Task, get_task, register_task, task_names, unregister_task
from tokengraft.tasks import lexicon_data as L
from tokengraft.tasks import pass_data as P
from tokengraft.tasks import style_data as S
from tokengraft.tasks.splits import read_jsonl, write_jsonl

BUILTIN = ("generic", "pass", "style", "lexicon", "classification")


def test_the_builtin_tasks_are_registered_with_what_they_need() -> None:
    assert task_names() == BUILTIN
    assert get_task("pass").tokens == (P.PASS_TOKEN,)
    assert get_task("style").tokens == (S.STYLE_TERSE, S.STYLE_VERBOSE)
    assert [n for n in BUILTIN if get_task(n).can_generate] == ["pass", "style", "lexicon", "classification"]
    assert [n for n in BUILTIN if get_task(n).mines_tokens] == ["lexicon"]
    assert not get_task("generic").metric_keys and all(get_task(n).metric_keys for n in BUILTIN[1:])


def test_importing_the_registry_loads_no_torch() -> None:
    """config reads the registry, and `tokengraft validate` must stay light."""
    code = "import sys, tokengraft.tasks; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_config_agrees_with_the_registry() -> None:
    """A recipe's task names and every task's default recipe come from the registered tasks."""
    hint = typing.get_type_hints(Recipe)["task"]
    if typing.get_origin(hint) is typing.Literal:
        assert set(typing.get_args(hint)) == set(task_names())
    for name in task_names():
        task, recipe = get_task(name), default_recipe(name)
        assert recipe.data.generate == task.can_generate, name
        assert list(recipe.tokens.add) == list(task.tokens), name
        assert dict(recipe.tokens.init_text or {}) == dict(task.init_text), name


def test_unknown_task_names_the_closest_one() -> None:
    with pytest.raises(TokengraftError, match=r"unknown task 'pas'.*did you mean 'pass'"):
        get_task("pas")


def test_a_taken_name_needs_replace_and_a_task_without_generator_says_so() -> None:
    with pytest.raises(TokengraftError, match="already registered"):
        register_task(Task("pass"))
    with pytest.raises(TokengraftError, match="has no data generator"):
        get_task("generic").generate(seed=0)
    with pytest.raises(TokengraftError, match="not its tokens"):
        Task("x", tokens=("<A>",), init_text={"<B>": "b"})


def test_a_task_registered_from_outside_generates_and_writes(tmp_path: Path) -> None:
    def generate(seed, options, tokenizer=None, word_start=False):
        rows = [{"prompt": f"q{seed}-{i}", "completion": "<YES>"} for i in range(options.get("n", 2))]
        return Generated({"train": rows, "validation": rows[:1]})

    register_task(Task("toy", tokens=("<YES>",), generator=generate, metric_keys=("accuracy",)))
    try:
        assert task_names()[-1] == "toy"
        generated = get_task("toy").generate(seed=3, options={"n": 3})
        files = generated.write(tmp_path)
        assert files == {"train": tmp_path / "train.jsonl", "validation": tmp_path / "validation.jsonl"}
        assert read_jsonl(files["train"]) == generated.splits["train"] and len(generated.splits["train"]) == 3
    finally:
        unregister_task("toy")
    assert "toy" not in task_names()


def test_pass_generator_is_generate_splits_and_refuses_moved_options() -> None:
    assert get_task("pass").generate(seed=1, options={"n_train": 20, "n_validation": 10, "n_test": 10}).splits == \
        P.generate_splits(seed=1, n_train=20, n_validation=10, n_test=10)
    with pytest.raises(TokengraftError, match="moved to data.know_check"):
        get_task("pass").generate(seed=1, options={"know_check": True})


def test_lexicon_generator_writes_what_data_preparation_wrote(tmp_path: Path) -> None:
    """The registry's generator and writer give the same files as the task-by-task code it replaces."""
    tok = tiny_tokenizer()
    options = {"min_pieces": 3, "min_count": 4, "max_words": 50}
    generated = get_task("lexicon").generate(seed=0, options=options, tokenizer=tok)
    files = generated.write(tmp_path / "new")
    # What tasks/prepare.py did for the lexicon task before the registry:
    splits = L.generate_splits(seed=0)
    words = L.mine_lexicon([r["text"] for r in splits["train"]], tok, after_space=False, **options)
    old = tmp_path / "old"
    for name, rows in splits.items():
        write_jsonl(rows, old / f"{name}.jsonl")
    L.write_lexicon(words, old / "lexicon.txt", header="mined from the training split")
    assert words and generated.tokens == words
    assert sorted(p.name for p in files.values()) == sorted(p.name for p in old.iterdir())
    for path in files.values():
        assert path.read_bytes() == (old / path.name).read_bytes(), path.name


def test_lexicon_generator_refuses_an_empty_lexicon() -> None:
    with pytest.raises(TokengraftError, match="found no word"):
        get_task("lexicon").generate(seed=0, options={"min_count": 10**9}, tokenizer=tiny_tokenizer())
