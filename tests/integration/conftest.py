"""Fixtures starting a real daemon on a real Unix socket in a short temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.paths import RuntimedPaths


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def paths(short_tmp: Path) -> RuntimedPaths:
    return RuntimedPaths(socket=short_tmp / "run" / "rt.sock", home=short_tmp / "home")


@pytest.fixture
def daemon_config() -> DaemonConfig:
    # No kernel pool unless a test asks for one (tests/integration/test_pool.py): kernels
    # start on the first execution, and a daemon that runs no code starts no process.
    return DaemonConfig(heads_timeout=5.0, runtimes=RuntimesConfig(pool_size=0))


@pytest.fixture
async def daemon(paths: RuntimedPaths, daemon_config: DaemonConfig) -> AsyncIterator[Daemon]:
    """An in-process daemon serving ``paths.socket``; stopped (cleanly) after the test."""
    instance = Daemon(paths, config=daemon_config)
    async with anyio.create_task_group() as tg:
        await tg.start(instance.run)
        try:
            yield instance
        finally:
            instance.request_stop()


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[AsyncClient]:
    async with await AsyncClient.connect(daemon.paths.socket) as connected:
        yield connected


@pytest.fixture
def daemon_process(short_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], RuntimedPaths]]:
    """A daemon in its own process (``python -m runtimed.daemon.main``), for lifecycle tests.

    Readiness is a successful connect within a deadline; the process is stopped afterwards.
    """
    paths = RuntimedPaths(socket=short_tmp / "p" / "rt.sock", home=short_tmp / "phome")
    # Hermetic: never the user's config.toml (an absent file means built-in defaults).
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        RUNTIMED_CONFIG=str(short_tmp / "no-config.toml"),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtimed.daemon.main",
            "--socket",
            str(paths.socket),
            "--home",
            str(paths.home),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_socket(paths.socket, proc)
        yield proc, paths
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def wait_for_socket(socket_path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Block until a connect to ``socket_path`` succeeds (or the process dies / time runs out)."""
    import socket as socket_mod
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        with socket_mod.socket(socket_mod.AF_UNIX) as sock:
            try:
                sock.connect(str(socket_path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)
    raise TimeoutError(f"no daemon on {socket_path} after {timeout} s")


def wait_for_file_code(gate: Path) -> str:
    """Cell source that blocks the kernel until ``gate`` exists (the test touches it)."""
    return f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n"


def write_notebook(
    path: Path, cells: list[dict[str, object]], *, metadata: dict[str, object] | None = None
) -> Path:
    """Write a minimal valid nbformat 4.5 notebook with the given cells."""
    import json

    full = []
    for index, cell in enumerate(cells):
        c = {"id": f"cell{index}", "metadata": {}, **cell}
        if c["cell_type"] == "code":
            c.setdefault("outputs", [])
            c.setdefault("execution_count", None)
        full.append(c)
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": metadata
        if metadata is not None
        else {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": full,
    }
    path.write_text(json.dumps(nb, indent=1))
    return path
