"""The sweep phase of blob garbage collection (blocking; run in a worker thread).

:meth:`blobstore.BlobStore.gc` computes the live set and calls :func:`sweep`. Every
deletion re-checks protection and mtime under the store's lock, the same lock ``put`` holds
while it checks for and touches an existing blob, so a blob is either touched before the
check (and kept) or deleted before ``put`` looks (and rewritten by it).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from blobstore._fs import CORRUPT_SUFFIX, META_SUFFIX, TMP_PREFIX, is_hash, shard_dirs

__all__ = ["GcReport", "sweep"]


class GcReport(msgspec.Struct, frozen=True):
    """What one gc did. ``temp_files_removed`` counts stale temp files and quarantined
    corrupt blobs; orphan sidecars are removed silently."""

    blobs_removed: int
    bytes_freed: int
    blobs_kept: int
    temp_files_removed: int = 0


class _Sweep:
    def __init__(
        self, lock: threading.Lock, is_protected: Callable[[str], bool], cutoff: float
    ) -> None:
        self.lock = lock
        self.is_protected = is_protected  # called with lock held
        self.cutoff = cutoff

    def remove_blob(self, path: Path) -> int | None:
        """Delete blob + sidecar if unprotected and old; return freed bytes or None."""
        with self.lock:
            if self.is_protected(path.name):
                return None
            try:
                st = os.stat(path)
                if st.st_mtime >= self.cutoff:
                    return None
                os.unlink(path)
            except FileNotFoundError:
                return None
            # Inside the lock: a put that starts after this sees no blob and rewrites both.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.with_name(path.name + META_SUFFIX))
        return st.st_size

    def unlink_if_old(self, path: Path, tag: str, *, unless_exists: Path | None = None) -> bool:
        with self.lock:
            if self.is_protected(tag):
                return False
            if unless_exists is not None and unless_exists.exists():
                return False
            try:
                if os.stat(path).st_mtime >= self.cutoff:
                    return False
                os.unlink(path)
            except FileNotFoundError:
                return False
        return True


def sweep(
    root: Path,
    *,
    live: set[str],
    cutoff: float,
    lock: threading.Lock,
    is_protected: Callable[[str], bool],
) -> GcReport:
    """Remove unreferenced, unprotected blobs (and stale temp/sidecar/corrupt files) under
    ``root`` whose mtime is before ``cutoff``. Files with foreign names are never touched.

    Args:
        root: the store root.
        live: referenced hashes (never removed).
        cutoff: epoch seconds; only files last modified before it are removed.
        lock: the store's lock; held around each check-and-delete.
        is_protected: called with ``lock`` held; True keeps the hash (pinned, in flight,
            or put since this gc started).
    """
    s = _Sweep(lock, is_protected, cutoff)
    removed = freed = kept = temps = 0
    for shard in shard_dirs(root):
        try:
            names = {e.name for e in os.scandir(shard)}
        except FileNotFoundError:
            continue
        for name in sorted(names):
            path = shard / name
            if name.startswith(TMP_PREFIX) or name.endswith(CORRUPT_SUFFIX):
                # Temp files are named after the hash they carry: skip in-flight puts.
                if s.unlink_if_old(path, name.removeprefix(TMP_PREFIX)[:64]):
                    temps += 1
            elif name.endswith(META_SUFFIX):
                h = name.removesuffix(META_SUFFIX)
                if is_hash(h) and h not in names:  # orphan sidecar from a crash
                    s.unlink_if_old(path, h, unless_exists=shard / h)
            elif is_hash(name) and shard.name == name[2:4] and shard.parent.name == name[:2]:
                if name in live:
                    kept += 1
                    continue
                size = s.remove_blob(path)
                if size is None:
                    kept += 1
                else:
                    removed += 1
                    freed += size
    return GcReport(
        blobs_removed=removed, bytes_freed=freed, blobs_kept=kept, temp_files_removed=temps
    )
