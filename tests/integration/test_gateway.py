"""Issue 16 point 2: kernels on a real ``jupyter kernelgateway`` started on 127.0.0.1.

The daemon is in-process, the gateway a subprocess with a token; the notebook selects the
``gateway`` runtime (the configured gateway) or names a gateway in its metadata. The
document, outputs and blobs stay with the daemon: a cell printing the gateway's
``GATEWAY_MARK`` proves where it ran.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import nbformat
import psutil
import pytest

from protocol.messages import InputRequested
from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.documents.manifests import manifest_hashes

from .conftest import write_notebook
from .gateway_helpers import MARK, Gateway, free_port, running_gateway
from .test_execution_faults import start_recorder

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60
ON_GATEWAY: dict[str, object] = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "runtimed": {"runtime": "gateway"},
}
# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gw")) as started:
        yield started


@pytest.fixture
def daemon_config(gateway: Gateway) -> DaemonConfig:
    runtimes = RuntimesConfig(pool_size=0, gateway_url=gateway.url, gateway_token=gateway.token)
    return DaemonConfig(heads_timeout=5.0, runtimes=runtimes)


def code(source: str) -> dict[str, Any]:
    return {"cell_type": "code", "source": source}


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


async def test_cells_run_on_the_gateway_with_streams_and_an_image_in_the_blob_store(
    client: AsyncClient, gateway: Gateway, short_tmp: Path
) -> None:
    png64 = base64.b64encode(PNG).decode()
    path = write_notebook(
        short_tmp / "gw.ipynb",
        [
            code(
                "import os, sys\nprint(os.environ.get('GATEWAY_MARK'))\n"
                "print('to stderr', file=sys.stderr)\nx = 20"
            ),
            code("x + 22"),
            code(
                "from IPython.display import Image, display\nimport base64\n"
                f"display(Image(data=base64.b64decode({png64!r})))"
            ),
        ],
        metadata=ON_GATEWAY,
    )
    nb = await client.open(path)
    first = await nb.execute("cell0", timeout=DEADLINE)
    assert first.status == "ok", first
    assert first.outputs == [stream(f"{MARK}\n"), stream("to stderr\n", "stderr")]
    second = await nb.execute("cell1", timeout=DEADLINE)
    assert second.outputs[0]["data"] == {"text/plain": "42"}
    assert second.execution_count == 2
    kernel = nb.runtime.kernel()
    assert kernel["name"] == "gateway:python3"
    assert kernel["pid"] is None  # no local process
    assert len(gateway.kernel_ids()) == 1
    assert "gateway:python3" in [r.name for r in await client.list_runtimes()]

    image = await nb.execute("cell2", timeout=DEADLINE)
    assert image.status == "ok"
    [output] = image.outputs
    assert base64.b64decode(output["data"]["image/png"]) == PNG
    png_hash = hashlib.sha256(PNG).hexdigest()
    [manifest] = nb.runtime.cell_state("cell2")[1]
    assert png_hash in manifest_hashes(manifest)
    blob_dir = Path((await client.status()).blob_dir)
    assert (blob_dir / png_hash[:2] / png_hash[2:4] / png_hash).read_bytes() == PNG

    # Closing the notebook shuts its kernel down on the gateway (DELETE).
    await nb.close(unload=True)
    with anyio.fail_after(DEADLINE):
        while await anyio.to_thread.run_sync(gateway.kernel_ids):
            await anyio.sleep(0.1)


async def test_input_interrupt_and_restart_on_the_gateway(
    client: AsyncClient, gateway: Gateway, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "ir.ipynb",
        [
            code("name = input('who? ')\nprint('hello', name)"),
            code("import time\nprint('sleeping', flush=True)\ntime.sleep(60)"),
            code("name"),
        ],
        metadata=ON_GATEWAY,
    )
    nb = await client.open(path)
    async with anyio.create_task_group() as tg:
        events = await start_recorder(tg, client)
        eid = await nb.queue("cell0", allow_stdin=True)
        asked = await events.wait_for(InputRequested)
        assert (asked.execution_id, asked.prompt) == (eid, "who? ")
        await nb.answer_input(eid, "gateway")
        result = await nb.wait_execution(eid, timeout=DEADLINE)
        tg.cancel_scope.cancel()
    assert result.outputs == [stream("hello gateway\n")]

    sleeping = await nb.queue("cell1")
    await client.wait_until(lambda: nb.outputs("cell1") == [stream("sleeping\n")], timeout=DEADLINE)
    await nb.interrupt()  # POST /api/kernels/{id}/interrupt
    interrupted = await nb.wait_execution(sleeping, timeout=30)  # well under the 60 s sleep
    assert (interrupted.status, interrupted.ename) == ("error", "KeyboardInterrupt")
    assert (await nb.execute("cell2", timeout=DEADLINE)).status == "ok"  # same kernel
    # Completion goes to the gateway's kernel too (its subshell, over the control channel).
    assert "name" in (await nb.complete("cell2", 2, timeout=DEADLINE)).matches
    [before] = gateway.kernel_ids()

    await nb.restart()
    after = await nb.execute("cell2", timeout=DEADLINE)
    assert (after.status, after.ename) == ("error", "NameError")  # a fresh kernel
    assert after.execution_count == 1
    assert gateway.kernel_ids() == [before]  # restarted there (POST .../restart), same id
    await nb.close(unload=True)


async def test_a_killed_gateway_fails_the_running_cell_and_the_daemon_keeps_serving(
    client: AsyncClient, short_tmp: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with running_gateway(tmp_path_factory.mktemp("doomed")) as doomed:
        path = write_notebook(
            short_tmp / "kill.ipynb",
            [code("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")],
            metadata={"runtimed": {"gateway": {"url": doomed.url}}},
        )
        # This gateway is not the configured one: its token comes with the run's context.
        nb = await client.open(path, kernel_env={"RUNTIMED_RUN_GATEWAY_TOKEN": doomed.token})
        eid = await nb.queue("cell0")
        await client.wait_until(
            lambda: nb.outputs("cell0") == [stream("sleeping\n")], timeout=DEADLINE
        )
        await anyio.to_thread.run_sync(doomed.kill)
        result = await nb.wait_execution(eid, timeout=DEADLINE)
    assert result.status == "died"
    assert doomed.url in (result.evalue or ""), result.evalue
    await client.wait_until(lambda: nb.runtime.kernel()["state"] == "dead", timeout=DEADLINE)
    # The daemon serves on: a local notebook runs.
    local = write_notebook(short_tmp / "local.ipynb", [code("print(6 * 7)")])
    assert (await (await client.open(local)).execute("cell0", timeout=DEADLINE)).outputs == [
        stream("42\n")
    ]


async def test_unreachable_gateway_is_a_clear_error_naming_it(
    client: AsyncClient, short_tmp: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    path = write_notebook(
        short_tmp / "unreach.ipynb",
        [code("1")],
        metadata={"runtimed": {"gateway": url}},
    )
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert (result.status, result.ename) == ("error", "KernelStartFailed")
    assert f"cannot reach the kernel gateway at {url}" in (result.evalue or "")
    assert (await client.status()).version  # still serving


async def test_a_kernel_name_the_gateway_lacks_lists_those_it_offers(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "name.ipynb",
        [code("1")],
        metadata={"runtimed": {"runtime": "gateway:julia-9"}},
    )
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert (result.status, result.ename) == ("error", "KernelStartFailed")
    assert "offers no kernel named 'julia-9'; it offers: python3" in (result.evalue or "")


async def test_a_wrong_token_is_reported_as_401(
    paths: Any, gateway: Gateway, short_tmp: Path
) -> None:
    runtimes = RuntimesConfig(pool_size=0, gateway_url=gateway.url, gateway_token="wrong")
    path = write_notebook(short_tmp / "tok.ipynb", [code("1")], metadata=ON_GATEWAY)
    instance = Daemon(paths, config=DaemonConfig(runtimes=runtimes))
    async with anyio.create_task_group() as tg:
        await tg.start(instance.run)
        try:
            async with await AsyncClient.connect(paths.socket) as client:
                nb = await client.open(path)
                result = await nb.execute("cell0", timeout=DEADLINE)
        finally:
            instance.request_stop()
    assert (result.status, result.ename) == ("error", "KernelStartFailed")
    assert f"the kernel gateway at {gateway.url} refused the token (401 Unauthorized)" in (
        result.evalue or ""
    )


async def test_a_kernel_that_dies_or_vanishes_on_the_gateway_is_dead_with_a_reason(
    client: AsyncClient, gateway: Gateway, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "die.ipynb",
        [code("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)"), code("1")],
        metadata=ON_GATEWAY,
    )
    nb = await client.open(path)
    # The kernel process dies on the gateway's machine (its restarter says so on IOPub).
    eid = await nb.queue("cell0")
    await client.wait_until(lambda: bool(nb.outputs("cell0")), timeout=DEADLINE)
    pid = int(nb.outputs("cell0")[0]["text"].split()[0])
    psutil.Process(pid).kill()
    result = await nb.wait_execution(eid, timeout=DEADLINE)
    assert result.status == "died"
    assert gateway.url in (result.evalue or ""), result.evalue
    await client.wait_until(lambda: nb.runtime.kernel()["state"] == "dead", timeout=DEADLINE)

    # The next execution gets a fresh kernel there; then it is deleted behind our back.
    assert (await nb.execute("cell1", timeout=DEADLINE)).status == "ok"
    [kernel_id] = await anyio.to_thread.run_sync(gateway.kernel_ids)
    eid = await nb.queue("cell0")
    await client.wait_until(lambda: bool(nb.outputs("cell0")), timeout=DEADLINE)
    await anyio.to_thread.run_sync(gateway.delete, kernel_id)
    result = await nb.wait_execution(eid, timeout=DEADLINE)
    assert result.status == "died"
    assert kernel_id in (result.evalue or ""), result.evalue
    await nb.close(unload=True)


async def test_runt_run_with_gateway_url_runs_the_notebook_there(
    daemon: Daemon, gateway: Gateway, short_tmp: Path
) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [code("import os\nprint(os.environ.get('GATEWAY_MARK'))"), code("6 * 7")],
    )
    out = short_tmp / "out.ipynb"
    argv = [sys.executable, "-m", "runtimed.cli", "--socket", str(daemon.paths.socket), "run"]
    argv += [str(src), str(out), "--no-autostart", "--gateway-url", gateway.url, "-k", "python3"]
    env = {**os.environ, "RUNTIMED_GATEWAY_TOKEN": gateway.token}
    done = await anyio.run_process(argv, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    written = nbformat.read(out, as_version=4)
    assert written.cells[0].outputs[0]["text"] == f"{MARK}\n"
    assert written.cells[1].outputs[0]["data"] == {"text/plain": "42"}
    assert gateway.token not in out.read_text()  # the token never reaches the notebook

    # A wrong token: the run fails, naming the gateway and the 401.
    bad = {**os.environ, "RUNTIMED_GATEWAY_TOKEN": "wrong"}
    done = await anyio.run_process(argv, env=bad, check=False)
    assert done.returncode == 1
    assert "refused the token (401 Unauthorized)" in done.stderr.decode()
