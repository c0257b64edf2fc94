"""Turning files into rooms and rooms into files (the nbformat boundary).

Outputs travel as manifests in the runtime document; here they become nbformat outputs
again for a checkpoint, and nbformat outputs become manifests when a file is opened.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from automerge.core import ROOT

from runtimed.notebook_doc import NotebookDoc
from runtimed.outputs_manifest import manifest_from_output, output_from_manifest
from runtimed.persistence import DocumentStore
from runtimed.room import NotebookRoom
from runtimed.runtime_doc import RuntimeDoc

__all__ = ["build_room", "new_room", "notebook_for_save"]

log = logging.getLogger(__name__)


def build_room(path: Path, nb: dict[str, Any], digest: str, store: DocumentStore) -> NotebookRoom:
    """A room for a file just read: the persisted document when the file is unchanged since
    the daemon last saw it (crash recovery keeps edits made after the last checkpoint),
    otherwise a document built from the file."""
    key = DocumentStore.key_for(path, "")
    persisted = store.load(key)
    if persisted is not None and persisted.file_sha256 == digest:
        try:
            notebook = NotebookDoc.load(persisted.notebook)
            if notebook.ready and notebook.doc_id:
                runtime = RuntimeDoc.from_snapshot(persisted.runtime)
                log.info("opened %s from its persisted document", path)
                return NotebookRoom(notebook_id=notebook.doc_id, path=path,
                                    notebook=notebook, runtime=runtime)
        except Exception:
            log.exception("persisted document for %s is unreadable; loading the file", path)
    if persisted is not None:
        aside = store.set_aside(key)
        log.warning("%s changed outside the daemon; previous document kept at %s", path, aside)
    notebook = NotebookDoc.from_nbformat(nb)
    runtime = RuntimeDoc.new()
    by_id = {cell.get("id"): cell for cell in nb.get("cells", [])}
    # Cells that had no id got fresh ones in order; match them up by position.
    for cell_id, cell in zip(notebook.cell_ids(), nb.get("cells", []), strict=True):
        source_cell = by_id.get(cell_id, cell)
        if source_cell.get("cell_type") == "code":
            outputs = [manifest_from_output(o) for o in source_cell.get("outputs", [])]
            if outputs or source_cell.get("execution_count") is not None:
                runtime.load_cell(cell_id, source_cell.get("execution_count"), outputs)
    return NotebookRoom(notebook_id=notebook.doc_id, path=path, notebook=notebook,
                        runtime=runtime)


def new_room(path: Path | None, *, kernel_name: str | None) -> NotebookRoom:
    metadata: dict[str, Any] = {}
    if kernel_name:
        metadata["kernelspec"] = {"name": kernel_name, "display_name": kernel_name}
    else:
        metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                  "language": "python"}
        metadata["language_info"] = {"name": "python"}
    notebook = NotebookDoc.new(metadata=metadata)
    assert notebook.doc.get(ROOT, "doc_id") is not None
    return NotebookRoom(notebook_id=notebook.doc_id or uuid.uuid4().hex, path=path,
                        notebook=notebook, runtime=RuntimeDoc.new())


def notebook_for_save(room: NotebookRoom) -> dict[str, Any]:
    """The nbformat dict to checkpoint: cells from the notebook document, outputs and
    execution counts from the runtime document."""

    def outputs_for(cell_id: str) -> tuple[int | None, list[dict[str, Any]]]:
        count, manifests = room.runtime.cell_state(cell_id)
        return count, [output_from_manifest(m) for m in manifests]

    return room.notebook.to_nbformat(outputs_for)
