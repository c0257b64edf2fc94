"""Offline edits right after an open (issue 10 §4): a daemon killed within the persist
debounce after it built a notebook's document from the file used to leave the next daemon
to build another document (another actor, another history), into which the client's edits
made while it was down could not merge. The document built from a file is now persisted
before the open is answered, so the next daemon opens that same document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtimed.client import AsyncClient, ConnectionState
from runtimed.errors import NotebookNotFound

from .conftest import write_notebook
from .daemon_proc import DaemonProc
from .runtime_helpers import code

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60


async def test_an_edit_made_offline_just_after_opening_merges_into_the_next_daemon(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "fresh.ipynb", [code("before = 1")])
    async with await AsyncClient.connect(daemon_proc.paths.socket) as client:
        nb = await client.open(path)
        first = nb.cell_ids()[0]
        await daemon_proc.kill9()  # at once: well within the 0.2 s persist debounce
        await client.wait_state(ConnectionState.RECONNECTING, timeout=DEADLINE)
        await nb.set_source(first, "before = 10")
        offline = await nb.add_cell("code", "during = 2")

        await daemon_proc.start()
        await client.wait_state(ConnectionState.CONNECTED, timeout=DEADLINE)
        assert nb.cell_ids() == [first, offline]
        saved = await nb.save()

        async with await AsyncClient.connect(daemon_proc.paths.socket) as other:
            again = await other.open(path)
            assert again.cell_ids() == [first, offline]

    cells = json.loads(saved.read_text())["cells"]
    assert ["".join(c["source"]) for c in cells] == ["before = 10", "during = 2"]


async def test_an_untitled_notebook_is_rejoined_after_a_daemon_crash_with_offline_edits(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    """An untitled (never saved) notebook has no path to reopen: the daemon persists it when it
    creates it, and a reconnecting client rejoins it by id, merging what it edited meanwhile."""
    async with await AsyncClient.connect(daemon_proc.paths.socket) as client:
        nb = await client.create()
        assert nb.path is None
        first = await nb.add_cell("code", "before = 1")
        await nb.flush()  # acknowledged: durable
        await daemon_proc.kill9()
        await client.wait_state(ConnectionState.RECONNECTING, timeout=DEADLINE)
        offline = await nb.add_cell("code", "during = 2")

        await daemon_proc.start()
        await client.wait_state(ConnectionState.CONNECTED, timeout=DEADLINE)
        assert nb.cell_ids() == [first, offline]
        await nb.flush()

        async with await AsyncClient.connect(daemon_proc.paths.socket) as other:
            again = await other.join(nb.id)
            assert again.cell_ids() == [first, offline]
            assert [again.cell(c).source for c in again.cell_ids()] == ["before = 1", "during = 2"]


async def test_joining_an_unknown_or_malformed_id_is_notebook_not_found(
    daemon_proc: DaemonProc,
) -> None:
    async with await AsyncClient.connect(daemon_proc.paths.socket) as client:
        for bad in ("0" * 32, "../../etc/passwd", "untitled-" + "0" * 32):
            with pytest.raises(NotebookNotFound):
                await client.join(bad)
