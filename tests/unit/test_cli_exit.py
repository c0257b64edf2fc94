"""``runt`` run as a command ends with ``os._exit`` once its output is flushed
(runtimed.cli.main): the same exit status and the same output as a normal exit, all of a
large output through a pipe, and a normal exit under a profiler so it can write its file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def runt(
    *args: str, normal: bool = False, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RUNTIMED_NORMAL_EXIT", None)
    if normal:
        env["RUNTIMED_NORMAL_EXIT"] = "1"
    return subprocess.run(
        [sys.executable, *python, "-m", "runtimed.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_failing_command_keeps_its_status_and_message(tmp_path: Path) -> None:
    missing = str(tmp_path / "no.sock")
    fast, normal = runt("--socket", missing, "ps"), runt("--socket", missing, "ps", normal=True)
    assert fast.returncode == normal.returncode != 0
    assert fast.stderr == normal.stderr
    assert "no runtimed daemon" in fast.stderr


def _many_parameters(path: Path, count: int) -> Path:
    source = "\n".join(f"p{i} = {i}  # parameter number {i}" for i in range(count))
    cell: dict[str, object] = {
        "id": "p",
        "cell_type": "code",
        "metadata": {"tags": ["parameters"]},
        "source": source,
        "outputs": [],
        "execution_count": None,
    }
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [cell]}
    path.write_text(json.dumps(nb))
    return path


def test_an_output_larger_than_a_pipe_arrives_whole(tmp_path: Path) -> None:
    notebook = _many_parameters(tmp_path / "params.ipynb", 3000)
    done = runt("inspect", str(notebook), "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) > 1 << 17  # twice a Linux pipe's default buffer
    parameters = json.loads(done.stdout)["parameters"]
    assert [p["name"] for p in parameters] == [f"p{i}" for i in range(3000)]


@pytest.mark.parametrize("normal", [False, True])
def test_under_a_profiler_the_process_exits_normally(tmp_path: Path, normal: bool) -> None:
    profile = tmp_path / "runt.prof"
    missing = str(tmp_path / "no.sock")
    done = runt(
        "--socket", missing, "ps", normal=normal, python=("-m", "cProfile", "-o", str(profile))
    )
    assert "no runtimed daemon" in done.stderr  # (cProfile itself exits 0)
    assert profile.stat().st_size > 0  # cProfile writes it after main() returns
