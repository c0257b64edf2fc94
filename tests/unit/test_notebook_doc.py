"""The notebook document: per-code-point text, merges of forks, nbformat round trips."""

from __future__ import annotations

import copy
import json
import random
import re
import unicodedata
from typing import Any

import nbformat
import pytest
from automerge.core import ROOT, Document, ObjType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtimed.documents.amjson import splice_text
from runtimed.documents.notebook import NotebookDoc
from runtimed.errors import CellNotFound, InvalidRequest

CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

UNKNOWN_NB_METADATA: dict[str, Any] = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python", "version": "3.11.4"},
    "my_extension": {
        "nested": {"deeper": [1, 2.5, True, False, None, "x", {"k": []}]},
        "empty_map": {},
        "empty_list": [],
        "unicode": "é 😀 日本",
        "negative": -7,
        "float": 1.0,
    },
    "toc": {"number_sections": True},
}
UNKNOWN_CELL_METADATA: dict[str, Any] = {
    "tags": ["parameters", "raises-exception"],
    "collapsed": False,
    "jupyter": {"source_hidden": True},
    "vendor.x": {"list": [[1, 2], {"a": None}], "ratio": 0.125},
}
ATTACHMENTS: dict[str, Any] = {
    "pic.png": {
        "image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDw"
        "AEhQGAhKmMIQAAAABJRU5ErkJggg=="
    },
    "notes.txt": {"text/plain": "attached ✓"},
}


def notebook(
    cells: list[dict[str, Any]], *, metadata: dict[str, Any] | None = None, minor: int = 5
) -> dict[str, Any]:
    return {"nbformat": 4, "nbformat_minor": minor, "metadata": metadata or {}, "cells": cells}


def code(cell_id: str | None, source: str, **extra: Any) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "cell_type": "code",
        "metadata": {},
        "source": source,
        "outputs": [],
        "execution_count": None,
        **extra,
    }
    if cell_id is not None:
        cell["id"] = cell_id
    return cell


def markdown(cell_id: str | None, source: str, **extra: Any) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": "markdown", "metadata": {}, "source": source, **extra}
    if cell_id is not None:
        cell["id"] = cell_id
    return cell


def fork(doc: NotebookDoc) -> NotebookDoc:
    return NotebookDoc(doc.doc.fork())


def merged(*docs: NotebookDoc) -> None:
    """Merge every document into every other (they end with the same change set)."""
    for a in docs:
        for b in docs:
            if a is not b:
                a.doc.merge(b.doc)


def validate(nb: dict[str, Any]) -> None:
    node = nbformat.from_dict(copy.deepcopy(nb))
    nbformat.validate(node)
    # validate() silently "repairs" duplicate cell ids; a notebook needing that is not valid.
    ids = [cell["id"] for cell in nb["cells"]]
    assert len(ids) == len(set(ids)), f"duplicate cell ids: {ids}"


def through_file(nb: dict[str, Any]) -> dict[str, Any]:
    """``nb`` written as .ipynb text and read back (as a checkpoint would be)."""
    text = nbformat.writes(nbformat.from_dict(copy.deepcopy(nb)))
    plain: dict[str, Any] = json.loads(json.dumps(nbformat.reads(text, as_version=4)))
    return plain


# ---------------------------------------------------------------- text: code points


@pytest.mark.parametrize(
    "text",
    ["é", "😀", "e\u0301", "日本語のテキスト", "a😀b", "🇫🇷", "x = 'ü' + '👩\u200d💻'\n"],
)
def test_splice_text_stores_one_element_per_code_point(text: str) -> None:
    doc = Document()
    with doc.transaction() as tx:
        obj = tx.put_object(ROOT, "t", ObjType.Text)
        splice_text(tx, obj, 0, 0, text)
    assert doc.text(obj) == text
    assert doc.length(obj) == len(text)
    # Every code point is addressable: insert a marker after each one.
    with doc.transaction() as tx:
        for i in range(len(text), 0, -1):
            splice_text(tx, obj, i, 0, "|")
    assert doc.text(obj) == "".join(c + "|" for c in text)


def test_splice_source_counts_code_points() -> None:
    doc = NotebookDoc.from_nbformat(notebook([code("c", "a😀b")]))
    doc.splice_source("c", 2, 0, "é")  # after the emoji: index 2, not a UTF-16/UTF-8 offset
    assert doc.source("c") == "a😀éb"
    doc.splice_source("c", 1, 1, "日本")  # delete the emoji (one code point)
    assert doc.source("c") == "a日本éb"
    doc.splice_source("c", 4, 1, "")
    assert doc.source("c") == "a日本é"


def test_splice_source_on_combining_characters_addresses_each_code_point() -> None:
    decomposed = unicodedata.normalize("NFD", "café")  # "cafe" + U+0301
    assert len(decomposed) == 5
    doc = NotebookDoc.from_nbformat(notebook([markdown("m", decomposed)]))
    doc.splice_source("m", 4, 1, "")  # drop only the combining accent
    assert doc.source("m") == "cafe"
    doc.splice_source("m", 4, 0, "\u0300")
    assert doc.source("m") == "cafe\u0300"


def test_splice_source_out_of_range_raises_invalid_request() -> None:
    doc = NotebookDoc.from_nbformat(notebook([code("c", "😀😀")]))
    with pytest.raises(InvalidRequest, match="source length 2"):
        doc.splice_source("c", 1, 2, "")
    with pytest.raises(InvalidRequest):
        doc.splice_source("c", -1, 0, "x")
    with pytest.raises(InvalidRequest):
        doc.splice_source("c", 3, 0, "x")
    assert doc.source("c") == "😀😀"


def test_concurrent_edits_to_the_same_text_keep_both() -> None:
    base = NotebookDoc.from_nbformat(notebook([code("c", "print('héllo')")]))
    a, b = fork(base), fork(base)
    a.splice_source("c", 7, 0, "😀 ")  # inside the string
    b.splice_source("c", 0, 0, "日本 = 1\n")
    b.splice_source("c", len("日本 = 1\nprint('héllo')"), 0, "  # é")
    merged(a, b)
    assert a.source("c") == b.source("c") == "日本 = 1\nprint('😀 héllo')  # é"


def test_concurrent_inserts_at_the_same_position_interleave_per_character_not_mix() -> None:
    base = NotebookDoc.from_nbformat(notebook([code("c", "[]")]))
    a, b = fork(base), fork(base)
    a.splice_source("c", 1, 0, "αβγ")
    b.splice_source("c", 1, 0, "😀😁")
    merged(a, b)
    result = a.source("c")
    assert result == b.source("c")
    assert result in ("[αβγ😀😁]", "[😀😁αβγ]")  # each run stays contiguous


def test_concurrent_delete_and_insert_in_the_same_text_both_apply() -> None:
    base = NotebookDoc.from_nbformat(notebook([code("c", "one two three")]))
    a, b = fork(base), fork(base)
    a.splice_source("c", 4, 4, "")  # delete "two "
    b.splice_source("c", 13, 0, " four")
    merged(a, b)
    assert a.source("c") == b.source("c") == "one three four"


# ---------------------------------------------------------------- set_source


def test_set_source_minimal_diff_keeps_a_concurrent_edit_elsewhere() -> None:
    base = NotebookDoc.from_nbformat(notebook([code("c", "x = 1\ny = 2\nz = 3\n")]))
    a, b = fork(base), fork(base)
    a.set_source("c", "x = 100\ny = 2\nz = 3\n")  # an editor replacing the whole text
    b.splice_source("c", len("x = 1\ny = 2\nz = 3"), 0, "  # é😀")
    merged(a, b)
    assert a.source("c") == b.source("c") == "x = 100\ny = 2\nz = 3  # é😀\n"


def test_set_source_to_the_same_text_makes_no_change() -> None:
    doc = NotebookDoc.from_nbformat(notebook([code("c", "same")]))
    heads = doc.heads()
    doc.set_source("c", "same")
    assert doc.heads() == heads


@pytest.mark.parametrize(
    ("old", "new"),
    [("", "abc"), ("abc", ""), ("aaa", "aa"), ("ab", "aab"), ("😀é", "é😀"), ("x\n", "x\n\n")],
)
def test_set_source_reaches_the_new_text(old: str, new: str) -> None:
    doc = NotebookDoc.from_nbformat(notebook([code("c", old)]))
    doc.set_source("c", new)
    assert doc.source("c") == new


# ---------------------------------------------------------------- cells


def test_add_delete_move_cells() -> None:
    doc = NotebookDoc.new()
    first = doc.add_cell("code", "1")
    second = doc.add_cell("markdown", "# two", index=0)
    third = doc.add_cell("raw", "3", cell_id="my-raw_3")
    assert doc.cell_ids() == [second, first, "my-raw_3"]
    assert third == "my-raw_3"
    doc.move_cell(first, 2)
    assert doc.cell_ids() == [second, "my-raw_3", first]
    assert doc.cell(first).source == "1"
    doc.delete_cell(second)
    assert doc.cell_ids() == ["my-raw_3", first]
    assert [c.cell_type for c in doc.cells()] == ["raw", "code"]
    with pytest.raises(CellNotFound):
        doc.delete_cell(second)


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "é", "a/b"])
def test_add_cell_refuses_invalid_ids(bad: str) -> None:
    doc = NotebookDoc.new()
    with pytest.raises(InvalidRequest, match="invalid cell id"):
        doc.add_cell("code", cell_id=bad)


def test_add_cell_refuses_duplicate_id_and_unknown_type() -> None:
    doc = NotebookDoc.new()
    doc.add_cell("code", cell_id="a")
    with pytest.raises(InvalidRequest, match="already"):
        doc.add_cell("code", cell_id="a")
    with pytest.raises(InvalidRequest, match="unknown cell type"):
        doc.add_cell("heading")


def test_concurrent_cell_additions_and_deletions_merge() -> None:
    base = NotebookDoc.from_nbformat(notebook([code("a", "1"), code("b", "2"), code("c", "3")]))
    x, y = fork(base), fork(base)
    x.add_cell("markdown", "from x", cell_id="x1", index=1)
    x.delete_cell("c")
    y.add_cell("code", "from y", cell_id="y1")
    y.delete_cell("a")
    merged(x, y)
    assert x.cell_ids() == y.cell_ids()
    assert set(x.cell_ids()) == {"x1", "b", "y1"}
    assert x.cell_ids().index("x1") < x.cell_ids().index("b")


def test_concurrent_moves_of_one_cell_keep_one_copy() -> None:
    base = NotebookDoc.from_nbformat(notebook([code("a", "1"), code("b", "2"), code("c", "3")]))
    x, y = fork(base), fork(base)
    x.move_cell("a", 2)
    y.move_cell("a", 1)
    merged(x, y)
    assert x.cell_ids() == y.cell_ids()
    assert sorted(x.cell_ids()) == ["a", "b", "c"], x.cell_ids()
    validate(x.to_nbformat())


def test_heads_and_has_heads() -> None:
    doc = NotebookDoc.from_nbformat(notebook([code("c", "")]))
    other = fork(doc)
    other.splice_source("c", 0, 0, "new")
    assert doc.has_heads(doc.heads_hex())
    assert not doc.has_heads(other.heads_hex())
    assert doc.has_heads([])
    doc.doc.merge(other.doc)
    assert doc.has_heads(other.heads_hex())
    with pytest.raises(InvalidRequest, match="hex"):
        doc.has_heads(["not hex"])


def test_empty_replica_is_not_ready_until_it_syncs() -> None:
    from automerge.core import SyncState

    server = NotebookDoc.from_nbformat(notebook([code("c", "x")]))
    replica = NotebookDoc.empty()
    assert not replica.ready
    s_state, r_state = SyncState(), SyncState()
    for _ in range(10):
        m1 = server.doc.generate_sync_message(s_state)
        if m1 is not None:
            replica.doc.receive_sync_message(r_state, m1)
        m2 = replica.doc.generate_sync_message(r_state)
        if m2 is not None:
            server.doc.receive_sync_message(s_state, m2)
        if m1 is None and m2 is None:
            break
    assert replica.ready
    assert replica.cells() == server.cells()
    assert replica.doc_id == server.doc_id


# ---------------------------------------------------------------- nbformat


def test_unknown_metadata_and_attachments_survive_exactly() -> None:
    nb = notebook(
        [
            code("c1", "print(1)\n", metadata=copy.deepcopy(UNKNOWN_CELL_METADATA)),
            markdown(
                "m1",
                "![pic](attachment:pic.png)",
                attachments=copy.deepcopy(ATTACHMENTS),
                metadata={"slideshow": {"slide_type": "slide"}},
            ),
            {
                "id": "r1",
                "cell_type": "raw",
                "metadata": {"format": "text/x-rst"},
                "source": "raw ✓",
                "attachments": {"a.txt": {"text/plain": "x"}},
            },
        ],
        metadata=copy.deepcopy(UNKNOWN_NB_METADATA),
    )
    validate(nb)
    doc = NotebookDoc.from_nbformat(copy.deepcopy(nb))
    assert doc.metadata() == UNKNOWN_NB_METADATA
    assert doc.cell("c1").metadata == UNKNOWN_CELL_METADATA
    assert doc.cell("m1").attachments == ATTACHMENTS
    out = doc.to_nbformat()
    assert out == nb
    validate(out)
    assert json.dumps(out, sort_keys=True) == json.dumps(nb, sort_keys=True)  # types too


def test_metadata_value_types_survive() -> None:
    # 1.0 stays a float and 1 an int; True is not 1.
    meta = {"f": 1.0, "i": 1, "b": True, "n": None, "big": 2**62, "neg": -0.5}
    doc = NotebookDoc.from_nbformat(notebook([], metadata=meta))
    got = doc.metadata()
    assert got == meta
    assert [type(got[k]) for k in meta] == [type(v) for v in meta.values()]


def test_metadata_with_an_empty_key_round_trips() -> None:
    # JSON (and nbformat's metadata schema) allow "" as a key.
    meta = {"": "empty key", "outer": {"": 1}}
    nb = notebook([code("c", "", metadata={"": True})], metadata=meta)
    validate(nb)
    doc = NotebookDoc.from_nbformat(nb)
    assert doc.to_nbformat() == nb


def test_cells_without_ids_get_valid_unique_ids() -> None:
    nb = notebook([code(None, "1"), markdown(None, "2"), code(None, "3")], minor=4)
    doc = NotebookDoc.from_nbformat(nb)
    ids = doc.cell_ids()
    assert len(set(ids)) == 3
    assert all(CELL_ID.match(i) for i in ids)
    out = doc.to_nbformat()
    assert out["nbformat_minor"] >= 5  # ids need nbformat 4.5
    assert [c["source"] for c in out["cells"]] == ["1", "2", "3"]
    validate(out)


def test_duplicate_cell_ids_are_renamed_on_load() -> None:
    nb = notebook([code("same", "1"), code("same", "2"), markdown("other", "3")])
    doc = NotebookDoc.from_nbformat(nb)
    ids = doc.cell_ids()
    assert ids[0] == "same"
    assert ids[2] == "other"
    assert ids[1] not in ("same", "other")
    assert CELL_ID.match(ids[1])
    validate(doc.to_nbformat())


def test_source_as_list_of_lines_is_joined() -> None:
    nb = notebook([code("c", ["a = 1\n", "b = 2"])])  # type: ignore[arg-type]
    assert NotebookDoc.from_nbformat(nb).source("c") == "a = 1\nb = 2"


def test_to_nbformat_takes_outputs_from_the_callback() -> None:
    doc = NotebookDoc.from_nbformat(notebook([code("c", "1"), markdown("m", "x")]))
    output = {"output_type": "stream", "name": "stdout", "text": "hi\n"}
    out = doc.to_nbformat(lambda cell_id: (3, [output]) if cell_id == "c" else (None, []))
    assert out["cells"][0]["execution_count"] == 3
    assert out["cells"][0]["outputs"] == [output]
    assert "outputs" not in out["cells"][1]
    validate(out)


def test_save_and_load_keep_the_document() -> None:
    doc = NotebookDoc.from_nbformat(notebook([code("c", "é😀")], metadata={"k": [1]}))
    loaded = NotebookDoc.load(doc.save())
    assert loaded.doc_id == doc.doc_id
    assert loaded.to_nbformat() == doc.to_nbformat()
    assert loaded.heads() == doc.heads()


# ---------------------------------------------------------------- property: forks converge

TEXT = st.text(alphabet=st.sampled_from("ab \n\té😀日\u0301"), max_size=6)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = st.sampled_from(["k", "vendor", "é"])  # not keys nbformat's schema types

OPS = st.one_of(
    st.tuples(
        st.just("add"), st.sampled_from(["code", "markdown", "raw"]), TEXT, st.integers(0, 10)
    ),
    st.tuples(st.just("delete"), st.integers(0, 10)),
    st.tuples(st.just("move"), st.integers(0, 10), st.integers(0, 10)),
    st.tuples(st.just("splice"), st.integers(0, 10), st.integers(0, 50), st.integers(0, 3), TEXT),
    st.tuples(st.just("set_source"), st.integers(0, 10), TEXT),
    st.tuples(st.just("cell_meta"), st.integers(0, 10), KEYS, JSON),
    st.tuples(st.just("nb_meta"), KEYS, JSON),
    st.tuples(st.just("cell_type"), st.integers(0, 10), st.sampled_from(["code", "markdown"])),
)


def apply(doc: NotebookDoc, op: tuple[Any, ...]) -> None:
    ids = doc.cell_ids()
    name = op[0]
    if name == "add":
        doc.add_cell(op[1], op[2], index=op[3])
        return
    if name == "nb_meta":
        doc.set_metadata(op[1], op[2])
        return
    if not ids:
        return
    cell_id = ids[op[1] % len(ids)]
    match name:
        case "delete":
            doc.delete_cell(cell_id)
        case "move":
            doc.move_cell(cell_id, op[2])
        case "splice":
            length = len(doc.source(cell_id))
            index = op[2] % (length + 1)
            doc.splice_source(cell_id, index, min(op[3], length - index), op[4])
        case "set_source":
            doc.set_source(cell_id, op[2])
        case "cell_meta":
            doc.set_cell_metadata(cell_id, op[2], op[3])
        case "cell_type":
            doc.set_cell_type(cell_id, op[2])


@given(
    replicas=st.integers(2, 3),
    rounds=st.lists(
        st.lists(st.lists(OPS, max_size=5), min_size=3, max_size=3), min_size=1, max_size=3
    ),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_edits_on_forks_converge_and_round_trip(
    replicas: int, rounds: list[list[list[tuple[Any, ...]]]], seed: int
) -> None:
    rng = random.Random(seed)
    base = NotebookDoc.from_nbformat(
        notebook(
            [code("c0", "x = 1\n"), markdown("m0", "# é😀"), code("c1", "")],
            metadata={"kernelspec": {"name": "python3", "display_name": "P"}},
        )
    )
    docs = [fork(base) for _ in range(replicas)]
    for ops_per_replica in rounds:
        for doc, ops in zip(docs, ops_per_replica, strict=False):
            for op in ops:
                apply(doc, op)
        # Some replicas hear from some others, in a random order, before the next round.
        for _ in range(rng.randint(0, replicas * 2)):
            a, b = rng.sample(docs, 2)
            a.doc.merge(b.doc)
    order = docs[:]
    rng.shuffle(order)
    for doc in order:
        others = [d for d in docs if d is not doc]
        rng.shuffle(others)
        for other in others:
            doc.doc.merge(other.doc)
    merged(*docs)  # again, so early mergers also get what later ones had

    first = docs[0].to_nbformat()
    for doc in docs[1:]:
        assert doc.cells() == docs[0].cells()
        assert doc.to_nbformat() == first
    validate(first)
    reread = through_file(first)
    assert NotebookDoc.from_nbformat(reread).to_nbformat() == first


# ---------------------------------------------------------------- the remembered cell order


def uncached_order(doc: NotebookDoc) -> list[str]:
    """The cell order read afresh: a new wrapper over the same document has nothing cached."""
    return NotebookDoc(doc.doc).cell_ids()


@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("edit"), st.integers(0, 1), OPS),
            st.tuples(st.just("merge"), st.integers(0, 1)),
            st.tuples(st.just("sync"), st.integers(0, 1)),
        ),
        max_size=12,
    )
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_remembered_cell_order_follows_every_change(
    steps: list[tuple[Any, ...]],
) -> None:
    from automerge.core import SyncState

    base = NotebookDoc.from_nbformat(notebook([code("a", "1"), markdown("b", "2"), code("c", "")]))
    docs = [fork(base), fork(base)]
    states = [SyncState(), SyncState()]
    for doc in docs:
        assert doc.cell_ids() == uncached_order(doc)  # remembered before any change
    for step in steps:
        target = docs[step[1]]
        other = docs[1 - step[1]]
        match step[0]:
            case "edit":
                apply(target, step[2])
            case "merge":
                target.doc.merge(other.doc)
            case "sync":  # one round of the sync protocol, the way clients receive changes
                message = other.doc.generate_sync_message(states[1 - step[1]])
                if message is not None:
                    target.doc.receive_sync_message(states[step[1]], message)
        for doc in docs:
            assert doc.cell_ids() == uncached_order(doc)
            assert len(doc) == len(uncached_order(doc))
            assert [c.id for c in doc.cells()] == doc.cell_ids()
