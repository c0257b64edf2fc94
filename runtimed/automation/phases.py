"""Where a ``runt run`` process spends its time, for ``bench/bench_run.py``.

With ``RUNTIMED_PHASES_FILE`` set, :func:`stamp` records ``(phase, time.monotonic())`` as a
run reaches each phase and :func:`dump` writes them to that file as JSON when the command
ends; without it both do nothing. ``CLOCK_MONOTONIC`` is shared by all processes on the
machine, so the benchmark sets the stamps against the moment it started the process.
"""

from __future__ import annotations

import os
import time

__all__ = ["dump", "reset", "stamp"]

_FILE = os.environ.get("RUNTIMED_PHASES_FILE")
_STAMPS: list[tuple[str, float]] = []


def reset() -> None:
    """Forget the stamps and read ``RUNTIMED_PHASES_FILE`` again (a process that became
    another command: the warm runner's child, :mod:`runtimed.cli.runner`)."""
    global _FILE
    _FILE = os.environ.get("RUNTIMED_PHASES_FILE")
    _STAMPS.clear()


def stamp(phase: str) -> None:
    """Note that the run reached ``phase`` now (only with ``RUNTIMED_PHASES_FILE`` set)."""
    if _FILE:
        _STAMPS.append((phase, time.monotonic()))


def dump() -> None:
    """Write the stamps to ``RUNTIMED_PHASES_FILE`` (nothing when it is not set)."""
    if not _FILE:
        return
    import json

    stamp("exit")
    try:
        with open(_FILE, "w", encoding="utf-8") as out:
            json.dump(_STAMPS, out)
    except OSError:
        pass  # a measurement aid: never the reason a command fails
