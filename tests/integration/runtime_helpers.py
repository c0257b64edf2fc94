"""Helpers for the runtime tests: process liveness, waiting on daemon status, running the
CLI against an in-process daemon, recording events, temporary kernelspecs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from protocol.messages import DaemonEvent, StatusReply
from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig
from runtimed.daemon.app import Daemon
from runtimed.paths import RuntimedPaths

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "tests" / "kernels"
DEADLINE = 60.0


def code(source: str, **metadata: Any) -> dict[str, object]:
    return {"cell_type": "code", "source": source, "metadata": metadata}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(*pids: int, within: float = 15.0) -> None:
    # Not our children: nothing to await, so check /proc until the deadline.
    with anyio.fail_after(within):
        while any(alive(pid) for pid in pids):
            await anyio.sleep(0.02)


async def wait_status(
    client: AsyncClient, predicate: Callable[[StatusReply], bool], *, timeout: float = DEADLINE
) -> StatusReply:
    """Poll the daemon's status until ``predicate`` holds (the pool has no event of its own)."""
    with anyio.fail_after(timeout):
        while True:
            status = await client.status()
            if predicate(status):
                return status
            await anyio.sleep(0.02)


def pool_ready(size: int) -> Callable[[StatusReply], bool]:
    return lambda s: s.pool is not None and s.pool.ready == size and s.pool.starting == 0


async def runt(socket: Path, *args: str, check: bool = True) -> tuple[int, str, str]:
    """Run the ``runt`` CLI in a subprocess (the in-process daemon keeps serving meanwhile)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = await anyio.run_process(
        [sys.executable, "-m", "runtimed.cli", "--socket", str(socket), *args],
        env=env,
        check=False,
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    if check:
        assert result.returncode == 0, (args, out, err)
    return result.returncode, out, err


async def runt_json(socket: Path, *args: str) -> Any:
    _, out, _ = await runt(socket, *args, "--json")
    return json.loads(out)


@asynccontextmanager
async def running_daemon(paths: RuntimedPaths, config: DaemonConfig) -> AsyncIterator[Daemon]:
    """An in-process daemon with its own config, stopped (cleanly) on exit."""
    instance = Daemon(paths, config=config)
    async with anyio.create_task_group() as tg:
        await tg.start(instance.run)
        try:
            yield instance
        finally:
            instance.request_stop()


class Events:
    """Records a client's daemon events from the moment :meth:`start` returns."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.seen: list[DaemonEvent] = []

    async def _run(self) -> None:
        async for event in self.client.events():
            self.seen.append(event)

    async def start(self, tg: anyio.abc.TaskGroup) -> Events:
        tg.start_soon(self._run)
        await self.client.ping()  # lets the subscribing task run before we go on
        return self


def write_kernelspec(
    root: Path,
    name: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    language: str = "python",
) -> Path:
    spec_dir = root / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec: dict[str, object] = {"argv": argv, "display_name": f"Test {name}", "language": language}
    if env:
        spec["env"] = env
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return spec_dir


def ipykernel_argv() -> list[str]:
    return [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
