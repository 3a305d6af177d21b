"""Wall-clock phases: where a long command spends its time, measured where the work happens.

The library marks its phases (``with phase("training"): ...``) wherever the work is done,
so the numbers come from the code that did it rather than from a caller guessing from
outside. Nothing is recorded unless a command asked for it with ``with recording() as
log:`` (the demo does), so library users pay nothing but a clock read. Phases nest: a
phase opened inside another is its child, and a parent's time includes its children's.
``note(...)`` adds facts to the innermost open phase (how many answers came from the
cache, how many rows were generated), so the summary says why a phase took what it did.

Torch-free and import-free on purpose (bottom layer): every layer may time itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Phase:
    """One timed block: ``seconds`` is filled in when the block ends (None while it runs)."""

    name: str
    depth: int
    seconds: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "depth": self.depth, "seconds": self.seconds}
        if self.detail:
            out["detail"] = dict(self.detail)
        return out


@dataclass
class PhaseLog:
    """The phases of one recording in the order they started (a parent before its children)."""

    phases: list[Phase] = field(default_factory=list)
    seconds: float | None = None  # the whole recording, wall clock

    def to_dict(self) -> dict[str, Any]:
        return {"total_seconds": self.seconds, "phases": [p.to_dict() for p in self.phases]}

    def top_level_seconds(self) -> float:
        return sum(p.seconds or 0.0 for p in self.phases if p.depth == 0)


_LOG: ContextVar[PhaseLog | None] = ContextVar("tokengraft_phase_log", default=None)
_OPEN: ContextVar[tuple[Phase, ...]] = ContextVar("tokengraft_open_phases", default=())


@contextmanager
def phase(name: str, **detail: Any) -> Iterator[Phase]:
    """Time the block as phase ``name``; the yielded ``Phase`` has ``seconds`` once the block ends.

    Recorded into the active ``recording()`` if there is one; timed either way, so code that
    needs its own duration (training time in ``graft.json``) reads it from here too.
    """
    open_phases = _OPEN.get()
    record = Phase(name=name, depth=len(open_phases), detail=dict(detail))
    log = _LOG.get()
    if log is not None:
        log.phases.append(record)
    token = _OPEN.set(open_phases + (record,))
    started = time.perf_counter()
    try:
        yield record
    finally:
        record.seconds = time.perf_counter() - started
        _OPEN.reset(token)


def note(**detail: Any) -> None:
    """Add facts to the innermost open phase (no-op outside any phase)."""
    open_phases = _OPEN.get()
    if open_phases:
        open_phases[-1].detail.update(detail)


@contextmanager
def recording() -> Iterator[PhaseLog]:
    """Collect every ``phase`` opened inside the block (in this thread / context) into a ``PhaseLog``."""
    log = PhaseLog()
    token = _LOG.set(log)
    open_token = _OPEN.set(())
    started = time.perf_counter()
    try:
        yield log
    finally:
        log.seconds = time.perf_counter() - started
        _OPEN.reset(open_token)
        _LOG.reset(token)
