"""The checkpoint journal: every ``.ipynb`` save the daemon made of one notebook.

One file per notebook beside its persisted document (``<documents>/<key>.checkpoints.jsonl``,
see :meth:`DocumentStore.journal_path`), one JSON object per line::

    {"v": 1, "time": 1764590000.25, "path": "/abs/nb.ipynb", "sha256": "<file sha256>",
     "heads": ["<change hash>", ...], "seq": 12}

``heads`` are the notebook document's heads the file was written from and ``seq`` the
runtime document's execution sequence then: together a version (``runt diff --since``).

* **Append-only, durable**: a save appends its line with ``O_APPEND`` and fsyncs it before
  the save is answered. The line is written after the file replaced the old one, so the journal
  never names a file that was not written; a crash between the two loses that one line.
* **Bounded**: past :data:`MAX_BYTES` the journal is rewritten (atomically: temp file, fsync,
  rename) with its newest :data:`KEEP` entries.
* **Never through a symlink**: every open uses ``O_NOFOLLOW`` (temp files also ``O_EXCL``).
* **Bad lines are skipped** with a warning (a torn last line after a crash, a hand edit).

Blocking: call from a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimed.storage.documents import atomic_write

__all__ = ["KEEP", "MAX_BYTES", "Checkpoint", "append_checkpoint", "read_checkpoints"]

log = logging.getLogger(__name__)

KEEP = 100
"""Entries kept when the journal is compacted."""
MAX_BYTES = 256 * 1024
"""Past this size the journal is compacted to its newest :data:`KEEP` entries."""
_MAX_LINE = 64 * 1024  # a longer line is not one we wrote

_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One save of a notebook to its ``.ipynb``."""

    time: float
    """Wall time of the save (seconds since the epoch)."""
    path: str
    sha256: str
    """The sha256 of the file as written."""
    heads: tuple[str, ...]
    """The notebook document's heads (hex) the file was written from."""
    seq: int
    """The runtime document's execution sequence at the save."""

    @property
    def name(self) -> str:
        """A short, stable name for this checkpoint: ``ck:`` and the file hash's first 12
        hex digits (what ``runt log`` prints and ``--since`` accepts)."""
        return f"ck:{self.sha256[:12]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "time": self.time,
            "path": self.path,
            "sha256": self.sha256,
            "heads": list(self.heads),
            "seq": self.seq,
        }

    @classmethod
    def from_json(cls, data: object) -> Checkpoint:
        """Raises ValueError: not a checkpoint line of version 1."""
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a version 1 checkpoint")
        time, path, sha, heads, seq = (
            data.get(k) for k in ("time", "path", "sha256", "heads", "seq")
        )
        if not isinstance(time, (int, float)) or not isinstance(path, str):
            raise ValueError("bad time or path")
        if not isinstance(sha, str) or len(sha) != 64:
            raise ValueError("bad sha256")
        if not isinstance(heads, list) or not all(
            isinstance(h, str) and len(h) == 64 for h in heads
        ):
            raise ValueError("bad heads")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("bad seq")
        return cls(time=float(time), path=path, sha256=sha, heads=tuple(heads), seq=seq)


def _line(entry: Checkpoint) -> bytes:
    return json.dumps(entry.to_json(), separators=(",", ":")).encode() + b"\n"


def append_checkpoint(journal: Path, entry: Checkpoint) -> None:
    """Append ``entry`` (fsynced), compacting the journal first when it grew past
    :data:`MAX_BYTES`.

    Raises:
        OSError: the journal could not be written (a symlink in its place: ``ELOOP``).
    """
    fd = os.open(journal, _APPEND_FLAGS, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size <= MAX_BYTES:
            _write_all(fd, _line(entry))
            os.fsync(fd)
            return
    finally:
        os.close(fd)
    kept = read_checkpoints(journal)[-(KEEP - 1) :]
    atomic_write(journal, b"".join(_line(e) for e in [*kept, entry]))


def read_checkpoints(journal: Path) -> list[Checkpoint]:
    """The journal's entries, oldest first (none if there is no journal; bad lines are
    skipped with a warning).

    Raises:
        OSError: the journal exists but cannot be read (a symlink in its place: ``ELOOP``).
    """
    try:
        fd = os.open(journal, _READ_FLAGS)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    entries: list[Checkpoint] = []
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            if len(raw) > _MAX_LINE:
                raise ValueError("line too long")
            entries.append(Checkpoint.from_json(json.loads(raw)))
        except ValueError as exc:
            log.warning("%s:%d: skipped a bad checkpoint line (%s)", journal, number, exc)
    return entries


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
