"""Starting a daemon in the background, and a start begun before the client needs it.

A first ``runt run`` (no daemon yet) spends ~70 ms importing what a run needs and preparing
the notebook before it connects, and only then would start the daemon, whose own start-up
(~180 ms) the run then waits for. :func:`start_early` (called by ``runt``'s entry point for
``runt run``) starts the daemon at once instead, so both start-ups run side by side; the
connection that would have started a daemon takes that process over (:func:`take_early`) and
waits for it exactly as for one it started itself: its exit and its stderr explain a failed
start the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

__all__ = ["spawn_daemon", "start_early", "take_early"]

# socket path -> (the daemon process started early, the file its stderr goes to)
_EARLY: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}


def spawn_daemon(
    socket: Path,
    *,
    home: Path | None = None,
    stderr: Any = subprocess.DEVNULL,
    log_level: str | None = None,
    config: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a daemon in the background (its own session, so it outlives this process).

    ``stderr``: where its standard error goes (a file, to show why a start failed: the
    daemon may fail before it has a log); ``home``, ``log_level``, ``config``: its options
    of those names (default: its own)."""
    cmd = [sys.executable, "-m", "runtimed.daemon.main", "--socket", str(socket)]
    if home is not None:
        cmd += ["--home", str(home)]
    if log_level:
        cmd += ["--log-level", log_level]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
        close_fds=True,
    )


def start_early(socket: Path) -> subprocess.Popen[bytes] | None:
    """Start a daemon on ``socket`` now if nothing is there; the process, or None.

    "Nothing there" is no socket file: a file is a daemon, or a stale socket that the
    connection's own start deals with as before. Nothing is started in a directory
    :func:`~runtimed.paths.check_socket_dir` refuses (the connection reports it)."""
    from runtimed.paths import UnsafeDirectory, check_socket_dir

    key = str(socket)
    if key in _EARLY:
        return None
    try:
        check_socket_dir(socket)
        if os.path.lexists(socket):
            return None
        said = tempfile.TemporaryFile()  # noqa: SIM115  (handed over with the process)
    except (UnsafeDirectory, OSError):
        return None  # the connection finds the same problem and says what it is
    try:
        process = spawn_daemon(socket, stderr=said)
    except OSError:
        said.close()
        return None
    _EARLY[key] = (process, said)
    return process


def take_early(socket: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]] | None:
    """The daemon :func:`start_early` started on ``socket`` (now the caller's, with its
    stderr file to close), or None."""
    return _EARLY.pop(str(socket), None)
