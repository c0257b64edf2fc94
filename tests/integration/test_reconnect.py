"""Clients outlive a daemon restart (issue 10 §4): a daemon in its own process is killed
with SIGKILL and started again on the same socket and home; the client reconnects, reopens
its notebooks, and merges what was edited while the daemon was down."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient, ConnectionState
from runtimed.errors import ConnectionClosed, ConnectionLost

from .conftest import wait_for_file_code, write_notebook
from .daemon_proc import DaemonProc
from .runtime_helpers import code

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60


def _sources(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells]


async def test_an_edit_made_while_the_daemon_is_down_reaches_the_new_daemon_and_the_file(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "offline.ipynb", [code("before = 1")])
    seen: list[ConnectionState] = []
    async with await AsyncClient.connect(daemon_proc.paths.socket) as client:

        async def watch() -> None:
            async for state in client.states():
                seen.append(state)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            nb = await client.open(path)
            await nb.save()  # the daemon has a persisted document to recover
            await daemon_proc.kill9()
            await client.wait_state(ConnectionState.RECONNECTING, timeout=DEADLINE)
            assert client.state is ConnectionState.RECONNECTING

            offline = await nb.add_cell("code", "during = 2")  # kept in the local replica

            await daemon_proc.start()
            await client.wait_state(ConnectionState.CONNECTED, timeout=DEADLINE)
            assert client.reconnects == 1
            saved = await nb.save()
            tg.cancel_scope.cancel()

        # Another client, on the new daemon, sees the edit too.
        async with await AsyncClient.connect(daemon_proc.paths.socket) as other:
            again = await other.open(path)
            assert again.cell_ids() == nb.cell_ids()
            assert again.cell(offline).source == "during = 2"

    assert _sources(saved) == ["before = 1", "during = 2"]
    assert seen[:3] == [
        ConnectionState.CONNECTED,
        ConnectionState.RECONNECTING,
        ConnectionState.CONNECTED,
    ]


async def test_a_pending_execute_fails_with_connection_lost(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    gate = short_tmp / "never"
    path = write_notebook(short_tmp / "pending.ipynb", [code(wait_for_file_code(gate))])
    async with await AsyncClient.connect(daemon_proc.paths.socket) as client:
        nb = await client.open(path)
        await nb.save()
        cell = nb.cell_ids()[0]
        execution = await nb.queue(cell)
        await client.wait_until(
            lambda: nb.runtime.ready and nb.runtime.execution_status(execution) == "running",
            timeout=DEADLINE,
        )
        outcome: list[BaseException] = []

        async def wait_for_it() -> None:
            try:
                await nb.wait_execution(execution)
            except ConnectionClosed as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_it)
            await anyio.wait_all_tasks_blocked()
            await daemon_proc.kill9()
        assert len(outcome) == 1
        assert isinstance(outcome[0], ConnectionLost)

        # While reconnecting a new request fails at once, with the same class.
        if client.state is ConnectionState.RECONNECTING:
            with pytest.raises(ConnectionLost):
                await nb.queue(cell)
        await daemon_proc.start()  # its start-up stops what the killed daemon left running
        await client.wait_state(ConnectionState.CONNECTED, timeout=DEADLINE)


async def test_a_notebook_still_open_is_reopened_and_runs_on_the_new_daemon(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "reopen.ipynb", [code("21 * 2")])
    async with await AsyncClient.connect(daemon_proc.paths.socket) as client:
        nb = await client.open(path)
        await nb.save()
        await daemon_proc.kill9()
        await client.wait_state(ConnectionState.RECONNECTING, timeout=DEADLINE)
        await daemon_proc.start()
        await client.wait_state(ConnectionState.CONNECTED, timeout=DEADLINE)

        listed = await client.list_notebooks()
        assert [info.notebook_id for info in listed] == [nb.id]
        result = await nb.execute(nb.cell_ids()[0], timeout=DEADLINE)
        assert result.ok
        assert result.outputs[0]["data"]["text/plain"] == "42"


async def test_without_reconnect_the_client_is_gone_and_an_edit_raises(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "once.ipynb", [code("1")])
    async with await AsyncClient.connect(daemon_proc.paths.socket, reconnect=False) as client:
        nb = await client.open(path)
        await daemon_proc.kill9()
        await client.wait_state(ConnectionState.GONE, timeout=DEADLINE)
        with pytest.raises(ConnectionClosed):
            await nb.add_cell("code", "lost = True")
    assert client.state is ConnectionState.GONE
