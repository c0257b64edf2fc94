"""The pool's refill policy (runtimed.runtimes.pool): a take defers the refill, a waiting
notebook hurries it. Pure scheduling logic: the kernels are stand-ins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

from runtimed.runtimes.hosting import ManagedKernel
from runtimed.runtimes.pool import KernelPool
from runtimed.runtimes.registry import RuntimeRegistry, RuntimeSpec

pytestmark = pytest.mark.anyio


class _Session:
    state = "idle"
    pid = 1

    def __init__(self) -> None:
        self.cells_finished = 0
        self.cell_finished = anyio.Event()

    def finish_cell(self) -> None:  # what KernelSession.wait does when a cell ends
        self.cells_finished += 1
        finished, self.cell_finished = self.cell_finished, anyio.Event()
        finished.set()

    async def wait_exited(self) -> None:
        await anyio.sleep_forever()


class _Kernel:
    def __init__(self, n: int) -> None:
        self.id = f"k{n}"
        self.session = _Session()


class _Registry:
    async def resolve(self, name: str | None) -> Any:
        return type("Spec", (), {"poolable": True, "name": "python3", "language": "python"})()


def _pool(launches: list[float], delay: float) -> KernelPool:
    async def launch(runtime: RuntimeSpec) -> ManagedKernel:
        launches.append(anyio.current_time())
        return cast(ManagedKernel, _Kernel(len(launches)))

    return KernelPool(
        size=1,
        registry=cast(RuntimeRegistry, _Registry()),
        launch=launch,
        has_capacity=lambda: True,
        refill_delay=delay,
    )


async def _until(condition: Any) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.001)


@asynccontextmanager
async def _running(delay: float) -> AsyncIterator[tuple[KernelPool, list[float]]]:
    """A pool of one, refilling, with its first kernel ready; and its launch times."""
    launches: list[float] = []
    pool = _pool(launches, delay=delay)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run, tg)
        await _until(lambda: pool.ready)
        yield pool, launches
        tg.cancel_scope.cancel()


async def _settle() -> None:
    for _ in range(50):  # let the refiller run as far as it can
        await anyio.lowlevel.checkpoint()


async def _batch_take(pool: KernelPool) -> _Session:
    """Two takes in a row (a batch); the second notebook's kernel session."""
    assert pool.take() is not None  # after a quiet spell: deferred
    second = await pool.take_or_wait()  # hurried; a second take: a batch
    assert second is not None
    await _settle()
    return cast(_Session, second.session)


async def test_a_take_defers_the_refill() -> None:
    async with _running(delay=0.3) as (pool, launches):
        assert pool.take() is not None
        await _settle()  # the refiller runs, and waits
        assert len(launches) == 1
        await _until(lambda: len(launches) == 2)  # after the deferral


async def test_a_notebook_waiting_for_a_kernel_hurries_the_refill() -> None:
    async with _running(delay=60) as (pool, launches):
        assert pool.take() is not None
        with anyio.fail_after(10):  # not the 60 s deferral
            kernel = await pool.take_or_wait()
        assert kernel is not None
        assert len(launches) == 2


async def test_a_take_in_a_burst_refills_once_the_taking_notebooks_first_cell_is_over() -> None:
    async with _running(delay=60) as (pool, launches):
        session = await _batch_take(pool)
        assert len(launches) == 2  # the third waits: the second notebook's cell is running
        session.finish_cell()
        await _until(lambda: len(launches) == 3)  # not after the 60 s deferral


async def test_a_take_in_a_burst_refills_after_the_delay_if_no_cell_ends() -> None:
    async with _running(delay=0.3) as (pool, launches):
        await _batch_take(pool)  # its first cell never ends
        assert len(launches) == 2
        await _until(lambda: len(launches) == 3)  # the delay caps the wait


async def test_a_notebook_asking_during_a_batchs_wait_launches_its_own_kernel() -> None:
    # Two launches at once (one the notebook's, one the pool's after the first cell): on
    # two cores a batch is bound by kernel launches, and one at a time halved its speed.
    async with _running(delay=60) as (pool, launches):
        session = await _batch_take(pool)  # the refill waits for its first cell
        with anyio.fail_after(10):
            assert await pool.take_or_wait() is None  # not made to wait: launch your own
        assert len(launches) == 2
        session.finish_cell()
        await _until(lambda: len(launches) == 3)  # and the pool refills after the cell
