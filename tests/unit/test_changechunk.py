"""Which objects a change wrote into, decoded from its bytes, against the binding's own diff:
the sync check reads those objects instead of diffing the whole document."""

from __future__ import annotations

import re

import pytest
from automerge.core import ROOT, Document, ObjType, ScalarType
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimed.daemon import synccheck
from runtimed.documents.boundary import DocumentError
from runtimed.documents.changechunk import ROOT_KEY, object_key, written_objects
from runtimed.documents.notebook import NotebookDoc

from .test_room_sync import BEFORE_COUNTER, COUNTER_DOC, COUNTER_IN_CELL_DOC

_PATCH_OBJ = re.compile(r'Patch \{ obj: Id\((\d+), ActorID\("([0-9a-f]*)"\)')


def new_chunks(doc: Document, before: list[bytes]) -> list[bytes]:
    return [bytes(change.raw_bytes) for change in doc.get_changes(before)]


def diff_objects(doc: Document, before: list[bytes]) -> set[tuple[bytes, int]]:
    """The objects the binding's diff reports a patch in (the root for ``obj: Root``)."""
    found: set[tuple[bytes, int]] = set()
    for patch in doc.diff(before, list(doc.get_heads())):
        text = repr(patch)
        match = _PATCH_OBJ.match(text)
        if match is None:
            assert text.startswith("Patch { obj: Root"), text
            found.add(ROOT_KEY)
        else:
            found.add((bytes.fromhex(match[2]), int(match[1])))
    return found


def test_the_objects_of_a_change_and_the_keys_it_wrote() -> None:
    doc = Document()
    doc.set_actor(bytes(range(16)))
    with doc.transaction() as tx:
        cells = tx.put_object(ROOT, "cells", ObjType.Map)
        cell = tx.put_object(cells, "c1", ObjType.Map)
    before = list(doc.get_heads())
    with doc.transaction() as tx:
        tx.put(cell, "k", ScalarType.Int, 5)
        text = tx.put_object(cell, "source", ObjType.Text)
        for i, char in enumerate("hello"):
            tx.insert(text, i, ScalarType.Str, char)
        tx.put(cells, "c2", ScalarType.Null, None)
    written = written_objects(new_chunks(doc, before))
    assert written is not None
    assert written.objects == {
        object_key(cell): {"k", "source"},
        object_key(text): {None},
        object_key(cells): {"c2"},
    }
    for key, exid in written.exids.items():
        assert object_key(exid) == key
        assert doc.object_type(exid) is not None


def test_object_ids_with_large_counters_and_other_actors() -> None:
    doc = Document()
    with doc.transaction() as tx:
        cells = tx.put_object(ROOT, "cells", ObjType.Map)
        for i in range(300):  # counters past one ULEB128 byte (and past two: 16384 below)
            tx.put(cells, f"k{i}", ScalarType.Int, i)
    other = doc.fork()
    other.set_actor(b"\x02" * 8)  # a shorter actor id than the daemon's
    before = list(other.get_heads())
    with other.transaction() as tx:
        meta = tx.put_object(cells, "m", ObjType.Map)
        tx.put(meta, "x", ScalarType.Int, 1)
    doc.merge(other)
    written = written_objects(new_chunks(doc, before))
    assert written is not None
    assert set(written.objects) == {object_key(cells), object_key(meta)}
    assert written.exids[object_key(meta)][2:10] == b"\x02" * 8
    assert list(doc.values(written.exids[object_key(meta)])) == list(doc.values(meta))


def test_a_long_change_and_a_loaded_document_decode_the_same() -> None:
    doc = Document()
    with doc.transaction() as tx:
        text = tx.put_object(ROOT, "source", ObjType.Text)
        for i in range(3000):
            tx.insert(text, i, ScalarType.Str, "abcdefg"[i % 7])
    loaded = Document.load(doc.save())
    for d in (doc, loaded):
        written = written_objects(new_chunks(d, []))
        assert written is not None
        assert set(written.objects) == {ROOT_KEY, object_key(text)}


def test_changes_made_by_automerge_js_decode_like_the_diff() -> None:
    for saved in (COUNTER_DOC, COUNTER_IN_CELL_DOC):
        doc = Document.load(saved)
        written = written_objects(new_chunks(doc, BEFORE_COUNTER))
        assert written is not None
        assert set(written.objects) >= diff_objects(doc, BEFORE_COUNTER) - {ROOT_KEY}


def test_what_is_not_understood_gives_none_never_an_exception() -> None:
    doc = Document()
    with doc.transaction() as tx:
        text = tx.put_object(ROOT, "source", ObjType.Text)
        for i in range(400):
            tx.insert(text, i, ScalarType.Str, "x")
    raw = new_chunks(doc, [])[0]
    compressed = bytes(doc.get_changes([])[0].bytes)
    assert compressed[8] == 2  # the binding's compressed form: not decoded here
    assert written_objects([compressed]) is None
    assert written_objects([b"not a change"]) is None
    for cut in range(len(raw)):
        result = written_objects([raw[:cut]])  # every truncation: None or a subset
        assert result is None or set(result.objects) <= {ROOT_KEY, object_key(text)}
    with pytest.raises(ValueError, match="not an object id"):
        object_key(b"\x07junk")


edits = st.lists(
    st.tuples(
        st.sampled_from(["splice", "cell_metadata", "metadata", "add", "delete", "move"]),
        st.integers(min_value=0, max_value=50),
        st.text(alphabet='ab\n"\\é😀', max_size=6),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(edits)
def test_every_object_the_diff_names_is_one_the_bytes_name(
    steps: list[tuple[str, int, str]],
) -> None:
    notebook = NotebookDoc.new(metadata={})
    for i in range(3):
        notebook.add_cell("code", f"x = {i}")
    client = NotebookDoc(notebook.doc.fork())
    before = list(client.doc.get_heads())
    for action, n, text in steps:
        ids = client.cell_ids()
        cell = ids[n % len(ids)] if ids else None
        if action == "splice" and cell is not None:
            client.splice_source(cell, 0, 0, text)
        elif action == "cell_metadata" and cell is not None:
            client.set_cell_metadata(cell, "papermill", {"k": text, "n": [n, {"t": text}]})
        elif action == "metadata":
            client.set_metadata("papermill", {"v": text})
        elif action == "add" or cell is None:
            client.add_cell("markdown", text, index=n % (len(ids) + 1))
        elif action == "delete":
            client.delete_cell(cell)
        else:
            client.move_cell(cell, n % len(ids))
    written = written_objects(new_chunks(client.doc, before))
    assert written is not None
    assert set(written.objects) >= diff_objects(client.doc, before)
    synccheck.check_readable(client.doc, before)


def test_the_check_reads_a_counter_in_a_cell_without_the_diff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_diff(*args: object) -> None:
        raise AssertionError("the diff was not needed")

    monkeypatch.setattr(synccheck, "touched", no_diff)
    doc = Document.load(COUNTER_IN_CELL_DOC)
    with pytest.raises(DocumentError, match="panicked"):
        synccheck.check_readable(doc, BEFORE_COUNTER)
    # A plain edit of the same notebook is read without the diff too.
    fine = NotebookDoc(Document.load(COUNTER_IN_CELL_DOC).fork(BEFORE_COUNTER))
    before = fine.heads()
    fine.set_cell_metadata(fine.cell_ids()[0], "papermill", {"status": "completed"})
    fine.splice_source(fine.cell_ids()[0], 0, 0, "# ")
    synccheck.check_readable(fine.doc, before)


def test_deleting_cells_writes_no_key_of_the_cells_map() -> None:
    notebook = NotebookDoc.new(metadata={})
    first = notebook.add_cell("code", "x = 1")
    notebook.add_cell("code", "y = 2")
    before = notebook.heads()
    notebook.delete_cell(first)
    written = written_objects(new_chunks(notebook.doc, before))
    assert written is not None
    cells = notebook.doc.get(ROOT, "cells")
    assert cells is not None
    assert written.objects == {object_key(cells[1]): set()}
