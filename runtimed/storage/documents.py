"""Crash recovery: each open notebook's Automerge document persisted under RUNTIMED_HOME.

For every notebook the daemon keeps, in ``<home>/documents/``:

* ``<key>.automerge`` — the notebook document (full history: no acknowledged edit is lost);
* ``<key>.runtime.json`` — a snapshot of runtime state (outputs, counts), no history;
* ``<key>.json`` — which file it belongs to and the file's sha256 when last loaded/saved.

``key`` is a hash of the absolute ``.ipynb`` path (or the doc id for untitled notebooks).
On open, the persisted document is used when the file on disk is unchanged since the
daemon last read or wrote it. If the file was changed by someone else, the file wins; the
old document is dropped when it held nothing the daemon had not written to (or read from)
the file it last saw (``saved`` in ``<key>.json``: e.g. ``runt run`` rewriting its own
earlier output), else kept aside as ``<key>.<time>.stale.automerge``; those are removed by
:meth:`DocumentStore.remove_stale` (``runt gc``) once older than :data:`STALE_MAX_AGE`.
Blocking: run in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STALE_MAX_AGE", "DocumentStore", "NotebookMeta", "PersistedNotebook", "file_digest"]

#: Documents set aside (``*.stale.automerge``) older than this (seconds) are removed by gc.
STALE_MAX_AGE = 7 * 86400.0

NotebookMeta = tuple[str | None, str, str | None, bool]
"""What ``<key>.json`` records: (file path, doc id, file sha256, saved: the document holds
no edit that file lacks)."""


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class PersistedNotebook:
    notebook: bytes
    runtime: dict[str, Any]
    file_sha256: str | None
    saved: bool = False
    """When last persisted, the document held no edit the daemon had not checkpointed to
    (or loaded from) the file whose sha256 is recorded."""


class DocumentStore:
    """Persisted Automerge documents, keyed by notebook path or doc id."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def key_for(path: Path | None, doc_id: str) -> str:
        """The store key of a notebook: its path (absolute and resolved, as the daemon keeps
        every room's path; not resolved again here, which would touch the file system on the
        event loop) or, for an untitled notebook, its document id."""
        if path is None:
            return f"untitled-{doc_id}"
        return hashlib.sha256(str(path).encode()).hexdigest()[:32]

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return (
            self.root / f"{key}.automerge",
            self.root / f"{key}.runtime.json",
            self.root / f"{key}.json",
        )

    def load(self, key: str) -> PersistedNotebook | None:
        doc_path, runtime_path, meta_path = self._paths(key)
        try:
            notebook = doc_path.read_bytes()
        except OSError:
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            # A crash between the two writes: keep the document; with no recorded file hash
            # the caller treats the file as changed and sets this document aside.
            meta = {}
        try:
            runtime = json.loads(runtime_path.read_text())
        except (OSError, ValueError):
            runtime = {}
        return PersistedNotebook(
            notebook, runtime, meta.get("file_sha256"), meta.get("saved") is True
        )

    def save(
        self,
        key: str,
        *,
        notebook: bytes | None,
        runtime: dict[str, Any] | None,
        meta: NotebookMeta | None,
    ) -> None:
        """Write the parts given (None: that part is unchanged on disk), each atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        doc_path, runtime_path, meta_path = self._paths(key)
        if notebook is not None:
            _atomic_write(doc_path, notebook)
        if runtime is not None:
            _atomic_write(runtime_path, json.dumps(runtime).encode())
        if meta is not None:
            path, doc_id, file_sha256, saved = meta
            record = {"path": path, "doc_id": doc_id, "file_sha256": file_sha256, "saved": saved}
            _atomic_write(meta_path, json.dumps(record).encode())

    def referenced_blobs(self, *, skip_keys: frozenset[str] = frozenset()) -> set[str]:
        """Blob hashes referenced by persisted runtime snapshots (GC marking), except those
        of ``skip_keys`` (open notebooks, whose live documents are newer)."""
        from runtimed.documents.manifests import manifest_hashes

        hashes: set[str] = set()
        for snapshot_path in self.root.glob("*.runtime.json"):
            if snapshot_path.name.removesuffix(".runtime.json") in skip_keys:
                continue
            try:
                snapshot = json.loads(snapshot_path.read_text())
            except (OSError, ValueError):
                continue
            for cell in snapshot.get("cells", {}).values():
                for raw in cell.get("outputs", []) if isinstance(cell, dict) else []:
                    try:
                        manifest = json.loads(raw) if isinstance(raw, str) else raw
                    except ValueError:
                        continue
                    if isinstance(manifest, dict):
                        hashes |= manifest_hashes(manifest)
        return hashes

    def discard(self, key: str) -> None:
        """Forget a superseded document that holds nothing the file lacks."""
        with contextlib.suppress(FileNotFoundError):
            self._paths(key)[0].unlink()

    def remove_stale(self, *, max_age: float = STALE_MAX_AGE, now: float | None = None) -> int:
        """Delete set-aside documents older than ``max_age`` seconds; returns how many."""
        limit = (time.time() if now is None else now) - max_age
        removed = 0
        for path in self.root.glob("*.stale.automerge"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
        return removed

    def set_aside(self, key: str) -> Path | None:
        """Keep a superseded document (the file changed underneath it) instead of deleting it."""
        doc_path = self._paths(key)[0]
        if not doc_path.exists():
            return None
        target = self.root / f"{key}.{int(time.time())}.stale.automerge"
        os.replace(doc_path, target)
        return target


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
