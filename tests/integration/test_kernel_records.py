"""No kernel process outlives its daemon for long (issue 10 §3): a daemon killed with SIGKILL
leaves records of its kernels; the next daemon on the same home keeps the live ones for the
adoption window (``RUNTIMED_KERNEL_ORPHAN_TIMEOUT``, short here) and then stops every process
group they name (grandchildren included) and removes the records and the kernels' temporary
directories (adoption itself: ``test_adopt.py``)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook
from .daemon_proc import DaemonProc
from .runtime_helpers import alive, code, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60
SPAWN_SLEEP = (
    "import os, subprocess\nchild = subprocess.Popen(['sleep', '600'])\n"
    "print(child.pid, os.getpid())\n"
)


@pytest.fixture
async def daemon_proc(short_tmp: Path) -> AsyncIterator[DaemonProc]:
    paths = RuntimedPaths(socket=short_tmp / "p" / "rt.sock", home=short_tmp / "phome")
    env = {"RUNTIMED_KERNEL_ORPHAN_TIMEOUT": "2"}
    async with DaemonProc(paths, short_tmp / "no-config.toml", env=env) as proc:
        await proc.start()
        yield proc


async def test_a_new_daemon_stops_what_the_killed_daemons_kernel_started(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "orphans.ipynb", [code(SPAWN_SLEEP)])
    records_dir = daemon_proc.paths.home / "kernels"
    async with await AsyncClient.connect(daemon_proc.paths.socket, reconnect=False) as client:
        nb = await client.open(path)
        result = await nb.execute(nb.cell_ids()[0], timeout=DEADLINE)
        assert result.ok, result
        sleep_pid, kernel_pid = map(int, result.outputs[0]["text"].split())
        assert alive(sleep_pid)

        # The notebook's kernel (and the pool's next one, if the pool is on).
        records = [json.loads(f.read_text()) for f in records_dir.glob("*.json")]
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in records_dir.glob("*.json"))
        # The record names the kernel's process group (its nanny leads it).
        group = os.getpgid(kernel_pid)
        [record] = [r for r in records if r["pid"] == group]
        assert record["start_ticks"] is not None
        # A pooled kernel's record names its notebook once handed over (written in the
        # background): wait for it within the deadline.
        with anyio.fail_after(DEADLINE):
            while _owner(records_dir, group) != nb.id:
                await anyio.sleep(0.02)
        conn_dir = Path(record["conn_dir"])
        assert conn_dir.name.startswith("runtimed-kernel-")
        assert conn_dir.is_dir()
        old_dirs = [Path(r["conn_dir"]) for r in records]  # the pool's kernel's too
        old_daemon = daemon_proc.proc.pid

        await daemon_proc.kill9()

    assert alive(sleep_pid)  # today's main leaves it there forever
    await daemon_proc.start()  # nobody reopens the notebook: stopped after the window
    await wait_gone(sleep_pid, kernel_pid, group, within=DEADLINE)
    with anyio.fail_after(DEADLINE):  # the directories go with them, then the records
        while [d for d in old_dirs if d.exists()] or _by_daemon(records_dir, old_daemon):
            await anyio.sleep(0.02)
    # Only the new daemon's own are left (a pool kernel, if the pool is on).
    assert _by_daemon(records_dir, old_daemon) == []


def _by_daemon(records_dir: Path, daemon_pid: int) -> list[dict[str, object]]:
    records = []
    for f in records_dir.glob("*.json"):
        try:
            records.append(json.loads(f.read_text()))
        except (FileNotFoundError, ValueError):  # removed (or replaced) while we looked
            continue
    return [r for r in records if r["daemon_pid"] == daemon_pid]


async def test_a_clean_stop_leaves_no_record(daemon_proc: DaemonProc, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "clean.ipynb", [code("1 + 1")])
    records_dir = daemon_proc.paths.home / "kernels"
    async with await AsyncClient.connect(daemon_proc.paths.socket, reconnect=False) as client:
        nb = await client.open(path)
        assert (await nb.execute(nb.cell_ids()[0], timeout=DEADLINE)).ok
        before = _owned(records_dir, nb.id)
        assert len(before) == 1
        await nb.restart()
        assert (await nb.execute(nb.cell_ids()[0], timeout=DEADLINE)).ok
        # The restarted kernel has its own record; the first one's went with it.
        after = _owned(records_dir, nb.id)
        assert len(after) == 1
        assert after != before
    await daemon_proc.stop()
    assert list(records_dir.iterdir()) == []


def _owned(records_dir: Path, notebook_id: str) -> list[int]:
    records = [json.loads(f.read_text()) for f in records_dir.glob("*.json")]
    return [int(r["pid"]) for r in records if r["notebook_id"] == notebook_id]


def _owner(records_dir: Path, pid: int) -> str | None:
    for f in records_dir.glob("*.json"):
        record = json.loads(f.read_text())
        if record["pid"] == pid:
            return record["notebook_id"]  # type: ignore[no-any-return]
    return None
