"""Fixtures starting a real daemon on a real Unix socket in a short temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import blockbuster.blockbuster as blockbuster_module
import pytest
from blockbuster import BlockBuster, BlockingError, blockbuster_ctx

from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.paths import RuntimedPaths

if TYPE_CHECKING:
    from .daemon_proc import DaemonProc

_REPO = Path(__file__).resolve().parents[2]

# Our code: a blocking call on the event loop thread with one of these on the stack fails the
# test (a call made by the test itself, e.g. reading the output file, is the test's business).
_SCANNED = ["runtimed", "protocol", "blobstore"]
_SCANNED_ROOTS = tuple(str(_REPO / name) for name in _SCANNED)


# Narrow allowances, each with its reason (the detector stays on for everything else).
_ALLOWED: list[tuple[str, tuple[str, set[str]]]] = [
    # logging writes records synchronously from the calling thread: pytest's file handler
    # (to /dev/null unless --log-file) and the daemon's own --log-file handler.  A short
    # write to a local file; a QueueHandler would move it off the loop if it ever matters.
    ("io.TextIOWrapper.write", ("logging/__init__.py", {"emit"})),
    ("io.BufferedWriter.write", ("logging/__init__.py", {"emit"})),
    # anyio's create_unix_listener stats the socket path once when it binds (start-up only).
    ("os.stat", ("anyio/_core/_sockets.py", {"setup_unix_local_socket"})),
    # TODO(client owner): AsyncNotebook.outputs() is synchronous API that resolves blob
    # references by reading the blob files (wait_execution does that in a worker thread).
    ("io.BufferedReader.read", ("runtimed/client/notebook.py", {"outputs"})),
]


@pytest.fixture(autouse=True)
def no_blocking_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[BlockBuster]:
    """Every integration test runs under ``blockbuster``: file I/O, ``time.sleep``, blocking
    socket calls or a contended lock on the event loop thread, from our packages, raise
    ``BlockingError`` there — and fail the test at teardown even if the daemon caught it
    (a daemon turns an unexpected exception into an error reply and keeps serving).

    Active from before the daemon fixture starts until after it stopped (autouse fixtures
    are set up first and torn down last). Subprocesses (``runt`` runs, daemon processes,
    kernels) are not covered: they are not our event loop.
    """
    seen: list[str] = []

    class RecordedBlockingError(BlockingError):
        def __init__(self, func: str) -> None:
            super().__init__(func)
            stack = traceback.extract_stack()[:-1]
            ours = [f for f in stack if f.filename.startswith(_SCANNED_ROOTS)]
            where = f"{ours[-1].filename}:{ours[-1].lineno} in {ours[-1].name}" if ours else "?"
            seen.append(f"{func} at {where}\n{''.join(traceback.format_list(stack[-12:]))}")

    # The wrapper looks the exception class up in its module when it raises: record each.
    monkeypatch.setattr(blockbuster_module, "BlockingError", RecordedBlockingError)
    with blockbuster_ctx(_SCANNED) as detector:
        for function, (filename, names) in _ALLOWED:
            detector.functions[function].can_block_in(filename, names)
        yield detector
    assert not seen, "blocking calls on the event loop:\n" + "\n".join(seen)


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
async def daemon_proc(short_tmp: Path) -> AsyncIterator[DaemonProc]:
    """A daemon in its own process that a test can kill -9 and start again on the same
    socket and home (:class:`tests.integration.daemon_proc.DaemonProc`); stopped after."""
    from .daemon_proc import DaemonProc  # it imports this module

    paths = RuntimedPaths(socket=short_tmp / "p" / "rt.sock", home=short_tmp / "phome")
    async with DaemonProc(paths, short_tmp / "no-config.toml") as proc:
        await proc.start()
        yield proc


@pytest.fixture
def daemon_process(short_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], RuntimedPaths]]:
    """A daemon in its own process (``python -m runtimed.daemon.main``), for lifecycle tests.

    Readiness is a successful connect within a deadline; the process is stopped afterwards.
    """
    proc, paths = spawn_test_daemon(short_tmp, "p", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
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


def spawn_test_daemon(
    short_tmp: Path,
    name: str,
    *,
    env: dict[str, str] | None = None,
    stdout: int = subprocess.DEVNULL,
    stderr: int = subprocess.DEVNULL,
) -> tuple[subprocess.Popen[bytes], RuntimedPaths]:
    """Start ``python -m runtimed.daemon.main`` on ``<short_tmp>/<name>/rt.sock`` with home
    ``<short_tmp>/<name>home``, hermetic (never the user's config.toml; ``env`` on top), and
    return once it accepts connections. The caller stops it."""
    paths = RuntimedPaths(socket=short_tmp / name / "rt.sock", home=short_tmp / f"{name}home")
    full_env = dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        RUNTIMED_CONFIG=str(short_tmp / "no-config.toml"),
        **(env or {}),
    )
    argv = [sys.executable, "-m", "runtimed.daemon.main", "--socket", str(paths.socket)]
    argv += ["--home", str(paths.home)]
    proc = subprocess.Popen(argv, env=full_env, stdout=stdout, stderr=stderr)
    try:
        wait_for_socket(paths.socket, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, paths


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
