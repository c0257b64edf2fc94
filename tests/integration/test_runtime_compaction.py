"""The daemon replaces an idle notebook's runtime document with a copy of its state without
history every ``RUNTIME_COMPACT_EVERY`` executions; clients drop their replica
(``RuntimeResync``), sync the copy from empty and see every execution's result as before."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from protocol.messages import RuntimeResync
from runtimed.client import AsyncClient
from runtimed.daemon import executor
from runtimed.daemon.app import Daemon

from .conftest import write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

COUNTER = "n = globals().get('n', 0) + 1\nn"


@pytest.fixture(autouse=True)
def compact_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "RUNTIME_COMPACT_EVERY", 5)


def _result(outputs: list[dict[str, object]]) -> object:
    data = [o["data"] for o in outputs if o.get("output_type") == "execute_result"]
    return data[0].get("text/plain") if data else None  # type: ignore[attr-defined]


async def test_results_survive_the_runtime_document_being_replaced(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "nb.ipynb",
        [{"cell_type": "code", "source": COUNTER}, {"cell_type": "code", "source": "n * 10"}],
    )
    resyncs = empty = 0
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path)
        first, second = nb.cell_ids()

        async def count_resyncs() -> None:
            nonlocal resyncs
            async for event in client.events():
                if isinstance(event, RuntimeResync) and event.notebook_id == nb.id:
                    resyncs += 1

        async def watch_reads() -> None:
            # What code using the replica sees at every turn of the event loop: never an
            # empty runtime document (the replaced replica is read until the copy arrived).
            nonlocal empty
            while True:
                if not nb.runtime.ready:
                    empty += 1
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(count_resyncs)
            tg.start_soon(watch_reads)
            for n in range(1, 13):
                result = await nb.execute(first, timeout=60)
                assert (result.status, result.execution_count) == ("ok", n), result
                assert _result(result.outputs) == str(n)
            # A RunAll is never interrupted by a replacement (only an idle notebook's is).
            results = await nb.run_all(timeout=120)
            assert [r.status for r in results] == ["ok", "ok"]
            assert [_result(r.outputs) for r in results] == ["13", "130"]
            await client.wait_until(lambda: nb.runtime.ready, timeout=10)
            tg.cancel_scope.cancel()
        assert resyncs >= 2
        assert empty == 0
        # The replica holds the copy's history only, not one change per write since the open.
        changes = len(nb.runtime.doc.get_changes([]))
        assert changes < 40, changes
        room = daemon.rooms.room_or_none(nb.id)
        assert room is not None
        assert len(room.runtime.doc.get_changes([])) < 40
        assert nb.execution_count(first) == 13
        assert _result(nb.outputs(second)) == "130"

        # A client joining afterwards syncs the current state.
        async with await AsyncClient.connect(daemon.paths.socket) as late:
            joined = await late.join(nb.id)
            assert joined.execution_count(first) == 13
            assert _result(joined.outputs(first)) == "13"
            assert joined.runtime.kernel().get("state") == "idle"
            await joined.close()
        await nb.close()
