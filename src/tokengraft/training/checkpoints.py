"""Step checkpoints inside a run directory: which ones count, rotation, and restoring from one.

A checkpoint is ``checkpoint-<step>/`` holding our run-directory artifacts (rows and
method weights, written by `rundir.save_graft`) beside the Trainer's optimiser,
scheduler and RNG files. It counts only once its completion marker is written
(after every process wrote its part), so a kill during a save never leaves one
that looks complete; rotation and resume look at complete checkpoints only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tokengraft.core.graft import Graft
from tokengraft.errors import TokengraftError
from tokengraft.methods.state import WEIGHTS_FILE
from tokengraft.rundir import ROWS_FILE, load_tensors

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"


def _step_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return found


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def mark_complete(checkpoint: str | Path, step: int) -> None:
    """Write the completion marker: from now on the checkpoint counts for rotation and resume."""
    (Path(checkpoint) / COMPLETE_MARKER).write_text(json.dumps({"step": step}))


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints with the completion marker, oldest first."""
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


def restore_trained_tensors(g: Graft, checkpoint: str | Path) -> None:
    """Copy a checkpoint's trained rows and method weights (a classifier's head among them) into the live model.

    Resume is supported for the row overlay; the ``peft`` and ``full`` backends keep
    their rows inside PEFT wrappers, so such runs restart instead.
    """
    if g.rows is None and g.trainable_ids:
        raise TokengraftError("resume is supported for the rows backend; restart the run for peft/full backends")
    with torch.no_grad():
        if g.rows is not None:
            rows = load_tensors(Path(checkpoint) / ROWS_FILE)
            g.rows.input_rows.copy_(rows["input"].to(g.rows.input_rows))
            if isinstance(g.rows.output_rows, torch.nn.Parameter) and "output" in rows:
                g.rows.output_rows.copy_(rows["output"].to(g.rows.output_rows))
        if g.methods is not None:
            tensors = load_tensors(Path(checkpoint) / WEIGHTS_FILE)
            for record in g.methods.records:
                for name, parameter in zip(record.names, record.params):
                    if name not in tensors:
                        raise TokengraftError(f"checkpoint {checkpoint} lacks method weight {name!r}")
                    parameter.copy_(tensors[name].to(parameter))
