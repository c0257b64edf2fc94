"""``open_fresh`` (``runt run``'s open of the output notebook) against a real daemon: it
replaces the daemon's copy only when that copy really differs from the file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import nbformat
import pytest

from runtimed.automation.progress import open_fresh
from runtimed.client import AsyncClient, AsyncNotebook
from runtimed.daemon.app import Daemon

from .conftest import write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPLACING = "replacing its content"


async def _run_a_cell(holder: AsyncClient, path: Path) -> AsyncNotebook:
    """Open ``path`` in ``holder`` and run a cell, so the daemon wrote the kernel's
    ``language_info`` into the notebook's metadata (the file has another one)."""
    nb = await holder.open(path)
    result = await nb.execute(nb.cell_ids()[0], timeout=60)
    assert result.ok, result
    version = ".".join(map(str, sys.version_info[:3]))
    await holder.wait_until(
        lambda: (nb.metadata().get("language_info") or {}).get("version") == version, timeout=30
    )
    return nb


async def test_the_kernels_language_info_is_not_taken_for_stale_content(
    daemon: Daemon, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_notebook(short_tmp / "nb.ipynb", [{"cell_type": "code", "source": "1+1"}])
    raw = nbformat.read(path, as_version=4)
    raw.metadata["language_info"] = {"name": "python", "version": "0.0.0"}
    nbformat.write(raw, path)
    expected = nbformat.read(path, as_version=4)
    caplog.set_level(logging.INFO, logger="runtimed.automation.progress")
    async with await AsyncClient.connect(daemon.paths.socket) as holder:
        kept = await _run_a_cell(holder, path)
        async with await AsyncClient.connect(daemon.paths.socket) as client:
            nb = await open_fresh(client, path, expected)
            heads = nb.heads()
            assert [c.source for c in nb.cells()] == ["1+1"]
            await nb.close()
        # Nothing was replaced: no log of it, and the check made no change of its own.
        assert not [r for r in caplog.records if REPLACING in r.getMessage()]
        await holder.wait_until(lambda: kept.heads() == heads, timeout=10)


async def test_content_that_differs_from_the_file_is_replaced(
    daemon: Daemon, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_notebook(short_tmp / "nb.ipynb", [{"cell_type": "code", "source": "1+1"}])
    expected = nbformat.read(path, as_version=4)
    caplog.set_level(logging.INFO, logger="runtimed.automation.progress")
    async with await AsyncClient.connect(daemon.paths.socket) as holder:
        stale = await _run_a_cell(holder, path)
        await stale.set_source(stale.cell_ids()[0], "2+2")
        await stale.flush()
        async with await AsyncClient.connect(daemon.paths.socket) as client:
            nb = await open_fresh(client, path, expected)
            assert [c.source for c in nb.cells()] == ["1+1"]
            await nb.close()
        assert [r for r in caplog.records if REPLACING in r.getMessage()]
