"""Shared helpers for the benchmarks: a daemon subprocess in a temp dir, stats, RSS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(label: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{label:<44} median {statistics.median(ms):8.3f} ms   p99 {percentile(ms, 99):8.3f} ms"
        f"   n={len(ms)}"
    )


def bare_execute(kc: Any, code: str, *, timeout: float = 10) -> dict[str, Any] | None:
    """A bare ``jupyter_client`` execution (the peer of several benchmarks): send ``code``,
    wait for its IOPub idle and, when it has one, its execute_result (returned; None when it
    has none), then its shell reply."""
    msg_id = kc.execute(code)
    result: dict[str, Any] | None = None
    idle = False
    while not idle:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_result":
            result = msg["content"]
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    kc.get_shell_msg(timeout=timeout)
    return result


def compile_project() -> None:
    """Byte-compile the checkout, as pip does for an installed package (papermill's is).

    An editable install under ``PYTHONDONTWRITEBYTECODE=1`` (set on our machines) never
    gets ``.pyc`` files, so every ``runt`` process would compile our modules again: about
    85 ms a command that a user installing runtimed does not pay.
    """
    import compileall

    for package in ("protocol", "blobstore", "runtimed"):
        compileall.compile_dir(ROOT / package, quiet=1)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def write_notebook(path: Path, sources: list[str], *, markdown_every: int = 0) -> Path:
    cells: list[dict[str, object]] = []
    for index, source in enumerate(sources):
        if markdown_every and index % markdown_every == markdown_every - 1:
            cells.append(
                {"id": f"m{index}", "cell_type": "markdown", "metadata": {}, "source": source}
            )
        else:
            cells.append(
                {
                    "id": f"c{index}",
                    "cell_type": "code",
                    "metadata": {},
                    "source": source,
                    "outputs": [],
                    "execution_count": None,
                }
            )
    path.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "cells": cells,
                "metadata": {
                    "kernelspec": {
                        "name": "python3",
                        "display_name": "Python 3",
                        "language": "python",
                    }
                },
            }
        )
    )
    return path


def wait_listening(sock: Path, proc: subprocess.Popen[bytes], *, timeout: float = 60) -> None:
    """Return once a daemon accepts connections on ``sock``.

    Raises:
        RuntimeError: ``proc`` exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(sock))
                return
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the daemon did not start") from None
                time.sleep(0.01)


@contextmanager
def daemon_process() -> Iterator[tuple[Path, subprocess.Popen[bytes], Path]]:
    """A daemon in a temp dir; yields (socket, process, workdir); stopped afterwards."""
    work = Path(tempfile.mkdtemp(prefix="rtb-", dir="/tmp"))
    sock = work / "rt.sock"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtimed.daemon.main",
            "--socket",
            str(sock),
            "--home",
            str(work / "home"),
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(sock, proc, timeout=30)
        yield sock, proc, work
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
