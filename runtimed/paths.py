"""Where the daemon listens and keeps its state (platformdirs, overridable).

No other user gets in: the socket directory and the state directories must be real
directories (not symlinks), owned by us, and writable by nobody else. A directory that fails
this is refused with :class:`UnsafeDirectory`, naming the directory, its owner and mode, and
what to do; one of ours that other users can merely read or enter is tightened to 0700.
Otherwise a user who created ``/tmp/runtimed-<uid>`` first (mode 0777) could swap the socket
and read every client's traffic, or plant a symlink for the lock file to overwrite.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import warnings
from pathlib import Path

from runtimed.errors import RuntimedError

__all__ = [
    "RuntimedPaths",
    "UnsafeDirectory",
    "check_private_dir",
    "check_socket_dir",
    "default_home",
    "default_socket_path",
    "ensure_private_dir",
    "resolve_paths",
]

APP = "runtimed"
SOCKET_ENV = "RUNTIMED_SOCKET"
HOME_ENV = "RUNTIMED_HOME"


class UnsafeDirectory(RuntimedError, PermissionError):
    """A directory the daemon would keep its socket or state in is not safely ours."""


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def ensure_private_dir(path: Path, what: str) -> None:
    """Create ``path`` (mode 0700) or check that the existing one is safely ours (and
    tighten it to 0700 when others may read or enter it).

    Parents are created as needed with the default mode; only ``path`` itself is checked.

    Raises:
        UnsafeDirectory: as :func:`check_private_dir`.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True, mode=0o700)
    check_private_dir(path, what, tighten=True)


def check_private_dir(path: Path, what: str, *, tighten: bool = False) -> None:
    """Check that ``path`` is a real directory of ours that nobody else can write.

    A client can call this on the socket's directory before connecting, so that it never
    talks to a socket another user could have swapped in.

    Raises:
        UnsafeDirectory: ``path`` is a symlink, not a directory, owned by another user, or
            writable by its group or by others.
        FileNotFoundError: it does not exist.
    """
    info = os.lstat(path)
    fix = f"remove it (or point {what} elsewhere) and start again"
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeDirectory(f"refusing {what} {path}: it is a symlink; {fix}")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"refusing {what} {path}: it is not a directory; {fix}")
    if info.st_uid != os.getuid():
        raise UnsafeDirectory(
            f"refusing {what} {path}: it is owned by {_owner(info.st_uid)}, not by you "
            f"({_owner(os.getuid())}); another user could replace what the daemon puts "
            f"there; {fix}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise UnsafeDirectory(
            f"refusing {what} {path}: mode {mode:04o} lets other users write into it; "
            f"check what is in it, then 'chmod 700 {path}'"
        )
    if tighten and mode & 0o077:
        os.chmod(path, 0o700)  # ours, but others could list or enter it


def check_socket_dir(socket: Path, *, home: Path | None = None) -> None:
    """What a client checks before it connects to ``socket``: the socket's directory (and
    ``home``, the state directory it would autostart a daemon with) is a real directory of
    ours that nobody else can write. A directory that does not exist yet passes (the daemon
    creates it, 0700). Blocking (``lstat``): call it from a worker thread in async code.

    Raises:
        UnsafeDirectory: as :func:`check_private_dir`.
    """
    checks = [(socket.parent, "the socket directory")]
    if home is not None:
        checks.append((home, "the state directory"))
    for path, what in checks:
        with contextlib.suppress(FileNotFoundError):
            check_private_dir(path, what)


def default_socket_path() -> Path:
    """``$RUNTIMED_SOCKET``, else ``<user runtime dir>/runtimed/runtimed.sock``.

    When the platform runtime dir cannot be used (no ``/run/user/<uid>``, as in many
    containers), fall back to ``<tmp>/runtimed-<uid>/runtimed.sock``.
    """
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    # Imported here: a command given its socket (or $RUNTIMED_SOCKET) needs neither.
    import tempfile

    import platformdirs

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
    import platformdirs

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
        """Create (0700) or check the socket directory and the state directories.

        Raises:
            UnsafeDirectory: one of them is a symlink, not ours, or writable by others
                (a shared directory such as /tmp is refused as a socket directory too).
        """
        ensure_private_dir(self.socket.parent, "the socket directory")
        for directory in (self.home, self.documents, self.blobs, self.logs):
            ensure_private_dir(directory, "the state directory")


def resolve_paths(
    *, socket: str | os.PathLike[str] | None = None, home: str | os.PathLike[str] | None = None
) -> RuntimedPaths:
    return RuntimedPaths(
        socket=Path(socket) if socket else default_socket_path(),
        home=Path(home) if home else default_home(),
    )
