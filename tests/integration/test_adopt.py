"""Kernels outlive a daemon crash (issue 10 §3): a daemon in its own process is killed with
SIGKILL while a cell runs; the kernel (under its nanny) keeps running, prints while no daemon
is there, and the next daemon on the same home adopts it when the client reopens the
notebook: the running cell finishes with every output, variables defined before the kill
are still there. A kernel whose notebook nobody reopens is stopped after the bound."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient, ConnectionState
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook
from .daemon_proc import DaemonProc
from .runtime_helpers import alive, code, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60


@pytest.fixture(params=["60"])
async def daemon_proc(short_tmp: Path, request: pytest.FixtureRequest) -> AsyncIterator[DaemonProc]:
    """A daemon whose kernels wait ``request.param`` s for adoption after it is killed."""
    paths = RuntimedPaths(socket=short_tmp / "p" / "rt.sock", home=short_tmp / "phome")
    env = {"RUNTIMED_KERNEL_ORPHAN_TIMEOUT": str(request.param), "RUNTIMED_POOL_SIZE": "0"}
    async with DaemonProc(paths, short_tmp / "no-config.toml", env=env) as proc:
        await proc.start()
        yield proc


def _gated(before: str, gate: Path, marker: Path, during: str, gate2: Path, after: str) -> str:
    """Print ``before``; once ``gate`` exists print ``during`` and touch ``marker``; once
    ``gate2`` exists print ``after``."""
    return (
        "import os, time\n"
        f"print({before!r}, flush=True)\n"
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n"
        f"print({during!r}, flush=True)\n"
        f"open({str(marker)!r}, 'w').close()\n"
        f"while not os.path.exists({str(gate2)!r}):\n    time.sleep(0.01)\n"
        f"print({after!r}, flush=True)\n"
        "os.getpid()\n"
    )


async def _wait_for_file(path: Path) -> None:
    # Written by the kernel (another process): nothing to await but the file itself.
    with anyio.fail_after(DEADLINE):
        while not await anyio.Path(path).exists():
            await anyio.sleep(0.02)


async def test_a_running_cell_survives_a_killed_daemon_and_finishes_on_the_next(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    gate, marker, gate2 = short_tmp / "gate", short_tmp / "marker", short_tmp / "gate2"
    path = write_notebook(
        short_tmp / "adopt.ipynb",
        [code("x = 41"), code(_gated("before", gate, marker, "while-down", gate2, "after"))],
    )
    async with await AsyncClient.connect(daemon_proc.paths.socket) as client:
        nb = await client.open(path)
        first, running = nb.cell_ids()
        assert (await nb.execute(first, timeout=DEADLINE)).ok
        execution = await nb.queue(running)
        await client.wait_until(
            lambda: (
                nb.runtime.ready
                and any("before" in str(o.get("text")) for o in nb.outputs(running))
            ),
            timeout=DEADLINE,
        )
        kernel_pid = nb.runtime.kernel().get("pid")
        assert isinstance(kernel_pid, int)

        await daemon_proc.kill9()
        await client.wait_state(ConnectionState.RECONNECTING, timeout=DEADLINE)
        assert alive(kernel_pid)  # the nanny: the kernel's process group leader
        gate.touch()
        await _wait_for_file(marker)  # printed while no daemon was there

        await daemon_proc.start()
        await client.wait_state(ConnectionState.CONNECTED, timeout=DEADLINE)
        # Reopened by the client: the kernel is adopted, the cell still runs.
        await client.wait_until(
            lambda: nb.runtime.ready and nb.runtime.execution_status(execution) == "running",
            timeout=DEADLINE,
        )
        gate2.touch()
        result = await nb.wait_execution(execution, timeout=DEADLINE)
        assert result.status == "ok", result
        text = "".join(
            str(o.get("text", "")) for o in result.outputs if o["output_type"] == "stream"
        )
        assert text == "before\nwhile-down\nafter\n"
        assert nb.runtime.kernel().get("pid") == kernel_pid  # the same process group

        # What ran before the kill is still defined in the kernel.
        check = await nb.add_cell("code", "x + 1")
        again = await nb.execute(check, timeout=DEADLINE)
        assert again.ok, again
        assert again.outputs[0]["data"]["text/plain"] == "42"
        saved = await nb.save()

    cells = json.loads(saved.read_text())["cells"]
    assert "".join(cells[1]["outputs"][0]["text"]) == "before\nwhile-down\nafter\n"


@pytest.mark.parametrize("daemon_proc", ["2"], indirect=True)
async def test_a_kernel_nobody_reopens_is_stopped_after_the_bound(
    daemon_proc: DaemonProc, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "orphan.ipynb",
        [code("import subprocess\nchild = subprocess.Popen(['sleep', '600'])\nprint(child.pid)")],
    )
    async with await AsyncClient.connect(daemon_proc.paths.socket, reconnect=False) as client:
        nb = await client.open(path)
        result = await nb.execute(nb.cell_ids()[0], timeout=DEADLINE)
        assert result.ok, result
        sleep_pid = int(result.outputs[0]["text"])
        group = nb.runtime.kernel().get("pid")
        assert isinstance(group, int)
        [conn_dir] = [
            Path(json.loads(f.read_text())["conn_dir"])
            for f in (daemon_proc.paths.home / "kernels").glob("*.json")
        ]
        await daemon_proc.kill9()
    await daemon_proc.start()  # nobody reopens the notebook
    await wait_gone(group, sleep_pid, within=DEADLINE)
    records = daemon_proc.paths.home / "kernels"
    with anyio.fail_after(DEADLINE):
        while any(records.glob("*.json")):
            await anyio.sleep(0.02)
    assert not conn_dir.exists()
