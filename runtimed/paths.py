"""Where the daemon listens and keeps its state (platformdirs, overridable)."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import platformdirs

__all__ = ["RuntimedPaths", "default_home", "default_socket_path", "resolve_paths"]

APP = "runtimed"
SOCKET_ENV = "RUNTIMED_SOCKET"
HOME_ENV = "RUNTIMED_HOME"


def default_socket_path() -> Path:
    """``$RUNTIMED_SOCKET``, else ``<user runtime dir>/runtimed/runtimed.sock``.

    When the platform runtime dir cannot be used (no ``/run/user/<uid>``, as in many
    containers), fall back to ``<tmp>/runtimed-<uid>/runtimed.sock``.
    """
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, cron); we have our
        # own fallback below.
        warnings.simplefilter("ignore")
        runtime_dir = Path(platformdirs.user_runtime_dir(APP, appauthor=False))
    if not os.environ.get("XDG_RUNTIME_DIR") and sys.platform.startswith("linux"):
        runtime_dir = Path(tempfile.gettempdir()) / f"runtimed-{os.getuid()}"
        return runtime_dir / "runtimed.sock"
    if runtime_dir.parent.is_dir() and os.access(runtime_dir.parent, os.W_OK):
        return runtime_dir / "runtimed.sock"
    return Path(tempfile.gettempdir()) / f"runtimed-{os.getuid()}" / "runtimed.sock"


def default_home() -> Path:
    """``$RUNTIMED_HOME``, else the platform's user data dir for runtimed."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


class RuntimedPaths:
    """Every path the daemon uses, derived from the socket path and the home directory."""

    def __init__(self, *, socket: Path, home: Path) -> None:
        self.socket = socket
        self.home = home

    @property
    def lock(self) -> Path:
        return self.socket.with_name(self.socket.name + ".lock")

    @property
    def documents(self) -> Path:
        return self.home / "documents"

    @property
    def blobs(self) -> Path:
        return self.home / "blobs"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs / "runtimed.log"

    def ensure(self) -> None:
        """Create the socket directory (0700) and the state directories."""
        # Only a directory we create is ours to restrict: $RUNTIMED_SOCKET may point into a
        # shared directory such as /tmp (the socket itself is 0600 either way).
        if not self.socket.parent.exists():
            self.socket.parent.mkdir(parents=True, mode=0o700)
            os.chmod(self.socket.parent, 0o700)
        for directory in (self.home, self.documents, self.blobs, self.logs):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def resolve_paths(
    *, socket: str | os.PathLike[str] | None = None, home: str | os.PathLike[str] | None = None
) -> RuntimedPaths:
    return RuntimedPaths(
        socket=Path(socket) if socket else default_socket_path(),
        home=Path(home) if home else default_home(),
    )
