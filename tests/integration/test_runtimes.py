"""The runtime registry and lifecycle policy through a real daemon: kernelspecs discovered
from JUPYTER_PATH and used, clear errors (unknown runtime, failing kernelspec, kernel
limit), idle culling, kernel health in ``runt ps`` / status, and ``runt config show``."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from protocol.messages import KernelStatusChanged
from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook
from .runtime_helpers import (
    DEADLINE,
    KERNELS,
    Events,
    alive,
    code,
    ipykernel_argv,
    running_daemon,
    runt,
    runt_json,
    wait_gone,
    wait_status,
    write_kernelspec,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def kernelspecs(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working kernelspec (with an env marker) and one that dies on start."""
    root = short_tmp / "jupyter"
    write_kernelspec(root, "rt-test", ipykernel_argv(), env={"RT_SPEC_MARK": "from-spec"})
    write_kernelspec(
        root, "boom", [sys.executable, str(KERNELS / "boom_kernel.py"), "-f", "{connection_file}"]
    )
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    return root


def spec_metadata(name: str) -> dict[str, object]:
    return {"kernelspec": {"name": name, "display_name": name, "language": "python"}}


async def test_a_kernelspec_in_jupyter_path_is_listed_and_used(
    daemon: Daemon, client: AsyncClient, kernelspecs: Path, short_tmp: Path
) -> None:
    runtimes = {r.name: r for r in await client.list_runtimes()}
    assert runtimes["python3"].kind == "builtin"
    assert runtimes["python3"].default
    spec = runtimes["rt-test"]
    assert (spec.kind, spec.display_name, spec.language) == ("kernelspec", "Test rt-test", "python")
    assert "poolable" in spec.capabilities

    path = write_notebook(
        short_tmp / "spec.ipynb",
        [code("import os\nprint(os.environ['RT_SPEC_MARK'])")],
        metadata=spec_metadata("rt-test"),
    )
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert (result.status, result.outputs[0]["text"]) == ("ok", "from-spec\n")
    assert nb.runtime.kernel()["name"] == "rt-test"
    [info] = await client.list_notebooks()
    assert info.kernel is not None
    assert info.kernel.runtime == "rt-test"

    listed = await runt_json(daemon.paths.socket, "runtimes")
    assert {"python3", "rt-test", "boom"} <= {r["name"] for r in listed}
    _, text, _ = await runt(daemon.paths.socket, "runtimes")
    assert "rt-test" in text
    assert "(default)" in text


async def test_an_unknown_kernelspec_is_a_clear_error_and_the_notebook_stays_usable(
    client: AsyncClient, kernelspecs: Path, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "nope.ipynb", [code("print('hi')")], metadata=spec_metadata("no-such-kernel")
    )
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert (result.status, result.ename) == ("error", "RuntimeNotFound")
    assert "no runtime or kernelspec named 'no-such-kernel'" in (result.evalue or "")
    for name in ("python3", "rt-test", "boom"):
        assert name in (result.evalue or "")
    kernel = nb.runtime.kernel()
    assert kernel["state"] == "dead"
    assert "no-such-kernel" in str(kernel["message"])

    await nb.set_metadata("kernelspec", {"name": "python3", "display_name": "Python 3"})
    fixed = await nb.execute("cell0", timeout=DEADLINE)
    assert (fixed.status, fixed.outputs[0]["text"]) == ("ok", "hi\n")


async def test_a_failing_kernelspec_reports_the_kernels_stderr_tail(
    client: AsyncClient, kernelspecs: Path, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "boom.ipynb", [code("1")], metadata=spec_metadata("boom"))
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert (result.status, result.ename) == ("error", "KernelStartFailed")
    evalue = result.evalue or ""
    assert "exited (code 3)" in evalue
    assert "boom: this kernel refuses to start" in evalue  # the kernel's own stderr
    assert (await client.status()).kernels == []  # nothing left running
    await client.ping()


async def test_the_kernel_limit_is_a_clear_error_not_a_crash(
    paths: RuntimedPaths, short_tmp: Path
) -> None:
    config = DaemonConfig(runtimes=RuntimesConfig(pool_size=0, max_kernels=1))
    async with running_daemon(paths, config), await AsyncClient.connect(paths.socket) as client:
        a = await client.open(write_notebook(short_tmp / "a.ipynb", [code("'a'")]))
        b = await client.open(write_notebook(short_tmp / "b.ipynb", [code("'b'")]))
        assert (await a.execute("cell0", timeout=DEADLINE)).status == "ok"
        refused = await b.execute("cell0", timeout=DEADLINE)
        assert (refused.status, refused.ename) == ("error", "KernelLimitReached")
        assert "the limit is 1" in (refused.evalue or "")
        assert "max_kernels" in (refused.evalue or "")
        status = await client.status()
        assert status.max_kernels == 1
        assert len(status.kernels) == 1
        # The first notebook is unaffected; once it is closed there is room.
        assert (await a.execute("cell0", timeout=DEADLINE)).execution_count == 2
        pid = a.runtime.kernel()["pid"]
        assert isinstance(pid, int)
        await a.close(unload=True)
        await wait_gone(pid)
        assert (await b.execute("cell0", timeout=DEADLINE)).status == "ok"


async def test_idle_notebooks_nobody_has_open_are_closed_and_their_kernels_stopped(
    paths: RuntimedPaths, short_tmp: Path
) -> None:
    config = DaemonConfig(idle_timeout=0.3, runtimes=RuntimesConfig(pool_size=0))
    async with running_daemon(paths, config), await AsyncClient.connect(paths.socket) as client:
        nb = await client.open(write_notebook(short_tmp / "idle.ipynb", [code("1")]))
        assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
        pid = nb.runtime.kernel()["pid"]
        assert isinstance(pid, int)
        assert alive(pid)
        await nb.close()  # not unloaded: kept until idle for idle_timeout
        await wait_status(client, lambda s: not s.notebooks and not s.kernels)
        await wait_gone(pid)


async def test_kernel_health_in_runt_ps_and_status(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb = await client.open(write_notebook(short_tmp / "h.ipynb", [code("x = 1")]))
    assert nb.runtime.kernel()["state"] == "not_started"  # pool disabled: no start on open
    assert (await client.status()).kernels == []
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
    [row] = await runt_json(daemon.paths.socket, "ps")
    kernel = row["kernel"]
    assert kernel["state"] == "idle"
    assert kernel["runtime"] == "python3"
    assert kernel["rss_bytes"] > 10_000_000
    assert kernel["last_activity"] > 0
    assert kernel["from_pool"] is False
    status = await runt_json(daemon.paths.socket, "daemon", "status")
    [health] = status["kernels"]
    assert (health["pid"], health["notebook_id"], health["state"]) == (kernel["pid"], nb.id, "idle")
    assert health["rss_bytes"] > 0
    assert health["started_at"] <= health["last_activity"]
    assert status["pool"]["enabled"] is False
    assert status["pool"]["size"] == 0
    _, text, _ = await runt(daemon.paths.socket, "ps")
    assert "MiB, active" in text


async def test_runt_config_show_reports_values_and_origins(daemon: Daemon) -> None:
    data = await runt_json(daemon.paths.socket, "config", "show")
    entries = {e["key"]: e for e in data["entries"]}
    assert entries["pool.size"]["value"] == 0  # this daemon's config, not a file's
    assert entries["kernels.max_kernels"]["env"] == "RUNTIMED_MAX_KERNELS"
    assert data["daemon_running"] is True
    _, text, _ = await runt(daemon.paths.socket, "config", "show")
    assert "[pool]\nsize = 0" in text
    assert "[kernels]" in text


async def test_config_show_without_a_daemon_reads_the_file(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = short_tmp / "c.toml"
    config.write_text("[pool]\nsize = 4\n")
    monkeypatch.setenv("RUNTIMED_CONFIG", str(config))  # inherited by the runt subprocess
    _, text, _ = await runt(short_tmp / "absent.sock", "config", "show")
    assert "daemon not running" in text
    assert "size = 4  # from file" in text


async def test_building_state_events_are_only_for_environments(
    client: AsyncClient, short_tmp: Path
) -> None:
    nb = await client.open(write_notebook(short_tmp / "ev.ipynb", [code("1")]))
    async with anyio.create_task_group() as tg:
        events = await Events(client).start(tg)
        assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
        await client.ping()
        tg.cancel_scope.cancel()
    states = [e.state for e in events.seen if isinstance(e, KernelStatusChanged)]
    assert states == ["starting", "idle", "busy", "idle"]


async def test_the_blocking_client_lists_runtimes_envs_and_config(daemon: Daemon) -> None:
    from runtimed.client import Client

    def query() -> tuple[list[str], int, int]:
        with Client.connect(daemon.paths.socket) as client:
            names = [r.name for r in client.list_runtimes()]
            return names, len(client.list_envs().envs), len(client.get_config().entries)

    names, envs, entries = await anyio.to_thread.run_sync(query)
    assert "python3" in names
    assert envs == 0
    assert entries > 10


HISTORY_PROBE = (
    "a = 1\n"
    "assert get_ipython().kernel._execute_sleep == 0  # the daemon's tuning reached it\n"
    "print(get_ipython().history_manager.hist_file)\n"
    "get_ipython().run_line_magic('history', '-n')"
)


@pytest.mark.parametrize("persist", [False, True])
async def test_ipython_history_is_in_memory_unless_persist_history_is_set(
    persist: bool, paths: RuntimedPaths, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ipython_dir = short_tmp / "ipython"
    monkeypatch.setenv("IPYTHONDIR", str(ipython_dir))  # inherited by the kernel
    config = DaemonConfig(runtimes=RuntimesConfig(pool_size=0, persist_history=persist))
    async with running_daemon(paths, config), await AsyncClient.connect(paths.socket) as client:
        nb = await client.open(write_notebook(short_tmp / "hist.ipynb", [code(HISTORY_PROBE)]))
        result = await nb.execute("cell0", timeout=DEADLINE)
    assert result.status == "ok", result
    hist_file, history = "".join(o["text"] for o in result.outputs).split("\n", 1)
    # The session's own history works either way (%history lists this very cell).
    assert history.startswith("   1:\na = 1\nassert get_ipython()")
    database = ipython_dir / "profile_default" / "history.sqlite"
    if persist:
        assert hist_file == str(database)
        assert database.exists()
    else:
        assert hist_file == ":memory:"
        assert not database.exists()
