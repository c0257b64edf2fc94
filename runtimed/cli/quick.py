"""``runt ps`` and ``runt daemon status``, answered without the rest of ``runt``.

Both are one blocking request (:mod:`runtimed.client.oneshot`): no event loop, no parser of
every command. ``runt``'s entry point (:func:`runtimed.cli.main.main`) asks :func:`quick_command`
first; an ``argv`` of exactly ``[--socket PATH] ps [--json]`` or ``[--socket PATH] daemon
status [--json]`` is run here, anything else (help, another option, a typo) goes to the full
parser in :mod:`runtimed.cli.commands`, which calls the same functions. Building that parser and
importing the modules of every command was a fifth of the command's time (a ``runt ps``
took 92 ms where this takes 74, ``python -c pass`` 23, without ``.pyc`` files).

Also here, because both paths need them: the output helpers and what an exception out of a
command means for the user (:func:`exit_status`).
"""

from __future__ import annotations

import os
import sys
import time

# Not typing.TYPE_CHECKING: typing (and json, imported where it is used) would be a few
# milliseconds of every command's start, a warm runt run's included (runtimed.cli.runner).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "daemon_status",
    "describe_kernel",
    "err",
    "exit_status",
    "human_bytes",
    "list_notebooks",
    "out",
    "quick_command",
    "split_socket",
]


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


def quick_command(argv: list[str]) -> Callable[[], int] | None:
    """The command ``argv`` asks for when it is ``ps`` or ``daemon status`` with nothing but
    ``--json`` and a leading ``--socket``; None for anything else."""
    split = split_socket(argv)
    if split is None:
        return None
    socket, rest = split
    as_json = rest[-1:] == ["--json"]
    words = rest[:-1] if as_json else rest
    if words == ["ps"]:
        action: Callable[[str | None, bool], int] = list_notebooks
    elif words == ["daemon", "status"]:
        action = daemon_status
    else:
        return None

    def run() -> int:
        if socket:
            os.environ["RUNTIMED_SOCKET"] = socket
        try:
            status = action(socket or None, as_json)
            sys.stdout.flush()  # here, not at exit: a closed pipe must not print a traceback
            return status
        except BaseException as exc:
            return exit_status(exc)

    return run


def split_socket(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """``argv``'s leading ``--socket PATH`` / ``--socket=PATH`` (the last one given, or None)
    and the words after it; None when a leading ``--socket`` has no value."""
    socket: str | None = None
    rest = list(argv)
    while rest and rest[0].startswith("--socket"):
        if rest[0] == "--socket" and len(rest) > 1 and not rest[1].startswith("-"):
            socket, rest = rest[1], rest[2:]
        elif rest[0].startswith("--socket="):
            socket, rest = rest[0].partition("=")[2], rest[1:]
        else:
            return None
    return socket, rest


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def ago(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    seconds = max(0.0, time.time() - timestamp)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def describe_kernel(rss_bytes: int | None, last_activity: float | None) -> str:
    """The health part of a kernel line: ``54.2 MiB, active 3s ago``."""
    return f"{human_bytes(rss_bytes)}, active {ago(last_activity)}"


def _rows(notebooks: list[Any]) -> list[dict[str, Any]]:
    import msgspec

    return [msgspec.to_builtins(nb) for nb in notebooks]


def list_notebooks(socket: str | None, as_json: bool) -> int:
    """``runt ps``: open notebooks, their kernels and queues."""
    from protocol.messages import ListNotebooks, NotebookList
    from runtimed.client.oneshot import ask

    notebooks = ask(socket, lambda i: ListNotebooks(id=i), NotebookList).notebooks
    if as_json:
        import json

        out(json.dumps(_rows(notebooks), indent=2))
        return 0
    if not notebooks:
        out("no open notebooks")
    for nb in notebooks:
        kernel = nb.kernel
        k = (
            f"{kernel.name or '-'} {kernel.state}" + (f" pid {kernel.pid}" if kernel.pid else "")
            if kernel
            else "-"
        )
        if kernel is not None and kernel.pid:
            k += f" ({describe_kernel(kernel.rss_bytes, kernel.last_activity)})"
        out(f"{nb.notebook_id[:12]}  {nb.path or '(untitled)'}")
        out(
            f"    kernel: {k}; clients: {nb.clients}; running: {nb.running or '-'}; "
            f"queued: {len(nb.queue)}"
        )
    return 0


def daemon_status(socket: str | None, as_json: bool) -> int:
    """``runt daemon status``: 0 and the daemon's status, or 1 when none is running."""
    import msgspec

    from protocol.messages import DaemonStatus, StatusReply
    from runtimed.client.oneshot import ask
    from runtimed.errors import DaemonNotRunning

    try:
        status = ask(socket, lambda i: DaemonStatus(id=i), StatusReply)
    except DaemonNotRunning as exc:
        if as_json:
            import json

            from runtimed.paths import default_socket_path

            out(json.dumps({"running": False, "socket": str(socket or default_socket_path())}))
        else:
            err(str(exc))
        return 1
    data = msgspec.to_builtins(status)
    data.pop("id", None)
    data.pop("type", None)
    data["running"] = True
    data["uptime_seconds"] = round(status.uptime_seconds, 3)
    if as_json:
        import json

        out(json.dumps(data, indent=2))
        return 0
    out(f"runtimed {status.version} (protocol {status.protocol_version}), pid {status.pid}")
    out(f"socket: {status.socket}\nhome:   {status.home}")
    out(
        f"uptime: {status.uptime_seconds:.0f} s; {len(status.notebooks)} open notebooks, "
        f"{status.clients} clients"
    )
    pool = status.pool
    pool_text = (
        f"pool {pool.ready}/{pool.size} ready" if pool is not None and pool.enabled else "no pool"
    )
    out(
        f"kernels: {len(status.kernels)} (max {status.max_kernels or 'unlimited'}); "
        f"{pool_text} (runt pool, runt ps)"
    )
    return 0


def exit_status(exc: BaseException) -> int:
    """What an exception out of a command means for the user: one line, an exit status.

    Errors raised inside a client's task group arrive wrapped in ExceptionGroups; the
    error itself is what the user needs to see.
    """
    from runtimed.errors import RuntimedError

    leaf = _leaf(exc)
    if isinstance(leaf, RuntimedError):
        err(f"runt: {leaf}")
        return 2
    if isinstance(leaf, TimeoutError):
        err("runt: timed out waiting for the daemon")
        return 2
    if isinstance(leaf, KeyboardInterrupt):
        return 130
    if isinstance(leaf, BrokenPipeError):
        # stdout went away (runt ... | head -1): stop quietly, like other Unix tools.
        _silence_stdout()
        return 141
    if isinstance(leaf, OSError):
        err(f"runt: {leaf}")
        return 2
    raise exc


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
