"""Several clients editing one notebook through a real daemon on a real socket."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import nbformat
import pytest

from runtimed.client import AsyncClient, AsyncNotebook
from runtimed.daemon.app import Daemon

from .conftest import write_notebook

pytestmark = pytest.mark.anyio

TIMEOUT = 10


@contextlib.asynccontextmanager
async def connected(daemon: Daemon, n: int) -> AsyncIterator[list[AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(await AsyncClient.connect(daemon.paths.socket))
            for _ in range(n)
        ]


def sample_notebook(directory: Path) -> Path:
    return write_notebook(
        directory / "shared.ipynb",
        [
            {"cell_type": "code", "source": "x = 1\n"},
            {"cell_type": "markdown", "source": "# Title é😀"},
            {"cell_type": "code", "source": "print(x)"},
        ],
    )


async def sees(client: AsyncClient, nb: AsyncNotebook, cell_id: str, text: str) -> None:
    """Wait until ``nb``'s replica has ``text`` in the cell's source."""
    await client.wait_until(
        lambda: cell_id in nb.cell_ids() and text in nb.doc.source(cell_id), timeout=TIMEOUT
    )


async def test_two_clients_opening_one_path_share_the_notebook(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = sample_notebook(short_tmp)
    async with connected(daemon, 2) as (c1, c2):
        nb1 = await c1.open(path)
        nb2 = await c2.open(path)
        assert nb1.id == nb2.id
        assert nb1.cells() == nb2.cells()
        assert nb1.cell_ids() == ["cell0", "cell1", "cell2"]
        assert nb2.doc.source("cell1") == "# Title é😀"
        [info] = await c1.list_notebooks()
        assert info.notebook_id == nb1.id
        assert info.clients == 2
        assert info.cells == 3


async def test_opening_through_another_spelling_of_the_path_joins_the_same_notebook(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = sample_notebook(short_tmp)
    (short_tmp / "sub").mkdir()
    async with connected(daemon, 2) as (c1, c2):
        nb1 = await c1.open(path)
        nb2 = await c2.open(short_tmp / "sub" / ".." / path.name)
        assert nb1.id == nb2.id


async def test_concurrent_splices_of_one_cell_converge_with_both_edits(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = sample_notebook(short_tmp)
    async with connected(daemon, 2) as (c1, c2):
        nb1, nb2 = await c1.open(path), await c2.open(path)

        async def type_into(nb: AsyncNotebook, at_end: bool, text: str) -> None:
            for char in text:
                index = len(nb.doc.source("cell0")) if at_end else 0
                await nb.splice_source("cell0", index, 0, char)

        # Neither waits for the other: edits cross on the wire.
        async with anyio.create_task_group() as tg:
            tg.start_soon(type_into, nb1, False, "".join(reversed("# 日本 ")))
            tg.start_soon(type_into, nb2, True, "y = 'é😀'\n")
        phase_one = "# 日本 x = 1\ny = 'é😀'\n"
        await c1.wait_until(lambda: nb1.doc.source("cell0") == phase_one, timeout=TIMEOUT)
        await c2.wait_until(lambda: nb2.doc.source("cell0") == phase_one, timeout=TIMEOUT)
        # Then the same position from both sides (the same text on both), in one go each.
        async with anyio.create_task_group() as tg:
            tg.start_soon(nb1.splice_source, "cell0", 0, 0, "AAA")
            tg.start_soon(nb2.splice_source, "cell0", 0, 0, "😀😀")

        def both_edits(nb: AsyncNotebook) -> bool:
            text = nb.doc.source("cell0")
            return all(part in text for part in ("# 日本 ", "x = 1\ny = 'é😀'\n", "AAA", "😀😀"))

        await c1.wait_until(lambda: both_edits(nb1), timeout=TIMEOUT)
        await c2.wait_until(lambda: both_edits(nb2), timeout=TIMEOUT)
        text = nb1.doc.source("cell0")
        assert text == nb2.doc.source("cell0")
        assert text.endswith(phase_one)
        assert text.startswith(("AAA😀😀", "😀😀AAA"))


async def test_add_delete_and_move_cell_propagate(daemon: Daemon, short_tmp: Path) -> None:
    path = sample_notebook(short_tmp)
    async with connected(daemon, 2) as (c1, c2):
        nb1, nb2 = await c1.open(path), await c2.open(path)
        new = await nb1.add_cell("markdown", "added by 1 ✓", index=1, cell_id="added")
        await c2.wait_until(lambda: "added" in nb2.cell_ids(), timeout=TIMEOUT)
        assert nb2.cell_ids() == ["cell0", "added", "cell1", "cell2"]
        assert nb2.cell(new).source == "added by 1 ✓"
        assert nb2.cell(new).cell_type == "markdown"

        await nb2.move_cell("cell2", 0)
        await c1.wait_until(lambda: nb1.cell_ids()[0] == "cell2", timeout=TIMEOUT)
        assert nb1.cell_ids() == ["cell2", "cell0", "added", "cell1"]

        await nb1.delete_cell("cell1")
        await c2.wait_until(lambda: "cell1" not in nb2.cell_ids(), timeout=TIMEOUT)
        assert nb2.cell_ids() == ["cell2", "cell0", "added"]

        await nb2.set_cell_metadata("cell0", "vendor", {"k": [1, None, "é"]})
        await nb2.set_metadata("custom", {"deep": {"x": 1.5}})
        await c1.wait_until(lambda: "custom" in nb1.metadata(), timeout=TIMEOUT)
        await c1.wait_until(lambda: "vendor" in nb1.cell("cell0").metadata, timeout=TIMEOUT)
        assert nb1.cell("cell0").metadata["vendor"] == {"k": [1, None, "é"]}
        assert nb1.metadata()["custom"] == {"deep": {"x": 1.5}}
        assert nb1.cells() == nb2.cells()


async def test_a_late_joiner_gets_the_current_state(daemon: Daemon, short_tmp: Path) -> None:
    path = sample_notebook(short_tmp)
    async with connected(daemon, 2) as (c1, c2):
        nb1, nb2 = await c1.open(path), await c2.open(path)
        await nb1.set_source("cell0", "x = 'edited by 1'\n")
        await nb2.add_cell("code", "z = 3", cell_id="from2")
        await nb2.delete_cell("cell1")
        # Both edits are at the daemon once each client sees the other's.
        await c2.wait_until(lambda: "edited by 1" in nb2.doc.source("cell0"), timeout=TIMEOUT)
        await c1.wait_until(
            lambda: "from2" in nb1.cell_ids() and "cell1" not in nb1.cell_ids(), timeout=TIMEOUT
        )

        async with connected(daemon, 1) as (c3,):
            nb3 = await c3.open(path)
            assert nb3.id == nb1.id
            await c3.wait_until(lambda: nb3.cells() == nb1.cells(), timeout=TIMEOUT)
            assert nb3.cell_ids() == ["cell0", "cell2", "from2"]
            assert nb3.doc.source("cell0") == "x = 'edited by 1'\n"


async def test_a_reconnecting_client_catches_up_on_edits_made_while_away(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = sample_notebook(short_tmp)
    async with connected(daemon, 1) as (c1,):
        nb1 = await c1.open(path)
        async with connected(daemon, 1) as (c2,):
            nb2 = await c2.open(path)
            await nb2.splice_source("cell2", 0, 0, "# before leaving\n")
            await sees(c1, nb1, "cell2", "# before leaving")
        # c2 is gone; c1 keeps editing.
        await nb1.splice_source("cell2", 0, 0, "# while away é\n")
        await nb1.add_cell("raw", "raw while away", cell_id="away")
        async with connected(daemon, 1) as (c2_again,):
            nb2 = await c2_again.open(path)
            await c2_again.wait_until(lambda: "away" in nb2.cell_ids(), timeout=TIMEOUT)
            await sees(c2_again, nb2, "cell2", "# while away é\n# before leaving\nprint(x)")
            assert nb2.cells() == nb1.cells()
            # And the reconnected client's edits flow back.
            await nb2.set_source("away", "raw after return")
            await sees(c1, nb1, "away", "raw after return")


async def test_edits_made_just_before_closing_are_kept(daemon: Daemon, short_tmp: Path) -> None:
    path = sample_notebook(short_tmp)
    async with connected(daemon, 1) as (c1,):
        nb1 = await c1.open(path)
        async with connected(daemon, 1) as (c2,):
            nb2 = await c2.open(path)
            for i in range(20):
                await nb2.add_cell("code", f"cell {i}", cell_id=f"n{i}")
            await nb2.close()  # waits until the daemon has the replica's heads
        await c1.wait_until(lambda: "n19" in nb1.cell_ids(), timeout=TIMEOUT)
        assert [c for c in nb1.cell_ids() if c.startswith("n")] == [f"n{i}" for i in range(20)]


async def test_with_one_client_its_edits_reach_the_daemon(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    path = sample_notebook(short_tmp)
    nb = await client.open(path)
    await nb.splice_source("cell0", 0, 0, "# solo é😀\n")
    await nb.add_cell("code", "solo = True", cell_id="solo")
    saved = await nb.save()  # the daemon waits for this replica's heads, then writes
    on_disk = nbformat.read(saved, as_version=4)
    assert on_disk["cells"][0]["source"] == "# solo é😀\nx = 1\n"
    assert [c["id"] for c in on_disk["cells"]] == ["cell0", "cell1", "cell2", "solo"]
    [info] = await client.list_notebooks()
    assert info.cells == 4
    assert info.clients == 1


@pytest.mark.parametrize("n_clients", [2, 6])
async def test_edits_by_one_reach_all_others(
    daemon: Daemon, short_tmp: Path, n_clients: int
) -> None:
    path = sample_notebook(short_tmp)
    async with connected(daemon, n_clients) as clients:
        notebooks = [await c.open(path) for c in clients]
        assert len({nb.id for nb in notebooks}) == 1
        # Every client edits (all at once), every client must see every edit.
        async with anyio.create_task_group() as tg:
            for i, nb in enumerate(notebooks):
                tg.start_soon(functools.partial(nb.add_cell, "code", f"by {i}", cell_id=f"by{i}"))
        expected = {f"by{i}" for i in range(n_clients)}
        for c, nb in zip(clients, notebooks, strict=True):
            await c.wait_until(functools.partial(_has_cells, nb, expected), timeout=TIMEOUT)
        order = notebooks[0].cell_ids()
        assert all(nb.cell_ids() == order for nb in notebooks)

        # One edit by one client reaches all the others.
        await notebooks[-1].splice_source("cell2", 0, 0, "# from the last ")
        for c, nb in zip(clients, notebooks, strict=True):
            await sees(c, nb, "cell2", "# from the last print(x)")


def _has_cells(nb: AsyncNotebook, expected: set[str]) -> bool:
    return expected <= set(nb.cell_ids())
