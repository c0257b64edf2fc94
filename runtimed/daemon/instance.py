"""One daemon per socket: an flock-held lock file next to the socket.

The kernel drops the lock when the process dies, so a crashed daemon never blocks the next
start; a stale socket file left by it is removed. The lock file is opened with
``O_NOFOLLOW`` and must be our own regular file: a symlink planted in its place would
otherwise make the daemon truncate and write the file it points to.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from runtimed.errors import DaemonAlreadyRunning
from runtimed.paths import UnsafeDirectory

__all__ = ["InstanceLock", "read_lock_info"]


_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def read_lock_info(lock_path: Path) -> dict[str, Any]:
    try:
        fd = os.open(lock_path, os.O_RDONLY | _OPEN_FLAGS)  # never through a symlink
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = json.loads(os.read(fd, 64 * 1024))
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else {}


class InstanceLock:
    """Exclusive ownership of a socket path for this process."""

    def __init__(self, lock_path: Path, *, socket: Path) -> None:
        self._path = lock_path
        self._socket = socket
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises: DaemonAlreadyRunning, naming the running daemon's pid and socket."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = read_lock_info(self._path)
            raise DaemonAlreadyRunning(
                f"runtimed is already running (pid {info.get('pid', '?')}) on socket "
                f"{info.get('socket', self._socket)}; stop it with 'runt daemon stop'"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "socket": str(self._socket), "started": time.time()}
            ).encode(),
        )
        self._fd = fd

    def _open(self) -> int:
        """The lock file, opened without following a symlink and checked to be our own
        regular file (a planted symlink or FIFO is refused, never written through)."""
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeDirectory(
                    f"refusing the lock file {self._path}: it is a symlink; remove it"
                ) from exc
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            os.close(fd)
            raise UnsafeDirectory(
                f"refusing the lock file {self._path}: not a regular file of yours; remove it"
            )
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None
