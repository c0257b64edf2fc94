"""The same execute / complete / inspect / interrupt / restart / outputs tests against a
second kernel that is not ipykernel: xeus-python (issue 15 point 6).

xeus-python is a C++ implementation of the Jupyter protocol (xeus) embedding CPython; it has no
JEP 91 subshells, answers on its own threads, and its kernelspec is installed here into a
test-owned ``JUPYTER_PATH`` (never the user's). Passing these proves that the daemon's paths for
execution, services and lifecycle assume only the Jupyter messaging protocol, not ipykernel.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from protocol.messages import InputRequested
from runtimed.client import AsyncClient
from runtimed.client.notebook import AsyncNotebook
from runtimed.daemon.app import Daemon
from runtimed.kernels.launch import LaunchSpec
from runtimed.kernels.session import KernelSession

from .conftest import write_notebook
from .runtime_helpers import DEADLINE, Events, code, write_kernelspec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
    pytest.mark.skipif(
        importlib.util.find_spec("xpython_launcher") is None,
        reason="xeus-python is not installed (pip install xeus-python; in the test extra)",
    ),
]

NAME = "xpython-test"
SPEC = {"name": NAME, "display_name": "xeus-python (test)", "language": "python"}


@pytest.fixture
def xeus(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernelspec for xeus-python in a test-owned JUPYTER_PATH (the wheel's own kernelspec
    names ``python3.11`` on PATH; this one names this interpreter)."""
    root = short_tmp / "jupyter"
    argv = [sys.executable, "-m", "xpython_launcher", "-f", "{connection_file}"]
    write_kernelspec(root, NAME, argv)
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    return root


def stream(text: str, name: str = "stdout") -> dict[str, object]:
    return {"output_type": "stream", "name": name, "text": text}


async def open_xeus(
    client: AsyncClient, path: Path, cells: list[dict[str, object]]
) -> AsyncNotebook:
    return await client.open(write_notebook(path, cells, metadata={"kernelspec": SPEC}))


async def test_execute_outputs_and_kernel_info_from_xeus_python(
    daemon: Daemon, client: AsyncClient, xeus: Path, short_tmp: Path
) -> None:
    nb = await open_xeus(
        client,
        short_tmp / "x.ipynb",
        [
            code("print('hello', flush=True)\n40 + 2"),
            code("import sys\nprint('oops', file=sys.stderr, flush=True)"),
            code("1/0"),
            code("from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))"),
        ],
    )
    first = await nb.execute("cell0", timeout=DEADLINE)
    assert first.status == "ok"
    assert first.outputs[0] == stream("hello\n")
    assert first.outputs[1]["output_type"] == "execute_result"
    assert first.outputs[1]["data"]["text/plain"] == "42"
    assert first.execution_count == 1

    second = await nb.execute("cell1", timeout=DEADLINE)
    assert second.outputs == [stream("oops\n", "stderr")]

    failed = await nb.execute("cell2", timeout=DEADLINE)
    # xeus-python's ename is "<class 'ZeroDivisionError'>": recorded as the kernel sent it.
    assert failed.status == "error"
    assert "ZeroDivisionError" in (failed.ename or "")
    assert failed.outputs[-1]["output_type"] == "error"

    shown = await nb.execute("cell3", timeout=DEADLINE)
    assert shown.status == "ok"
    assert shown.outputs[0]["output_type"] == "display_data"
    assert shown.outputs[0]["data"]["text/html"] == "<b>hi</b>"

    await client.wait_until(lambda: nb.runtime.kernel_info() is not None, timeout=DEADLINE)
    info = nb.runtime.kernel_info()
    assert info is not None
    assert info["implementation"] == "xeus-python"
    assert "kernel subshells" not in info.get("supported_features", [])
    language = info["language_info"]
    assert isinstance(language, dict)
    assert language["name"] == "python"

    saved = json.loads(await anyio.Path(await nb.save()).read_text())
    assert saved["metadata"]["kernelspec"]["display_name"] == "xeus-python (test)"
    # metadata.language_info comes from xeus-python's kernel_info_reply.
    assert saved["metadata"]["language_info"] == language


async def test_complete_and_inspect_without_subshells(
    daemon: Daemon, client: AsyncClient, xeus: Path, short_tmp: Path
) -> None:
    nb = await open_xeus(
        client, short_tmp / "c.ipynb", [code("import os"), code("os.pa"), code("len")]
    )
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"

    reply = await nb.complete("cell1")
    assert any(match.endswith("path") for match in reply.matches)
    assert reply.cursor_end == len("os.pa")

    inspected = await nb.inspect("cell2", 3)
    assert inspected.found is True
    text = inspected.data["text/plain"]
    assert isinstance(text, str)
    assert "Return the number of items" in text


async def test_history_from_xeus_python(
    daemon: Daemon, client: AsyncClient, xeus: Path, short_tmp: Path
) -> None:
    nb = await open_xeus(client, short_tmp / "h.ipynb", [code("alpha = 1"), code("beta = 2")])
    for cell_id in ("cell0", "cell1"):
        assert (await nb.execute(cell_id, timeout=DEADLINE)).status == "ok"
    tail = await nb.history(n=2)
    assert [e.source for e in tail.entries][-2:] == ["alpha = 1", "beta = 2"]


async def test_a_xeus_kernel_runs_in_the_notebooks_directory(
    daemon: Daemon, client: AsyncClient, xeus: Path, short_tmp: Path
) -> None:
    folder = short_tmp / "work"
    await anyio.Path(folder).mkdir()
    nb = await open_xeus(client, folder / "w.ipynb", [code("import os\nprint(os.getcwd())")])
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert result.outputs == [stream(f"{folder.resolve()}\n")]


async def test_interrupt_and_restart_a_xeus_python_kernel(
    daemon: Daemon, client: AsyncClient, xeus: Path, short_tmp: Path
) -> None:
    """xeus-python 0.19 cannot be interrupted: SIGINT (its kernelspec's default mode) ends the
    process (xeus issue 272: zmq's poll throws on the signal), and ``interrupt_request`` is a
    no-op in xeus. What the daemon owes is a clean outcome: the cell ends as ``died`` with the
    reason, and a restart gives a fresh, working kernel."""
    nb = await open_xeus(
        client,
        short_tmp / "i.ipynb",
        [
            code("import time\nprint('sleeping', flush=True)\ntime.sleep(60)"),
            code("x = 1"),
            code("x"),
        ],
    )
    assert (await nb.execute("cell1", timeout=DEADLINE)).status == "ok"
    eid = await nb.queue("cell0")
    await client.wait_until(lambda: nb.outputs("cell0") == [stream("sleeping\n")], timeout=DEADLINE)
    pid = nb.runtime.kernel()["pid"]
    await nb.interrupt()
    result = await nb.wait_execution(eid, timeout=30)  # well under the 60 s sleep
    assert result.status == "died"
    assert result.outputs[0] == stream("sleeping\n")

    await nb.restart()
    await client.wait_until(lambda: nb.runtime.kernel()["pid"] not in (None, pid), timeout=DEADLINE)
    after = await nb.execute("cell2", timeout=DEADLINE)
    assert after.status == "error"
    assert "NameError" in (after.ename or "")
    assert after.execution_count == 1
    assert (await nb.execute("cell1", timeout=DEADLINE)).status == "ok"


async def test_restart_ends_a_running_xeus_cell_and_the_kernel_works_after(
    daemon: Daemon, client: AsyncClient, xeus: Path, short_tmp: Path
) -> None:
    nb = await open_xeus(
        client,
        short_tmp / "r.ipynb",
        [code("import time\nprint('sleeping', flush=True)\ntime.sleep(60)"), code("41 + 1")],
    )
    running = await nb.queue("cell0")
    await client.wait_until(lambda: nb.outputs("cell0") == [stream("sleeping\n")], timeout=DEADLINE)
    pid = nb.runtime.kernel()["pid"]
    with anyio.fail_after(30):
        await nb.restart()
        ended = await nb.wait_execution(running)
    assert ended.status == "died"
    assert "restart" in (ended.evalue or "")
    await client.wait_until(lambda: nb.runtime.kernel()["pid"] not in (None, pid), timeout=DEADLINE)
    after = await nb.execute("cell1", timeout=DEADLINE)
    assert (after.status, after.execution_count) == ("ok", 1)
    assert after.outputs[0]["data"]["text/plain"] == "42"


async def test_xeus_python_gets_tcp_and_works_on_it(xeus: Path, tmp_path: Path) -> None:
    """xeus-python 0.19 does not bind jupyter_client's ``ipc`` endpoints (it exits with
    "RuntimeError: Invalid argument" at start), so the daemon gives it 127.0.0.1 TCP ports: the
    connection file's key still signs every message."""
    spec = LaunchSpec(
        name=NAME, argv=[sys.executable, "-m", "xpython_launcher", "-f", "{connection_file}"]
    )
    async with KernelSession(cwd=tmp_path, spec=spec) as kernel:
        directory = kernel.connection_dir
        assert directory is not None
        info = json.loads(await anyio.Path(directory / "kernel.json").read_text())
        assert kernel.transport == info["transport"] == "tcp"
        assert info["ip"] == "127.0.0.1"
        assert info["key"]
        result = await kernel.execute("6 * 7")
        assert result.status == "ok"


async def test_input_is_answered_through_the_daemon(
    daemon: Daemon, client: AsyncClient, xeus: Path, short_tmp: Path
) -> None:
    nb = await open_xeus(client, short_tmp / "s.ipynb", [code("print('hello', input('name? '))")])
    async with anyio.create_task_group() as tg:
        events = await Events(client).start(tg)
        eid = await nb.queue("cell0", allow_stdin=True)
        await client.wait_until(
            lambda: any(isinstance(e, InputRequested) for e in events.seen), timeout=DEADLINE
        )
        asked = next(e for e in events.seen if isinstance(e, InputRequested))
        assert (asked.execution_id, asked.prompt) == (eid, "name? ")
        await nb.answer_input(eid, "Ada")
        result = await nb.wait_execution(eid, timeout=DEADLINE)
        tg.cancel_scope.cancel()
    assert result.status == "ok"
    assert stream("hello Ada\n") in result.outputs


XEUS_SLIDER = """\
import ipywidgets as widgets
seen = []
slider = widgets.IntSlider(value=3, min=0, max=10, description="n")
slider.observe(lambda change: seen.append(change["new"]), names="value")
display(slider)
"""


async def test_comms_and_a_widget_on_xeus_python(
    daemon: Daemon, client: AsyncClient, xeus: Path, short_tmp: Path
) -> None:
    """The daemon follows xeus-python's comm_open/comm_msg into the runtime document, and a
    client's comm message reaches the kernel's observe callback: nothing assumes ipykernel's
    comm manager."""
    nb = await open_xeus(client, short_tmp / "w.ipynb", [code(XEUS_SLIDER), code("print(seen)")])
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"

    def slider_at(value: int) -> Callable[[dict[str, dict[str, Any]]], bool]:
        def check(comms: dict[str, dict[str, Any]]) -> bool:
            return any(
                c.get("model_name") == "IntSliderModel" and c.get("state", {}).get("value") == value
                for c in comms.values()
            )

        return check

    comms = await nb.wait_comms(slider_at(3), timeout=DEADLINE)
    (slider,) = [cid for cid, c in comms.items() if c.get("model_name") == "IntSliderModel"]
    assert comms[slider]["target_name"] == "jupyter.widget"

    await nb.send_comm(slider, {"method": "update", "state": {"value": 7}, "buffer_paths": []})
    await nb.wait_comms(slider_at(7), timeout=DEADLINE)
    printed = await nb.execute("cell1", timeout=DEADLINE)
    assert printed.status == "ok"
    assert printed.outputs == [stream("[7]\n")]
