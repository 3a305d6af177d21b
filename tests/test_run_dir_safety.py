"""A run directory nobody can corrupt (issue 21): ownership, verified resume, numeric guards, kills.

Every run is a real ``train()`` on a tiny Llama with LoRA (dropout on, so a resume is
bit-identical only if the RNG state comes back too). One uninterrupted run of the
shared recipe is the reference: reused, concurrent, damaged and killed runs must end
with exactly its weights and losses.

Kills and the concurrent second writer are real processes: the test forks itself (the
child inherits the imported libraries, so a run costs a second, not the seconds of a
fresh ``import transformers``), and the child kills itself with SIGKILL at a chosen
file commit (every ``os.replace`` and ``torch.save`` of the run: our atomic renames and
the Trainer's optimiser / scheduler / RNG files), before it, after it, or half-way
through writing it. The real functions do the work; the injector only adds the kill.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from tokengraft.api import train
from tokengraft.cli.main import main
from tokengraft.config import Recipe, apply_overrides
from tokengraft.errors import TokengraftError
from tokengraft.files import manifest_problem, write_manifest
from tokengraft.rundir import LOCK_FILE, OWNER_FILE
from tokengraft.training.checkpoints import COMPLETE_MARKER, complete_checkpoints
from test_train import (LORA, TOKEN, FirstStep, StopAt, all_finite, example_rows, make_recipe, save_tiny,
                        trained_tensors)


@dataclass
class Reference:
    root: Path
    recipe: Recipe
    recipe_file: Path
    run: Path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, llama_dir) -> Reference:
    """The shared recipe (6 steps, checkpoints every 2, LoRA with dropout) trained without interruption."""
    root = tmp_path_factory.mktemp("reference")
    recipe = make_recipe(root, llama_dir, rows=example_rows(12), methods=[LORA], max_steps=6, save_steps=2)
    recipe_file = recipe.save(root / "recipe.yaml")
    train(recipe, root / "ref", quiet=True)
    return Reference(root, recipe, recipe_file, root / "ref")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, reference) -> Path:
    """The shared recipe stopped after step 4: checkpoint-2 and checkpoint-4 on disk."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    train(reference.recipe, run, quiet=True, callbacks=[StopAt(4)])
    assert [p.name for p in complete_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    return run


def assert_same_run(run: Path, ref: Path) -> None:
    """Bit-identical trained tensors and logged losses."""
    a, b = trained_tensors(ref), trained_tensors(run)
    assert set(a) == set(b) and any(k.startswith("methods.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = lambda r: [(h["step"], h["loss"]) for h in json.loads((r / "log_history.json").read_text()) if "loss" in h]  # noqa: E731
    assert losses(run) == losses(ref)


def cli(capsys, *argv: str) -> tuple[int, list[str], str]:
    """Run the CLI in-process: exit code, its ``tokengraft:`` stderr lines, stdout."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, [x for x in captured.err.splitlines() if x.startswith("tokengraft")], captured.out


def tree_bytes(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in (LOCK_FILE, OWNER_FILE)}


# ----------------------------------------------------------------------------- child processes


def fork_child(body: Callable[[], None]) -> int:
    """Start ``body`` in a forked child and return its pid; the child exits 0, 2 (a TokengraftError) or 1."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            body()
            code = 0
        except TokengraftError as exc:
            print(f"tokengraft: error: {exc}", file=sys.stderr)
            code = 2
        except BaseException:  # noqa: BLE001 - report anything, then leave without pytest's teardown
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def forked(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child; its exit code (-9 when it was SIGKILLed)."""
    return wait_child(fork_child(body))


def wait_child(pid: int, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} did not finish in {timeout} s")
        time.sleep(0.02)


class Injector:
    """Counts file commits (``os.replace``, ``torch.save``) and SIGKILLs this process at the ``kill_at``-th one."""

    def __init__(self, kill_at: int | None = None, mode: str = "before") -> None:
        self.kill_at, self.mode, self.count = kill_at, mode, 0
        self.real_replace, self.real_save = os.replace, torch.save

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(self, src, dst, *args, **kwargs):
        self.count += 1
        if self.count == self.kill_at and self.mode != "after":
            self.die()
        result = self.real_replace(src, dst, *args, **kwargs)
        if self.count == self.kill_at:
            self.die()
        return result

    def save(self, obj, f, *args, **kwargs):
        self.count += 1
        if self.count != self.kill_at or not isinstance(f, (str, os.PathLike)):
            return self.real_save(obj, f, *args, **kwargs)
        if self.mode == "before":
            self.die()
        buffer = io.BytesIO()
        self.real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        Path(f).write_bytes(data if self.mode == "after" else data[: len(data) // 2])  # "torn": half a file
        self.die()


def count_commits(monkeypatch, recipe: Recipe, run: Path) -> int:
    """How many file commits an uninterrupted run of ``recipe`` makes (the range kill points are drawn from)."""
    injector = Injector()
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", injector.replace)
        patch.setattr(torch, "save", injector.save)
        train(recipe, run, quiet=True)
    return injector.count


def killed_run(recipe: Recipe, run: Path, kill_at: int, mode: str) -> int:
    """One launch in a child that kills itself at the ``kill_at``-th commit: resume when the run has a checkpoint
    (or is finished), else start afresh (a run killed before its first checkpoint has nothing to resume)."""
    resume = bool(complete_checkpoints(run)) or (run / "graft.json").is_file()

    def body() -> None:
        injector = Injector(kill_at, mode)
        os.replace, torch.save = injector.replace, injector.save
        train(recipe, run, quiet=True, resume=resume, overwrite=run.exists() and not resume)

    return forked(body)


def kill_and_resume(monkeypatch, reference: Reference, tmp_path: Path, seed: int, kills: int) -> list[tuple[int, str]]:
    """Kill training ``kills`` times at seeded random commits, then let it finish; it must equal the reference."""
    commits = count_commits(monkeypatch, reference.recipe, tmp_path / "counted")
    rng = random.Random(seed)
    run = tmp_path / "run"
    done: list[tuple[int, str]] = []
    while len(done) < kills:
        point, mode = rng.randint(1, commits), rng.choice(["before", "after", "torn"])
        code = killed_run(reference.recipe, run, point, mode)
        if code == 0:  # the kill point lay beyond what was left to do: the run finished
            break
        assert code == -signal.SIGKILL, f"launch killed at commit {point} ({mode}) exited {code}"
        done.append((point, mode))
    assert killed_run(reference.recipe, run, 10**9, "before") == 0  # no kill: it finishes (or is already finished)
    assert_same_run(run, reference.run)
    assert json.loads((run / "graft.json").read_text())["steps"] == 6
    return done


def test_killed_twice_at_random_points_resumes_bit_identical(monkeypatch, reference, tmp_path):
    done = kill_and_resume(monkeypatch, reference, tmp_path, seed=21, kills=2)
    print("KILLS", done)
    assert len(done) == 2  # the seed's kill points fall inside the run


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_killed_repeatedly_at_random_points_resumes_bit_identical(monkeypatch, reference, tmp_path, seed):
    kill_and_resume(monkeypatch, reference, tmp_path, seed=seed, kills=5)


# ----------------------------------------------------------------------------- ownership


def test_reusing_a_run_directory_is_refused_and_overwrite_starts_clean(reference, tmp_path, capsys):
    """An older, longer run in the directory: a fresh train refuses it (old run untouched); --overwrite replaces it.

    Before: the old run's checkpoint-6/8 outranked the new ones and rotation deleted each new checkpoint.
    """
    older = apply_overrides(reference.recipe, ["seed=9", "train.max_steps=8", "train.save_total_limit=2"])
    run = tmp_path / "reuse"
    train(older, run, quiet=True)
    before = tree_bytes(run)
    code, err, _ = cli(capsys, "train", str(reference.recipe_file), "--output", str(run), "--quiet")
    assert code == 2 and len(err) == 1 and "is not empty" in err[0] and "--overwrite" in err[0], err
    assert tree_bytes(run) == before  # nothing of the old run changed
    code, err, _ = cli(capsys, "train", str(reference.recipe_file), "--output", str(run), "--overwrite", "--quiet")
    assert code == 0, err
    assert_same_run(run, reference.run)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_a_second_training_into_a_held_directory_is_refused(reference, tmp_path, capsys):
    """A child trains and pauses after step 3; train, --resume and --overwrite into its directory all stop at once,
    naming the child; the child then finishes with exactly the reference weights."""
    run, go = tmp_path / "shared", tmp_path / "go"

    class Pause(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                Path(f"{go}.waiting").write_text(str(os.getpid()))
                while not go.exists():
                    time.sleep(0.02)

    pid = fork_child(lambda: train(reference.recipe, run, quiet=True, callbacks=[Pause()]))
    try:
        deadline = time.monotonic() + 600
        while not Path(f"{go}.waiting").exists():
            assert time.monotonic() < deadline, "the child never reached step 3"
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the child ended early"
            time.sleep(0.02)
        for flags in ([], ["--resume"], ["--overwrite"]):
            code, err, _ = cli(capsys, "train", str(reference.recipe_file), "--output", str(run), "--quiet", *flags)
            assert code == 2 and len(err) == 1, (flags, err)
            assert "in use by another training" in err[0] and f"pid {pid} on " in err[0], err
    finally:
        go.write_text("go")
    assert wait_child(pid) == 0
    assert_same_run(run, reference.run)


# ----------------------------------------------------------------------------- verified resume


def damage(checkpoint: Path, how: str) -> None:
    name, _, action = how.partition(":")
    if action == "truncate":
        path = checkpoint / name
        path.write_bytes(path.read_bytes()[:-10])
    elif name == COMPLETE_MARKER:
        (checkpoint / name).write_text(json.dumps({"step": 4}))  # a marker without a manifest
    else:
        (checkpoint / name).unlink()


@pytest.mark.parametrize("how", ["optimizer.pt", "scheduler.pt", "trainer_state.json", "rows.safetensors",
                                 "methods.safetensors:truncate", COMPLETE_MARKER])
def test_resume_skips_a_damaged_checkpoint_and_says_why(reference, interrupted, tmp_path, capsys, how):
    """checkpoint-4 lost a file (or was cut, or its marker has no manifest): resume says so, continues from
    checkpoint-2, and ends bit-identical. Before: a missing optimizer/scheduler silently restarted their state."""
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    damage(run / "checkpoint-4", how)
    first = FirstStep()
    result = train(reference.recipe, run, resume=True, quiet=True, callbacks=[first])
    err = capsys.readouterr().err
    name = how.partition(":")[0]
    assert f"skipping checkpoint-4 ({name}" in err or (name == COMPLETE_MARKER and "skipping checkpoint-4 (its" in err), err
    assert first.first == 3 and result.steps == 6 and result.resumed_from == run / "checkpoint-2"
    assert_same_run(run, reference.run)


def test_resume_with_no_checkpoint_that_verifies_names_each(reference, interrupted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    damage(run / "checkpoint-4", "optimizer.pt")
    damage(run / "checkpoint-2", "trainer_state.json")
    code, err, _ = cli(capsys, "train", str(reference.recipe_file), "--output", str(run), "--resume", "--quiet")
    assert code == 2 and len(err) == 1, err
    assert "checkpoint-4: optimizer.pt is missing" in err[0] and "checkpoint-2: trainer_state.json is missing" in err[0]
    assert (run / "checkpoint-4").is_dir() and (run / "checkpoint-2").is_dir()  # nothing deleted when nothing verifies


def test_resuming_a_finished_run_does_nothing_and_says_so(reference, tmp_path, capsys):
    """Before: --resume on a finished run trained one step past max_steps and changed the weights."""
    run = tmp_path / "done"
    shutil.copytree(reference.run, run)
    before = tree_bytes(run)
    code, err, out = cli(capsys, "train", str(reference.recipe_file), "--output", str(run), "--resume", "--quiet")
    assert code == 0 and "already finished its 6 steps" in out, (err, out)
    assert tree_bytes(run) == before


@pytest.mark.parametrize("backend", ["peft", "full"])
def test_a_finished_run_of_any_backend_resumes_to_its_saved_weights(llama_dir, tmp_path, backend):
    """Backends whose rows live inside PEFT wrappers cannot continue a run, but a finished one still does nothing
    and hands back the saved model (loaded as tokengraft.load would)."""
    recipe = make_recipe(tmp_path, llama_dir, methods=[dict(LORA, dropout=0.0)], tokens={"add": [TOKEN], "backend": backend},
                         max_steps=2, save_steps=1)
    first = train(recipe, tmp_path / "run", quiet=True)
    before = tree_bytes(tmp_path / "run")
    again = train(recipe, tmp_path / "run", quiet=True, resume=True)
    assert again.already_finished and again.steps == 2 and tree_bytes(tmp_path / "run") == before
    ids = torch.tensor([[5, 40, 41, 7]])
    with torch.no_grad():
        torch.testing.assert_close(again.graft.model(input_ids=ids).logits, first.graft.model(input_ids=ids).logits)


def test_resume_after_the_last_checkpoint_only_writes_the_run_directory(reference, tmp_path):
    """Killed after checkpoint-6 but before the run directory was written: resume trains nothing, writes it."""
    run = tmp_path / "late"
    shutil.copytree(reference.run, run)
    for name in ("graft.json", "rows.safetensors", "methods.safetensors", "log_history.json"):
        (run / name).unlink()
    first = FirstStep()
    result = train(reference.recipe, run, resume=True, quiet=True, callbacks=[first])
    assert first.first is None and result.steps == 6  # no optimiser step ran
    assert_same_run(run, reference.run)


@pytest.mark.parametrize("override, named", [
    ("methods.0.r=8", "methods.0.r: 4 in the run, 8 in the recipe"),
    ("tokens.add=['<PASS>', '<NEW>']", "tokens (1 in the run, 2 in the recipe; new in the recipe: ['<NEW>'])"),
])
def test_resume_with_a_changed_recipe_names_the_difference(reference, interrupted, tmp_path, capsys, override, named):
    """Before: a raw ``RuntimeError: The size of tensor a (8) must match ...``."""
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    rows = example_rows(12) + [{"prompt": "q", "completion": "<NEW>"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err, _ = cli(capsys, "train", str(reference.recipe_file), f"data.train={tmp_path / 'train.jsonl'}", override,
                       "--output", str(run), "--resume", "--quiet")
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert "checkpoint-4" in err[0]
    assert [p.name for p in complete_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]


# ----------------------------------------------------------------------------- numeric guards


@pytest.mark.parametrize("override, message", [("train.lr=.nan", "train.lr must be a finite number"),
                                               ("train.token_lr=.inf", "train.token_lr must be a finite number"),
                                               ("train.token_lr=1e30", "train.token_lr must be <= 10"),
                                               ("methods.0.alpha=.nan", "'alpha' must be a finite number")])
def test_validate_refuses_non_finite_and_absurd_hyperparameters(reference, capsys, override, message):
    code, err, _ = cli(capsys, "validate", str(reference.recipe_file), override)
    assert code == 2 and len(err) == 1 and message in err[0], err


class NanLR(TrainerCallback):
    """From step ``step`` on the method learning rate is NaN (an API recipe that skipped validation)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if state.global_step == self.step:
            lr_scheduler.base_lrs = [float("nan")] * len(lr_scheduler.base_lrs)
            for group in optimizer.param_groups:
                group["lr"] = float("nan")


def test_a_checkpoint_of_nan_weights_is_never_marked_and_the_stop_names_a_good_one(reference, tmp_path):
    """NaN learning rate from step 2: step 2's update makes the LoRA weights NaN (its gradients were finite).

    Before: checkpoint-2 was marked complete with NaN tensors and the NaN-loss stop at step 3 named it "good".
    """
    recipe = apply_overrides(reference.recipe, ["train.save_steps=1"])
    run = tmp_path / "run"
    with pytest.raises(TokengraftError, match=r"trained weights \(.*\) became non-finite at step 2; "
                                              r"checkpoint-2 was not kept.*last good checkpoint is .*checkpoint-1"):
        train(recipe, run, quiet=True, callbacks=[NanLR(1)])
    assert [p.name for p in complete_checkpoints(run)] == ["checkpoint-1"] and not (run / "checkpoint-2").exists()
    assert all_finite(run / "checkpoint-1")
    assert not (run / "graft.json").exists()


# ----------------------------------------------------------------------------- manifests


def test_manifest_names_a_missing_shortened_or_altered_file(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, data in (("a.bin", b"abc" * 100), ("sub/b.json", b"{}")):
        (tmp_path / name).write_bytes(data)
    manifest = write_manifest(tmp_path, "MARK", {"step": 7})
    assert manifest["step"] == 7 and set(manifest["files"]) == {"a.bin", "sub/b.json"}
    assert manifest_problem(tmp_path, "MARK") is None
    (tmp_path / "a.bin").write_bytes(b"abd" * 100)
    assert "a.bin differs" in manifest_problem(tmp_path, "MARK")
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert "a.bin has 3 bytes, 300 were written" in manifest_problem(tmp_path, "MARK")
    (tmp_path / "a.bin").unlink()
    assert manifest_problem(tmp_path, "MARK") == "a.bin is missing"
    (tmp_path / "MARK").write_text("{}")
    assert "no file list" in manifest_problem(tmp_path, "MARK")
