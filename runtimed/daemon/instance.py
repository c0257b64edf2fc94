"""One daemon per socket: an flock-held lock file next to the socket.

The kernel drops the lock when the process dies, so a crashed daemon never blocks the next
start; a stale socket file left by it is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from runtimed.errors import DaemonAlreadyRunning

__all__ = ["InstanceLock", "read_lock_info"]


def read_lock_info(lock_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(lock_path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class InstanceLock:
    """Exclusive ownership of a socket path for this process."""

    def __init__(self, lock_path: Path, *, socket: Path) -> None:
        self._path = lock_path
        self._socket = socket
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises: DaemonAlreadyRunning, naming the running daemon's pid and socket."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
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

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None
