"""One kernel hosted by the runtime manager: a KernelSession entered and exited by one task.

A :class:`~runtimed.kernels.session.KernelSession` owns a task group, so it must be entered
and exited in the same task. :meth:`ManagedKernel.host` is that task, run in the manager's
task group
(``await tg.start(kernel.host)`` returns once the kernel is ready); :meth:`ManagedKernel.stop`
asks it to exit the session (shutdown_request, then signals) and waits until it has.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from protocol.runtimes import KernelHealth
from protocol.states import KernelState
from runtimed.kernels.session import KernelSession
from runtimed.runtimes.registry import RuntimeSpec

__all__ = ["ManagedKernel", "rss_bytes"]

log = logging.getLogger(__name__)

_ids = itertools.count(1)


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of ``pid`` and its children (a kernel's nanny and the kernel it
    runs) from ``/proc/<pid>/status`` (None if unavailable)."""
    if pid is None:
        return None
    own = _rss_one(pid)
    if own is None:
        return None
    try:
        # /proc is memory, not disk: read like the status file below, on the caller's thread.
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            kids = [int(child) for line in children for child in line.split()]
    except (OSError, ValueError):
        kids = []
    return own + sum(_rss_one(kid) or 0 for kid in kids)


def _rss_one(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class ManagedKernel:
    """A kernel the manager hosts, from launch to release."""

    def __init__(
        self,
        runtime: RuntimeSpec,
        session: KernelSession,
        *,
        pooled: bool,
        on_gone: Callable[[ManagedKernel], None],
    ) -> None:
        self.id = f"k{next(_ids)}"
        self.runtime = runtime
        self.session = session
        self.pooled = pooled
        """Waiting in the pool; never true again once a notebook has taken it."""
        self.from_pool = pooled
        self.notebook_id: str | None = None
        self.started_at = time.time()
        self.ready = False
        self._release = anyio.Event()
        self.gone = anyio.Event()
        self._on_gone = on_gone

    async def host(self, *, task_status: TaskStatus[None]) -> None:
        """Launch, report ready, and keep the session until :meth:`stop` (or cancellation)."""
        try:
            async with self.session:
                self.ready = True
                task_status.started()
                await self._release.wait()
        finally:
            self.ready = False
            self.gone.set()
            self._on_gone(self)

    @property
    def stopping(self) -> bool:
        """Released and shutting down (still counted until gone)."""
        return self._release.is_set() and not self.gone.is_set()

    async def stop(self) -> None:
        """Shut the kernel down and wait until it is gone (also when cancelled)."""
        self._release.set()
        with anyio.CancelScope(shield=True):
            await self.gone.wait()

    async def take(self, notebook_id: str, *, cwd: Path, env: dict[str, str]) -> None:
        """Hand a pooled kernel to a notebook (later restarts use ``cwd`` and ``env``; its
        record names the notebook when this returns)."""
        self.pooled = False
        self.notebook_id = notebook_id
        await self.session.set_launch_context(cwd=cwd, env=env)

    def health(self) -> KernelHealth:
        state = (
            self.session.state
            if self.ready
            else (KernelState.DEAD if self.gone.is_set() else KernelState.STARTING)
        )
        pid = self.session.pid if self.ready else None
        return KernelHealth(
            kernel_id=self.id,
            runtime=self.runtime.name,
            state=state,
            pid=pid,
            notebook_id=self.notebook_id,
            pooled=self.pooled,
            rss_bytes=rss_bytes(pid),
            started_at=self.started_at,
            last_activity=self.session.last_activity,
        )
