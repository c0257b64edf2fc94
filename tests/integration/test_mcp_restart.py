"""A daemon restart in the middle of an MCP session: the server reconnects (autostarting a
new daemon), reopens the notebook, says once that the kernel was restarted, and goes on."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from mcp import MCPDeprecationWarning

from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig
from runtimed.daemon.app import Daemon
from runtimed.errors import DaemonNotRunning
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook
from .test_mcp_support import code, mcp_agent

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"  # exited; waiting for its parent (init) to reap it


async def _stop_autostarted(paths: RuntimedPaths) -> None:
    try:
        async with await AsyncClient.connect(paths.socket) as client:
            pid = (await client.status()).pid
            await client.shutdown_daemon()
    except DaemonNotRunning:
        return
    assert pid != os.getpid()
    with anyio.fail_after(30):
        while not _gone(pid):
            await anyio.sleep(0.05)  # a process we did not spawn: no wait() to block on


async def test_a_daemon_restart_in_the_middle_of_a_session(
    paths: RuntimedPaths, daemon_config: DaemonConfig, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "survive.ipynb", [code("x = 41", "set"), code("x + 1", "use")]
    )
    stopped = anyio.Event()
    first = Daemon(paths, config=daemon_config)

    async def serve_first(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await first.run(task_status=task_status)
        finally:
            stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(serve_first)
            async with mcp_agent(paths, short_tmp, autostart=True) as agent:
                opened = await agent.call("open_notebook", notebook=str(path))
                uri = f"notebook://{opened['notebook_id']}/cells/use"
                with pytest.warns(MCPDeprecationWarning):
                    await agent.session.subscribe_resource(uri)
                await agent.call("execute_cell", notebook=str(path), cell_id="set", timeout=60)
                used = await agent.call("execute_cell", notebook=str(path), cell_id="use",
                                        timeout=60)  # fmt: skip
                assert used["outputs"][0]["text"] == "42"

                first.request_stop()
                await stopped.wait()

                # The next call reconnects: no daemon answers, so one is started.
                outline = await agent.call("get_notebook", notebook=str(path))
                assert "kernels were restarted" in outline["notice"]
                assert str(path.resolve()) in outline["notice"]
                assert outline["notebook_id"] == opened["notebook_id"]
                assert [c["cell_id"] for c in outline["cells"]] == ["set", "use"]
                # Told once only.
                again = await agent.call("get_notebook", notebook=opened["notebook_id"])
                assert "notice" not in again
                lost = await agent.call("execute_cell", notebook=str(path), cell_id="use",
                                        timeout=60)  # fmt: skip
                assert lost["status"] == "error"
                assert lost["ename"] == "NameError"
                new = await agent.call("insert_cell", notebook=str(path), source="y = 1")
                saved = await agent.call("save_notebook", notebook=str(path))
                assert new["cell_id"] in path.read_text()
                assert saved["path"] == str(path.resolve())
                async with await AsyncClient.connect(paths.socket) as probe:
                    status = await probe.status()
                    # The subscription survived the restart too.
                    person = await probe.open(path)
                    await person.set_source("use", "x + 2")
                    await agent.wait_updated(uri)
                    await person.close()
                assert status.pid != os.getpid()  # a daemon in its own process now
    finally:
        with anyio.CancelScope(shield=True):
            await _stop_autostarted(paths)
