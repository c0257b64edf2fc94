"""history.py on real Automerge documents: versions, diffs, actors, executions, files."""

from __future__ import annotations

import pytest
from automerge.core import SyncState

from runtimed.documents.history import (
    diff_documents,
    diff_nbformat,
    format_diff,
    format_version,
    parse_version,
    versions,
)
from runtimed.documents.notebook import NotebookDoc
from runtimed.documents.runtime import RuntimeDoc
from runtimed.errors import InvalidRequest


def version(doc: NotebookDoc, seq: int = 0) -> str:
    return format_version(doc.heads_hex(), seq)


def sync(a: NotebookDoc, b: NotebookDoc) -> None:
    sa, sb = SyncState(), SyncState()
    while True:
        ma = a.doc.generate_sync_message(sa)
        if ma is not None:
            b.doc.receive_sync_message(sb, ma)
        mb = b.doc.generate_sync_message(sb)
        if mb is not None:
            a.doc.receive_sync_message(sa, mb)
        if ma is None and mb is None:
            return


def test_version_round_trip_and_bad_versions() -> None:
    doc = NotebookDoc.new()
    v = version(doc, 7)
    assert parse_version(v) == (sorted(doc.heads_hex()), 7)
    for bad in ("", "v1", "v2:aa:1", "v1:zz:1", "v1:" + "a" * 64 + ":x", "v1:abc:1"):
        with pytest.raises(InvalidRequest, match="not a notebook version"):
            parse_version(bad)


def test_added_deleted_modified_moved_and_metadata() -> None:
    doc = NotebookDoc.new()
    a = doc.add_cell("code", "x = 1\ny = 2\n", cell_id="a")
    b = doc.add_cell("markdown", "# Title", cell_id="b")
    c = doc.add_cell("code", "print(x)", cell_id="c")
    since = version(doc)
    doc.set_source(a, "x = 10\ny = 2\n")
    doc.delete_cell(b)
    doc.move_cell(c, 0)
    d = doc.add_cell("code", "z = 3", cell_id="d")
    doc.set_cell_type(c, "raw")
    doc.set_cell_metadata(a, "tags", ["parameters"])
    doc.set_metadata("title", "T")
    diff = diff_documents(doc, None, since)
    assert [x["cell_id"] for x in diff.added] == [d]
    assert [x["cell_id"] for x in diff.deleted] == [b]
    assert [x["cell_id"] for x in diff.moved] == [c] or [x["cell_id"] for x in diff.moved] == [a]
    modified = {m["cell_id"]: m for m in diff.modified}
    assert "-x = 1" in modified[a]["source_diff"]
    assert "+x = 10" in modified[a]["source_diff"]
    assert modified[a]["metadata"] == [{"op": "add", "key": "tags", "value": ["parameters"]}]
    assert modified[c]["cell_type"] == {"from": "code", "to": "raw"}
    assert diff.metadata == [{"op": "add", "key": "title", "value": "T"}]
    assert diff.to == version(doc)
    assert diff.attribution == "cells"
    assert diff.actors == [doc.doc.get_actor().hex()]
    text = format_diff(diff)
    assert "deleted markdown cell b" in text
    assert "+x = 10" in text
    # nothing changed since now
    assert diff_documents(doc, None, version(doc)).empty


def test_between_two_past_versions_and_unknown_version() -> None:
    doc = NotebookDoc.new()
    a = doc.add_cell("code", "1", cell_id="a")
    v1 = version(doc)
    doc.set_source(a, "2")
    v2 = version(doc)
    doc.set_source(a, "3")
    diff = diff_documents(doc, None, v1, v2)
    assert diff.to == v2
    assert "+2" in diff.modified[0]["source_diff"]
    assert "+3" not in diff.modified[0]["source_diff"]
    other = NotebookDoc.new()
    other.add_cell("code", "q")
    with pytest.raises(InvalidRequest, match="does not contain that version"):
        diff_documents(doc, None, version(other))


def test_actors_are_attributed_per_cell() -> None:
    agent = NotebookDoc.new()
    a = agent.add_cell("code", "a", cell_id="a")
    b = agent.add_cell("code", "b", cell_id="b")
    person = NotebookDoc(agent.doc.fork())
    since = version(agent)
    agent.set_source(a, "agent edit")
    person.set_source(b, "person edit")
    sync(agent, person)
    diff = diff_documents(agent, None, since)
    by_cell = {m["cell_id"]: m["actors"] for m in diff.modified}
    assert by_cell == {a: [agent.doc.get_actor().hex()], b: [person.doc.get_actor().hex()]}
    assert sorted(diff.actors) == sorted(
        [agent.doc.get_actor().hex(), person.doc.get_actor().hex()]
    )


def test_executions_between_versions() -> None:
    doc = NotebookDoc.new()
    a = doc.add_cell("code", "1/0", cell_id="a")
    runtime = RuntimeDoc.new()
    runtime.add_execution("e1", a, 1)
    runtime.update_execution("e1", status="ok", execution_count=1)
    since = version(doc, runtime.max_seq())
    runtime.add_execution("e2", a, 2)
    runtime.update_execution(
        "e2", status="error", execution_count=2, ename="ZeroDivisionError", evalue="division"
    )
    diff = diff_documents(doc, runtime, since)
    assert [(e["execution_id"], e["status"], e["ename"]) for e in diff.executions] == [
        ("e2", "error", "ZeroDivisionError")
    ]
    assert "ran cell a [2]: error (ZeroDivisionError: division)" in format_diff(diff)


def test_versions_log_reads_back() -> None:
    doc = NotebookDoc.new()
    a = doc.add_cell("code", "1", cell_id="a")
    other = NotebookDoc(doc.doc.fork())
    other.set_source(a, "2")
    sync(doc, other)
    doc.set_source(a, "3")
    log = versions(doc)
    assert [entry["actor"] for entry in log][-2:] == [
        other.doc.get_actor().hex(),
        doc.doc.get_actor().hex(),
    ]
    assert log[-2]["cells"] == [a]
    assert log[-1]["cells"] == [a]
    assert a in log[0]["cells"]
    first_edit = log[-2]["version"]
    assert (
        diff_documents(doc, None, log[0]["version"], first_edit)
        .modified[0]["source_diff"]
        .endswith("+2")
    )


def test_nbformat_diff_is_the_same_structure_with_jep8() -> None:
    def nb(cells: list[dict[str, object]]) -> dict[str, object]:
        return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}

    a = nb(
        [
            {"id": "p", "cell_type": "code", "source": "x = 1\n", "metadata": {},
             "execution_count": None, "outputs": []},
            {"id": "q", "cell_type": "markdown", "source": "hi", "metadata": {}},
        ]
    )  # fmt: skip
    b = nb(
        [
            {"id": "p", "cell_type": "code", "source": ["x = 2\n"], "metadata": {},
             "execution_count": 1,
             "outputs": [{"output_type": "error", "ename": "E", "evalue": "v",
                          "traceback": []}]},
            {"id": "r", "cell_type": "code", "source": "new", "metadata": {},
             "execution_count": None, "outputs": []},
        ]
    )  # fmt: skip
    diff = diff_nbformat(a, b, since="a.ipynb", to="b.ipynb")
    assert [c["cell_id"] for c in diff.added] == ["r"]
    assert [c["cell_id"] for c in diff.deleted] == ["q"]
    assert diff.executions[0]["cell_id"] == "p"
    assert diff.executions[0]["ename"] == "E"
    cells_op = diff.jep8[0]
    assert cells_op["op"] == "patch"
    assert cells_op["key"] == "cells"
    ops = {(op["op"], op["key"]) for op in cells_op["diff"]}
    assert ("patch", 0) in ops
    assert ("removerange", 1) in ops
    assert ("addrange", 1) in ops
    source_patch = next(op for op in cells_op["diff"] if op["op"] == "patch")["diff"]
    expected = [
        {"op": "removerange", "key": 0, "length": 1},
        {"op": "addrange", "key": 0, "valuelist": ["x = 2\n"]},
    ]
    assert {"op": "patch", "key": "source", "diff": expected} in source_patch
