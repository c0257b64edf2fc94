"""The pre-warmed kernel pool: opening a notebook takes a kernel, the pool refills, and a
pooled kernel is never shared after it ran code. Real daemon, real ipykernel processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook
from .runtime_helpers import (
    DEADLINE,
    alive,
    code,
    ipykernel_argv,
    pool_ready,
    running_daemon,
    runt_json,
    wait_gone,
    wait_status,
    write_kernelspec,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def daemon_config() -> DaemonConfig:
    return DaemonConfig(heads_timeout=5.0, runtimes=RuntimesConfig(pool_size=1))


def stdout(result_outputs: list[dict[str, object]]) -> str:
    return "".join(
        str(o.get("text", "")) for o in result_outputs if o.get("output_type") == "stream"
    )


async def test_opening_a_notebook_takes_a_pooled_kernel_and_the_pool_refills(
    client: AsyncClient, short_tmp: Path
) -> None:
    status = await wait_status(client, pool_ready(1))
    assert status.pool is not None
    assert status.pool.enabled
    assert status.pool.runtime == "python3"
    [pooled] = status.pool.kernels
    assert pooled.pooled
    assert pooled.notebook_id is None
    assert pooled.state == "idle"
    assert isinstance(pooled.pid, int)
    assert alive(pooled.pid)

    folder = short_tmp / "project"
    folder.mkdir()
    path = write_notebook(
        folder / "nb.ipynb",
        [
            code(
                "import os\nprint(os.getcwd())\nprint(os.environ['RUNTIMED_NOTEBOOK_ID'])\n"
                "print(os.environ['RUNTIMED_NOTEBOOK_PATH'])"
            ),
            code("1 + 1"),
        ],
    )
    nb = await client.open(path)
    # Opening took the pooled kernel: it is the notebook's, ready, before any execution.
    await client.wait_until(
        lambda: nb.runtime.kernel()["pid"] == pooled.pid and nb.runtime.kernel()["state"] == "idle",
        timeout=DEADLINE,
    )

    first = await nb.execute("cell0", timeout=DEADLINE)
    # The daemon's silent setup moved it to the notebook's folder and environment, and did
    # not use up an execution count.
    assert (first.status, first.execution_count) == ("ok", 1)
    assert stdout(first.outputs).splitlines() == [str(folder), nb.id, str(path.resolve())]
    second = await nb.execute("cell1", timeout=DEADLINE)
    assert second.execution_count == 2
    assert second.outputs[0]["data"] == {"text/plain": "2"}

    # The pool refilled in the background with a different process.
    status = await wait_status(client, pool_ready(1))
    assert status.pool is not None
    assert [k.pid for k in status.pool.kernels] != [pooled.pid]
    mine = [k for k in status.kernels if k.notebook_id == nb.id]
    assert [(k.pid, k.pooled, k.runtime) for k in mine] == [(pooled.pid, False, "python3")]
    [info] = await client.list_notebooks()
    assert info.kernel is not None
    assert info.kernel.from_pool
    assert info.kernel.runtime == "python3"
    assert (info.kernel.rss_bytes or 0) > 10_000_000
    assert info.kernel.last_activity is not None


async def test_a_pooled_kernel_is_never_shared_after_it_ran_code(
    client: AsyncClient, short_tmp: Path
) -> None:
    await wait_status(client, pool_ready(1))
    first = write_notebook(short_tmp / "a.ipynb", [code("secret = 42\nsecret")])
    second = write_notebook(short_tmp / "b.ipynb", [code("print(secret)")])

    a = await client.open(first)
    assert (await a.execute("cell0", timeout=DEADLINE)).status == "ok"
    used = a.runtime.kernel()["pid"]
    assert isinstance(used, int)
    await a.close(unload=True)
    await wait_gone(used)  # released means shut down, never back into the pool

    status = await wait_status(client, pool_ready(1))
    assert used not in {k.pid for k in status.kernels}
    b = await client.open(second)
    result = await b.execute("cell0", timeout=DEADLINE)
    assert result.status == "error"
    assert result.ename == "NameError"
    assert b.runtime.kernel()["pid"] != used

    # Reopening the first notebook gets a fresh kernel too.
    a = await client.open(first)
    assert (await a.execute("cell0", timeout=DEADLINE)).execution_count == 1
    assert a.runtime.kernel()["pid"] not in (used, b.runtime.kernel()["pid"])


async def test_runt_run_runs_on_the_pooled_kernel_and_restarts_only_a_used_one(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    from runtimed.automation.run import execute_notebook_async

    status = await wait_status(client, pool_ready(1))
    assert status.pool is not None
    [pooled] = status.pool.kernels
    source = write_notebook(
        short_tmp / "in.ipynb",
        # The kernel's process group: the pid the daemon reports (its nanny leads it).
        [code("import os\nprint(os.getpgid(0), 'seen' in globals())\nseen = True")],
    )
    out = short_tmp / "out.ipynb"

    async def run_once() -> list[str]:
        result = await execute_notebook_async(
            source, out, socket=daemon.paths.socket, keep_open=True, progress_bar=False
        )
        assert result.status == "ok"
        nb = await client.open(out)
        kernel = nb.runtime.kernel()
        text = stdout([dict(o) for o in nb.outputs("cell0")])
        assert kernel["used"] is True
        await nb.close()
        return text.split()

    # The fresh pooled kernel is used as it is: no restart, no cold start.
    assert await run_once() == [str(pooled.pid), "False"]
    # The same output notebook, still open with a kernel that ran it: restarted first, so
    # nothing of the earlier run is left in its namespace.
    pid, seen = await run_once()
    assert (int(pid), seen) != (pooled.pid, "True")
    assert seen == "False"


async def test_restarting_a_pooled_kernel_keeps_the_notebooks_folder_and_environment(
    client: AsyncClient, short_tmp: Path
) -> None:
    await wait_status(client, pool_ready(1))
    path = write_notebook(
        short_tmp / "r.ipynb",
        [
            code("import os\nprint(os.getcwd(), os.environ.get('RUNTIMED_NOTEBOOK_ID'))"),
        ],
    )
    nb = await client.open(path)
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
    before = nb.runtime.kernel()["pid"]
    await nb.restart()
    after = await nb.execute("cell0", timeout=DEADLINE)
    assert nb.runtime.kernel()["pid"] != before
    assert stdout(after.outputs) == f"{short_tmp} {nb.id}\n"
    assert after.execution_count == 1


async def test_a_pooled_kernel_makes_room_for_a_notebook_at_the_kernel_limit(
    paths: RuntimedPaths, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_kernelspec(short_tmp / "jp", "other", ipykernel_argv())
    monkeypatch.setenv("JUPYTER_PATH", str(short_tmp / "jp"))
    config = DaemonConfig(runtimes=RuntimesConfig(pool_size=1, max_kernels=1))
    async with running_daemon(paths, config), await AsyncClient.connect(paths.socket) as client:
        status = await wait_status(client, pool_ready(1))
        pooled = status.pool.kernels[0].pid if status.pool else None
        assert isinstance(pooled, int)
        path = write_notebook(
            short_tmp / "o.ipynb",
            [code("print('other')")],
            metadata={"kernelspec": {"name": "other", "display_name": "o"}},
        )
        nb = await client.open(path)
        result = await nb.execute("cell0", timeout=DEADLINE)
        assert (result.status, nb.runtime.kernel()["name"]) == ("ok", "other")
        await wait_gone(pooled)  # shut down to stay within max_kernels = 1
        status = await client.status()
        assert len(status.kernels) == 1
        assert status.pool is not None
        assert status.pool.ready == 0  # no room to refill while the limit is reached


async def test_pooled_and_notebook_kernels_stop_with_the_daemon(
    paths: RuntimedPaths, short_tmp: Path
) -> None:
    config = DaemonConfig(runtimes=RuntimesConfig(pool_size=2))
    async with running_daemon(paths, config), await AsyncClient.connect(paths.socket) as client:
        await wait_status(client, pool_ready(2))
        nb = await client.open(write_notebook(short_tmp / "s.ipynb", [code("1")]))
        assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
        status = await wait_status(client, pool_ready(2))
        pids = [k.pid for k in status.kernels]
        assert len(pids) == 3
        assert all(isinstance(p, int) and alive(p) for p in pids)
    # The daemon has stopped: every kernel it started is gone (shut down and reaped).
    assert not [pid for pid in pids if pid is not None and alive(pid)]


async def test_runt_pool_and_daemon_status_show_the_pool(
    daemon: Daemon, client: AsyncClient
) -> None:
    await wait_status(client, pool_ready(1))
    data = await runt_json(daemon.paths.socket, "pool")
    assert (data["pool"]["size"], data["pool"]["ready"], data["pool"]["enabled"]) == (1, 1, True)
    [kernel] = data["kernels"]
    assert kernel["pooled"]
    assert kernel["state"] == "idle"
    assert kernel["rss_bytes"] > 0
    status = await runt_json(daemon.paths.socket, "daemon", "status")
    assert status["pool"]["ready"] == 1
    assert status["kernels"][0]["pid"] == kernel["pid"]
    assert sys.executable  # the CLI ran with this interpreter


async def test_closing_right_after_an_execution_sends_no_sync_for_the_closed_notebook(
    daemon: Daemon, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sync acknowledgements still in flight when a client closes a notebook must not go out
    after its CloseNotebook (the daemon answers each with a protocol error)."""
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        for round_ in range(20):
            await wait_status(client, pool_ready(1))
            path = write_notebook(short_tmp / f"c{round_}.ipynb", [code("1 + 1")])
            nb = await client.open(path)
            # The execution's last runtime changes arrive around the close.
            assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
            await nb.close(unload=True)
        await client.ping()
    assert "protocol_error" not in caplog.text
