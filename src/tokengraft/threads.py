"""How many threads torch may use: the cores that are free, never more.

On the 2-core machines this project runs on, two processes that each take every core ran
training steps about 5x slower than one process alone; torch's default (all cores) is only
right on an idle machine. The CLI calls ``configure_threads()`` once per heavy command
(train, eval, generate, demo, compare); the library itself never changes the thread count.
"""

from __future__ import annotations

import os
import time

import torch

from tokengraft.errors import TokengraftError

THREADS_ENV = "TOKENGRAFT_THREADS"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; all CPUs where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def idle_cpus(cpus: list[int], seconds: float = 0.25) -> float | None:
    """How many of ``cpus`` sat idle over the next ``seconds`` (from ``/proc/stat``; None elsewhere).

    An instant reading, not the load average: a job that ended a minute ago still weighs on
    the load average but leaves its core free now.
    """

    def sample() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                    out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
        return out

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, ValueError, IndexError):
        return None
    free = 0.0
    for cpu, (idle, total) in after.items():
        if cpu in before and total > before[cpu][1]:
            free += (idle - before[cpu][0]) / (total - before[cpu][1])
    return free if after else None


def choose_threads() -> tuple[int, str]:
    """``(threads, why)``: intra-op threads for this process, without oversubscribing the CPU.

    ``TOKENGRAFT_THREADS`` wins; else ``OMP_NUM_THREADS`` (the user already chose); else the
    usable cores that are idle right now, shared among the processes of a launcher
    (``LOCAL_WORLD_SIZE``). Two processes that each use every core run several times
    slower than one: on a busy machine we take only what is free.
    """
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise TokengraftError(f"{name}={value!r} is not a positive number of threads")
            return int(value), f"{name}={value}"
    cpus = usable_cpus()
    idle = idle_cpus(cpus)
    free = len(cpus) if idle is None else min(len(cpus), max(1, int(idle + 0.5)))
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    threads = max(1, free // processes)
    why = f"{free} of {len(cpus)} usable cores idle" + (f", shared by {processes} processes" if processes > 1 else "")
    return threads, f"{why}; set {THREADS_ENV} to choose"


def configure_threads() -> tuple[int, str]:
    """Set torch's intra-op threads by ``choose_threads()``; the CLI calls it once per command."""
    threads, why = choose_threads()
    torch.set_num_threads(threads)
    return threads, why
