"""``runt run``'s nbformat-free preparation: the daemon validates the file it opens, and a
refusal retries the careful path (runtimed.automation.quickread)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest

from runtimed.daemon.app import Daemon

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]


async def runt(daemon: Daemon, *args: str | Path) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "runtimed.cli", "--socket", str(daemon.paths.socket)]
        + [str(a) for a in args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _notebook(metadata: dict[str, Any], *extra_cells: dict[str, Any]) -> dict[str, Any]:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": metadata,
        "cells": [
            {
                "id": "p",
                "cell_type": "code",
                "metadata": {"tags": ["parameters"]},
                "source": "a = 1",
                "execution_count": None,
                "outputs": [],
            },
            {
                "id": "s",
                "cell_type": "code",
                "metadata": {},
                "source": "print(a * 2)",
                "execution_count": None,
                "outputs": [],
            },
            *extra_cells,
        ],
    }


async def _write(path: Path, nb: dict[str, Any]) -> Path:
    await anyio.Path(path).write_text(json.dumps(nb))
    return path


async def _read(path: Path) -> Any:
    return nbformat.reads(await anyio.Path(path).read_text(), as_version=4)


async def test_a_plain_notebook_runs_with_parameters(daemon: Daemon, short_tmp: Path) -> None:
    spec = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    src = await _write(short_tmp / "in.ipynb", _notebook(spec))
    out = short_tmp / "out.ipynb"
    status, _, err = await runt(daemon, "run", src, out, "-p", "a", "21", "--no-autostart")
    assert status == 0, err
    nb = await _read(out)
    assert [c.id for c in nb.cells] == ["p", "injected-parameters", "s"]
    assert nb.cells[2].outputs[0]["text"] == "42\n"
    assert nb.metadata.papermill.parameters == {"a": 21}
    nbformat.validate(nb)


async def test_metadata_the_daemon_refuses_is_dropped_with_a_warning(
    daemon: Daemon, short_tmp: Path
) -> None:
    # A kernelspec without 'name' passes the quick read; the daemon refuses the file; the
    # careful path drops the invalid metadata (as papermill) and runs it.
    src = await _write(short_tmp / "in.ipynb", _notebook({"kernelspec": {"language": "python"}}))
    out = short_tmp / "out.ipynb"
    status, _, err = await runt(daemon, "run", src, out, "--no-autostart")
    assert status == 0, err
    assert "'name' is a required property" in err
    assert (await _read(out)).cells[1].outputs[0]["text"] == "2\n"


async def test_an_invalid_input_is_named_and_leaves_no_output(
    daemon: Daemon, short_tmp: Path
) -> None:
    bad_cell = {"id": "m", "cell_type": "markdown", "metadata": {}, "source": "", "outputs": []}
    src = await _write(short_tmp / "in.ipynb", _notebook({}, bad_cell))
    out = short_tmp / "out.ipynb"
    status, _, err = await runt(daemon, "run", src, out, "--no-autostart")
    assert status == 2, err
    assert f"{src}: invalid notebook" in err
    assert not await anyio.Path(out).exists()
