"""A stale ``metadata.runtimed.cwd`` on an interactively opened notebook (issue 13, point 2):
a logged warning, and the kernel runs in the notebook's folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from runtimed.client import AsyncClient

from .conftest import write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60  # seconds: generous bound for anything that involves starting a kernel
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


async def test_a_missing_cwd_folder_warns_and_runs_in_the_notebooks_folder(
    client: AsyncClient, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = short_tmp / "shared"
    folder.mkdir()
    path = write_notebook(
        folder / "nb.ipynb",
        [{"cell_type": "code", "source": "import os\nprint(os.getcwd())", "metadata": {}}],
        metadata={
            "kernelspec": KERNELSPEC,
            "runtimed": {"cwd": "/home/someone-else/projects/gone"},
        },
    )
    caplog.set_level(logging.WARNING, logger="runtimed.daemon.executor")
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert result.status == "ok", result
    assert result.outputs[0]["text"] == f"{folder.resolve()}\n"
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "runtimed.daemon.executor" and r.levelno == logging.WARNING
    ]
    assert any("/home/someone-else/projects/gone" in w for w in warnings), warnings
