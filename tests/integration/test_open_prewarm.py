"""Opening a notebook starts getting its kernel before the newly loaded document is
persisted (``RoomRegistry.open_path``'s ``on_entry``): a pooled kernel's hand-over runs in
the kernel while the daemon writes the document (bench/bench_pool.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.daemon.scope import OpenRoom

from .conftest import write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_a_loaded_notebook_has_its_entry_before_its_document_is_written(
    daemon: Daemon, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_notebook(short_tmp / "nb.ipynb", [{"cell_type": "code", "source": "1+1"}])
    events: list[str] = []
    store = daemon.rooms.store
    real_save = store.save

    def save(*args: Any, **kwargs: Any) -> Any:
        events.append("persisted")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(store, "save", save)

    def on_entry(entry: OpenRoom) -> None:
        events.append("entry")

    entry = await daemon.rooms.open_path(path, on_entry=on_entry)
    assert events[:2] == ["entry", "persisted"]
    # Open again (the room exists): the entry is given at once, nothing is written.
    events.clear()
    assert await daemon.rooms.open_path(path, on_entry=on_entry) is entry
    assert events == ["entry"]


async def test_an_open_with_a_run_context_prewarms_a_kernel_that_has_it(
    daemon: Daemon, short_tmp: Path
) -> None:
    # The run context is set before the prewarm that on_entry starts: the kernel the open
    # takes runs in the run's folder with its environment.
    work = short_tmp / "work"
    work.mkdir()
    path = write_notebook(
        short_tmp / "nb.ipynb",
        [{"cell_type": "code", "source": "import os\nprint(os.getcwd(), os.environ['RT_X'])"}],
    )
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path, kernel_env={"RT_X": "ctx"}, kernel_cwd=str(work))
        result = await nb.execute(nb.cell_ids()[0], timeout=60)
    assert result.ok, result
    assert result.outputs[0]["text"] == f"{work} ctx\n"
