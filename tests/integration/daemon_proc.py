"""A daemon in its own process that a test can kill -9 and start again on the same paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio

from runtimed.paths import RuntimedPaths

from .conftest import wait_for_socket

REPO = Path(__file__).resolve().parents[2]


class DaemonProc:
    """``python -m runtimed.daemon.main`` on ``paths``; every process started is stopped on
    exit (SIGTERM, then SIGKILL). Blocking waits run in worker threads."""

    def __init__(
        self, paths: RuntimedPaths, config: Path, *, env: dict[str, str] | None = None
    ) -> None:
        self.paths = paths
        self._env = dict(os.environ, PYTHONPATH=str(REPO), RUNTIMED_CONFIG=str(config))
        self._env.update(env or {})
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self._procs[-1]

    async def start(self) -> None:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtimed.daemon.main",
                "--socket",
                str(self.paths.socket),
                "--home",
                str(self.paths.home),
            ],
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._procs.append(proc)
        await anyio.to_thread.run_sync(wait_for_socket, self.paths.socket, proc)

    async def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(self.proc.wait)

    async def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    await anyio.to_thread.run_sync(_wait, proc, 30.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await anyio.to_thread.run_sync(proc.wait)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.stop()


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return proc.wait(timeout=timeout)
