"""KernelSession against real kernels and real processes (ipykernel and misbehaving scripts)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio
import nbformat
import pytest
from nbclient import NotebookClient

from runtimed.errors import KernelNotFound, KernelNotRunning, KernelStartFailed
from runtimed.kernels.outputs import Output, OutputChange, coalesce_streams
from runtimed.kernels.session import ExecutionOutcome, KernelSession

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
HANG_BOUND = 30.0
"""Seconds: a bound on hanging, not a speed claim. The paths it bounds take a few seconds at
most, and the cells they cut short would run 60 s (a hang would otherwise block the suite)."""


def state_of(kernel: KernelSession) -> str:
    """``kernel.state`` now (a function call, so mypy does not carry an earlier narrowing of
    the property over to a later read: the state changes between reads)."""
    return kernel.state


def alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie nobody reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_dead(*pids: int, within: float = 3.0) -> None:
    with anyio.fail_after(within):
        while any(alive(pid) for pid in pids):
            await anyio.sleep(0.02)


@pytest.fixture
def test_kernelspecs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Kernelspecs for the misbehaving kernels in tests/kernels, via a temp JUPYTER_PATH."""
    for name in ("boom", "silent", "stubborn"):
        spec_dir = tmp_path / "kernels" / name
        spec_dir.mkdir(parents=True)
        argv = [sys.executable, str(KERNELS / f"{name}_kernel.py"), "-f", "{connection_file}"]
        spec = {"argv": argv, "display_name": name, "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
    missing = tmp_path / "kernels" / "missing-exe"
    missing.mkdir()
    spec = {"argv": ["/nonexistent/kernel", "{connection_file}"], "display_name": "x"}
    (missing / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return tmp_path


class DisplayRegistry:
    """What the daemon does across cells: remember display ids, apply updates elsewhere."""

    def __init__(self) -> None:
        self.cells: list[list[Output]] = []
        self.where: dict[str, list[tuple[int, int]]] = {}

    def apply(self, change: OutputChange) -> None:
        upd = change.display_update
        current = len(self.cells)  # the running cell; its own outputs are the accumulator's
        for cell, index in self.where.get(upd.display_id, []) if upd else []:
            if cell != current and upd is not None:
                out = self.cells[cell][index]
                self.cells[cell][index] = {**out, "data": upd.data, "metadata": upd.metadata}

    def finished(self, outcome: ExecutionOutcome) -> None:
        for display_id, indices in outcome.display_ids.items():
            self.where.setdefault(display_id, []).extend((len(self.cells), i) for i in indices)
        self.cells.append(list(outcome.outputs))


PARITY_CELLS = [
    "print('a')\nprint('b', flush=True)\nprint('c')",
    "import sys\nprint('to stderr', file=sys.stderr)",
    "from IPython.display import display, HTML, Markdown\n"
    "display(HTML('<b>x</b>'))\ndisplay(Markdown('*m*'))\n42",
    "h = display('a', display_id=True)\nh.update('b')",
    "import time\nfor i in range(5):\n    print(f'\\r{i * 25}%', end='', flush=True)\n"
    "    time.sleep(0.01)\nprint()",
    "from IPython.display import clear_output\nprint('gone')\nclear_output()\nprint('kept')",
    "print('x', flush=True)\nclear_output(wait=True)\nprint('y')",
    "display('first', display_id='shared')",
    "from IPython.display import update_display\nupdate_display('second', display_id='shared')",
    "1 / 0",
    "{'k': [1, 2]}",
]


async def test_outputs_of_every_type_match_nbclient(tmp_path: Path) -> None:
    ours: list[ExecutionOutcome] = []
    registry = DisplayRegistry()
    kinds: list[str] = []

    def on_change(change: OutputChange) -> None:
        kinds.append(change.kind)
        registry.apply(change)

    async with KernelSession(cwd=tmp_path) as kernel:
        assert kernel.state == "idle"
        assert kernel.kernel_info is not None
        assert kernel.kernel_info["language_info"]["name"] == "python"
        for code in PARITY_CELLS:
            outcome = await kernel.execute(code, on_change=on_change)
            ours.append(outcome)
            registry.finished(outcome)
    cells = registry.cells
    assert {"append", "replace", "clear"} <= set(kinds)

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in PARITY_CELLS])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    client = NotebookClient(nb, timeout=30, allow_errors=True, record_timing=False)
    await client.async_execute(cwd=str(tmp_path))

    for index, (cell, outputs, outcome) in enumerate(zip(nb.cells, cells, ours, strict=True)):
        assert outputs == coalesce_streams(cell.outputs), (index, cell.source)
        assert outcome.execution_count == cell.execution_count == index + 1

    # Spot checks of the shapes.
    assert cells[0] == [{"output_type": "stream", "name": "stdout", "text": "a\nb\nc\n"}]
    assert cells[1] == [{"output_type": "stream", "name": "stderr", "text": "to stderr\n"}]
    html, md, res = cells[2]
    assert html["output_type"] == "display_data"
    assert html["data"]["text/html"] == "<b>x</b>"
    assert md["data"]["text/markdown"] == "*m*"
    assert res == {
        "output_type": "execute_result",
        "data": {"text/plain": "42"},
        "metadata": {},
        "execution_count": 3,
    }
    assert cells[3] == [
        {"output_type": "display_data", "data": {"text/plain": "'b'"}, "metadata": {}}
    ]
    assert cells[4] == [{"output_type": "stream", "name": "stdout", "text": "100%\n"}]
    assert cells[5] == [{"output_type": "stream", "name": "stdout", "text": "kept\n"}]
    assert cells[6] == [{"output_type": "stream", "name": "stdout", "text": "y\n"}]
    assert cells[7][0]["data"] == {"text/plain": "'second'"}  # updated from cell 9
    assert cells[8] == []
    (error,) = cells[9]
    assert (error["output_type"], error["ename"], error["evalue"]) == (
        "error",
        "ZeroDivisionError",
        "division by zero",
    )
    assert any("ZeroDivisionError" in line for line in error["traceback"])
    assert ours[9].status == "error"
    assert ours[9].error is not None
    assert ours[9].error.ename == "ZeroDivisionError"
    assert ours[9].error.traceback == error["traceback"]
    assert ours[10].status == "ok"


async def test_stdin_timeout_interrupt_abort_and_restart(tmp_path: Path) -> None:
    async with KernelSession(cwd=tmp_path) as kernel:
        # Headless input(): a clear error, no hang.
        headless = await kernel.execute("input('name? ')")
        assert headless.status == "error"
        assert headless.error is not None
        assert headless.error.ename == "StdinNotImplementedError"

        prompts: list[tuple[str, bool]] = []

        async def answer(prompt: str, password: bool) -> str:
            prompts.append((prompt, password))
            return "secret" if password else "Ada"

        code = "import getpass\nprint(input('name? '), getpass.getpass('pw: '))"
        answered = await kernel.execute(code, stdin=answer)
        assert answered.status == "ok"
        assert answered.outputs[-1]["text"].endswith("Ada secret\n")
        assert prompts == [("name? ", False), ("pw: ", True)]

        async def broken(prompt: str, password: bool) -> str:
            raise RuntimeError("no terminal")

        eof = await kernel.execute("input()", stdin=broken)  # answered with EOF, no hang
        assert eof.error is not None
        assert eof.error.ename == "EOFError"

        def buggy(change: OutputChange) -> None:
            raise RuntimeError("callback bug")

        with pytest.raises(RuntimeError, match="callback bug"):
            await kernel.execute("print(1)\nprint(2)", on_change=buggy)
        assert kernel.state == "idle"

        # Timeout: interrupted, reported as "timeout", kernel usable afterwards.
        start = time.monotonic()
        slow = await kernel.execute("import time\ntime.sleep(60)", timeout=1)
        assert slow.status == "timeout"
        assert slow.error is not None
        assert slow.error.ename == "ExecutionTimeout"
        assert any(o.get("ename") == "KeyboardInterrupt" for o in slow.outputs)
        assert time.monotonic() - start < HANG_BOUND

        # Interrupt a running cell once it has started.
        started = anyio.Event()
        outcome: list[ExecutionOutcome] = []

        def seen(change: OutputChange) -> None:
            if any("started" in o.get("text", "") for o in change.outputs):
                started.set()

        async def run() -> None:
            code = "import time\nprint('started', flush=True)\ntime.sleep(60)"
            outcome.append(await kernel.execute(code, on_change=seen))

        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.fail_after(10):
                await started.wait()
            assert state_of(kernel) == "busy"
            await kernel.interrupt()
        assert time.monotonic() - start < HANG_BOUND
        assert outcome[0].status == "error"
        assert outcome[0].error is not None
        assert outcome[0].error.ename == "KeyboardInterrupt"
        assert kernel.state == "idle"

        # stop_on_error: a request queued behind a failing one is aborted.
        results: dict[str, ExecutionOutcome] = {}

        async def run_as(key: str, code: str) -> None:
            results[key] = await kernel.execute(code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_as, "fails", "import time\ntime.sleep(0.3)\n1/0")
            await anyio.sleep(0.05)
            tg.start_soon(run_as, "queued", "print('never')")
        assert results["fails"].status == "error"
        assert results["queued"].status == "aborted"
        assert results["queued"].outputs == []

        # Restart: new process, state reset.
        assert (await kernel.execute("x = 1")).status == "ok"
        old_pid = kernel.pid
        assert old_pid is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(kernel.restart)
            await anyio.wait_all_tasks_blocked()
            assert state_of(kernel) == "starting"
        assert kernel.pid != old_pid
        assert state_of(kernel) == "idle"
        await wait_dead(old_pid)
        gone = await kernel.execute("x")
        assert gone.status == "error"
        assert gone.error is not None
        assert gone.error.ename == "NameError"
        assert gone.execution_count == 1


async def test_death_is_prompt_and_nothing_is_orphaned(tmp_path: Path) -> None:
    async with KernelSession(cwd=tmp_path, kernel_name="python3") as kernel:
        spawn = "import subprocess\nprint(subprocess.Popen(['sleep', '1000']).pid)"
        grandchild = int((await kernel.execute(spawn)).outputs[0]["text"])
        pid = kernel.pid
        assert pid is not None
        assert alive(grandchild)

        start = time.monotonic()
        died = await kernel.execute("import os\nos._exit(1)")
        assert time.monotonic() - start < HANG_BOUND
        assert died.status == "died"
        assert died.error is not None
        assert died.error.ename == "KernelDied"
        assert died.error.evalue == "the kernel process exited (code 1) while running this cell"
        assert kernel.state == "dead"
        await wait_dead(pid, grandchild)
        with pytest.raises(KernelNotRunning):
            await kernel.execute("1")
        with pytest.raises(KernelNotRunning):
            await kernel.interrupt()

        await kernel.restart()
        assert (await kernel.execute("1 + 1")).outputs[0]["data"] == {"text/plain": "2"}
        grandchild = int((await kernel.execute(spawn)).outputs[0]["text"])
        pid = kernel.pid
        assert pid is not None

        # Shut down during a running cell: the cell ends as "died" with a clear reason.
        # (ipykernel's own shutdown waits up to ~14 s for its zombie children and a busy
        # shell; our timeout bounds that, then SIGTERM/SIGKILL the group.)
        outcome: list[ExecutionOutcome] = []
        started = anyio.Event()

        async def run() -> None:
            code = "import time\nprint('go', flush=True)\ntime.sleep(60)"
            outcome.append(await kernel.execute(code, on_change=lambda _: started.set()))

        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            await kernel.shutdown(timeout=1)
        assert time.monotonic() - start < HANG_BOUND
        assert outcome[0].status == "died"
        assert outcome[0].error is not None
        assert outcome[0].error.evalue == "the kernel was shut down while running this cell"
        assert outcome[0].outputs == [{"output_type": "stream", "name": "stdout", "text": "go\n"}]
        assert kernel.state == "dead"
        assert kernel.pid is None
        await wait_dead(pid, grandchild, within=1)
        with pytest.raises(KernelNotRunning):
            await kernel.execute("1")

    # Cancelled from outside while inside the block: the kernel is still cleaned up.
    pids: list[int | None] = []
    with anyio.CancelScope() as outer:
        async with KernelSession(cwd=tmp_path) as kernel:
            pids.append(kernel.pid)
            outer.cancel()
            await anyio.sleep(30)
    assert outer.cancelled_caught
    assert pids[0] is not None
    await wait_dead(pids[0], within=1)

    # Leaving the block on an exception: the exception is not wrapped, the kernel is gone.
    pids.clear()

    async def fail_inside() -> None:
        async with KernelSession(cwd=tmp_path) as kernel:
            pids.append(kernel.pid)
            raise ValueError("boom in the body")

    with pytest.raises(ValueError, match="boom in the body"):
        await fail_inside()
    assert pids[0] is not None
    await wait_dead(pids[0], within=1)


async def test_startup_failures(tmp_path: Path, test_kernelspecs: Path) -> None:
    with pytest.raises(KernelNotFound) as not_found:
        async with KernelSession(cwd=tmp_path, kernel_name="no-such-kernel"):
            pass
    assert "no-such-kernel" in str(not_found.value)
    assert {"python3", "boom", "silent", "stubborn"} <= set(not_found.value.available)
    assert "python3" in str(not_found.value)
    assert not_found.value.code == "kernel_not_found"

    start = time.monotonic()
    with pytest.raises(KernelStartFailed) as boom:
        async with KernelSession(cwd=tmp_path, kernel_name="boom"):
            pass
    assert time.monotonic() - start < HANG_BOUND
    assert "exited (code 3) during startup" in str(boom.value)
    assert "boom: this kernel refuses to start" in str(boom.value)
    assert boom.value.code == "kernel_start_failed"

    with pytest.raises(KernelStartFailed, match="could not launch"):
        async with KernelSession(cwd=tmp_path, kernel_name="missing-exe"):
            pass

    start = time.monotonic()
    silent = r"did not answer kernel_info_request within 1\.5 s"
    with pytest.raises(KernelStartFailed, match=silent):
        async with KernelSession(cwd=tmp_path, kernel_name="silent", startup_timeout=1.5):
            pass
    assert time.monotonic() - start < HANG_BOUND
    # Only this test's silent kernel (its cwd is tmp_path): other test runs on the machine
    # may have one running at this moment.
    here = tmp_path.resolve()
    mine = [p for p in _pids() if "silent_kernel.py" in _cmdline(p) and _cwd(p) == here]
    assert not [pid for pid in mine if alive(pid)], "the silent kernel was left running"


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


async def test_kernel_ignoring_sigterm_is_killed(tmp_path: Path, test_kernelspecs: Path) -> None:
    async with KernelSession(cwd=tmp_path, kernel_name="stubborn") as kernel:
        spawn = "import subprocess\nprint(subprocess.Popen(['sleep', '1000']).pid)"
        grandchild = int((await kernel.execute(spawn)).outputs[0]["text"])
        pid = kernel.pid
        assert pid is not None
        start = time.monotonic()
        await kernel.shutdown(timeout=0.5)
        elapsed = time.monotonic() - start
        # 0.5 s for shutdown_request + 2 s after SIGTERM, then SIGKILL (load only adds time,
        # so the lower bound cannot flake; that SIGKILL came is shown by the process being gone).
        assert 2.4 < elapsed < HANG_BOUND, elapsed
        assert not alive(pid)
        assert not alive(grandchild)  # it ignored SIGTERM too (inherited SIG_IGN)


async def test_cells_finished_counts_a_notebooks_cells_not_the_daemons_setup_code(
    tmp_path: Path,
) -> None:
    # The pool defers its refill until a taken kernel's first cell is over (runtimes.pool).
    async with KernelSession(cwd=tmp_path) as kernel:
        first = kernel.cell_finished
        setup = await kernel.execute("import os", silent=True, timeout=30)
        assert setup.status == "ok"
        assert kernel.cells_finished == 0
        assert not first.is_set()
        ok = await kernel.execute("1+1", timeout=30)
        assert ok.status == "ok"
        assert kernel.cells_finished == 1
        assert first.is_set()
        second = kernel.cell_finished
        assert not second.is_set()  # a fresh event for the next cell
        failed = await kernel.execute("1/0", timeout=30)
        assert failed.status == "error"
        assert kernel.cells_finished == 2
        assert second.is_set()
