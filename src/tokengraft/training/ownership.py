"""Who may write a run directory: one training at a time, and never over another run by accident.

A run directory is what users trust with hours of training, so `own_run_dir` claims it
before anything is loaded:

- an exclusive lock (``filelock``, held for the whole run; the kernel drops it when the
  process dies, so a killed run leaves no stale lock) plus a note of the holder (pid,
  host, start time): a second ``tokengraft train`` into the same directory stops at
  once with one line naming the holder, instead of both writing and one run's weights
  silently winning;
- a fresh run refuses a directory that already holds something (but its ``data/`` splits,
  which a user may place before training, e.g. a held-out test split): an older run's
  checkpoints would outrank the new ones (rotation would delete each new checkpoint as
  it is written, and ``--resume`` would continue the OLD run). ``--resume`` continues
  the run that is there (training/checkpoints.py checks the recipe matches it),
  ``--overwrite`` deliberately removes it first;
- the directory and the deepest path training will write below it are created up
  front, so an unwritable or too-long ``--output`` fails now, not at the first
  checkpoint after minutes of training.

Under a launcher (``accelerate launch``) only global rank 0 claims the directory; the
other ranks write nothing outside the files rank 0 coordinates.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from tokengraft.errors import TokengraftError
from tokengraft.rundir import DATA_DIR, LOCK_FILE, OWNER_FILE

# The deepest path training writes: RUN/checkpoint-<step>/.saving-<8 random>/<file name>; the probe is
# a little longer in every part, so a directory that passes it can hold every file.
_PROBE = (".probe-checkpoint-000000000000", ".saving-probe000", "p" * 64)


def short_path(path: Path, keep: int = 60) -> str:
    """A path for a one-line message: very long ones keep their start and end."""
    text = str(path)
    return text if len(text) <= 2 * keep + 3 else f"{text[:keep]}...{text[-keep:]}"


def cannot_write(run: Path, exc: OSError, what: str = "the run directory") -> TokengraftError:
    reason = exc.strerror or type(exc).__name__
    hint = "choose a shorter --output" if "too long" in reason.lower() else "choose a writable --output"
    return TokengraftError(f"cannot write {what} {short_path(run)} ({reason}); {hint}")


def holder(run: Path) -> str:
    """Who holds the lock, from the note it left (pid, host, start), with a hint when that process is gone."""
    try:
        note = json.loads((run / OWNER_FILE).read_text())
        pid, host, started = int(note["pid"]), str(note["host"]), str(note["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no note of itself"
    text = f"pid {pid} on {host}, started {started}"
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            text += f"; that process is gone, so if nothing else uses the directory delete {run / LOCK_FILE}"
        except PermissionError:
            pass  # alive, owned by another user
    return text


def _create(run: Path) -> None:
    if run.exists() and not run.is_dir():
        raise TokengraftError(f"--output {short_path(run)} is a file, not a directory; choose another --output")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(run, exc) from None


def _check_contents(run: Path, *, resume: bool, overwrite: bool, quiet: bool) -> None:
    shutil.rmtree(run / _PROBE[0], ignore_errors=True)  # left by a process killed while probing
    entries = sorted(p.name for p in run.iterdir() if p.name not in (LOCK_FILE, OWNER_FILE))
    if resume or entries in ([], [DATA_DIR]):  # data/ alone: splits placed there before training (a test split)
        return
    if overwrite:
        if not quiet:
            print(f"tokengraft: --overwrite: removing the previous contents of {run} ({len(entries)} entries)",
                  file=sys.stderr)
        for name in entries:
            path = run / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        return
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    raise TokengraftError(f"{run} is not empty ({shown}); continue the run there with --resume, replace it "
                          "with --overwrite, or choose another --output")


def _probe(run: Path) -> None:
    """Create (and remove) a path as deep and long as any training writes below ``run``."""
    top = run / _PROBE[0]
    try:
        path = top.joinpath(*_PROBE[1:])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    except OSError as exc:
        raise cannot_write(run, exc, "files below the run directory") from None
    finally:
        shutil.rmtree(top, ignore_errors=True)


def is_rank_zero() -> bool:
    """Global rank 0 (or no launcher), asked before the distributed state exists (the launcher sets RANK)."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def own_run_dir(output_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                quiet: bool = False) -> Iterator[Path]:
    """Hold ``output_dir`` for one training: locked, checked (empty, or ``resume`` / ``overwrite``), writable."""
    run = Path(output_dir)
    if resume and overwrite:
        raise TokengraftError("--resume continues the run in the output directory and --overwrite replaces it; "
                              "choose one")
    if not is_rank_zero():
        yield run
        return
    _create(run)
    lock = FileLock(str(run / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise TokengraftError(f"{run} is in use by another training ({holder(run)}); wait for it to finish "
                              "or choose another --output") from None
    except OSError as exc:
        raise cannot_write(run, exc) from None
    try:
        note = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
        try:
            (run / OWNER_FILE).write_text(json.dumps(note))
        except OSError as exc:
            raise cannot_write(run, exc) from None
        _check_contents(run, resume=resume, overwrite=overwrite, quiet=quiet)
        _probe(run)
        yield run
    finally:
        (run / OWNER_FILE).unlink(missing_ok=True)  # before the lock goes: the next holder writes its own
        lock.release()
