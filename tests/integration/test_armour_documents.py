"""Documents written by the stock JS ``@automerge/automerge`` (tests/fixtures/automerge_js/):
Text where our schema says Str, Counters in metadata and in a cell's id. A real daemon reads
them (Text as its string), reports what it cannot read cell by cell, runs the healthy cells
and saves the notebook, whether the document was persisted that way or arrived by sync."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio
import pytest
from automerge.core import Document

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.documents.notebook import NotebookDoc
from runtimed.storage.documents import DocumentStore, file_digest

from .conftest import write_notebook

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "automerge_js"


async def _persist_as(daemon: Daemon, path: Path, document: bytes) -> None:
    # File work, in a worker thread: the test runs on the event loop it shares with the daemon.
    await anyio.to_thread.run_sync(_persist_as_sync, daemon, path, document)


def _fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.automerge").read_bytes()


def _persist_as_sync(daemon: Daemon, path: Path, document: bytes) -> None:
    """Make ``document`` the persisted state of ``path``, as if the daemon had crashed with
    it open (the file on disk is unchanged since, so the document is what opens)."""
    write_notebook(path, [{"cell_type": "code", "source": "placeholder"}])
    doc_id = NotebookDoc.load(document).doc_id
    store = DocumentStore(daemon.paths.documents)
    store.save(
        DocumentStore.key_for(path, ""),
        notebook=document,
        runtime={},
        meta=(str(path), doc_id, file_digest(path), True),
    )


async def test_text_fields_from_js_are_read_as_strings(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    path = short_tmp / "text.ipynb"
    await _persist_as(daemon, path, _fixture("text_fields"))
    nb = await client.open(path)
    cell = nb.cell("js-text")
    assert (cell.cell_type, cell.source, cell.problems) == (
        "markdown",
        "written from **JS**",
        (),
    )
    assert nb.cell_ids() == ["good", "good-md", "js-text"]  # position "a5" read from Text
    await nb.save()
    saved = json.loads(path.read_text())
    js = next(c for c in saved["cells"] if c["id"] == "js-text")
    assert js["cell_type"] == "markdown"
    assert "".join(js["source"]) == "written from **JS**"
    assert js["metadata"] == {"tags": ["from-js"]}


async def test_persisted_counters_are_reported_and_the_rest_saves(
    daemon: Daemon, client: AsyncClient, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_tmp / "counters.ipynb"
    await _persist_as(daemon, path, _fixture("counters"))
    nb = await client.open(path)
    assert nb.cell_ids() == ["good", "good-md", "js-counter", "js-counter-id"]
    counted = nb.cell("js-counter")
    assert counted.source == "print('counted')"
    assert counted.metadata == {"nested": {"deep": []}}
    assert any("metadata/runs" in p and "Counter" in p for p in counted.problems)
    assert any("'js-counter-id': id:" in p for p in nb.cell("js-counter-id").problems)
    result = await nb.execute("js-counter")
    assert result.ok, result
    with caplog.at_level(logging.WARNING, logger="runtimed.daemon.loading"):
        await nb.save()
    saved = json.loads(path.read_text())
    assert [c["id"] for c in saved["cells"]] == ["good", "good-md", "js-counter", "js-counter-id"]
    assert "".join(saved["cells"][2]["outputs"][0]["text"]) == "counted\n"
    assert "visits" not in saved["metadata"]
    assert saved["metadata"]["kernelspec"]["name"] == "python3"
    report = " ".join(r.getMessage() for r in caplog.records)
    assert "metadata/visits" in report
    assert "'js-counter'" in report


async def test_counters_arriving_by_sync_do_not_stop_the_daemon(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    """A replica merges the JS changes (Counters, made on the same history) and syncs them
    to the daemon; a second client then reads, edits, runs and saves that notebook."""
    path = short_tmp / "live.ipynb"
    await _persist_as(daemon, path, _fixture("base"))
    writer = await client.open(path)
    writer.doc.doc.merge(Document.load(_fixture("counters")))
    await writer.save()  # pushes the merged changes; answered once the daemon has them
    async with await AsyncClient.connect(daemon.paths.socket) as other:
        nb = await other.open(path)
        await nb.set_source("good", "x = 41 + 1\nx")
        result = await nb.execute("good")
        assert result.ok, result
        assert result.outputs[0]["data"]["text/plain"] == "42"
        assert "js-counter" in nb.cell_ids()
        await nb.save()
    saved = json.loads(path.read_text())
    assert {c["id"] for c in saved["cells"]} == {"good", "good-md", "js-counter", "js-counter-id"}
    assert "".join(saved["cells"][0]["source"]) == "x = 41 + 1\nx"
