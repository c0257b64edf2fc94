"""The persister's debounce: a burst of edits is one persist once it stops; a stream of edits
that never stops is still persisted, at least every few debounces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from runtimed.config import DaemonConfig
from runtimed.daemon.persister import RoomPersister
from runtimed.daemon.room import NotebookRoom
from runtimed.documents.notebook import NotebookDoc
from runtimed.documents.runtime import RuntimeDoc
from runtimed.storage.documents import DocumentStore

pytestmark = pytest.mark.anyio


class CountingStore(DocumentStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.notebook_writes = 0

    def save(self, key: str, *, notebook: bytes | None, **kwargs: Any) -> None:
        if notebook is not None:
            self.notebook_writes += 1
        super().save(key, notebook=notebook, **kwargs)


def make(tmp_path: Path) -> tuple[NotebookRoom, RoomPersister, CountingStore]:
    notebook = NotebookDoc.new(metadata={})
    notebook.add_cell("code", "x = 1")
    room = NotebookRoom(notebook_id="nb", path=None, notebook=notebook, runtime=RuntimeDoc.new())
    store = CountingStore(tmp_path)
    config = DaemonConfig(persist_debounce=0.05, runtime_persist_interval=60.0)
    return room, RoomPersister(room, store, config=config, file_sha256=None), store


async def test_a_burst_of_edits_is_persisted_once_after_it_stops(tmp_path: Path) -> None:
    room, persister, store = make(tmp_path)
    cell = room.notebook.cell_ids()[0]
    async with anyio.create_task_group() as tg:
        tg.start_soon(persister.run)
        for i in range(20):  # one burst: no await between the edits
            room.notebook.splice_source(cell, 0, 0, str(i % 10))
            persister.want()
        with anyio.fail_after(10):
            while store.notebook_writes == 0:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # nothing else changed: no second write comes
        tg.cancel_scope.cancel()
    assert store.notebook_writes == 1
    assert persister.wanted is False


async def test_a_stream_of_edits_that_never_stops_is_still_persisted(tmp_path: Path) -> None:
    room, persister, store = make(tmp_path)
    cell = room.notebook.cell_ids()[0]
    async with anyio.create_task_group() as tg:
        tg.start_soon(persister.run)
        with anyio.fail_after(30):
            # Edits closer together than the debounce: only the cap lets a persist through.
            while store.notebook_writes < 2:
                room.notebook.splice_source(cell, 0, 0, "a")
                persister.want()
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    persisted = store.load(DocumentStore.key_for(None, "nb"))
    assert persisted is not None
    saved = NotebookDoc.load(persisted.notebook)
    assert saved.source(cell).endswith("x = 1")
