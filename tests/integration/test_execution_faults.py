"""Execution when things go wrong: the kernel dies, asks for input, overruns its time, the
daemon is stopped, or one notebook floods output while others work.

Real daemon, real ipykernel, real processes; every wait is a condition with a deadline.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from protocol.messages import DaemonEvent, ExecutionDone, InputRequested
from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.errors import ExecutionNotFound, InvalidRequest
from runtimed.paths import RuntimedPaths

from .conftest import wait_for_file_code, write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

_E = TypeVar("_E")

DEADLINE = 60
FLOOD_LINE = "x" * 99 + "\n"


def code(source: str, **metadata: Any) -> dict[str, object]:
    return {"cell_type": "code", "source": source, "metadata": metadata}


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(*pids: int, within: float) -> None:
    # Not our children: nothing to await, so check /proc until the deadline.
    with anyio.fail_after(within):
        while any(alive(pid) for pid in pids):
            await anyio.sleep(0.05)


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


async def start_recorder(tg: anyio.abc.TaskGroup, client: AsyncClient) -> EventRecorder:
    """Subscribe before returning (the ping round trip lets the subscribing task run)."""
    recorder = EventRecorder(client)
    tg.start_soon(recorder.run)
    await client.ping()
    return recorder


# ------------------------------------------------------------------ kernel death


async def test_kernel_death_ends_the_cell_as_died_and_the_next_run_gets_a_fresh_kernel(
    client: AsyncClient, short_tmp: Path
) -> None:
    gate = short_tmp / "die-now"
    path = write_notebook(
        short_tmp / "die.ipynb",
        [
            code("x = 1\nprint('alive', flush=True)"),
            # Output sent just before os._exit may die with the kernel's zmq queue: print, then
            # wait for the test to have seen it, then die.
            code(f"print('dying', flush=True)\n{wait_for_file_code(gate)}os._exit(1)"),
            code("print('after')"),
            code("x"),
        ],
    )
    nb = await client.open(path)
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
    old_pid = nb.runtime.kernel()["pid"]
    assert isinstance(old_pid, int)

    async with anyio.create_task_group() as tg:
        events = await start_recorder(tg, client)
        dying = await nb.queue("cell1")
        behind = await nb.queue("cell2")
        await client.wait_until(
            lambda: nb.outputs("cell1") == [stream("dying\n")], timeout=DEADLINE
        )
        gate.touch()
        died = await nb.wait_execution(dying, timeout=DEADLINE)
        skipped = await nb.wait_execution(behind, timeout=DEADLINE)
        done = await events.wait_for(ExecutionDone, lambda e: e.execution_id == dying)
        tg.cancel_scope.cancel()

    assert (died.status, died.ename) == ("died", "KernelDied")
    assert "exited (code 1)" in (died.evalue or "")
    assert (done.status, done.ename, done.evalue) == ("died", "KernelDied", died.evalue)
    # The failure is visible in the notebook as an error output, after what the cell printed.
    assert [o["output_type"] for o in died.outputs] == ["stream", "error"]
    assert died.outputs[0] == stream("dying\n")
    assert (died.outputs[1]["ename"], died.outputs[1]["evalue"]) == ("KernelDied", died.evalue)
    assert skipped.status == "skipped"
    await client.wait_until(lambda: nb.runtime.kernel()["state"] == "dead", timeout=10)
    assert nb.runtime.kernel()["message"]
    await wait_gone(old_pid, within=10)

    # The daemon keeps serving, and the next execution starts a fresh kernel.
    await client.ping()
    assert [info.path for info in await client.list_notebooks()] == [str(path.resolve())]
    after = await nb.execute("cell2", timeout=DEADLINE)
    assert (after.status, after.outputs) == ("ok", [stream("after\n")])
    new_pid = nb.runtime.kernel()["pid"]
    assert isinstance(new_pid, int)
    assert new_pid != old_pid
    assert nb.runtime.kernel()["state"] == "idle"
    fresh = await nb.execute("cell3", timeout=DEADLINE)
    assert (fresh.status, fresh.ename) == ("error", "NameError")


# ------------------------------------------------------------------ stdin


async def test_input_without_stdin_raises_in_the_cell_instead_of_hanging(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "in.ipynb", [code("name = input('name? ')")])
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=30)
    assert (result.status, result.ename) == ("error", "StdinNotImplementedError")
    assert result.outputs[-1]["ename"] == "StdinNotImplementedError"


async def test_input_with_stdin_is_answered_through_input_requested(
    client: AsyncClient, short_tmp: Path
) -> None:
    gate = short_tmp / "gate"
    path = write_notebook(
        short_tmp / "in.ipynb",
        [
            code(
                "import getpass\nname = input('name? ')\nsecret = getpass.getpass('pw: ')\n"
                "print('hello', name, len(secret))"
            ),
            # Held until the test has asked: a cell that had already finished would be
            # forgotten, and the answer would be refused as unknown instead.
            code(wait_for_file_code(gate) + "1 + 1"),
        ],
    )
    nb = await client.open(path)
    async with anyio.create_task_group() as tg:
        events = await start_recorder(tg, client)
        eid = await nb.queue("cell0", allow_stdin=True)
        asked = await events.wait_for(InputRequested)
        assert (asked.execution_id, asked.prompt, asked.password) == (eid, "name? ", False)
        await nb.answer_input(eid, "Ada")
        asked = await events.wait_for(InputRequested, lambda e: e.password)
        assert (asked.execution_id, asked.prompt) == (eid, "pw: ")
        await nb.answer_input(eid, "s3cret")
        result = await nb.wait_execution(eid, timeout=DEADLINE)
        tg.cancel_scope.cancel()
    assert result.status == "ok"
    assert result.outputs == [stream("hello Ada 6\n")]
    # Answers to what is not (or no longer) waiting are refused with specific errors.
    held = await nb.queue("cell1")
    with pytest.raises(InvalidRequest):
        await nb.answer_input(held, "late")
    gate.touch()
    assert (await nb.wait_execution(held, timeout=DEADLINE)).status == "ok"
    with pytest.raises(ExecutionNotFound):
        await nb.answer_input("0" * 32, "nobody")


# ------------------------------------------------------------------ timeout


async def test_cell_timeout_interrupts_the_cell(client: AsyncClient, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "to.ipynb",
        [
            code("import time\ntime.sleep(30)"),
            code("1 + 1"),
        ],
    )
    nb = await client.open(path)
    eid = await nb.queue("cell0", cell_timeout=1)
    result = await nb.wait_execution(eid, timeout=20)  # far less than the 30 s sleep
    assert (result.status, result.ename) == ("timeout", "ExecutionTimeout")
    assert "1" in (result.evalue or "")
    assert result.outputs[-1]["ename"] == "KeyboardInterrupt"  # the kernel's own, no extra
    # The interrupted kernel lives on.
    pid = nb.runtime.kernel()["pid"]
    after = await nb.execute("cell1", timeout=DEADLINE)
    assert after.status == "ok"
    assert nb.runtime.kernel()["pid"] == pid


# ------------------------------------------------------------------ daemon stop


async def test_daemon_stop_leaves_no_kernel_or_grandchild_behind(
    daemon_process: tuple[subprocess.Popen[bytes], RuntimedPaths], short_tmp: Path
) -> None:
    proc, paths = daemon_process
    path = write_notebook(
        short_tmp / "stop.ipynb",
        [
            code(
                "import subprocess\nchild = subprocess.Popen(['sleep', '1000'])\nprint(child.pid)"
            ),
        ],
    )
    async with await AsyncClient.connect(paths.socket) as client:
        nb = await client.open(path)
        result = await nb.execute("cell0", timeout=DEADLINE)
        assert result.status == "ok", result
        grandchild = int(result.outputs[0]["text"])
        kernel = nb.runtime.kernel()["pid"]
        assert isinstance(kernel, int)
        assert alive(kernel)
        assert alive(grandchild)

        proc.send_signal(signal.SIGTERM)
        code_ = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30))
    assert code_ == 0
    await wait_gone(kernel, grandchild, within=10)


# ------------------------------------------------------------------ flood


async def test_a_flooding_notebook_does_not_stall_other_notebooks_or_pings(
    client: AsyncClient, daemon: Daemon, short_tmp: Path
) -> None:
    """While one notebook floods output (~30 MB/s), another notebook's executions complete and
    a third client's pings are answered. Behaviour, not timings: the flood runs until the test
    has seen all of that (a gate file), so the order of events is what is asserted; if the
    daemon stalled, the flood's 60 s fallback would end it first and the test would fail."""
    gate = short_tmp / "stop-flood"
    flood_path = write_notebook(
        short_tmp / "flood.ipynb",
        [
            code(
                "import os, sys, time\n"
                "t0 = time.monotonic()\n"
                "i = 0\n"
                "while True:\n"
                f"    sys.stdout.write(f'{{i}}\\n' + {FLOOD_LINE!r} * 300)\n"
                "    i += 1\n"
                "    time.sleep(0.001)  # ~30 MB/s: a flood, yet a bounded one for a test\n"
                "    if i % 100 == 0 and (\n"
                f"        os.path.exists({str(gate)!r}) or time.monotonic() - t0 > 60\n"
                "    ):\n"
                "        break\n"
                "print('flood done', i)"
            )
        ],
    )
    other_path = write_notebook(short_tmp / "other.ipynb", [code("1 + 1")])
    nb_flood = await client.open(flood_path)
    async with (
        await AsyncClient.connect(daemon.paths.socket) as client_b,
        await AsyncClient.connect(daemon.paths.socket) as client_c,
    ):
        nb_other = await client_b.open(other_path)
        # Warm the other notebook's kernel first, so what follows measures serving, not startup.
        assert (await nb_other.execute("cell0", timeout=DEADLINE)).status == "ok"

        flood = await nb_flood.queue("cell0")
        # The flood is under way: its (partial) output is already in the runtime document.
        await client.wait_until(lambda: bool(nb_flood.outputs("cell0")), timeout=DEADLINE)

        runs, pings = 30, 60
        results = []
        async with anyio.create_task_group() as tg:

            async def ping_loop() -> None:
                for _ in range(pings):
                    await client_c.ping()

            tg.start_soon(ping_loop)
            for _ in range(runs):
                results.append(await nb_other.execute("cell0", timeout=DEADLINE))
        assert [r.outputs[0]["data"] for r in results] == [{"text/plain": "2"}] * runs

        # The daemon itself says the flood is still running (not the possibly lagging replica).
        infos = {info.path: info for info in await client_c.list_notebooks()}
        assert infos[str(flood_path.resolve())].running == flood
        gate.touch()
        done = await nb_flood.wait_execution(flood, timeout=DEADLINE)

    # Nothing of the flood was lost.
    assert done.status == "ok"
    [out] = done.outputs
    last = out["text"].rsplit("\n", 2)[-2]
    count = int(last.removeprefix("flood done "))
    assert count >= 100, count
    expected = "".join(f"{k}\n" + FLOOD_LINE * 300 for k in range(count))
    assert out["text"] == expected + f"flood done {count}\n"


async def test_a_wait_that_times_out_says_where_the_execution_is(
    client: AsyncClient, short_tmp: Path
) -> None:
    gate = short_tmp / "go"
    path = write_notebook(
        short_tmp / "slow.ipynb", [code(wait_for_file_code(gate) + "1"), code("2")]
    )
    nb = await client.open(path)
    running = await nb.queue("cell0")
    behind = await nb.queue("cell1")
    await client.wait_until(
        lambda: nb.runtime.execution_status(running) == "running", timeout=DEADLINE
    )
    with pytest.raises(TimeoutError, match=r"replica shows it running; the daemon is running"):
        await nb.wait_execution(running, timeout=0.2)
    with pytest.raises(TimeoutError, match=r"shows it queued; the daemon is queueing it"):
        await nb.wait_execution(behind, timeout=0.2)
    gate.touch()
    assert (await nb.wait_execution(behind, timeout=DEADLINE)).status == "ok"
