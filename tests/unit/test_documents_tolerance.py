"""Reading documents another Automerge library wrote (fixtures made with the stock JS
library, see tests/fixtures/automerge_js/README.md): Text read as its string, Counters left
out and reported by cell, and nothing the binding raises ever reaching the caller raw."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from automerge.core import ROOT, Document

from runtimed.documents.amjson import get, read_json
from runtimed.documents.boundary import DocumentError
from runtimed.documents.notebook import NotebookDoc

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "automerge_js"


def _load(name: str) -> NotebookDoc:
    return NotebookDoc.load((FIXTURES / f"{name}.automerge").read_bytes())


def test_text_where_the_schema_says_str_is_read_as_the_string() -> None:
    nb = _load("text_fields")
    cell = nb.cell("js-text")
    assert cell.cell_type == "markdown"
    assert cell.source == "written from **JS**"
    assert cell.metadata == {"tags": ["from-js"]}
    assert cell.problems == ()
    assert nb.cell_ids() == ["good", "good-md", "js-text"]
    assert nb.problems() == []
    assert nb.source("js-text") == "written from **JS**"


def test_counters_are_left_out_and_reported_by_cell() -> None:
    nb = _load("counters")
    problems = nb.problems()
    assert any(p.startswith("notebook metadata/visits") for p in problems)
    assert any(p.startswith("cell 'js-counter': metadata/runs") for p in problems)
    assert any(p.startswith("cell 'js-counter': metadata/nested/deep/0") for p in problems)
    assert any(p.startswith("cell 'js-counter-id': id") for p in problems)
    assert nb.cell("js-counter").metadata == {"nested": {"deep": []}}
    assert nb.cell("js-counter-id").id == "js-counter-id"  # the key stands in for the id
    assert nb.metadata()["kernelspec"]["name"] == "python3"
    assert nb.cell("good").problems == ()


def test_a_document_with_counters_still_converts_to_a_valid_notebook() -> None:
    nb = _load("counters")
    data = nb.to_nbformat()
    nbformat.validate(nbformat.from_dict(data))
    assert [c["id"] for c in data["cells"]] == ["good", "good-md", "js-counter", "js-counter-id"]


def test_a_panicking_read_leaves_the_document_usable() -> None:
    nb = _load("counters")
    meta = nb.doc.get(ROOT, "metadata")
    assert meta is not None
    with pytest.raises(DocumentError, match="panicked"):
        get(nb.doc, meta[1], "visits")
    # Not poisoned: it is edited, saved and loaded again.
    nb.set_source("good", "x = 2")
    nb.set_metadata("after", 1)
    again = NotebookDoc.load(nb.save())
    assert again.source("good") == "x = 2"
    assert again.metadata()["after"] == 1


def test_read_json_reports_the_path_of_what_it_left_out() -> None:
    nb = _load("counters")
    meta = nb.doc.get(ROOT, "metadata")
    assert meta is not None
    problems: list[str] = []
    value = read_json(nb.doc, meta[1], problems=problems, where="metadata")
    assert "visits" not in value
    assert problems == [
        "metadata/visits: a value the Python Automerge binding cannot read (a Counter?); left out"
    ]


def test_edits_of_a_cell_whose_metadata_holds_a_counter_work() -> None:
    nb = _load("counters")
    nb.set_cell_metadata("js-counter", "tags", ["ok"])
    assert nb.cell("js-counter").metadata["tags"] == ["ok"]
    nb.splice_source("js-counter", 0, 0, "# ")
    assert nb.source("js-counter") == "# print('counted')"


def test_merging_js_changes_into_a_replica_keeps_it_readable() -> None:
    replica = _load("base")
    replica.doc.merge(Document.load((FIXTURES / "counters.automerge").read_bytes()))
    assert "js-counter" in replica.cell_ids()
    assert replica.problems()
