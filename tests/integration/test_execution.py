"""Executing cells through a real daemon, real ipykernel and real .ipynb files.

Every test drives the daemon only through the client library, as a user would: open a
notebook, edit, execute, read outputs from the runtime-document replica or ExecutionDone
events, save. Readiness and progress are waited on as conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import nbformat
import pytest
from nbclient import NotebookClient

from protocol.messages import DaemonEvent, ExecutionDone, ExecutionStarted, KernelStatusChanged
from runtimed.client import AsyncClient, AsyncNotebook
from runtimed.daemon.app import Daemon
from runtimed.errors import CellEmpty, CellNotCode, CellNotFound

from .conftest import wait_for_file_code, write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

_E = TypeVar("_E")

DEADLINE = 60  # seconds: generous bound for anything that involves starting a kernel


def code(source: str, **metadata: Any) -> dict[str, object]:
    return {"cell_type": "code", "source": source, "metadata": metadata}


def markdown(source: str) -> dict[str, object]:
    return {"cell_type": "markdown", "source": source}


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


class EventRecorder:
    """Records a client's daemon events; lets a test wait for one matching a predicate."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.events: list[DaemonEvent] = []
        self._changed = anyio.Event()

    async def run(self) -> None:
        async for event in self.client.events():
            self.events.append(event)
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(
        self,
        kind: type[_E],
        where: Callable[[_E], bool] = lambda _: True,
        *,
        timeout: float = DEADLINE,
    ) -> _E:
        """The first event of type ``kind`` (so far or from now on) for which ``where`` holds."""
        with anyio.fail_after(timeout):
            while True:
                for event in self.events:
                    if isinstance(event, kind) and where(event):
                        return event
                await self._changed.wait()

    def of_type(self, kind: type[_E]) -> list[_E]:
        return [e for e in self.events if isinstance(e, kind)]


async def start_recorder(tg: anyio.abc.TaskGroup, client: AsyncClient) -> EventRecorder:
    """Subscribe before returning: the subscription is made when the task first runs, and a
    ping round trip lets the event loop run it (asyncio runs ready tasks in FIFO order)."""
    recorder = EventRecorder(client)
    tg.start_soon(recorder.run)
    await client.ping()
    return recorder


def _normalise_nbclient(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nbclient's raw outputs, streams shown as a terminal shows them (the one documented
    difference: runtimed coalesces consecutive same-name streams and renders ``\\r``/``\\b``).

    Written here independently of runtimed.kernels.outputs so the comparison checks it.
    """
    merged: list[dict[str, Any]] = []
    for out in outputs:
        if (
            out["output_type"] == "stream"
            and merged
            and merged[-1]["output_type"] == "stream"
            and merged[-1]["name"] == out["name"]
        ):
            merged[-1] = {**merged[-1], "text": merged[-1]["text"] + out["text"]}
        else:
            merged.append(dict(out))
    for out in merged:
        if out["output_type"] == "stream":
            out["text"] = _terminal(out["text"])
    return merged


def _terminal(text: str) -> str:
    done: list[str] = []
    line: list[str] = []
    cursor = 0
    for ch in text:
        if ch == "\n":
            done.append("".join(line) + "\n")
            line, cursor = [], 0
        elif ch == "\r":
            cursor = 0
        elif ch == "\b":
            cursor = max(0, cursor - 1)
        else:
            if cursor < len(line):
                line[cursor] = ch
            else:
                line.append(ch)
            cursor += 1
    return "".join(done) + "".join(line)


def _source_is(nb: AsyncNotebook, cell_id: str, source: str) -> bool:
    return nb.cell(cell_id).source == source


def _is_execution(execution_id: str, event: ExecutionDone) -> bool:
    return event.execution_id == execution_id


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def run_nbclient(path: Path) -> nbformat.NotebookNode:
    """The peer: nbclient executes a copy of the notebook on its own python3 kernel."""
    nb: nbformat.NotebookNode = nbformat.read(path, as_version=4)
    NotebookClient(
        nb,
        kernel_name="python3",
        allow_errors=True,
        timeout=DEADLINE,
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    return nb


def saved_outputs(path: Path) -> tuple[nbformat.NotebookNode, dict[str, list[dict[str, Any]]]]:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb, {c["id"]: _plain(c["outputs"]) for c in nb.cells if c["cell_type"] == "code"}


# ------------------------------------------------------------------ outputs vs nbclient

EVERY_OUTPUT_TYPE = [
    # stream stdout + stderr; flush=True fixes the order across the two streams
    "import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\n"
    "print('out2', flush=True)",
    "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))",
    "40 + 2",
    "from IPython.display import display\nh = display('first', display_id=True)\n"
    "h.update('second')",
    "from IPython.display import clear_output\nprint('gone', flush=True)\nclear_output()\n"
    "print('kept')",
    "from IPython.display import clear_output\nprint('old', flush=True)\n"
    "clear_output(wait=True)\nprint('new')",
    "for i in range(0, 101, 25):\n    print(f'\\r[{\"#\" * (i // 10):<10}] {i:3d}%', end='',"
    " flush=True)\nprint()",
    "import json\njson.loads('{')",
]


async def test_outputs_of_every_type_saved_as_nbclient_produces_them(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "all.ipynb", [code(s) for s in EVERY_OUTPUT_TYPE])
    peer_path = short_tmp / "peer" / "all.ipynb"
    peer_path.parent.mkdir()
    peer_path.write_bytes(path.read_bytes())
    peer: dict[str, nbformat.NotebookNode] = {}

    async def peer_run() -> None:
        peer["nb"] = await anyio.to_thread.run_sync(run_nbclient, peer_path)

    async with anyio.create_task_group() as tg:
        tg.start_soon(peer_run)
        nb = await client.open(path)
        results = await nb.run_all(timeout=DEADLINE)

    assert [r.status for r in results] == ["ok"] * (len(EVERY_OUTPUT_TYPE) - 1) + ["error"]
    by_cell = {r.cell_id: r for r in results}

    # Outputs, as the client library reports them, per type.
    assert by_cell["cell0"].outputs == [
        stream("out\n"),
        stream("err\n", "stderr"),
        stream("out2\n"),
    ]
    html = by_cell["cell1"].outputs
    assert [o["output_type"] for o in html] == ["display_data"]
    assert html[0]["data"]["text/html"] == "<b>bold</b>"
    result = by_cell["cell2"]
    assert result.outputs == [
        {
            "output_type": "execute_result",
            "metadata": {},
            "data": {"text/plain": "42"},
            "execution_count": result.execution_count,
        }
    ]
    assert result.execution_count == 3  # fresh kernel, third cell run
    assert nb.execution_count("cell2") == 3
    assert [o["data"] for o in by_cell["cell3"].outputs] == [{"text/plain": "'second'"}]
    assert by_cell["cell4"].outputs == [stream("kept\n")]
    assert by_cell["cell5"].outputs == [stream("new\n")]
    assert by_cell["cell6"].outputs == [stream("[##########] 100%\n")]
    error = by_cell["cell7"]
    assert (error.ename, error.evalue) == (
        "JSONDecodeError",
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    )
    [error_output] = error.outputs
    assert error_output["output_type"] == "error"
    assert (error_output["ename"], error_output["evalue"]) == (error.ename, error.evalue)
    assert "JSONDecodeError" in error_output["traceback"][-1]

    # The checkpoint holds exactly those outputs, and they are what nbclient produces for the
    # same notebook (after coalescing nbclient's per-message streams; tracebacks are compared
    # verbatim: same ipykernel, same execution counts, so even the ANSI escapes must match).
    await nb.save()
    ours, saved = saved_outputs(path)
    assert saved == {r.cell_id: r.outputs for r in results}
    theirs = peer["nb"]
    for our_cell, their_cell in zip(ours.cells, theirs.cells, strict=True):
        assert our_cell["id"] == their_cell["id"]
        assert saved[our_cell["id"]] == _normalise_nbclient(_plain(their_cell["outputs"])), (
            our_cell["id"]
        )
        assert our_cell["execution_count"] == their_cell["execution_count"]


async def test_display_update_from_a_later_cell_updates_the_earlier_output(
    client: AsyncClient, short_tmp: Path
) -> None:
    """nbclient (``_update_display_id``) and Jupyter frontends apply update_display_data to
    every output carrying the display id, in any cell of the notebook."""
    path = write_notebook(
        short_tmp / "upd.ipynb",
        [
            code("from IPython.display import display\nh = display('first', display_id=True)"),
            code("h.update('second')"),
        ],
    )
    peer_path = short_tmp / "peer" / "upd.ipynb"
    peer_path.parent.mkdir()
    peer_path.write_bytes(path.read_bytes())
    peer = await anyio.to_thread.run_sync(run_nbclient, peer_path)
    assert _plain(peer.cells[0]["outputs"])[0]["data"] == {"text/plain": "'second'"}

    nb = await client.open(path)
    results = await nb.run_all(timeout=DEADLINE)
    assert [r.status for r in results] == ["ok", "ok"]
    await client.wait_until(lambda: bool(nb.outputs("cell0")), timeout=DEADLINE)
    assert [o["data"] for o in nb.outputs("cell0")] == [{"text/plain": "'second'"}]
    await nb.save()
    _, saved = saved_outputs(path)
    assert saved["cell0"] == _normalise_nbclient(_plain(peer.cells[0]["outputs"]))


async def test_run_all_outputs_and_interrupt_of_a_cell_sent_ahead(
    client: AsyncClient, short_tmp: Path
) -> None:
    """In a RunAll the daemon sends each cell as soon as the one before finished without
    error (before recording it): outputs still land on the right cells, an interrupt still
    reaches the cell the kernel runs, and nothing after it runs."""
    path = write_notebook(
        short_tmp / "ahead.ipynb",
        [
            *(code(f"print({i})") for i in range(20)),
            code("import time\nprint('sleeping', flush=True)\ntime.sleep(60)"),
            code("print('never')"),
        ],
    )
    nb = await client.open(path)
    queued = await nb.queue_all()
    sleeper, last = queued[20].execution_id, queued[21].execution_id
    await client.wait_until(
        lambda: nb.outputs("cell20") == [stream("sleeping\n")], timeout=DEADLINE
    )
    await nb.interrupt()
    result = await nb.wait_execution(sleeper, timeout=30)
    assert (result.status, result.ename) == ("error", "KeyboardInterrupt")
    assert (await nb.wait_execution(last, timeout=DEADLINE)).status == "skipped"
    for i in range(20):
        assert nb.outputs(f"cell{i}") == [stream(f"{i}\n")]
        assert nb.execution_count(f"cell{i}") == i + 1
    assert nb.outputs("cell21") == []


# ------------------------------------------------------------------ what runs is the document


async def test_edit_then_execute_at_once_runs_the_new_source(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "edit.ipynb", [code("print('old')")])
    nb = await client.open(path)
    for i in range(5):
        await nb.set_source("cell0", f"print('new {i}')")
        result = await nb.execute("cell0", timeout=DEADLINE)
        assert result.outputs == [stream(f"new {i}\n")]
    # A character-level splice, executed at once, too.
    await nb.splice_source("cell0", len("print('new "), 1, "spliced ")
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert result.outputs == [stream("new spliced \n")]
    # A cell added and executed at once.
    added = await nb.add_cell("code", "print('added')")
    result = await nb.execute(added, timeout=DEADLINE)
    assert result.outputs == [stream("added\n")]


async def test_execute_right_after_another_clients_edit_runs_the_new_source(
    client: AsyncClient, daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "two.ipynb", [code("print('original')")])
    nb_a = await client.open(path)
    async with await AsyncClient.connect(daemon.paths.socket) as client_b:
        nb_b = await client_b.open(path)
        for i in range(3):
            new = f"print('from B {i}')"
            await nb_b.set_source("cell0", new)
            await client.wait_until(partial(_source_is, nb_a, "cell0", new), timeout=10)
            result = await nb_a.execute("cell0", timeout=DEADLINE)
            assert result.outputs == [stream(f"from B {i}\n")]


# ------------------------------------------------------------------ the queue


async def test_queue_is_fifo(client: AsyncClient, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "fifo.ipynb",
        [
            code("import time\nacc = []\ntime.sleep(0.5)"),  # keeps the next ones waiting
            code("acc.append('a')"),
            code("acc.append('b')"),
            code("acc.append('c')"),
            code("acc"),
        ],
    )
    nb = await client.open(path)
    ids = [await nb.queue(f"cell{i}") for i in range(5)]
    # While the first runs, the rest wait in the runtime document's queue, in order.
    await client.wait_until(lambda: nb.runtime.running() == ids[0], timeout=DEADLINE)
    assert nb.runtime.queue() == ids[1:]
    results = [await nb.wait_execution(eid, timeout=DEADLINE) for eid in ids]
    assert [r.status for r in results] == ["ok"] * 5
    assert results[-1].outputs[0]["data"] == {"text/plain": "['a', 'b', 'c']"}
    counts = [r.execution_count or 0 for r in results]
    assert counts == sorted(counts)
    assert len(set(counts)) == 5
    assert 0 not in counts


async def test_error_stops_the_queue_and_skips_the_rest(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "err.ipynb",
        [
            code("print('one')"),
            code("raise ValueError('boom')"),
            code("print('three')"),
            code("print('four')"),
        ],
    )
    nb = await client.open(path)
    async with anyio.create_task_group() as tg:
        events = await start_recorder(tg, client)
        ids = [await nb.queue(f"cell{i}") for i in range(4)]
        results = [await nb.wait_execution(eid, timeout=DEADLINE) for eid in ids]
        done = [await events.wait_for(ExecutionDone, partial(_is_execution, eid)) for eid in ids]
        tg.cancel_scope.cancel()

    assert [r.status for r in results] == ["ok", "error", "skipped", "skipped"]
    failed = results[1]
    assert (failed.ename, failed.evalue) == ("ValueError", "boom")
    assert [o["output_type"] for o in failed.outputs] == ["error"]
    for skipped in results[2:]:
        assert skipped.outputs == []
        assert skipped.execution_count is None
        assert nb.outputs(skipped.cell_id) == []
        assert nb.runtime.cell_state(skipped.cell_id) == (None, [])
    assert [e.status for e in done] == ["ok", "error", "skipped", "skipped"]
    assert "cell1" in (done[2].evalue or "")
    # Skipped executions never started.
    started = {e.execution_id for e in events.of_type(ExecutionStarted)}
    assert started == set(ids[:2])
    # The queue is not stuck: the skipped cell runs when asked again.
    again = await nb.execute("cell2", timeout=DEADLINE)
    assert (again.status, again.outputs) == ("ok", [stream("three\n")])


async def test_execution_result_carries_the_traceback(client: AsyncClient, short_tmp: Path) -> None:
    """``ExecutionResult.traceback`` is the kernel's traceback, as in the error output and
    the ExecutionDone event."""
    path = write_notebook(short_tmp / "tb.ipynb", [code("def f():\n    1 / 0\nf()")])
    nb = await client.open(path)
    async with anyio.create_task_group() as tg:
        events = await start_recorder(tg, client)
        result = await nb.execute("cell0", timeout=DEADLINE)
        done = await events.wait_for(ExecutionDone)
        tg.cancel_scope.cancel()
    assert (result.status, result.ename, result.evalue) == (
        "error",
        "ZeroDivisionError",
        "division by zero",
    )
    [error_output] = result.outputs
    assert len(error_output["traceback"]) >= 3  # header, the cell frame, f's frame, ...
    assert done.traceback == error_output["traceback"]
    assert result.traceback == error_output["traceback"]


async def test_raises_exception_tag_lets_the_queue_continue(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "tag.ipynb",
        [
            code("raise ValueError('expected')", tags=["raises-exception"]),
            code("print('after')"),
        ],
    )
    nb = await client.open(path)
    ids = [await nb.queue("cell0"), await nb.queue("cell1")]
    first, second = [await nb.wait_execution(eid, timeout=DEADLINE) for eid in ids]
    assert (first.status, first.ename, first.evalue) == ("error", "ValueError", "expected")
    assert (second.status, second.outputs) == ("ok", [stream("after\n")])


async def test_run_all_queues_code_cells_in_order_honouring_skip_execution(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "all.ipynb",
        [
            code("a = 1"),
            markdown("# title"),
            code("   \n"),
            code("raise SystemExit('must not run')", tags=["skip-execution"]),
            code("print(a + 1)"),
        ],
    )
    nb = await client.open(path)
    results = await nb.run_all(timeout=DEADLINE)
    assert [(r.cell_id, r.status) for r in results] == [("cell0", "ok"), ("cell4", "ok")]
    assert results[1].outputs == [stream("2\n")]
    assert nb.runtime.cell_state("cell3") == (None, [])


async def test_interrupt_ends_a_sleeping_cell_with_keyboardinterrupt(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "int.ipynb",
        [
            code("import time\nprint('sleeping', flush=True)\ntime.sleep(60)"),
            code("1 + 1"),
        ],
    )
    nb = await client.open(path)
    eid = await nb.queue("cell0")
    # Interrupt once the cell is really inside sleep(): its first output is visible.
    await client.wait_until(lambda: nb.outputs("cell0") == [stream("sleeping\n")], timeout=DEADLINE)
    pid = nb.runtime.kernel()["pid"]
    await nb.interrupt()
    result = await nb.wait_execution(eid, timeout=30)  # well under the 60 s sleep
    assert (result.status, result.ename) == ("error", "KeyboardInterrupt")
    assert result.outputs[0] == stream("sleeping\n")
    assert result.outputs[-1]["output_type"] == "error"
    # Same kernel, still usable.
    after = await nb.execute("cell1", timeout=DEADLINE)
    assert after.status == "ok"
    assert nb.runtime.kernel()["pid"] == pid


async def test_restart_forgets_state_ends_the_running_cell_and_cancels_the_queue(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "rs.ipynb",
        [
            code("x = 1"),
            code("x"),
            code("import time\nprint('sleeping', flush=True)\ntime.sleep(60)"),
        ],
    )
    nb = await client.open(path)
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
    assert (await nb.execute("cell1", timeout=DEADLINE)).outputs[0]["data"] == {"text/plain": "1"}
    old_pid = nb.runtime.kernel()["pid"]
    assert isinstance(old_pid, int)

    await nb.restart()
    await client.wait_until(
        lambda: nb.runtime.kernel()["pid"] not in (None, old_pid), timeout=DEADLINE
    )
    assert nb.runtime.kernel()["state"] == "idle"
    result = await nb.execute("cell1", timeout=DEADLINE)
    assert (result.status, result.ename) == ("error", "NameError")
    assert result.execution_count == 1  # a fresh kernel counts from 1

    # Restart while a cell runs and another waits: the running one ends, the queued one is
    # cancelled, and the notebook is usable afterwards.
    running = await nb.queue("cell2")
    waiting = await nb.queue("cell0")
    await client.wait_until(lambda: nb.outputs("cell2") == [stream("sleeping\n")], timeout=DEADLINE)
    with anyio.fail_after(30):
        await nb.restart()
        ended = await nb.wait_execution(running)
        cancelled = await nb.wait_execution(waiting)
    assert ended.status == "died"
    assert "restart" in (ended.evalue or "")
    assert cancelled.status == "cancelled"
    await client.wait_until(
        lambda: nb.runtime.running() is None and not nb.runtime.queue(), timeout=10
    )
    assert nb.runtime.kernel()["state"] == "idle"
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"


# ------------------------------------------------------------------ several clients


async def test_two_clients_both_see_the_outputs_of_a_run(
    client: AsyncClient, daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "share.ipynb", [code("print('shared')\n6 * 7")])
    nb_a = await client.open(path)
    async with (
        await AsyncClient.connect(daemon.paths.socket) as client_b,
        anyio.create_task_group() as tg,
    ):
        nb_b = await client_b.open(path)
        events_b = await start_recorder(tg, client_b)
        result = await nb_a.execute("cell0", timeout=DEADLINE)
        assert result.status == "ok"
        started = await events_b.wait_for(ExecutionStarted)
        done = await events_b.wait_for(ExecutionDone)
        assert started.execution_id == done.execution_id == result.execution_id
        assert (done.cell_id, done.status, done.execution_count) == ("cell0", "ok", 1)

        def b_sees_it() -> bool:
            record = nb_b.runtime.execution(result.execution_id)
            return record is not None and record.get("status") == "ok"

        await client_b.wait_until(b_sees_it, timeout=10)
        assert nb_b.outputs("cell0") == result.outputs == nb_a.outputs("cell0")
        assert nb_b.execution_count("cell0") == 1
        tg.cancel_scope.cancel()


# ------------------------------------------------------------------ bad requests


async def test_markdown_unknown_and_empty_cells_are_refused(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "bad.ipynb",
        [
            markdown("# not code"),
            code("  \n\t"),
            code("print('fine')"),
        ],
    )
    nb = await client.open(path)
    with pytest.raises(CellNotCode, match="'cell0' is a markdown cell"):
        await nb.execute("cell0", timeout=DEADLINE)
    with pytest.raises(CellNotFound, match="nope"):
        await nb.execute("nope", timeout=DEADLINE)
    with pytest.raises(CellEmpty, match="'cell1' is empty"):
        await nb.execute("cell1", timeout=DEADLINE)
    # Refusals queue nothing and start no kernel; the notebook keeps working.
    assert nb.runtime.execution_ids() == []
    assert nb.runtime.kernel()["state"] == "not_started"
    assert (await nb.execute("cell2", timeout=DEADLINE)).outputs == [stream("fine\n")]


async def test_clear_outputs(client: AsyncClient, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "clr.ipynb", [code("print('a')"), code("print('b')")])
    nb = await client.open(path)
    await nb.run_all(timeout=DEADLINE)
    assert nb.outputs("cell0") == [stream("a\n")]

    await nb.clear_outputs(["cell0"])
    await client.wait_until(lambda: nb.runtime.cell_state("cell0") == (None, []), timeout=10)
    assert nb.outputs("cell1") == [stream("b\n")]
    assert nb.execution_count("cell1") == 2

    await nb.clear_outputs()
    await client.wait_until(lambda: nb.runtime.cell_state("cell1") == (None, []), timeout=10)

    with pytest.raises(CellNotFound):
        await nb.clear_outputs(["nope"])
    await nb.save()
    _, saved = saved_outputs(path)
    assert saved == {"cell0": [], "cell1": []}


# ------------------------------------------------------------------ kernel state


async def test_kernel_status_is_visible_in_the_runtime_document(
    client: AsyncClient, short_tmp: Path
) -> None:
    gate = short_tmp / "go"
    path = write_notebook(
        short_tmp / "ks.ipynb",
        [
            code(wait_for_file_code(gate)),
        ],
    )
    nb = await client.open(path)
    assert nb.runtime.kernel()["state"] == "not_started"
    assert nb.runtime.kernel()["pid"] is None
    async with anyio.create_task_group() as tg:
        events = await start_recorder(tg, client)
        eid = await nb.queue("cell0")
        # The cell waits for the gate file, so "busy" is observable for as long as we like.
        await client.wait_until(lambda: nb.runtime.kernel()["state"] == "busy", timeout=DEADLINE)
        kernel = nb.runtime.kernel()
        assert kernel["name"] == "python3"
        pid = kernel["pid"]
        assert isinstance(pid, int)
        assert b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert nb.runtime.running() == eid
        gate.touch()
        assert (await nb.wait_execution(eid, timeout=DEADLINE)).status == "ok"
        await client.wait_until(lambda: nb.runtime.kernel()["state"] == "idle", timeout=10)
        assert nb.runtime.kernel()["pid"] == pid
        await events.wait_for(ExecutionDone)
        tg.cancel_scope.cancel()
    states = [e.state for e in events.of_type(KernelStatusChanged)]
    assert states == ["starting", "idle", "busy", "idle"]
    os.kill(pid, 0)  # still alive between executions


async def test_saved_execution_counts_and_outputs_after_rerun(
    client: AsyncClient, short_tmp: Path
) -> None:
    """Re-running a cell replaces its outputs (Jupyter semantics), in the checkpoint too."""
    path = write_notebook(short_tmp / "rerun.ipynb", [code("n = globals().get('n', 0) + 1\nn")])
    nb = await client.open(path)
    for expected in (1, 2, 3):
        result = await nb.execute("cell0", timeout=DEADLINE)
        assert result.outputs[0]["data"] == {"text/plain": str(expected)}
        assert result.execution_count == expected
    await nb.save()
    ours, saved = saved_outputs(path)
    assert [o["data"] for o in saved["cell0"]] == [{"text/plain": "3"}]
    assert ours.cells[0]["execution_count"] == 3
    before = copy.deepcopy(ours)
    # Saving twice writes the same notebook.
    await nb.save()
    assert nbformat.read(path, as_version=4) == before
