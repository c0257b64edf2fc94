"""The daemon's warm runner process: started, restarted and stopped here.

The runner (``python -m runtimed.cli.runner``, :mod:`runtimed.cli.runner`) is a process that
has imported what a ``runt run`` needs and forks a child for each ``runt run`` handed to it,
so that a small run does not spend half its time starting Python and importing. The daemon
owns it: starts it ``delay`` seconds after it listens (not during a first run's start, which
the imports would slow on two cores), keeps its standard input as a pipe (when the daemon
ends, even by ``kill -9``, the pipe closes and the runner exits), starts a fresh one when it
exits because its code changed on disk (or after a pause, a few times, when it fails), and
stops it on shutdown. Runs it started are their own processes and outlive both.

Off with the ``daemon.warm_runner`` key (``RUNTIMED_WARM_RUNNER=0``); a ``runt`` whose
environment says ``RUNTIMED_WARM_RUNNER=0`` does not use one either.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from pathlib import Path

import anyio
from anyio.abc import Process, TaskStatus

__all__ = ["WarmRunner"]

log = logging.getLogger(__name__)

STALE_EXIT = 75  # runtimed.cli.runner.STALE_EXIT (the daemon does not import the CLI)
_RETRY_PAUSE = 5.0  # s before starting again a runner that failed
_MAX_FAILURES = 5  # then the daemon goes on without one (runs start in their own process)
_STOP_TIMEOUT = 5.0


class WarmRunner:
    """Keeps the warm runner of the daemon on ``socket`` running while :meth:`run` runs."""

    def __init__(self, socket: Path, *, enabled: bool = True, delay: float = 1.0) -> None:
        self.socket = socket
        self.enabled = enabled
        self.delay = delay
        self.retry_pause = _RETRY_PAUSE
        # -P: nothing imported from the daemon's working directory (the caller's sys.path
        # is compared with the runner's, its first entry aside).
        self.command = [sys.executable, "-P", "-m", "runtimed.cli.runner", "--socket", str(socket)]
        self.process: Process | None = None
        self.starts = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.enabled or sys.platform != "linux":
            return
        await anyio.sleep(self.delay)
        failures = 0
        while failures < _MAX_FAILURES:
            status = await self._run_once()
            if status is None:
                return  # could not start at all: said in the log
            if status == STALE_EXIT:
                log.info("the warm runner's code changed on disk; starting a fresh one")
                continue
            failures += 1
            log.warning("the warm runner exited with status %s; starting another", status)
            await anyio.sleep(self.retry_pause)
        log.warning("the warm runner failed %d times; runs start in their own process", failures)

    async def _run_once(self) -> int | None:
        try:
            process = await anyio.open_process(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=None,  # the daemon's: a traceback lands in its log
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("cannot start the warm runner: %s", exc)
            return None
        self.process = process
        self.starts += 1
        try:
            return await process.wait()
        finally:
            self.process = None
            with anyio.CancelScope(shield=True):
                await _stop(process)


async def _stop(process: Process) -> None:
    """Close the runner's pipe (its signal to end), then terminate, then kill."""
    if process.stdin is not None:
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
    if process.returncode is not None:
        return
    with anyio.move_on_after(_STOP_TIMEOUT):
        await process.wait()
        return
    try:
        process.terminate()
    except ProcessLookupError:
        return
    with anyio.move_on_after(_STOP_TIMEOUT):
        await process.wait()
        return
    try:
        process.kill()
    except ProcessLookupError:
        return
    await process.wait()
