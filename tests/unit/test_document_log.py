"""The persisted notebook document as a log: a saved document, then the changes appended
since. It loads whole; a torn last append (a crash mid-write) is dropped; the persister
appends small changes and rewrites the file once they outgrow it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from runtimed.config import DaemonConfig
from runtimed.daemon import persister as persister_module
from runtimed.daemon.persister import RoomPersister
from runtimed.daemon.room import NotebookRoom
from runtimed.documents.changechunk import complete_prefix
from runtimed.documents.notebook import NotebookDoc
from runtimed.documents.runtime import RuntimeDoc
from runtimed.storage.documents import DocumentStore


def notebook_with_cells(n: int) -> NotebookDoc:
    notebook = NotebookDoc.new(metadata={})
    for i in range(n):
        notebook.add_cell("code", f"x{i} = {i}")
    return notebook


def test_appended_changes_load_with_the_document(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    notebook = notebook_with_cells(3)
    store.save("k", notebook=notebook.save(), runtime={}, meta=(None, "d", None, False))
    heads = notebook.heads()
    for i, cell in enumerate(notebook.cell_ids()):
        notebook.set_cell_metadata(cell, "papermill", {"status": "completed", "i": i})
        store.save(
            "k",
            notebook=None,
            runtime=None,
            meta=None,
            notebook_changes=(notebook.changes_since(heads)),
        )
        heads = notebook.heads()
    persisted = store.load("k")
    assert persisted is not None
    loaded = NotebookDoc.load(persisted.notebook)
    assert loaded.heads() == notebook.heads()
    assert [c.metadata for c in loaded.cells()] == [c.metadata for c in notebook.cells()]


def test_a_torn_last_append_is_dropped(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    notebook = notebook_with_cells(2)
    store.save("k", notebook=notebook.save(), runtime={}, meta=(None, "d", None, False))
    kept = notebook.heads()
    cell = notebook.cell_ids()[0]
    notebook.splice_source(cell, 0, 0, "# kept\n")
    first = notebook.changes_since(kept)
    store.save("k", notebook=None, runtime=None, meta=None, notebook_changes=first)
    kept = notebook.heads()
    notebook.splice_source(cell, 0, 0, "# torn\n")
    torn = notebook.changes_since(kept)
    path = tmp_path / "k.automerge"
    whole = path.read_bytes()
    for cut in (1, 9, len(torn) // 2, len(torn) - 1):
        path.write_bytes(whole + torn[:cut])
        assert complete_prefix(path.read_bytes()) == len(whole)
        persisted = store.load("k")
        assert persisted is not None
        loaded = NotebookDoc.load(persisted.notebook)
        assert loaded.heads() == kept
        assert loaded.source(cell).startswith("# kept\n")


def test_changes_are_never_appended_to_a_missing_document(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    notebook = notebook_with_cells(1)
    heads = notebook.heads()
    notebook.add_cell("code", "y = 1")
    with pytest.raises(FileNotFoundError):
        store.save(
            "k",
            notebook=None,
            runtime=None,
            meta=None,
            notebook_changes=(notebook.changes_since(heads)),
        )
    assert not (tmp_path / "k.automerge").exists()


class RecordingStore(DocumentStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[str] = []

    def save(self, key: str, **kwargs: Any) -> None:
        if kwargs.get("notebook") is not None:
            self.writes.append("whole")
        elif kwargs.get("notebook_changes"):
            self.writes.append("append")
        super().save(key, **kwargs)


@pytest.mark.anyio
async def test_the_persister_appends_then_rewrites_when_the_log_outgrows_the_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persister_module, "_MIN_LOG", 0)  # the document's own size decides
    notebook = notebook_with_cells(2)
    room = NotebookRoom(notebook_id="nb", path=None, notebook=notebook, runtime=RuntimeDoc.new())
    store = RecordingStore(tmp_path)
    persister = RoomPersister(room, store, config=DaemonConfig(), file_sha256=None)
    cell = notebook.cell_ids()[0]
    for i in range(40):
        notebook.splice_source(cell, 0, 0, "abcdefgh"[i % 8])
        await persister.durable()
    assert store.writes[0] == "whole"
    assert "append" in store.writes
    assert store.writes.count("whole") >= 2  # the log outgrew the document: rewritten
    persisted = store.load(DocumentStore.key_for(None, "nb"))
    assert persisted is not None
    assert NotebookDoc.load(persisted.notebook).heads() == notebook.heads()
    await anyio.lowlevel.checkpoint()
