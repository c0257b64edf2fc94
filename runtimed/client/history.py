"""Versions and "what changed since I looked" for a client's notebook replica.

The replica holds the notebook document's full history (sync delivers every change) and the
runtime document's execution records, so this needs no daemon request: see
:mod:`runtimed.documents.history` for what a version and a diff are.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from runtimed.documents.history import (
    NotebookDiff,
    diff_documents,
    format_version,
    max_seq,
    versions,
    with_checkpoints,
)
from runtimed.documents.runtime import RuntimeDoc
from runtimed.errors import InvalidRequest
from runtimed.storage.documents import DocumentStore
from runtimed.storage.journal import Checkpoint, read_checkpoints

if TYPE_CHECKING:
    from runtimed.client.async_client import AsyncClient
    from runtimed.client.notebook import AsyncNotebook

__all__ = [
    "changes_since",
    "checkpoint_version",
    "notebook_checkpoints",
    "notebook_log",
    "notebook_version",
    "notebook_versions",
]

CHECKPOINT_PREFIX = "ck:"


_seq_cache: weakref.WeakKeyDictionary[RuntimeDoc, tuple[list[bytes], int]] = (
    weakref.WeakKeyDictionary()
)


def _seq(runtime: RuntimeDoc) -> int:
    # Reads a version on every tool call: the sequence only changes with the runtime
    # document's heads, so it is computed again only then.
    heads = list(runtime.doc.get_heads())
    cached = _seq_cache.get(runtime)
    if cached is not None and cached[0] == heads:
        return cached[1]
    seq = max_seq(runtime)
    _seq_cache[runtime] = (heads, seq)
    return seq


def notebook_version(notebook: AsyncNotebook) -> str:
    """The notebook's current version (document heads and execution sequence), opaque."""
    return format_version(notebook.doc.heads_hex(), _seq(notebook.runtime))


def changes_since(notebook: AsyncNotebook, version: str, to: str | None = None) -> NotebookDiff:
    """What changed from ``version`` to ``to`` (None: the replica now).

    Raises:
        InvalidRequest: a version is malformed or not one of this notebook's.
    """
    return diff_documents(notebook.doc, notebook.runtime, version, to)


def notebook_versions(notebook: AsyncNotebook) -> list[dict[str, Any]]:
    """The document's history as versions, oldest first (``runt log``)."""
    return versions(notebook.doc, max_seq(notebook.runtime))


async def notebook_checkpoints(client: AsyncClient, notebook: AsyncNotebook) -> list[Checkpoint]:
    """The saves the daemon journaled for this notebook, oldest first (none for a notebook
    never saved). Read from the daemon's state directory, as blobs are (same machine).

    Raises:
        OSError: the journal exists but cannot be read.
    """
    if notebook.path is None:
        return []
    status = await client.status()
    store = DocumentStore(Path(status.home) / "documents")
    journal = store.journal_path(DocumentStore.key_for(notebook.path, notebook.id))
    return await anyio.to_thread.run_sync(read_checkpoints, journal)


def _checkpoint_entry(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "kind": "checkpoint",
        "checkpoint": checkpoint.name,
        "version": format_version(checkpoint.heads, checkpoint.seq),
        "time": checkpoint.time,
        "path": checkpoint.path,
        "sha256": checkpoint.sha256,
    }


async def notebook_log(client: AsyncClient, notebook: AsyncNotebook) -> list[dict[str, Any]]:
    """Versions and saved checkpoints, in history order (``runt log``): each entry has
    ``kind`` ``"version"`` or ``"checkpoint"``; see
    :func:`runtimed.documents.history.with_checkpoints`."""
    checkpoints = await notebook_checkpoints(client, notebook)
    boundaries = {h for c in checkpoints for h in c.heads}
    return with_checkpoints(
        notebook.doc,
        versions(notebook.doc, max_seq(notebook.runtime), boundaries=boundaries),
        [(c.heads, _checkpoint_entry(c)) for c in checkpoints],
    )


async def checkpoint_version(client: AsyncClient, notebook: AsyncNotebook, name: str) -> str:
    """The version of checkpoint ``name`` (``ck:<file sha256 prefix>``, as ``runt log``
    prints it; the newest save of that file content if it was saved more than once).

    Raises:
        InvalidRequest: no checkpoint of this notebook has that name.
    """
    prefix = name.removeprefix(CHECKPOINT_PREFIX)
    found = [
        c
        for c in await notebook_checkpoints(client, notebook)
        if prefix and c.sha256.startswith(prefix)
    ]
    if not found:
        raise InvalidRequest(
            f"no saved checkpoint {name!r} of {notebook.path or notebook.id}; 'runt log' lists them"
        )
    return format_version(found[-1].heads, found[-1].seq)
