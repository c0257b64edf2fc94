"""The end-to-end proof of issue 10 §3 and §4: a ``runt run`` whose daemon is killed
(``kill -9``) mid-cell reconnects, finds its kernel adopted by the next daemon, and finishes
the run with every output — including what the cell printed while no daemon was running —
and with the variables defined before the kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from runtimed.cli.runner import DISABLE_ENV, runner_socket
from runtimed.paths import RuntimedPaths

from .daemon_proc import REPO, DaemonProc
from .test_adopt import _wait_for_file
from .test_warm_runner import CALLER as HANDED_OVER

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60


@pytest.fixture
async def daemon_proc(short_tmp: Path) -> AsyncIterator[DaemonProc]:
    paths = RuntimedPaths(socket=short_tmp / "p" / "rt.sock", home=short_tmp / "phome")
    env = {"RUNTIMED_POOL_SIZE": "0"}
    async with DaemonProc(paths, short_tmp / "no-config.toml", env=env) as proc:
        await proc.start()
        yield proc


def _notebook(path: Path, cells: list[str]) -> Path:
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            {
                "cell_type": "code",
                "id": f"c{i}",
                "metadata": {},
                "source": source,
                "outputs": [],
                "execution_count": None,
            }
            for i, source in enumerate(cells)
        ],
    }
    path.write_text(json.dumps(nb))
    return path


def _wait(path: Path) -> str:
    return f"while not os.path.exists({str(path)!r}):\n    time.sleep(0.01)\n"


@pytest.mark.parametrize("where", ["own process", "warm runner"])
async def test_runt_run_survives_a_killed_daemon_with_every_output(
    daemon_proc: DaemonProc, short_tmp: Path, where: str
) -> None:
    """Run in the ``runt`` process, and handed to the daemon's warm runner (the runner
    dies with the daemon; the run it forked goes on)."""
    names = ("started", "gate", "marker", "gate2", "runs")
    started, gate, marker, gate2, runs = (short_tmp / n for n in names)
    source = _notebook(
        short_tmp / "in.ipynb",
        [
            "x = 41\nprint('first')",
            "import os, time\nprint('before', flush=True)\n"
            f"open({str(runs)!r}, 'a').write('ran ')\n"
            f"open({str(started)!r}, 'w').close()\n"
            + _wait(gate)
            + "print('while-down', flush=True)\n"
            f"open({str(marker)!r}, 'w').close()\n" + _wait(gate2) + "print('after')",
            "print(x + 1)",
        ],
    )
    output = short_tmp / "out.ipynb"
    argv = [sys.executable, "-m", "runtimed.cli", "--socket", str(daemon_proc.paths.socket)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if where == "warm runner":
        await _wait_for_file(Path(runner_socket(daemon_proc.paths.socket)))
        argv[1:3] = ["-c", HANDED_OVER]  # fails unless the runner ran it
    else:
        env[DISABLE_ENV] = "0"
    argv += ["run", str(source), str(output), "--no-autostart", "--no-progress-bar"]
    async with await anyio.open_process(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as runt:
        try:
            await _wait_for_file(started)
            await daemon_proc.kill9()
            gate.touch()
            await _wait_for_file(marker)  # printed while no daemon was running
            await daemon_proc.start()
            gate2.touch()
            with anyio.fail_after(DEADLINE):
                returncode = await runt.wait()
        finally:
            if runt.returncode is None:
                runt.kill()
                with anyio.CancelScope(shield=True):
                    await runt.wait()
        assert runt.stderr is not None
        errors = (await runt.stderr.receive()).decode() if returncode else ""
    assert returncode == 0, errors
    cells = json.loads(output.read_text())["cells"]
    texts = ["".join("".join(o.get("text", "")) for o in c["outputs"]) for c in cells]
    assert texts == ["first\n", "before\nwhile-down\nafter\n", "42\n"], cells
    assert [c["metadata"]["papermill"]["status"] for c in cells] == ["completed"] * 3
    assert runs.read_text() == "ran "  # adopted: followed to its end, not run again
