"""Turning files into rooms and rooms into files (the nbformat boundary).

Outputs travel as manifests in the runtime document; here nbformat outputs become manifests
(big payloads moved into the blob store) when a file is opened, and manifests become
nbformat outputs again (blobs re-inlined) for a checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio

from blobstore import BlobError, BlobStore
from runtimed.daemon.comms import widget_state
from runtimed.daemon.manifests import resolve_output_async
from runtimed.daemon.room import NotebookRoom, RoomCallbacks
from runtimed.documents.notebook import NotebookDoc
from runtimed.documents.runtime import RuntimeDoc
from runtimed.errors import BlobUnavailable
from runtimed.storage.documents import DocumentStore
from runtimed.storage.ipynb import read_notebook_with_digest, set_widget_state

__all__ = ["load_room", "new_room", "notebook_for_save", "recover_untitled"]

log = logging.getLogger(__name__)


async def load_room(
    path: Path, store: DocumentStore, blobs: BlobStore, *, callbacks: RoomCallbacks
) -> tuple[NotebookRoom, str, bool]:
    """Read ``path`` and build its room (the persisted document when the file is unchanged
    since the daemon last saw it, so crash recovery keeps edits made after the last
    checkpoint), reporting changes to ``callbacks``. Returns the room, the file's sha256
    and whether the document is new (built from the file): the caller persists such a
    document before any client sees it, because every client edit is a change on top of
    it and a daemon killed before it was persisted would build a different one (another
    actor, another history) that those edits cannot merge into.

    Raises:
        NotebookNotFound, NotebookIOError, NotebookInvalid: from reading the file.
    """
    nb, digest = await anyio.to_thread.run_sync(_read, path)
    room = await anyio.to_thread.run_sync(_from_persisted, path, digest, store, callbacks)
    if room is not None:
        return room, digest, False
    manifests: dict[int, tuple[int | None, list[dict[str, Any]]]] = {}
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        outputs = [await blobs.store_output(o) for o in cell.get("outputs", [])]
        if outputs or cell.get("execution_count") is not None:
            manifests[index] = (cell.get("execution_count"), outputs)
    room = await anyio.to_thread.run_sync(_from_file, path, nb, manifests, callbacks)
    return room, digest, True


def _read(path: Path) -> tuple[dict[str, Any], str]:
    # One bounded read of a regular file (a FIFO or /dev/zero is refused, never waited on
    # or read without end), and the digest of exactly the bytes parsed.
    return read_notebook_with_digest(path)


def _from_persisted(
    path: Path, digest: str, store: DocumentStore, callbacks: RoomCallbacks
) -> NotebookRoom | None:
    key = DocumentStore.key_for(path, "")
    persisted = store.load(key)
    if persisted is None:
        return None
    if persisted.belongs_to(digest):  # the file it recorded, or the checkpoint under way
        try:
            notebook = NotebookDoc.load(persisted.notebook)
            if notebook.ready and notebook.doc_id:
                log.info("opened %s from its persisted document", path)
                room = NotebookRoom(
                    notebook_id=notebook.doc_id,
                    path=path,
                    notebook=notebook,
                    runtime=RuntimeDoc.from_snapshot(persisted.runtime),
                    callbacks=callbacks,
                )
                room.dirty_since_save = not persisted.saved  # edits recovered after a crash
                return room
        except Exception:  # the binding raises bare Exceptions for corrupt documents
            log.exception("persisted document for %s is unreadable; loading the file", path)
    if persisted.saved and persisted.file_sha256 is not None:
        # The daemon had written (or read) everything its document held to that file, which
        # was since replaced (runt run rewriting its earlier output): nothing to keep.
        store.discard(key)
        log.info("%s was rewritten since the daemon saved it; loading the new file", path)
        return None
    aside = store.set_aside(key)
    log.warning("%s changed outside the daemon; its previous document is kept at %s", path, aside)
    return None


def _from_file(
    path: Path,
    nb: dict[str, Any],
    manifests: dict[int, tuple[int | None, list[dict[str, Any]]]],
    callbacks: RoomCallbacks,
) -> NotebookRoom:
    notebook = NotebookDoc.from_nbformat(nb)
    runtime = RuntimeDoc.new()
    cell_ids = notebook.cell_ids()
    for index, (count, outputs) in manifests.items():
        runtime.load_cell(cell_ids[index], count, outputs)
    return NotebookRoom(
        notebook_id=notebook.doc_id,
        path=path,
        notebook=notebook,
        runtime=runtime,
        callbacks=callbacks,
    )


def recover_untitled(
    notebook_id: str, store: DocumentStore, callbacks: RoomCallbacks
) -> NotebookRoom | None:
    """The room of an untitled (never saved) notebook a previous daemon persisted, by its id,
    or None when the store has no readable document of that id. A client that had it open
    rejoins it after a restart (its replica then merges what it edited meanwhile)."""
    persisted = store.load(DocumentStore.key_for(None, notebook_id))
    if persisted is None:
        return None
    try:
        notebook = NotebookDoc.load(persisted.notebook)
        if not (notebook.ready and notebook.doc_id == notebook_id):
            return None
    except Exception:  # the binding raises bare Exceptions for corrupt documents
        log.exception("persisted untitled notebook %s is unreadable", notebook_id)
        return None
    log.info("recovered untitled notebook %s from its persisted document", notebook_id)
    room = NotebookRoom(
        notebook_id=notebook_id,
        path=None,
        notebook=notebook,
        runtime=RuntimeDoc.from_snapshot(persisted.runtime),
        callbacks=callbacks,
    )
    room.dirty_since_save = True  # never saved to a file
    return room


def new_room(
    path: Path | None, *, kernel_name: str | None, callbacks: RoomCallbacks
) -> NotebookRoom:
    """A room for a brand-new notebook with no cells."""
    metadata: dict[str, Any]
    if kernel_name:
        metadata = {"kernelspec": {"name": kernel_name, "display_name": kernel_name}}
    else:
        metadata = {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        }
    notebook = NotebookDoc.new(metadata=metadata)
    return NotebookRoom(
        notebook_id=notebook.doc_id,
        path=path,
        notebook=notebook,
        runtime=RuntimeDoc.new(),
        callbacks=callbacks,
    )


async def notebook_for_save(room: NotebookRoom, blobs: BlobStore) -> dict[str, Any]:
    """The nbformat dict to checkpoint: cells from the notebook document, outputs (blobs
    re-inlined, base64 for binary) and execution counts from the runtime document."""
    states: dict[str, tuple[int | None, list[dict[str, Any]]]] = {}
    problems = room.notebook.problems()
    if problems:
        # Written anyway: the readable rest of the notebook must not be held hostage by one
        # value another Automerge library wrote (docs/principles.md, "Guarantees").
        log.warning(
            "saving %s without what cannot be read: %s",
            room.path or room.notebook_id,
            "; ".join(problems),
        )
    for cell in room.notebook.cells():
        if cell.cell_type == "code":
            count, manifests = room.runtime.cell_state(cell.id)
            try:
                outputs = [await resolve_output_async(m, blobs) for m in manifests]
            except BlobError as exc:
                raise BlobUnavailable(
                    f"cannot save: an output of cell {cell.id!r} is unavailable: {exc}; "
                    "re-run the cell or clear its outputs"
                ) from exc
            states[cell.id] = (count, outputs)
    nb = room.notebook.to_nbformat(lambda cell_id: states.get(cell_id, (None, [])))
    set_widget_state(nb, await widget_state(room.runtime, blobs))
    return nb
