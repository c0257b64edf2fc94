"""``runt``'s commands: the parser of every command and their handlers (the entry point,
:func:`runtimed.cli.main.main`, sends ``ps`` and ``daemon status`` to :mod:`runtimed.cli.quick`
first)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.states import ExecutionStatus
from runtimed.cli import agents as cli_agents
from runtimed.cli import runtimes as cli_runtimes
from runtimed.cli import web as cli_web
from runtimed.cli.quick import daemon_status, exit_status, list_notebooks
from runtimed.cli.quick import err as _err
from runtimed.cli.quick import out as _out
from runtimed.errors import DaemonNotRunning
from runtimed.paths import default_home, default_socket_path
from runtimed.version import __version__

if TYPE_CHECKING:
    from runtimed.client.async_client import AsyncClient
    from runtimed.client.notebook import AsyncNotebook, ExecutionResult

__all__ = ["main"]


def use_color(stream: Any) -> bool:
    """ANSI colours only on a terminal, and never with ``NO_COLOR`` set (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _plain(text: str) -> str:
    from runtimed.automation.progress import strip_ansi

    return text if use_color(sys.stderr) else strip_ansi(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds more than 0 (got {text})")
    return value


def _sub(sub: Any, name: str, text: str, description: str | None = None) -> Any:
    return sub.add_parser(name, help=text, description=description or text[:1].upper() + text[1:])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """``runt``'s parser; ``only``: give just that command its arguments (the others are
    listed, with their help line, but left empty: see :func:`_command_of`)."""
    parser = argparse.ArgumentParser(prog="runt", description="Command line client for runtimed.")
    parser.add_argument("--socket", help="daemon socket (default: $RUNTIMED_SOCKET or the user's)")
    parser.add_argument("--version", action="version", version=f"runt {__version__}")
    sub: Any = parser.add_subparsers(dest="command", required=True)
    if only is not None:
        sub = _OnlyOne(sub, only)

    daemon = _sub(sub, "daemon", "manage the background daemon")
    dsub = daemon.add_subparsers(dest="action", required=True)
    start = _sub(
        dsub,
        "start",
        "start the daemon in the background",
        "Start runtimed in the background and wait until it answers; if it cannot start, say why.",
    )
    start.add_argument("--home", help="state directory (default: $RUNTIMED_HOME)")
    start.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the daemon's log level (default INFO)",
    )
    start.add_argument(
        "--config", help="configuration file (default: $RUNTIMED_CONFIG or the user's)"
    )
    _sub(dsub, "stop", "stop the daemon (checkpoints notebooks, stops kernels)")
    status = _sub(dsub, "status", "show the daemon's status")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    ps = _sub(sub, "ps", "open notebooks, their kernels and queues")
    ps.add_argument("--json", action="store_true", help="machine-readable output")

    cells = _sub(
        sub,
        "cells",
        "list a notebook's cells: index, id, type, first line",
        "List the cells of a notebook as the daemon sees them (the ids 'runt exec --cell' "
        "takes), opening it if needed.",
    )
    cells.add_argument("path", help="the notebook (.ipynb)")
    cells.add_argument("--json", action="store_true", help="machine-readable output")

    ex = _sub(
        sub,
        "exec",
        "execute one cell of a notebook",
        "Execute one code cell (by id: see 'runt cells') in the notebook's kernel and print "
        "its outputs. Exit status: 0 ok, 1 the cell raised, 2 the cell could not run.",
    )
    ex.add_argument("path", help="the notebook (.ipynb)")
    ex.add_argument("--cell", required=True, help="cell id (see 'runt cells PATH')")
    ex.add_argument(
        "--timeout",
        type=_positive,
        default=None,
        help="seconds the cell may run (default: no limit)",
    )

    ra = _sub(
        sub,
        "run-all",
        "execute every code cell of an open or saved notebook",
        "Execute every code cell in order in the notebook's kernel and print the outputs. "
        "Exit status: 0 ok, 1 a cell raised, 2 the cells could not run.",
    )
    ra.add_argument("path", help="the notebook (.ipynb)")

    for name, help_text in (
        ("interrupt", "interrupt the running cell"),
        ("restart", "restart the notebook's kernel"),
        ("save", "checkpoint the notebook to its .ipynb"),
    ):
        p = _sub(sub, name, help_text)
        p.add_argument("path", help="the notebook (.ipynb)")

    gc = _sub(sub, "gc", "delete blobs no notebook references")
    gc.add_argument(
        "--grace",
        type=_positive,
        default=None,
        help="only blobs older than this many seconds (default: the daemon's, 3600)",
    )
    gc.add_argument("--json", action="store_true", help="machine-readable output")

    from runtimed.cli.run import add_run_parser

    add_run_parser(sub)
    cli_runtimes.add_parsers(sub)
    cli_agents.add_parsers(sub)
    cli_web.add_parsers(sub)
    return parser


class _Sink:
    """Takes any parser call and does nothing (a command this invocation does not run)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: _Sink()


class _OnlyOne:
    """The subparsers action, registering every command but giving only ``wanted`` its
    arguments: argparse looks up message translations (gettext, a few file stats) for every
    argument it is given, about half the time of building all of ``runt``'s commands."""

    def __init__(self, sub: Any, wanted: str) -> None:
        self._sub, self._wanted = sub, wanted

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        parser = self._sub.add_parser(name, **kwargs)
        return parser if name == self._wanted else _Sink()


_PARSERS: dict[str | None, argparse.ArgumentParser] = {}


def parser_for(command: str | None) -> argparse.ArgumentParser:
    """``build_parser(command)``, built once per process: the warm runner builds ``run``'s
    before it forks (runtimed.cli.runner), a child then only parses (building took a tenth
    of a small warm run: argparse looks up gettext translations for every string)."""
    parser = _PARSERS.get(command)
    if parser is None:
        parser = _PARSERS[command] = build_parser(command)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The command ``argv`` names after the global options, or None (help, version, none,
    or an abbreviation: then the whole parser is built, for argparse's own messages)."""
    tokens = iter(argv)
    for token in tokens:
        if token == "--socket":
            next(tokens, None)
        elif token.startswith("--socket="):
            continue
        elif token.startswith("-"):
            return None
        else:
            return token
    return None


async def _connect(args: argparse.Namespace, *, autostart: bool = False) -> AsyncClient:
    from runtimed.client.async_client import AsyncClient

    return await AsyncClient.connect(args.socket, autostart=autostart)


async def _with_client(
    args: argparse.Namespace,
    body: Callable[[AsyncClient], Awaitable[int]],
    *,
    autostart: bool = False,
) -> int:
    async with await _connect(args, autostart=autostart) as client:
        return await body(client)


# ---------------------------------------------------------------- daemon


async def _daemon_start(args: argparse.Namespace) -> int:
    import anyio

    socket = Path(args.socket) if args.socket else default_socket_path()
    try:
        from runtimed.client.async_client import AsyncClient

        async with await AsyncClient.connect(socket) as client:
            status = await client.status()
        _err(f"runtimed is already running (pid {status.pid}) on {status.socket}")
        return 1
    except DaemonNotRunning:
        pass
    home = Path(args.home) if args.home else default_home()
    import tempfile

    from runtimed.client.spawn import spawn_daemon

    config = None
    if args.config:  # made absolute here: the daemon does not run in our directory
        config = await anyio.to_thread.run_sync(lambda: Path(args.config).expanduser().resolve())
    with tempfile.TemporaryFile() as stderr:
        process = spawn_daemon(
            socket, home=home, stderr=stderr, log_level=args.log_level, config=config
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                from runtimed.client.async_client import AsyncClient

                async with await AsyncClient.connect(socket) as client:
                    status = await client.status()
                _out(f"runtimed {status.version} started (pid {status.pid}) on {status.socket}")
                return 0
            except DaemonNotRunning:
                if process.poll() is not None:
                    break
                await anyio.sleep(0.02)
        stderr.seek(0)
        said = stderr.read().decode(errors="replace").strip().splitlines()
    why = [line for line in said if line.strip()][-5:]
    if process.poll() is None:
        why.append("(it is still starting after 30 s)")
    else:
        why.append(f"(it exited with status {process.returncode})")
    _err("runt: runtimed did not start:\n  " + "\n  ".join(why))
    _err(f"runt: log: {home / 'logs' / 'runtimed.log'}")
    return 2


async def _daemon_stop(args: argparse.Namespace) -> int:
    import anyio

    try:
        client = await _connect(args)
    except DaemonNotRunning as exc:
        _err(str(exc))
        return 1
    async with client:
        status = await client.status()
        await client.shutdown_daemon()
        # The daemon closes our connection when it is done.
        with anyio.move_on_after(30):
            await client.wait_until(lambda: client.connection.closed)
    await _wait_for_exit(status.pid, timeout=30)
    _out(f"runtimed (pid {status.pid}) stopped")
    return 0


async def _wait_for_exit(pid: int, *, timeout: float) -> None:
    """Wait until process ``pid`` has exited (event-driven: a pidfd becomes readable)."""
    import anyio

    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return  # already gone (or no pidfd support: the daemon has closed our connection)
    try:
        with anyio.move_on_after(timeout):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)


async def _gc(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        report = await client.collect_garbage(grace_seconds=args.grace)
        if args.json:
            _out(
                json.dumps(
                    {
                        "blobs_removed": report.blobs_removed,
                        "bytes_freed": report.bytes_freed,
                        "blobs_kept": report.blobs_kept,
                        "stale_documents_removed": report.stale_documents_removed,
                    }
                )
            )
        else:
            _out(
                f"removed {report.blobs_removed} blobs, freed {report.bytes_freed} bytes; "
                f"kept {report.blobs_kept}; removed {report.stale_documents_removed} "
                "set-aside documents older than a week"
            )
        return 0

    return await _with_client(args, body)


# ---------------------------------------------------------------- notebooks


def print_result(result: ExecutionResult, *, cell: str = "the cell") -> None:
    """Outputs of an execution as a terminal shows them (colours only on a terminal)."""
    shown_error = False
    for output in result.outputs:
        kind = output.get("output_type")
        if kind == "stream":
            stream = sys.stdout if output.get("name") == "stdout" else sys.stderr
            stream.write(str(output.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            if "text/plain" in data:
                text = data["text/plain"]
                _out("".join(text) if isinstance(text, list) else str(text))
            else:
                _out(f"[{', '.join(sorted(data))}]")
        elif kind == "error":
            shown_error = True
            _err(
                _plain("\n".join(output.get("traceback", [])))
                or f"{output.get('ename')}: {output.get('evalue')}"
            )
    if result.status != ExecutionStatus.OK and not shown_error:
        # It never ran (no kernel: unknown kernelspec, bad metadata.runtimed.cwd, ...):
        # the reason is only in the execution record.
        why = f"{result.ename or result.status}: {result.evalue or ''}".rstrip(": ")
        _err(f"runt: {cell} did not run ({result.status}): {why}")
    elif result.status not in (ExecutionStatus.OK, ExecutionStatus.ERROR):
        _err(f"[{result.status}] {result.ename or ''}: {result.evalue or ''}")


async def _exec(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        nb = await client.open(args.path)
        try:
            result = await nb.execute(args.cell, timeout=args.timeout)
        except TimeoutError:
            _err(
                f"runt: cell {args.cell!r} did not finish within {args.timeout:g} s; it goes on "
                f"running in the daemon ('runt interrupt {args.path}' stops it)"
            )
            return 2
        print_result(result, cell=f"cell {args.cell!r}")
        return 0 if result.ok else _failure_status(result)

    return await _with_client(args, body, autostart=True)


async def _run_all(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        nb = await client.open(args.path)
        results = await nb.run_all()
        status = 0
        for result in results:
            print_result(result, cell=f"cell {result.cell_id!r}")
            if not result.ok:
                status = max(status, _failure_status(result))
        return status

    return await _with_client(args, body, autostart=True)


def _failure_status(result: ExecutionResult) -> int:
    """1: the cell ran and raised; 2: it could not run (no kernel, ...)."""
    ran = result.status == ExecutionStatus.ERROR and any(
        o.get("output_type") == "error" for o in result.outputs
    )
    return 1 if ran or result.status in (ExecutionStatus.TIMEOUT, ExecutionStatus.DIED) else 2


async def _cells(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        nb = await client.open(args.path)
        rows = []
        for index, cell in enumerate(nb.cells()):
            lines = cell.source.strip().splitlines()
            first = lines[0] if lines else ""
            count = nb.execution_count(cell.id) if cell.cell_type == "code" else None
            rows.append((index, cell.id, cell.cell_type, count, first))
        await nb.close()
        if args.json:
            keys = ("index", "id", "cell_type", "execution_count", "first_line")
            _out(json.dumps([dict(zip(keys, row, strict=True)) for row in rows], indent=2))
            return 0
        from runtimed.automation.progress import format_table

        table = [
            [str(i), cid, kind, "" if n is None else f"[{n}]", first[:60]]
            for i, cid, kind, n, first in rows
        ]
        sys.stdout.write(format_table(["#", "ID", "TYPE", "IN", "FIRST LINE"], table))
        return 0

    return await _with_client(args, body, autostart=True)


async def _notebook_action(
    args: argparse.Namespace, action: Callable[[AsyncNotebook], Awaitable[Any]], done: str
) -> int:
    async def body(client: AsyncClient) -> int:
        nb = await client.open(args.path)
        result = await action(nb)
        _out(done.format(path=nb.path, result=result))
        return 0

    return await _with_client(args, body)


def main(argv: list[str] | None = None) -> int:
    from runtimed.automation import phases

    phases.stamp("main")
    try:
        return _main(argv)
    finally:
        phases.dump()
        if argv is None:
            # The process ends now (the command line, not a caller's process): the
            # interpreter's last garbage collections would walk every object this command
            # made, which took longer than a small 'runt run' itself (bench_run.py's exit).
            import gc

            gc.freeze()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_of(argv)
    parser = parser_for(command)
    args = parser.parse_args(argv)
    if args.socket:
        os.environ["RUNTIMED_SOCKET"] = args.socket
    command = args.command
    handlers: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
        "gc": _gc,
        "exec": _exec,
        "run-all": _run_all,
        "cells": _cells,
        "interrupt": lambda a: _notebook_action(a, lambda nb: nb.interrupt(), "interrupted {path}"),
        "restart": lambda a: _notebook_action(
            a, lambda nb: nb.restart(), "restarted the kernel of {path}"
        ),
        "save": lambda a: _notebook_action(a, lambda nb: nb.save(), "saved {result}"),
    }
    blocking: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
        ("ps", None): lambda a: list_notebooks(a.socket, a.json),
        ("daemon", "status"): lambda a: daemon_status(a.socket, a.json),
    }
    quick = blocking.get((command, getattr(args, "action", None)))
    if quick is not None:
        try:
            status = quick(args)
            sys.stdout.flush()
            return status
        except BaseException as exc:
            return exit_status(exc)
    handler: Callable[[argparse.Namespace], Awaitable[int]]
    if command == "daemon":
        handler = {"start": _daemon_start, "stop": _daemon_stop}[args.action]
    elif (command, getattr(args, "action", None)) in cli_runtimes.COMMANDS:
        handler = cli_runtimes.COMMANDS[(command, getattr(args, "action", None))]
    elif (command, getattr(args, "action", None)) in cli_agents.COMMANDS:
        handler = cli_agents.COMMANDS[(command, getattr(args, "action", None))]
    elif (command, getattr(args, "action", None)) in cli_web.COMMANDS:
        handler = cli_web.COMMANDS[(command, getattr(args, "action", None))]
    elif command in ("run", "inspect", "scraps"):
        from runtimed.cli.run import run_command

        handler = run_command
    else:
        handler = handlers[command]
    import anyio  # the event loop: only for commands that need one

    try:
        status = anyio.run(handler, args, backend="asyncio", backend_options={"use_uvloop": True})
        sys.stdout.flush()  # here, not at exit: a closed pipe must not print a traceback
        return status
    except BaseException as exc:
        return exit_status(exc)
