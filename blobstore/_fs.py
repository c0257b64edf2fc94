"""Low-level filesystem helpers shared by the store and its GC (blocking; run in threads)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = [
    "CORRUPT_SUFFIX",
    "META_SUFFIX",
    "READ_FLAGS",
    "TMP_PREFIX",
    "atomic_write",
    "fsync_dir",
    "is_hash",
    "is_shard",
    "shard_dirs",
    "write_fully",
]

TMP_PREFIX = ".tmp-"  # followed by the hash being written, so gc can tell it is in flight
META_SUFFIX = ".meta"
CORRUPT_SUFFIX = ".corrupt"
_HEX = frozenset("0123456789abcdef")


def write_fully(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``: the one low-level write (tests patch it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


#: Never through a symlink planted in a file's place (ELOOP); temp files only new.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def atomic_write(path: Path, data: bytes, *, tag: str) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename; never leaves the temp.

    The temp file is created new (``O_EXCL | O_NOFOLLOW``, 0600); the rename replaces the
    entry at ``path`` (a symlink planted there included), never what a symlink points to.

    Raises:
        OSError: whatever the OS reports; the temp file is removed first.
    """
    for _ in range(100):
        tmp = str(path.parent / f"{TMP_PREFIX}{tag}-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, _TEMP_FLAGS, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temp file name for {path}")
    try:
        try:
            write_fully(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (best effort: not every OS can fsync a dir)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_hash(name: str) -> bool:
    """True if ``name`` is 64 lowercase hex characters."""
    return len(name) == 64 and set(name) <= _HEX


def is_shard(name: str) -> bool:
    """True if ``name`` is a shard directory name (2 lowercase hex characters)."""
    return len(name) == 2 and set(name) <= _HEX


def shard_dirs(root: Path) -> list[Path]:
    """All ``root/ab/cd`` shard directories (symlinks and foreign names are skipped)."""
    out: list[Path] = []
    with contextlib.suppress(FileNotFoundError):
        for a in os.scandir(root):
            if a.is_dir(follow_symlinks=False) and is_shard(a.name):
                out.extend(
                    Path(b.path)
                    for b in os.scandir(a.path)
                    if b.is_dir(follow_symlinks=False) and is_shard(b.name)
                )
    return out
