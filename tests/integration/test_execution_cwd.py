"""``metadata.runtimed.cwd``: where the kernel runs, checked in a worker thread by the executor."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimed.client import AsyncClient

from .conftest import write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60  # seconds: generous bound for anything that involves starting a kernel
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _notebook(path: Path, cwd: str) -> Path:
    return write_notebook(
        path,
        [{"cell_type": "code", "source": "import os\nprint(os.getcwd())", "metadata": {}}],
        metadata={"kernelspec": KERNELSPEC, "runtimed": {"cwd": cwd}},
    )


async def test_the_kernel_runs_in_the_directory_named_relative_to_the_notebook(
    client: AsyncClient, short_tmp: Path
) -> None:
    (short_tmp / "data" / "inner").mkdir(parents=True)
    nb = await client.open(_notebook(short_tmp / "nb.ipynb", "data/../data/inner"))
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert result.status == "ok", result
    assert result.outputs[0]["text"] == f"{(short_tmp / 'data' / 'inner').resolve()}\n"


async def test_a_cwd_that_is_not_a_directory_runs_in_the_notebooks_folder(
    client: AsyncClient, short_tmp: Path
) -> None:
    # A stale key is a logged warning, not an error (issue 13, point 2).
    (short_tmp / "a-file").write_text("not a directory")
    nb = await client.open(_notebook(short_tmp / "nb.ipynb", "a-file"))
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert result.status == "ok", result
    assert result.outputs[0]["text"] == f"{short_tmp.resolve()}\n"
