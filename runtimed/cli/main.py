"""``runt``: the command line client."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from runtimed.cli import runtimes as cli_runtimes
from runtimed.cli import web as cli_web
from runtimed.client import AsyncClient, AsyncNotebook, ExecutionResult
from runtimed.client.connection import spawn_daemon
from runtimed.errors import DaemonNotRunning, RuntimedError
from runtimed.paths import default_home, default_socket_path
from runtimed.version import __version__

__all__ = ["main"]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runt", description="Command line client for runtimed.")
    parser.add_argument("--socket", help="daemon socket (default: $RUNTIMED_SOCKET or the user's)")
    parser.add_argument("--version", action="version", version=f"runt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    daemon = sub.add_parser("daemon", help="manage the background daemon")
    dsub = daemon.add_subparsers(dest="action", required=True)
    start = dsub.add_parser("start", help="start the daemon in the background")
    start.add_argument("--home", help="state directory (default: $RUNTIMED_HOME)")
    dsub.add_parser("stop", help="stop the daemon (checkpoints notebooks, stops kernels)")
    status = dsub.add_parser("status", help="show the daemon's status")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    ps = sub.add_parser("ps", help="open notebooks, their kernels and queues")
    ps.add_argument("--json", action="store_true")

    ex = sub.add_parser("exec", help="execute one cell of a notebook")
    ex.add_argument("path")
    ex.add_argument("--cell", required=True, help="cell id")
    ex.add_argument("--timeout", type=float, default=None)

    ra = sub.add_parser("run-all", help="execute every code cell of an open or saved notebook")
    ra.add_argument("path")

    for name, help_text in (
        ("interrupt", "interrupt the running cell"),
        ("restart", "restart the notebook's kernel"),
        ("save", "checkpoint the notebook to its .ipynb"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("path")

    gc = sub.add_parser("gc", help="delete blobs no notebook references")
    gc.add_argument(
        "--grace",
        type=float,
        default=None,
        help="only blobs older than this many seconds (default: the daemon's, 3600)",
    )
    gc.add_argument("--json", action="store_true")

    from runtimed.cli.run import add_run_parser

    add_run_parser(sub)
    cli_runtimes.add_parsers(sub)
    cli_web.add_parsers(sub)
    return parser


async def _connect(args: argparse.Namespace, *, autostart: bool = False) -> AsyncClient:
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
    socket = Path(args.socket) if args.socket else default_socket_path()
    try:
        async with await AsyncClient.connect(socket) as client:
            status = await client.status()
        _err(f"runtimed is already running (pid {status.pid}) on {status.socket}")
        return 1
    except DaemonNotRunning:
        pass
    home = Path(args.home) if args.home else default_home()
    process = spawn_daemon(socket, home=home)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with await AsyncClient.connect(socket) as client:
                status = await client.status()
            _out(f"runtimed {status.version} started (pid {status.pid}) on {status.socket}")
            return 0
        except DaemonNotRunning:
            if process.poll() is not None:
                break
            await anyio.sleep(0.02)
    _err(f"runtimed did not start; see {home / 'logs' / 'runtimed.log'}")
    return 1


async def _daemon_stop(args: argparse.Namespace) -> int:
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
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return  # already gone (or no pidfd support: the daemon has closed our connection)
    try:
        with anyio.move_on_after(timeout):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def _notebook_rows(notebooks: list[Any]) -> list[dict[str, Any]]:
    import msgspec

    return [msgspec.to_builtins(nb) for nb in notebooks]


async def _daemon_status(args: argparse.Namespace) -> int:
    import msgspec

    try:
        client = await _connect(args)
    except DaemonNotRunning as exc:
        if args.json:
            _out(
                json.dumps({"running": False, "socket": str(args.socket or default_socket_path())})
            )
        else:
            _err(str(exc))
        return 1
    async with client:
        status = await client.status()
    data = msgspec.to_builtins(status)
    data.pop("id", None)
    data.pop("type", None)
    data["running"] = True
    data["uptime_seconds"] = round(status.uptime_seconds, 3)
    if args.json:
        _out(json.dumps(data, indent=2))
    else:
        _out(f"runtimed {status.version} (protocol {status.protocol_version}), pid {status.pid}")
        _out(f"socket: {status.socket}\nhome:   {status.home}")
        _out(
            f"uptime: {status.uptime_seconds:.0f} s; {len(status.notebooks)} open notebooks, "
            f"{status.clients} clients"
        )
        pool = status.pool
        pool_text = (
            f"pool {pool.ready}/{pool.size} ready"
            if pool is not None and pool.enabled
            else "no pool"
        )
        _out(
            f"kernels: {len(status.kernels)} (max {status.max_kernels or 'unlimited'}); "
            f"{pool_text} (runt pool, runt ps)"
        )
    return 0


async def _ps(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        notebooks = await client.list_notebooks()
        if args.json:
            _out(json.dumps(_notebook_rows(notebooks), indent=2))
            return 0
        if not notebooks:
            _out("no open notebooks")
        for nb in notebooks:
            kernel = nb.kernel
            k = (
                f"{kernel.name or '-'} {kernel.state}"
                + (f" pid {kernel.pid}" if kernel.pid else "")
                if kernel
                else "-"
            )
            if kernel is not None and kernel.pid:
                k += f" ({cli_runtimes.describe_kernel(kernel.rss_bytes, kernel.last_activity)})"
            _out(f"{nb.notebook_id[:12]}  {nb.path or '(untitled)'}")
            _out(
                f"    kernel: {k}; clients: {nb.clients}; running: {nb.running or '-'}; "
                f"queued: {len(nb.queue)}"
            )
        return 0

    return await _with_client(args, body)


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
                    }
                )
            )
        else:
            _out(
                f"removed {report.blobs_removed} blobs, freed {report.bytes_freed} bytes; "
                f"kept {report.blobs_kept}"
            )
        return 0

    return await _with_client(args, body)


# ---------------------------------------------------------------- notebooks


def print_result(result: ExecutionResult) -> None:
    """Outputs of an execution as a terminal shows them."""
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
            _err(
                "\n".join(output.get("traceback", []))
                or f"{output.get('ename')}: {output.get('evalue')}"
            )
    if result.status not in ("ok", "error"):
        _err(f"[{result.status}] {result.ename or ''}: {result.evalue or ''}")


async def _exec(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        nb = await client.open(args.path)
        result = await nb.execute(args.cell, timeout=args.timeout)
        print_result(result)
        return 0 if result.ok else 1

    return await _with_client(args, body, autostart=True)


async def _run_all(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        nb = await client.open(args.path)
        results = await nb.run_all()
        failed = 0
        for result in results:
            print_result(result)
            failed += not result.ok
        return 1 if failed else 0

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
    args = build_parser().parse_args(argv)
    if args.socket:
        os.environ["RUNTIMED_SOCKET"] = args.socket
    command = args.command
    handlers: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
        "ps": _ps,
        "gc": _gc,
        "exec": _exec,
        "run-all": _run_all,
        "interrupt": lambda a: _notebook_action(a, lambda nb: nb.interrupt(), "interrupted {path}"),
        "restart": lambda a: _notebook_action(
            a, lambda nb: nb.restart(), "restarted the kernel of {path}"
        ),
        "save": lambda a: _notebook_action(a, lambda nb: nb.save(), "saved {result}"),
    }
    handler: Callable[[argparse.Namespace], Awaitable[int]]
    if command == "daemon":
        handler = {"start": _daemon_start, "stop": _daemon_stop, "status": _daemon_status}[
            args.action
        ]
    elif (command, getattr(args, "action", None)) in cli_runtimes.COMMANDS:
        handler = cli_runtimes.COMMANDS[(command, getattr(args, "action", None))]
    elif (command, getattr(args, "action", None)) in cli_web.COMMANDS:
        handler = cli_web.COMMANDS[(command, getattr(args, "action", None))]
    elif command in ("run", "inspect", "scraps"):
        from runtimed.cli.run import run_command

        handler = run_command
    else:
        handler = handlers[command]
    try:
        return anyio.run(handler, args, backend="asyncio", backend_options={"use_uvloop": True})
    except RuntimedError as exc:
        _err(f"runt: {exc}")
        return 2
    except TimeoutError:
        _err("runt: timed out waiting for the daemon")
        return 2
    except KeyboardInterrupt:
        return 130
