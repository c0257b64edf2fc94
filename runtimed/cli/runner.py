"""The warm runner: a ``runt run`` handed to a process that has already imported ``runt``.

A small warm ``runt run`` spent about half its time before it did anything: starting the
interpreter, importing the client, anyio, uvloop and Automerge, and starting an event loop
(``bench/bench_run.py``'s breakdown). The daemon keeps one process that has done all that
(:mod:`runtimed.daemon.runner` starts and stops it) listening on ``<socket>.runner``. A
``runt run`` whose daemon has one (:func:`hand_over`, asked first by ``runt``'s entry point)
sends it its arguments, working directory, environment and umask, and its standard input,
output and error themselves (``SCM_RIGHTS``); the runner forks, and the child becomes that
command: it runs exactly the code the ``runt`` process would have run, writing to the same
terminal or pipes, and reports its exit status, which ``runt`` exits with. ``runt`` meanwhile
passes on Ctrl-C and ``SIGTERM`` (the run interrupts its cell and saves what ran, as always);
if ``runt`` itself dies, the child gets ``SIGTERM``.

The child is its own session, not the daemon's: a daemon killed mid-run takes the runner
with it (it exits when the daemon's end of its standard input closes) but not the runs it
started, which reconnect to the next daemon as any ``runt run`` does.

Only a runner that would run the same code is used; anything else falls back to running in
the ``runt`` process, as before the runner existed (nothing has run yet when it does):

* the runner belongs to the daemon on the socket the command names (``--socket``,
  ``$RUNTIMED_SOCKET`` or the default), lives in that socket's private directory, and is
  checked to be the same user (``SO_PEERCRED``), as the runner checks its caller;
* the same interpreter (``sys.executable``), the same ``runtimed`` package and the same
  import path (the child takes the caller's ``sys.path``);
* no file of a module it has imported changed since it imported it (an upgrade, an edited
  checkout): it says so and exits, and the daemon starts a fresh one;
* ``RUNTIMED_WARM_RUNNER=0`` in the caller's environment.

The exchange (one connection per run; each message a 4-byte big-endian length and UTF-8
JSON): ``runt`` sends the request with its three descriptors; the runner answers
``{"declined": reason}``, or forks and the child answers ``{"ready": pid}``; ``runt`` then
sends ``{"go": true}`` (a ``runt`` that gave up waiting has closed the connection instead, and
the child exits without running anything: a run never happens twice), then
``{"signal": n}`` for each signal it receives; the child's last message is ``{"exit": n}``.
"""

from __future__ import annotations

import _socket
import contextlib
import json
import os
import struct
import sys

# The caller's half runs first thing in every ``runt run``: no typing, no socket module
# (its enums take milliseconds to build), only the C socket module the runner's side shares.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterable
    from typing import Any

__all__ = ["PROTOCOL", "STALE_EXIT", "SUFFIX", "hand_over", "runner_socket", "serve"]

PROTOCOL = 1
SUFFIX = ".runner"
STALE_EXIT = 75  # the runner's exit status when its code changed on disk (start a fresh one)
DISABLE_ENV = "RUNTIMED_WARM_RUNNER"
_LENGTH = struct.Struct(">I")
_MAX_MESSAGE = 16 * 1024 * 1024  # a request carries the environment: generous, but bounded
_READY_TIMEOUT = 10.0  # s; a runner that has not started the run by then is given up
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP")


def runner_socket(daemon_socket: str | os.PathLike[str]) -> str:
    """Where the runner of the daemon on ``daemon_socket`` listens."""
    return os.fspath(daemon_socket) + SUFFIX


def disabled(environ: Any = None) -> bool:
    """``RUNTIMED_WARM_RUNNER`` says no (``0``, ``false``, ``no``, ``off``)."""
    value = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    return value.strip().lower() in ("0", "false", "no", "off")


# ------------------------------------------------------------------ messages


def send(sock: socket.socket, message: dict[str, Any], fds: Iterable[int] = ()) -> None:
    """Send ``message`` (and the descriptors ``fds`` with its first bytes)."""
    body = json.dumps(message, separators=(",", ":")).encode()
    data = _LENGTH.pack(len(body)) + body
    fds = list(fds)
    if fds:
        import array

        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))]
        sent = sock.sendmsg([data], rights)
        data = data[sent:]
    if data:
        sock.sendall(data)


def receive(sock: socket.socket, *, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message (None: the peer closed first) and any descriptors that came with it.

    Raises:
        ValueError: not a message of this exchange (too long, not JSON, not an object).
    """
    fds: list[int] = []
    try:
        header = _read(sock, _LENGTH.size, fds, max_fds)
        body = _read(sock, _length(header), fds, 0) if header is not None else None
        if body is None:
            _close_all(fds)
            return None, []
        message = json.loads(body)
    except BaseException:
        _close_all(fds)
        raise
    if not isinstance(message, dict):
        _close_all(fds)
        raise ValueError("a runner message is a JSON object")
    return message, fds


def _read(sock: socket.socket, size: int, fds: list[int], max_fds: int) -> bytes | None:
    """Exactly ``size`` bytes (None: the peer closed first); descriptors that come with the
    first bytes (at most ``max_fds``) are added to ``fds``."""
    parts: list[bytes] = []
    while size:
        if max_fds and not parts:
            import socket

            chunk, got, _flags, _addr = socket.recv_fds(sock, size, max_fds)
            fds.extend(got)
        else:
            chunk = sock.recv(size)
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _length(buffer: bytes) -> int:
    (length,) = _LENGTH.unpack_from(buffer)
    if length > _MAX_MESSAGE:
        raise ValueError(f"a runner message of {length} bytes (at most {_MAX_MESSAGE})")
    return int(length)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# ------------------------------------------------------------------ the caller's side


def hand_over(argv: list[str]) -> int | None:
    """Run ``runt`` ``argv`` (``runt run ...``) in the daemon's warm runner; its exit status,
    or None when there is no runner to use (then nothing has run: run it here).

    Blocking; called by ``runt``'s entry point before anything else is imported."""
    from runtimed.cli.quick import split_socket

    split = split_socket(argv)
    if split is None or split[1][:1] != ["run"] or disabled() or sys.platform != "linux":
        return None
    daemon_socket = split[0] or os.environ.get("RUNTIMED_SOCKET")
    if not daemon_socket:
        from runtimed.paths import default_socket_path

        daemon_socket = str(default_socket_path())
    path = runner_socket(daemon_socket)
    if not os.path.exists(path):
        return None
    request = _request(argv)
    if request is None:
        return None
    conn = _connect(path)
    if conn is None:
        return None
    try:
        try:
            send(conn, request, fds=(0, 1, 2))
            reply, _ = receive(conn)
        except (OSError, ValueError):
            return None  # no runner answered: nothing ran
        if reply is None or "ready" not in reply:
            return None  # declined (another interpreter, stale code, ...) or gone
        try:
            send(conn, {"go": True})
        except OSError:
            return None  # the child is gone before it started: nothing ran
        return _follow(conn)
    finally:
        conn.close()  # a _socket.socket is no context manager


def _request(argv: list[str]) -> dict[str, Any] | None:
    import runtimed

    streams = (sys.stdin, sys.stdout, sys.stderr)
    if any(stream is None for stream in streams):
        return None  # a closed standard stream: nothing to hand over
    try:
        cwd = os.getcwd()
    except OSError:
        return None  # the working directory is gone: the full path reports it
    umask = os.umask(0o077)
    os.umask(umask)
    return {
        "protocol": PROTOCOL,
        "argv": [sys.argv[0], *argv],
        "cwd": cwd,
        "env": dict(os.environ),
        "umask": umask,
        "executable": sys.executable,
        "path": list(sys.path),
        "package": runtimed.__file__,
        "streams": [[s.encoding, s.errors] for s in streams],
    }


def _connect(path: str) -> socket.socket | None:
    """A connection to the runner on ``path`` if it is this user's process. (The socket
    directory is not checked here: only our own process passes ``SO_PEERCRED``, and the
    full path checks the directory when it connects to the daemon.)"""
    conn: socket.socket = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # type: ignore[assignment]
    try:
        conn.settimeout(_READY_TIMEOUT)
        conn.connect(path)
        if _peer_uid(conn) == os.getuid():
            return conn
    except OSError:
        pass
    conn.close()
    return None


def _follow(conn: socket.socket) -> int:
    """Wait for the child's exit status, passing on the signals this process receives."""
    import signal

    def forward(signum: int, _frame: object) -> None:
        # OSError: the child is gone; its exit (or the connection's end) follows.
        with contextlib.suppress(OSError):
            send(conn, {"signal": signum})

    for name in _FORWARDED:
        signal.signal(getattr(signal, name), forward)
    conn.settimeout(None)
    while True:
        try:
            message, _ = receive(conn)
        except (OSError, ValueError) as exc:
            message = {"lost": str(exc)}
        if message is None or "lost" in message:
            sys.stderr.write("runt run: the run's process ended without an exit status\n")
            return 1
        if "exit" in message:
            status = message["exit"]
            return status if isinstance(status, int) else 1


# ------------------------------------------------------------------ the runner


# What a run imports, loaded once by the runner (the child imports anything else itself).
_PRELOAD = (
    "runtimed.cli.commands",
    "runtimed.cli.run",
    "runtimed.automation.run",
    "runtimed.automation.live",
    "runtimed.automation.parameters",
    "runtimed.automation.progress",
    "runtimed.automation.quickread",
    "runtimed.automation.report",
    "runtimed.client",
    "runtimed.client.async_client",
    "runtimed.client.notebook",
    "runtimed.glue",
    "runtimed.storage.ipynb",
    "anyio",
    "anyio._backends._asyncio",
    "anyio._core._fileio",
    "anyio._core._signals",
    "glob",
    "uvloop",
    "automerge",
)


def serve(daemon_socket: str) -> int:
    """The runner of the daemon on ``daemon_socket`` (its standard input is a pipe from the
    daemon: its end closes when the daemon ends, and so does the runner). Returns the
    process's exit status: 0 when the daemon is gone, :data:`STALE_EXIT` when its code
    changed on disk."""
    import gc
    import importlib
    import selectors
    import signal
    import socket

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops it
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the children reap themselves
    for name in _PRELOAD:
        importlib.import_module(name)
    from runtimed.cli.commands import parser_for

    parser_for("run")  # built once here, not in every child
    snapshot = _module_files()
    gc.collect()
    gc.freeze()  # the children inherit the loaded modules without copying their pages
    path = runner_socket(daemon_socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    inode = os.stat(path).st_ino
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(0, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj == 0:
                    if not os.read(0, 4096):
                        return 0  # the daemon is gone
                    continue
                conn, _ = listener.accept()
                if _answer(conn, snapshot, listener) == STALE_EXIT:
                    return STALE_EXIT
    finally:
        selector.close()
        listener.close()
        try:
            if os.stat(path).st_ino == inode:  # not a successor's socket
                os.unlink(path)
        except OSError:
            pass


def _answer(
    conn: socket.socket, snapshot: dict[str, tuple[int, int]], listener: socket.socket
) -> int:
    """One request: decline it, or fork the child that runs it. Returns STALE_EXIT when the
    runner should end."""
    fds: list[int] = []
    with conn:
        try:
            conn.settimeout(5.0)
            if _peer_uid(conn) != os.getuid():
                return 0
            request, fds = receive(conn, max_fds=3)
            if request is None:
                return 0
            reason, stale = _refusal(request, fds, snapshot)
            if reason:
                send(conn, {"declined": reason})
                return STALE_EXIT if stale else 0
            pid = os.fork()
            if pid == 0:
                _child(conn, request, fds, listener)  # never returns
        except (OSError, ValueError):
            return 0  # that caller runs in its own process
        finally:
            _close_all(fds)
    return 0


def _refusal(
    request: dict[str, Any], fds: list[int], snapshot: dict[str, tuple[int, int]]
) -> tuple[str, bool]:
    """Why this runner cannot run ``request`` ("" if it can), and whether it is stale."""
    import runtimed

    if request.get("protocol") != PROTOCOL:
        return "another runner protocol", False
    if len(fds) != 3:
        return "the standard streams did not arrive", False
    if request.get("executable") != sys.executable:
        return "another interpreter", False
    if request.get("package") != runtimed.__file__:
        return "another runtimed package", False
    path = request.get("path")
    # The runner runs with -P; the caller's first entry is its script's directory (or its
    # working directory): the child takes it, for anything it imports itself.
    if not isinstance(path, list) or path[1:] != sys.path:
        return "another import path", False
    if not isinstance(request.get("argv"), list) or not isinstance(request.get("env"), dict):
        return "a malformed request", False
    if _module_files(snapshot) != snapshot:
        return "the runner's code changed on disk", True
    if _threads() != 1:
        return "the runner is not single-threaded", False
    return "", False


def _module_files(only: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every loaded module's file (of ``only``'s files, when given)."""
    if only is None:
        modules = list(sys.modules.values())
        only = {f for m in modules if isinstance(f := getattr(m, "__file__", None), str)}
    files: dict[str, tuple[int, int]] = {}
    for name in only:
        try:
            st = os.stat(name)
        except OSError:
            continue
        files[name] = (st.st_mtime_ns, st.st_size)
    return files


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _child(
    conn: socket.socket, request: dict[str, Any], fds: list[int], listener: socket.socket
) -> None:
    """In the forked child: become the caller's ``runt`` process, run its command, report
    its exit status, and end."""
    status = 1
    try:
        os.setsid()
        listener.close()
        _become(request, fds)
        fds.clear()
        send(conn, {"ready": os.getpid()})
        go, _ = receive(conn)
        if not go or go.get("go") is not True:
            os._exit(0)  # the caller gave up waiting (and runs it itself) or is gone
        _watch(conn)
        status = _run_command()
    except SystemExit as exc:
        status = _exit_code(exc)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        with contextlib.suppress(OSError):
            send(conn, {"exit": status})
        os._exit(status)


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """The caller's descriptors, directory, umask, environment, import path and arguments."""
    import signal

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    _close_all(fd for fd in fds if fd > 2)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    sys.path[:] = [str(p) for p in request["path"]]
    sys.argv = [str(a) for a in request["argv"]]
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    streams = request.get("streams") or [[None, None]] * 3
    opened: list[Any] = []
    for fd, (encoding, errors) in enumerate(streams):
        mode = "r" if fd == 0 else "w"
        line = fd == 2 or (fd == 1 and os.isatty(1))
        opened.append(
            open(  # noqa: SIM115 (the process's own streams, open until it ends)
                fd,
                mode,
                encoding=encoding,
                errors=errors,
                closefd=False,
                buffering=1 if line else -1,
            )
        )
    sys.stdin, sys.stdout, sys.stderr = opened
    if "random" in sys.modules:
        sys.modules["random"].seed()  # not the runner's sequence in every child
    from runtimed.automation import phases

    phases.reset()


def _watch(conn: socket.socket) -> None:
    """A thread passing the caller's signals on to this process; the caller's end closing
    (it was killed) is a ``SIGTERM``: the run stops and saves what ran."""
    import signal
    import threading

    allowed = {int(getattr(signal, name)) for name in _FORWARDED}

    def watch() -> None:
        while True:
            try:
                message, _ = receive(conn)
            except (OSError, ValueError):
                message = None
            if message is None:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            signum = message.get("signal")
            if signum in allowed:
                # A hang-up ends the caller, not the run's save: it stops like SIGTERM.
                os.kill(os.getpid(), signal.SIGTERM if signum == signal.SIGHUP else signum)

    conn.settimeout(None)
    threading.Thread(target=watch, name="runt-signals", daemon=True).start()


def _run_command() -> int:
    from runtimed.cli.main import run_here

    return run_here(sys.argv[1:])


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runtimed.cli.runner")
    parser.add_argument("--socket", required=True, help="the daemon's socket")
    args = parser.parse_args(argv)
    return serve(args.socket)


if __name__ == "__main__":
    sys.exit(main())
