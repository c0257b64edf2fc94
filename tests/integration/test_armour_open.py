"""Opening a path is bounded: a FIFO, a device or a directory is refused by name at once
(never waited on, never read without end), and saved files keep their mode (new ones follow
the umask)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.errors import NotebookIOError

from .conftest import write_notebook

pytestmark = pytest.mark.anyio

TIMEOUT = 10


async def test_fifos_are_refused_at_once_and_do_not_starve_other_opens(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    fifos = []
    for index in range(45):  # more than the worker-thread limiter (40) holds
        fifo = short_tmp / f"pipe{index}.ipynb"
        os.mkfifo(fifo)
        fifos.append(fifo)
    errors: list[str] = []

    async def open_fifo(fifo: Path) -> None:
        with pytest.raises(NotebookIOError) as caught:
            await client.open(fifo)
        errors.append(str(caught.value))

    with anyio.fail_after(TIMEOUT):  # on old code the first open never returned
        async with anyio.create_task_group() as tg:
            for fifo in fifos:
                tg.start_soon(open_fifo, fifo)
        good = write_notebook(short_tmp / "good.ipynb", [{"cell_type": "code", "source": "1"}])
        nb = await client.open(good)
        await nb.set_source("cell0", "2")
        await nb.save()
    assert len(errors) == 45
    assert all("is a FIFO (named pipe), not a notebook file" in e for e in errors)
    assert str(fifos[0]) in " ".join(errors)
    assert "".join(json.loads(good.read_text())["cells"][0]["source"]) == "2"


@pytest.mark.parametrize(
    ("target", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
async def test_devices_are_refused_without_reading_them(
    client: AsyncClient, short_tmp: Path, target: str, kind: str
) -> None:
    link = short_tmp / "zero.ipynb"
    link.symlink_to(target)  # a path that looks like a notebook
    with anyio.fail_after(TIMEOUT), pytest.raises(NotebookIOError, match=kind):
        await client.open(link)
    await client.ping()


async def test_a_directory_is_refused_by_name(client: AsyncClient, short_tmp: Path) -> None:
    folder = short_tmp / "folder.ipynb"
    folder.mkdir()
    with pytest.raises(NotebookIOError, match="is a directory, not a notebook file"):
        await client.open(folder)


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


async def test_saved_files_keep_their_mode_and_new_ones_follow_the_umask(
    client: AsyncClient, short_tmp: Path, umask_027: None
) -> None:
    existing = write_notebook(short_tmp / "kept.ipynb", [{"cell_type": "code", "source": "1"}])
    os.chmod(existing, 0o604)
    nb = await client.open(existing)
    await nb.set_source("cell0", "3")
    await nb.save()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o604
    fresh = short_tmp / "fresh.ipynb"
    await nb.save(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0666 & ~027, not a fixed 0644
    assert not [p for p in short_tmp.iterdir() if p.name.endswith(".tmp")]
