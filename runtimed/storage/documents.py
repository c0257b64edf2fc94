"""Crash recovery: each open notebook's Automerge document persisted under RUNTIMED_HOME.

For every notebook the daemon keeps, in ``<home>/documents/``:

* ``<key>.automerge`` — the notebook document (full history: no acknowledged edit is lost): a
  saved document followed by the change chunks persisted since (appended and fsynced, which
  costs the changes, not the document; ``Document.load`` reads the concatenation). A crash
  during an append can leave a torn last chunk: :meth:`DocumentStore.load` drops it (it was
  never fsynced, so never acknowledged). The persister rewrites the file whole once the
  appended changes outgrow the saved document;
* ``<key>.runtime.json`` — a snapshot of runtime state (outputs, counts), no history;
* ``<key>.json`` — which file it belongs to and the file's sha256 when last loaded/saved
  (and, while a save is under way, the sha256 of the file being written: ``pending_sha256``).

Crash consistency: each part is written atomically (temp file, fsync, rename, fsync of the
directory), the record first, then the document, then the runtime snapshot, so that whatever
a crash interrupts leaves a loadable state whose record never claims more than the document
holds (a record saying "unsaved" beside an older document is harmless; the reverse would not
be). A checkpoint records the hash of the file it is about to write before writing it, so a
crash between the new ``.ipynb`` replacing the old and the record's update still finds its
own file (either hash is accepted). Temp files a crash left behind are removed at start-up
(:meth:`DocumentStore.remove_interrupted`).

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
import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimed.documents.changechunk import complete_prefix

__all__ = [
    "CRASH_AFTER_ENV",
    "STALE_MAX_AGE",
    "DocumentStore",
    "NotebookMeta",
    "PersistedNotebook",
    "crash_point",
    "file_digest",
]

#: Documents set aside (``*.stale.automerge``) older than this (seconds) are removed by gc.
STALE_MAX_AGE = 7 * 86400.0

NotebookMeta = tuple[str | None, str, str | None, bool]
"""What ``<key>.json`` records: (file path, doc id, file sha256, saved: the document holds
no edit that file lacks); :meth:`DocumentStore.save` adds the pending sha256."""

#: Test-only fault injection: ``RUNTIMED_TEST_CRASH_AFTER=<step>`` makes the daemon kill
#: itself with SIGKILL right after that named step (tests/integration/test_durability.py,
#: bench/bench_crash.py). Steps: ``persist:record``, ``persist:notebook``, ``save:record``,
#: ``save:file``. Never set it outside tests.
CRASH_AFTER_ENV = "RUNTIMED_TEST_CRASH_AFTER"


def crash_point(step: str) -> None:
    """Test-only: SIGKILL this process if ``step`` is the one named in the environment."""
    if os.environ.get(CRASH_AFTER_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


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
    pending_sha256: str | None = None
    """The sha256 of a checkpoint the daemon was writing when it last persisted (a crash may
    have come after the file was replaced and before the record said so)."""

    def belongs_to(self, digest: str) -> bool:
        """The file with this sha256 is one the daemon read or wrote itself."""
        return digest in (self.file_sha256, self.pending_sha256)


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

    def journal_path(self, key: str) -> Path:
        """The notebook's checkpoint journal (:mod:`runtimed.storage.journal`)."""
        return self.root / f"{key}.checkpoints.jsonl"

    def load(self, key: str) -> PersistedNotebook | None:
        doc_path, runtime_path, meta_path = self._paths(key)
        try:
            notebook = _read(doc_path)
        except OSError:
            return None
        whole = complete_prefix(notebook)
        if 0 < whole < len(notebook):
            notebook = notebook[:whole]  # a torn append (crash): never acknowledged
        try:
            meta = json.loads(_read(meta_path))
        except (OSError, ValueError):
            # A crash between the two writes: keep the document; with no recorded file hash
            # the caller treats the file as changed and sets this document aside.
            meta = {}
        try:
            runtime = json.loads(_read(runtime_path))
        except (OSError, ValueError):
            runtime = {}
        pending = meta.get("pending_sha256")
        return PersistedNotebook(
            notebook,
            runtime,
            meta.get("file_sha256"),
            # A checkpoint was under way: whichever file is there, not known to be saved.
            meta.get("saved") is True and pending is None,
            pending if isinstance(pending, str) else None,
        )

    def save(
        self,
        key: str,
        *,
        notebook: bytes | None,
        runtime: dict[str, Any] | None,
        meta: NotebookMeta | None,
        pending_sha256: str | None = None,
        notebook_changes: bytes | None = None,
    ) -> None:
        """Write the parts given (None: that part is unchanged on disk), each atomically and
        durably: the record first, then the document, then the runtime snapshot (see the
        module docstring for why that order). ``pending_sha256`` (recorded with ``meta``):
        the sha256 of the checkpoint about to be written. ``notebook_changes``: change chunks
        appended (fsynced) to the document already on disk instead of rewriting it.

        Raises:
            FileNotFoundError: ``notebook_changes`` for a document not on disk.
            OSError: the disk refused a write.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        doc_path, runtime_path, meta_path = self._paths(key)
        if meta is not None:
            path, doc_id, file_sha256, saved = meta
            record = {
                "path": path,
                "doc_id": doc_id,
                "file_sha256": file_sha256,
                "saved": saved,
                "pending_sha256": pending_sha256,
            }
            atomic_write(meta_path, json.dumps(record).encode())
            crash_point("persist:record")
        if notebook is not None:
            atomic_write(doc_path, notebook)
            crash_point("persist:notebook")
        elif notebook_changes:
            _append(doc_path, notebook_changes)
            crash_point("persist:notebook")
        if runtime is not None:
            atomic_write(runtime_path, json.dumps(runtime).encode())

    def remove_interrupted(self) -> int:
        """Delete temp files an interrupted write left behind (start-up); returns how many."""
        removed = 0
        for path in self.root.glob(".*.tmp"):
            if _TEMP_NAME.fullmatch(path.name):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed

    def referenced_blobs(self, *, skip_keys: frozenset[str] = frozenset()) -> set[str]:
        """Blob hashes referenced by persisted runtime snapshots (GC marking), except those
        of ``skip_keys`` (open notebooks, whose live documents are newer)."""
        from runtimed.documents.manifests import manifest_hashes

        hashes: set[str] = set()
        for snapshot_path in self.root.glob("*.runtime.json"):
            if snapshot_path.name.removesuffix(".runtime.json") in skip_keys:
                continue
            try:
                snapshot = json.loads(_read(snapshot_path))
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


#: What :func:`atomic_write` names its temp files (``.<name>.<8 hex digits>.tmp``).
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


#: Flags for every file this store opens: never through a symlink planted in its place
#: (``O_NOFOLLOW``: the open fails with ELOOP), temp files only new (``O_EXCL``).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _read(path: Path) -> bytes:
    """The bytes of ``path``, refusing a symlink there (OSError ``ELOOP``)."""
    fd = os.open(path, _READ_FLAGS)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to the existing file ``path`` and fsync it (no rename: the directory
    entry is already durable). Never creates the file: changes alone are not a document."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory (the
    rename itself is durable only once the directory is). The temp file is created new
    (``O_EXCL | O_NOFOLLOW``, 0600) and the rename replaces whatever entry ``path`` was, a
    symlink included, never what a symlink points to."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, _TEMP_FLAGS, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temp file name for {path}")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
