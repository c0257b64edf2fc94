"""The persistence record's pending checkpoint hash, and the removal of interrupted temps."""

from __future__ import annotations

import json
from pathlib import Path

from runtimed.storage.documents import DocumentStore
from runtimed.storage.ipynb import remove_interrupted_temps, write_bytes_atomic


def test_a_pending_checkpoint_hash_is_accepted_and_not_saved(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    store.save(
        "k", notebook=b"doc", runtime={}, meta=("/n.ipynb", "d", "old", True), pending_sha256="new"
    )
    persisted = store.load("k")
    assert persisted is not None
    assert persisted.belongs_to("old")
    assert persisted.belongs_to("new")
    assert not persisted.belongs_to("other")
    assert persisted.saved is False  # which file is there is not known: keep the document


def test_the_record_without_pending_round_trips(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    store.save("k", notebook=b"doc", runtime=None, meta=("/n.ipynb", "d", "h", True))
    record = json.loads((tmp_path / "k.json").read_text())
    assert record["pending_sha256"] is None
    persisted = store.load("k")
    assert persisted is not None
    assert persisted.saved
    assert persisted.belongs_to("h")


def test_interrupted_persist_temps_are_removed(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    ours = tmp_path / ".k.automerge.ab_cd123.tmp"
    other = tmp_path / ".notes.tmp"
    ours.write_bytes(b"x")
    other.write_bytes(b"y")
    assert store.remove_interrupted() == 1
    assert not ours.exists()
    assert other.exists()


def test_interrupted_checkpoint_temps_beside_a_notebook_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "n.ipynb"
    write_bytes_atomic(path, b"{}\n")
    ours = tmp_path / ".n.ipynb.0123456789ab.tmp"
    other_notebook = tmp_path / ".m.ipynb.0123456789ab.tmp"
    not_ours = tmp_path / ".n.ipynb.backup.tmp"
    for temp in (ours, other_notebook, not_ours):
        temp.write_bytes(b"half")
    assert remove_interrupted_temps(path) == 1
    assert [ours.exists(), other_notebook.exists(), not_ours.exists()] == [False, True, True]
    assert path.read_bytes() == b"{}\n"
