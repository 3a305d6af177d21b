"""Step checkpoints inside a run directory: when one counts, which one a resume trusts, and restoring it.

A checkpoint is ``checkpoint-<step>/`` holding our run-directory artifacts (rows and
method weights, written by `rundir.save_graft`) beside the Trainer's optimiser,
scheduler, RNG and state files. It counts only once its ``COMPLETE`` marker exists,
and that marker is a manifest (files.py): every file with its size and sha256,
written last through one rename, after every process wrote its part and after the
trained tensors were found finite. So:

- a kill during a save never leaves a checkpoint that looks complete (no marker), and
  rotation and resume only look at marked ones;
- a resume verifies the newest marked checkpoint against its manifest (a deleted
  ``optimizer.pt`` would otherwise silently restart the learning-rate schedule, a
  missing ``trainer_state.json`` would be a traceback) and falls back to the newest
  one that verifies, naming each one it skipped and why;
- a checkpoint with non-finite tensors is never marked, so "the last good checkpoint"
  that a NaN stop names really is good;
- a resume whose recipe no longer has the checkpoint's shape (tokens, methods and their
  sizes, base model) is refused with the difference named, before any tensor is copied.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tokengraft.core.graft import Graft
from tokengraft.errors import TokengraftError
from tokengraft.files import manifest_problem, write_manifest
from tokengraft.methods.state import INDEX_FILE, WEIGHTS_FILE
from tokengraft.rundir import (EMBEDDINGS_FILE, GRAFT_FILE, LOCK_FILE, OWNER_FILE, ROWS_FILE, STAGING_PREFIX, load_tensors,
                               read_graft_meta)
from tokengraft.training.sharding import full_shape, full_trained_tensors, full_value, load_full, relink

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE_FILE = "trainer_state.json"
TRAINER_FILES = (TRAINER_STATE_FILE, "optimizer.pt", "scheduler.pt")
"""What the Trainer writes and a bit-identical resume needs, besides one RNG file per process."""
TENSOR_FILES = (ROWS_FILE, WEIGHTS_FILE, EMBEDDINGS_FILE)
DEEPSPEED_LATEST = "latest"  # DeepSpeed's pointer to its state directory inside a checkpoint


def _step_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return found


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def required_files(g: Graft, world_size: int, *, deepspeed: bool = False) -> list[str]:
    """Every file a checkpoint of ``g`` must hold to resume bit-identically (checked before it is marked).

    Under DeepSpeed the optimiser state is DeepSpeed's own (``global_step<N>/``, named by its
    ``latest`` file) instead of ``optimizer.pt``.
    """
    trainer_files = [TRAINER_STATE_FILE, DEEPSPEED_LATEST] if deepspeed else list(TRAINER_FILES)
    names = [GRAFT_FILE, ROWS_FILE, *trainer_files]
    names += ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    if g.settings.backend == "full":
        names.append(EMBEDDINGS_FILE)
    if g.methods is not None:
        names += [WEIGHTS_FILE, INDEX_FILE]
    return names


def mark_complete(checkpoint: str | Path, step: int, required: Sequence[str] = ()) -> None:
    """Write the manifest marker: from now on the checkpoint counts for rotation and resume.

    A required file that is not there means the save itself went wrong: refuse to mark.
    """
    checkpoint = Path(checkpoint)
    missing = [name for name in required if not (checkpoint / name).is_file()]
    if missing:
        raise TokengraftError(f"{checkpoint} lacks {', '.join(missing)} after saving; it was not marked complete "
                              "(is the disk full?)")
    write_manifest(checkpoint, COMPLETE_MARKER, {"step": step})


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints with the completion marker, oldest first (not yet verified: see `checkpoint_problem`)."""
    return [p for _, p in sorted(_step_dirs(output_dir)) if (p / COMPLETE_MARKER).is_file()]


def discard_incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete step checkpoints without the completion marker (a kill mid-save); other folders are left alone."""
    removed = []
    for _, path in _step_dirs(output_dir):
        if not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def rotate_checkpoints(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep``; incomplete ones never count."""
    done = complete_checkpoints(output_dir)
    if keep is None or len(done) <= keep:
        return []
    removed = done[:len(done) - keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# ----------------------------------------------------------------------------- verification


def non_finite_tensor(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or inf, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def trained_tensors_problem(g: Graft) -> str | None:
    """Which trainable parameter of the live model is not finite (the same on every rank), or None.

    Under ZeRO-3 / FSDP2 the parameters are read whole (gathered): every rank calls this.
    """
    with full_trained_tensors(g):
        named = {n: full_value(p.detach()) for n, p in g.model.named_parameters() if p.requires_grad}
        return non_finite_tensor(named)


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why a marked checkpoint cannot be resumed from (first reason found), or None when it verifies."""
    checkpoint = Path(checkpoint)
    problem = manifest_problem(checkpoint, COMPLETE_MARKER)
    if problem is not None:
        return problem
    for name in TENSOR_FILES:
        if (checkpoint / name).is_file():
            bad = non_finite_tensor(load_tensors(checkpoint / name))
            if bad is not None:
                return f"{name} holds non-finite values ({bad})"
    return None


def newest_good_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest marked checkpoint that verifies, and the newer ones skipped with the reason for each."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(complete_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The Trainer's ``trainer_state.json`` of a verified checkpoint (global step, max steps, log history)."""
    return json.loads((Path(checkpoint) / TRAINER_STATE_FILE).read_text())


def resume_checkpoint(run: Path, g: Graft, main_process: bool) -> Path:
    """The newest checkpoint that verifies and has the recipe's shape; newer damaged ones are named and removed.

    A removed checkpoint could not be resumed from; the resumed run writes its step again.
    """
    from accelerate import PartialState

    if main_process:
        discard_incomplete_checkpoints(run)
        for leftover in run.glob(f"{STAGING_PREFIX}*"):  # a save killed before its renames
            shutil.rmtree(leftover, ignore_errors=True)
    PartialState().wait_for_everyone()
    checkpoint, skipped = newest_good_checkpoint(run)
    PartialState().wait_for_everyone()  # every rank has decided before rank 0 removes anything
    if checkpoint is None:
        if skipped:
            reasons = "; ".join(f"{path.name}: {why}" for path, why in skipped)
            raise TokengraftError(f"--resume: no checkpoint in {run} verifies ({reasons}); start afresh with --overwrite")
        others = [p for p in run.iterdir() if p.name not in (LOCK_FILE, OWNER_FILE)] if run.is_dir() else []
        hint = "start afresh with --overwrite" if others else "start without --resume"
        raise TokengraftError(f"--resume: {run} has no complete checkpoint to resume from; {hint}")
    if main_process:
        for path, why in skipped:
            print(f"tokengraft: --resume: skipping {path.name} ({why}); removed it, its steps train again",
                  file=sys.stderr)
            shutil.rmtree(path)
    PartialState().wait_for_everyone()
    check_same_shape(g, read_graft_meta(checkpoint), checkpoint)
    return checkpoint


# ----------------------------------------------------------------------------- the recipe's shape


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as graft.json holds them


def _method_differences(saved: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    saved, now = _plain(saved or []), _plain(now or [])
    if [m.get("type") for m in saved] != [m.get("type") for m in now]:
        return [f"methods: {[m.get('type') for m in saved]} in the run, {[m.get('type') for m in now]} in the recipe"]
    out = []
    for i, (a, b) in enumerate(zip(saved, now)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"methods.{i}.{key}: {a.get(key)!r} in the run, {b.get(key)!r} in the recipe")
    return out


def shape_differences(g: Graft, meta: dict[str, Any]) -> list[str]:
    """What differs between the graft built from the recipe and the one a run directory recorded (``graft.json``)."""
    out = []
    if meta["base_fingerprint"] != g.base_fingerprint:
        out.append(f"the base model ({meta.get('base_model')!r} had fingerprint {meta['base_fingerprint']}, "
                   f"the recipe's has {g.base_fingerprint})")
    saved_tokens = [t["token"] for t in meta.get("tokens", [])]
    if saved_tokens != list(g.settings.add):
        gone = [t for t in saved_tokens if t not in g.settings.add]
        new = [t for t in g.settings.add if t not in saved_tokens]
        detail = ", ".join(filter(None, [f"not in the recipe: {gone[:3]}" if gone else "",
                                         f"new in the recipe: {new[:3]}" if new else ""])) or "same tokens, another order"
        out.append(f"tokens ({len(saved_tokens)} in the run, {len(g.settings.add)} in the recipe; {detail})")
    elif sorted(meta["trainable_ids"]) != sorted(g.trainable_ids):
        out.append(f"the trainable token ids ({len(meta['trainable_ids'])} in the run, {len(g.trainable_ids)} "
                   "in the recipe: tokens.train_existing?)")
    settings = meta.get("settings", {})
    for key in ("backend", "sides", "special", "single_word", "word_start", "expand"):
        if key in settings and settings[key] != getattr(g.settings, key):
            out.append(f"tokens.{key}: {settings[key]!r} in the run, {getattr(g.settings, key)!r} in the recipe")
    if "total_rows" in meta and int(meta["total_rows"]) != g.report.final_rows:
        out.append(f"the vocabulary rows ({meta['total_rows']} in the run, {g.report.final_rows} in the recipe)")
    return out + _method_differences(meta.get("methods") or [], g.method_configs)


def check_same_shape(g: Graft, meta: dict[str, Any], where: str | Path) -> None:
    """Refuse to continue a run whose recipe changed shape since ``where`` was saved, naming every difference."""
    differences = shape_differences(g, meta)
    if differences:
        raise TokengraftError(f"--resume: the recipe does not match the run saved in {where}: "
                              f"{'; '.join(differences)}. Resume with the recipe the run was trained with "
                              "(its config.yaml), or start afresh with --overwrite or another --output")


# ----------------------------------------------------------------------------- restore


def _copy_checked(target: torch.Tensor, source: torch.Tensor, name: str, where: Path) -> None:
    if tuple(source.shape) != full_shape(target):
        raise TokengraftError(f"{where}: {name} has shape {tuple(source.shape)}, the model built from the recipe "
                              f"has {full_shape(target)}; resume with the recipe the run was trained with")
    load_full(target, source)


def restore_trained_tensors(g: Graft, checkpoint: str | Path) -> None:
    """Copy a checkpoint's trained rows and method weights (a classifier's head among them) into the live model.

    Every tensor's shape is checked first: a changed recipe is one clear error, not a
    size-mismatch traceback. Resume is supported for the row overlay; the ``peft`` and
    ``full`` backends keep their rows inside PEFT wrappers, so such runs start afresh instead.
    Under DeepSpeed the Trainer restores from DeepSpeed's own checkpoint files instead (its
    optimiser holds the fp32 master copies, which a write into the parameters would not reach).
    """
    checkpoint = Path(checkpoint)
    if g.rows is None and g.trainable_ids:
        raise TokengraftError("resume is supported for the rows backend (tokens.backend: rows); a peft or full "
                              "backend run starts afresh with --overwrite")
    relink(g)  # FSDP2 replaced the parameters with sharded ones: write into those
    if g.rows is not None:
        rows = load_tensors(checkpoint / ROWS_FILE)
        _copy_checked(g.rows.input_rows, rows["input"], f"{ROWS_FILE} 'input'", checkpoint)
        if isinstance(g.rows.output_rows, torch.nn.Parameter) and "output" in rows:
            _copy_checked(g.rows.output_rows, rows["output"], f"{ROWS_FILE} 'output'", checkpoint)
    if g.methods is not None:
        tensors = load_tensors(checkpoint / WEIGHTS_FILE)
        for record in g.methods.records:
            for name, parameter in zip(record.names, record.params):
                if name not in tensors:
                    raise TokengraftError(f"checkpoint {checkpoint} lacks method weight {name!r}")
                _copy_checked(parameter, tensors[name], f"method weight {name!r}", checkpoint)
