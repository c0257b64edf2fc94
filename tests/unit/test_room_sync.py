"""The room applies a client's sync message on a fork, checks it, then swaps: a message that
makes the Automerge binding panic is refused and the document is left exactly as it was."""

from __future__ import annotations

import base64

import pytest
from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState

from protocol.messages import DocKind
from runtimed.daemon.room import NotebookRoom, RoomCallbacks, SyncRejected
from runtimed.daemon.synccheck import Touched, touched
from runtimed.documents.notebook import NotebookDoc
from runtimed.documents.runtime import RuntimeDoc

# A sync message whose bloom filter has 0 bits per entry: accepted by receive_sync_message,
# after which generate_sync_message panics ("remainder with a divisor of zero").
PANIC_SYNC = bytes.fromhex("42000001000301000700")

# A notebook document saved by @automerge/automerge 3.5 (Node) after
# `d.metadata.bad = new A.Counter(1)`: reading a Counter panics the Python binding.
COUNTER_DOC = base64.b64decode(
    "hW9Kg402Td0AqgMCEEk4XAWWvNLRouXN28Fg+ysQcXL9X/BtSOWNu2o4Qkf7RQEvOBhI4+S75qslmjGfhqyOblg8f8O+ZLGb5FkHhqXGvAcBBAMEEwQjCEAEQwNWAgwBBAILEQQTBxWDASEGIxM0AkISVhRXPoABAgIBfwACAX9/fQgLAQIAf4HfutgGfwACAX4AAQMHAAYOAQAGAgR+BQcFCQUNABAEAQAPfgAOAwFxBWNlbGxzBmRvY19pZAhtZXRhZGF0YQhuYmZvcm1hdA5uYmZvcm1hdF9taW5vcg5zY2hlbWFfdmVyc2lvbgNiYWQKa2VybmVsc3BlYwRuYW1lCDI2NDYzYzkyCWNlbGxfdHlwZQJpZAhtZXRhZGF0YQhwb3NpdGlvbgZzb3VyY2UABQYBfwANAXcHewJ/BXkTcQECA3x+CXgCBQEPBX0AAQAEAX0AAQACAX0AAQQFAX0AhgQAAxR3GAB2AEaGAQAmAAUWMTU2ZDAwZDg3Zjk0NGI5NjkxNTljZmZlNzZhODU4ZGEEBQEBcHl0aG9uM2NvZGUyNjQ2M2M5MmEweCA9IDEUAAI="
)
# The same, with the Counter in the metadata of cell "26463c92" instead.
COUNTER_IN_CELL_DOC = base64.b64decode(
    "hW9Kg0Bzad8AsQMCEBCRIrOpYFs6k5sfZC4WxmAQcXL9X/BtSOWNu2o4Qkf7RQF9e1l1PG20m8IDkHAjHm1nWWUShtDK6wrHVnif1TRf7gcBBAMEEwQjCEAEQwNWAgwBBAIMEQYTCRWEASEEIxQ0A0ISVhVXPoABAgIBfwACAX9/fQgLAQIAf6/hutgGfwACAX4AAQMHAAYOAQAGfQQFBwUJBQ1/EwAPBAEAAQAOfgAOAwEAAXIFY2VsbHMGZG9jX2lkCG1ldGFkYXRhCG5iZm9ybWF0Dm5iZm9ybWF0X21pbm9yDnNjaGVtYV92ZXJzaW9uCmtlcm5lbHNwZWMEbmFtZQgyNjQ2M2M5MgljZWxsX3R5cGUCaWQIbWV0YWRhdGEIcG9zaXRpb24Gc291cmNlAAV/A2JhZBMBfwB4B3sCfwV5BAECA3x+CXgCBQF/Ag4FAX0AAQADAX0AAQACAX0AAQQGAX0AhgQAAxR4AHYARoYBACYABRZ/GDE1NmQwMGQ4N2Y5NDRiOTY5MTU5Y2ZmZTc2YTg1OGRhBAUBcHl0aG9uM2NvZGUyNjQ2M2M5MmEweCA9IDEBFAAC"
)
# The heads of those documents before the Counter was added.
BEFORE_COUNTER = [bytes.fromhex("0debf019d1fca95c6acae190f34e7c7f8a4f384c1552f63a782e515c5ae9014d")]


class FakePeer:
    def __init__(self) -> None:
        self.dirty: list[tuple[str, DocKind]] = []
        self.events: list[bytes] = []

    def mark_dirty(self, notebook_id: str, doc: DocKind) -> None:
        self.dirty.append((notebook_id, doc))

    def send_event_bytes(self, payload: bytes) -> None:
        self.events.append(payload)


def make_room(notebook: NotebookDoc, changes: list[str] | None = None) -> NotebookRoom:
    callbacks = RoomCallbacks(
        on_notebook_change=(lambda room: changes.append(room.notebook_id))
        if changes is not None
        else None
    )
    return NotebookRoom(
        notebook_id="nb",
        path=None,
        notebook=notebook,
        runtime=RuntimeDoc.new(),
        callbacks=callbacks,
    )


def sync(room: NotebookRoom, peer: FakePeer, replica: Document, rounds: int = 10) -> None:
    """Run the sync protocol between replica and the room until both are quiet."""
    state = SyncState()
    for _ in range(rounds):
        message = replica.generate_sync_message(state)
        if message is not None:
            room.receive(peer, "notebook", bytes(message.encode()))
        answered = False
        while (data := room.generate(peer, "notebook")) is not None:
            replica.receive_sync_message(state, Message.decode(data))
            answered = True
        if message is None and not answered:
            return


@pytest.mark.parametrize("doc", ["notebook", "runtime"])
def test_a_message_that_panics_is_refused_and_the_document_is_unchanged(doc: DocKind) -> None:
    notebook = NotebookDoc.new(metadata={})
    notebook.add_cell("code", "x = 1")
    room = make_room(notebook)
    peer = FakePeer()
    room.join(peer)
    saved = (room.notebook.save(), bytes(room.runtime.doc.save()))
    with pytest.raises(SyncRejected, match="panicked"):
        room.receive(peer, doc, PANIC_SYNC)
    assert (room.notebook.save(), bytes(room.runtime.doc.save())) == saved
    assert not room.has_peer(peer)  # its sync state is gone with its connection
    # Another peer syncs as usual.
    other = FakePeer()
    room.join(other)
    assert room.generate(other, doc) is not None


@pytest.mark.parametrize("saved", [COUNTER_DOC, COUNTER_IN_CELL_DOC], ids=["root", "cell"])
def test_a_counter_from_a_js_client_is_refused_and_the_document_is_unchanged(
    saved: bytes,
) -> None:
    replica = Document.load(saved)
    room = make_room(NotebookDoc(replica.fork(BEFORE_COUNTER)))
    peer = FakePeer()
    room.join(peer)
    before = room.notebook.heads()
    with pytest.raises(SyncRejected, match="could not be read"):
        sync(room, peer, replica)
    assert room.notebook.heads() == before
    assert room.notebook.metadata() == {"kernelspec": {"name": "python3"}}
    assert [c.source for c in room.notebook.cells()] == ["x = 1"]
    assert [c.metadata for c in room.notebook.cells()] == [{}]


def test_an_edit_goes_through_a_fork_and_keeps_the_daemon_actor() -> None:
    changes: list[str] = []
    notebook = NotebookDoc.new(metadata={})
    cell_id = notebook.add_cell("code", "x = 1")
    room = make_room(notebook, changes)
    actor = room.notebook.doc.get_actor()
    live = room.notebook.doc
    replica = NotebookDoc(Document.load(room.notebook.save()))
    replica.splice_source(cell_id, 0, 0, "# edited\n")
    peer = FakePeer()
    room.join(peer)
    sync(room, peer, replica.doc)
    assert room.notebook.source(cell_id) == "# edited\nx = 1"
    assert room.notebook.doc is not live  # swapped for the checked fork
    assert room.notebook.doc.get_actor() == actor
    assert changes == ["nb"]
    assert room.notebook.heads() == replica.heads()
    # The daemon's own edits still work on the swapped document.
    room.notebook.splice_source(cell_id, 0, 0, "y = 2\n")
    assert room.notebook.source(cell_id) == "y = 2\n# edited\nx = 1"


def test_touched_names_the_cells_and_metadata_a_change_touched() -> None:
    notebook = NotebookDoc.new(metadata={"a": 1})
    first = notebook.add_cell("code", "x")
    second = notebook.add_cell("code", "y")
    before = notebook.heads()
    notebook.splice_source(first, 0, 0, "z")
    notebook.set_cell_metadata(second, "tags", ["t"])
    notebook.set_metadata("a", 2)
    parts = touched(notebook.doc, before, notebook.heads())
    assert parts == Touched(cells={first, second}, metadata=True)
    # A new cell (a key of the cells map) is not placed: everything is read.
    before = notebook.heads()
    notebook.add_cell("markdown", "new")
    assert touched(notebook.doc, before, notebook.heads()) is None
    # A deleted cell needs no reading.
    before = notebook.heads()
    notebook.delete_cell(first)
    assert touched(notebook.doc, before, notebook.heads()) == Touched()


@pytest.mark.parametrize("cell_id", ['q"uote', "back\\slash", "new\nline"])
def test_touched_reads_escaped_cell_ids_exactly_or_gives_up(cell_id: str) -> None:
    notebook = NotebookDoc.new(metadata={})
    notebook.add_cell("code", "x")
    doc = notebook.doc
    cells = doc.get(ROOT, "cells")
    assert cells is not None
    before = notebook.heads()
    with doc.transaction() as tx:  # a key a rogue client could write; our ids are plain
        tx.put(cells[1], cell_id, ScalarType.Str, "junk")
    parts = touched(doc, before, notebook.heads())
    assert parts is None  # a put on the cells map itself: read everything
    before = notebook.heads()
    with doc.transaction() as tx:
        obj = tx.put_object(cells[1], cell_id, ObjType.Map)
        tx.put(obj, "id", ScalarType.Str, cell_id)
    before = notebook.heads()
    with doc.transaction() as tx:
        tx.put(obj, "cell_type", ScalarType.Str, "code")
    parts = touched(doc, before, notebook.heads())
    if "\n" in cell_id:
        assert parts is None
    else:
        assert parts == Touched(cells={cell_id})
