"""Versions and "what changed since I looked" for a client's notebook replica.

The replica holds the notebook document's full history (sync delivers every change) and the
runtime document's execution records, so this needs no daemon request: see
:mod:`runtimed.documents.history` for what a version and a diff are.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from runtimed.documents.history import (
    NotebookDiff,
    diff_documents,
    format_version,
    max_seq,
    versions,
)
from runtimed.documents.runtime import RuntimeDoc

if TYPE_CHECKING:
    from runtimed.client.notebook import AsyncNotebook

__all__ = ["changes_since", "notebook_version", "notebook_versions"]


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
