"""The pre-warmed kernel pool: idle kernels of the default runtime, started before any
notebook asks, so opening a notebook skips the ~1 s kernel launch.

Policy:

* the refiller keeps ``size`` kernels ready or starting, one launch at a time, within the
  manager's kernel limit (capacity a notebook is waiting for is not taken);
* after a kernel is taken after a quiet spell the refill waits ``refill_delay`` seconds (a
  notebook asking for a kernel meanwhile starts it at once); after a take within
  ``BURST_WINDOW`` of the previous one (a batch) it waits only until the taking notebook's
  first cell has finished (at most ``refill_delay``), and a notebook asking meanwhile
  launches its own kernel (two launches at once: a batch on two cores is bound by kernel
  launches). Launching a kernel is a second of CPU, and on a
  small machine it would compete with the very run that took the pooled one (``runt run``
  of a small notebook is over in a fraction of that; opening a notebook and running its
  first cell took twice as long with the refill under way);
* a kernel leaves the pool for exactly one notebook and is never returned: it is shut down
  when that notebook releases it, so no code or state crosses notebooks;
* a pooled kernel that dies while idle is dropped and replaced;
* a failing launch (broken default runtime) is retried with exponential backoff, and the
  error is shown in the pool's status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from protocol.runtimes import PoolInfo
from protocol.states import KernelState
from runtimed.errors import KernelError
from runtimed.kernels.session import KernelSession
from runtimed.runtimes.hosting import ManagedKernel
from runtimed.runtimes.registry import RuntimeRegistry, RuntimeSpec

__all__ = ["KernelPool"]

log = logging.getLogger(__name__)

_BACKOFF = 1.0
_MAX_BACKOFF = 60.0
REFILL_DELAY = 1.0
# s; a take this soon after the previous one is batch work: no deferral. As long as the
# deferral itself: takes further apart are sequential runs, and a refill deferred by
# REFILL_DELAY is ready for the next one. (At 5 s, `runt run`s a couple of seconds apart
# counted as a batch, and each refill launched during the run that took the kernel: a
# small warm run took 200 ms instead of 170, bench/bench_run.py.)
BURST_WINDOW = REFILL_DELAY


class KernelPool:
    """Idle pre-started kernels of the default runtime (run :meth:`run` in a task group)."""

    def __init__(
        self,
        *,
        size: int,
        registry: RuntimeRegistry,
        launch: Callable[[RuntimeSpec], Awaitable[ManagedKernel]],
        has_capacity: Callable[[], bool],
        refill_delay: float = REFILL_DELAY,
    ) -> None:
        self.size = size
        self.refill_delay = refill_delay
        self._refill_at = 0.0  # anyio.current_time() before which the refill waits
        self._last_take = float("-inf")
        self._hurry = anyio.Event()  # a notebook wants a kernel: refill now
        # In a batch: the taken kernel's session, the count of its finished cells at which
        # the refill starts (the taking notebook's first cell is over), and the time at
        # which it starts anyway. A notebook that asks for a kernel meanwhile is not made to
        # wait for this refill: it launches its own (two launches at once, on two cores).
        self._first_cell: tuple[KernelSession, int, float] | None = None
        self._registry = registry
        self._launch = launch
        self._has_capacity = has_capacity
        self.ready: list[ManagedKernel] = []
        self.starting = 0
        self.runtime: RuntimeSpec | None = None
        self.last_error = ""
        self.disabled_reason = ""
        self._wake = anyio.Event()
        self._changed = anyio.Event()

    # ------------------------------------------------------------ state

    @property
    def enabled(self) -> bool:
        return self.size > 0 and not self.disabled_reason

    def serves(self, runtime: RuntimeSpec) -> bool:
        """Whether a notebook wanting ``runtime`` can take a kernel from this pool."""
        return self.enabled and runtime.poolable and self._registry.is_default(runtime)

    def info(self) -> PoolInfo:
        name = self.runtime.name if self.runtime is not None else self._registry.default
        return PoolInfo(
            runtime=name,
            size=self.size,
            ready=len(self.ready),
            starting=self.starting,
            enabled=self.enabled,
            last_error=self.disabled_reason or self.last_error,
            kernels=[k.health() for k in self.ready],
        )

    def wake(self) -> None:
        """Something changed that may let the refiller start a kernel."""
        self._wake.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # ------------------------------------------------------------ taking

    def take(self) -> ManagedKernel | None:
        """Remove and return an idle pooled kernel (None if none is ready)."""
        while self.ready:
            kernel = self.ready.pop(0)
            if kernel.session.state == KernelState.IDLE:
                now = anyio.current_time()
                # One run after a quiet spell: defer the refill. Takes in a burst (a batch):
                # refill once the taker's first cell is over (the launch would slow exactly
                # that), and let a notebook asking before then launch its own.
                burst = now - self._last_take < BURST_WINDOW
                self._last_take = now
                self._refill_at = now if burst else now + self.refill_delay
                session = kernel.session
                self._first_cell = (
                    (session, session.cells_finished + 1, now + self.refill_delay)
                    if burst
                    else None
                )
                self.wake()
                return kernel
            log.info("pooled kernel %s is %s; not handing it out", kernel.id, kernel.session.state)
        return None

    async def take_or_wait(self) -> ManagedKernel | None:
        """A pooled kernel, waiting for one being started; None if none is coming."""
        while True:
            kernel = self.take()
            if kernel is not None:
                return kernel
            if self.starting == 0:
                if not (self._deferred() and self._wants_more()):
                    return None
                self._hurry.set()  # the deferred refill starts now, for this notebook
                self.wake()
            changed = self._changed
            await changed.wait()

    def discard(self, kernel: ManagedKernel) -> None:
        if kernel in self.ready:
            self.ready.remove(kernel)
            self._notify()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # ------------------------------------------------------------ refilling

    def _wants_more(self) -> bool:
        return self.enabled and len(self.ready) + self.starting < self.size and self._has_capacity()

    def _deferred(self) -> bool:
        return anyio.current_time() < self._refill_at

    def _first_cell_pending(self) -> bool:
        if self._first_cell is None:
            return False
        session, cells, deadline = self._first_cell
        return session.cells_finished < cells and anyio.current_time() < deadline

    async def _wait_deferral(self) -> None:
        """Until ``refill_delay`` after a take after a quiet spell, or (a take in a batch)
        until the taking notebook's first cell is over; at once when a notebook waits for
        a kernel."""
        while not self._hurry.is_set():
            if self._deferred():
                with anyio.move_on_after(self._refill_at - anyio.current_time()):
                    await self._hurry.wait()
            elif self._first_cell_pending():
                assert self._first_cell is not None
                session, _, deadline = self._first_cell
                with anyio.move_on_after(deadline - anyio.current_time()):
                    await _either(self._hurry, session.cell_finished)
            else:
                break
        self._hurry = anyio.Event()
        self._first_cell = None

    async def run(self, tg: TaskGroup) -> None:
        """Refill forever; pooled kernels and their watchers live in ``tg``."""
        failures = 0
        while True:
            while self._wants_more():
                await self._wait_deferral()
                if not self._wants_more():
                    break
                if await self._start_one(tg):
                    failures = 0
                else:
                    failures += 1
                    # A time-based retry, not polling: a broken default runtime must neither
                    # spin nor be given up for good (a kernelspec may be fixed later).
                    await anyio.sleep(min(_MAX_BACKOFF, _BACKOFF * 2 ** (failures - 1)))
            await self._wake.wait()
            self._wake = anyio.Event()

    async def _start_one(self, tg: TaskGroup) -> bool:
        self.starting += 1
        try:
            runtime = await self._registry.resolve(None)
            if not runtime.poolable:
                self.disabled_reason = (
                    f"the default runtime {runtime.name!r} (language {runtime.language!r}) "
                    "cannot be pre-started for a notebook not yet known; pool disabled"
                )
                log.warning("%s", self.disabled_reason)
                return True
            kernel = await self._launch(runtime)
        except KernelError as exc:
            self.last_error = str(exc)
            log.warning("could not start a pooled kernel: %s", exc)
            return False
        else:
            self.runtime, self.last_error = runtime, ""
            self.ready.append(kernel)
            tg.start_soon(self._watch, kernel)
            log.info("pooled kernel %s ready (pid %s)", kernel.id, kernel.session.pid)
            return True
        finally:
            self.starting -= 1
            self._notify()

    async def _watch(self, kernel: ManagedKernel) -> None:
        """Drop a pooled kernel whose process exits while it waits in the pool."""
        await kernel.session.wait_exited()
        if kernel in self.ready:
            log.warning("pooled kernel %s exited while idle; replacing it", kernel.id)
            self.discard(kernel)
            await kernel.stop()
            self.wake()


async def _either(first: anyio.Event, second: anyio.Event) -> None:
    """Return once either event is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wait, first)
        tg.start_soon(wait, second)
