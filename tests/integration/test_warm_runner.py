"""``runt run`` handed to the daemon's warm runner (runtimed.cli.runner): the child it forks
runs as the caller's process would — its directory, environment, streams, exit status and
signals — and a runner that cannot run a command exactly so declines before anything runs.

Each caller here is ``python -c`` calling :func:`hand_over` (what ``runt``'s entry point
calls first) and exiting 99 when it returns None: a test knows which path ran."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from runtimed.cli.runner import runner_socket
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.paths import RuntimedPaths

from .conftest import wait_for_file_code, write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60
FELL_BACK = 99
CALLER = (
    "import sys\n"
    "from runtimed.cli.runner import hand_over\n"
    "status = hand_over(sys.argv[1:])\n"
    f"sys.exit({FELL_BACK} if status is None else status)\n"
)


def code(source: str) -> dict[str, object]:
    return {"cell_type": "code", "source": source}


async def _wait_for(predicate: object, what: str) -> None:
    with anyio.fail_after(DEADLINE):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.02)


@pytest.fixture
async def daemon(paths: RuntimedPaths) -> AsyncIterator[Daemon]:
    """An in-process daemon with its warm runner, once the runner listens."""
    config = DaemonConfig(heads_timeout=5.0, runtimes=RuntimesConfig(pool_size=0))
    instance = Daemon(paths, config=config)
    instance.runner.delay = 0.0
    async with anyio.create_task_group() as tg:
        await tg.start(instance.run)
        try:
            await _wait_for(lambda: os.path.exists(runner_socket(paths.socket)), "the runner")
            yield instance
        finally:
            instance.request_stop()


def caller(daemon: Daemon, *args: str | Path, python: str = sys.executable) -> list[str]:
    return [python, "-c", CALLER, "--socket", str(daemon.paths.socket), "run"] + [
        str(a) for a in args
    ]


async def test_a_handed_over_run_runs_in_the_callers_directory_with_its_environment(
    daemon: Daemon, short_tmp: Path
) -> None:
    work = short_tmp / "work"
    work.mkdir()
    write_notebook(
        work / "in.ipynb",
        [
            {**code("x = 1"), "metadata": {"tags": ["parameters"]}},
            code("import os\nprint(os.getcwd(), os.environ['RUNNER_PROBE'], x)"),
        ],
    )
    done = await anyio.run_process(
        caller(daemon, "in.ipynb", "out.ipynb", "-p", "x", "41", "--no-progress-bar"),
        cwd=work,
        env={**os.environ, "RUNNER_PROBE": "from-the-caller"},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    nb = json.loads((work / "out.ipynb").read_text())
    printed = "".join(nb["cells"][-1]["outputs"][0]["text"])
    assert printed == f"{work} from-the-caller 41\n"
    # The child wrote to the caller's own stderr.
    assert "cells ran in" in done.stderr.decode()
    assert "output written to out.ipynb" in done.stderr.decode()


async def test_a_failing_handed_over_run_exits_1_and_says_why(
    daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("raise ValueError('boom')")])
    done = await anyio.run_process(
        caller(daemon, src, short_tmp / "out.ipynb", "--no-progress-bar"), check=False
    )
    assert done.returncode == 1, done.stderr.decode()
    assert "ValueError" in done.stderr.decode()
    assert "FAILED" in done.stderr.decode()


async def test_the_output_notebook_goes_to_the_callers_stdout(
    daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("print('to stdout')")])
    done = await anyio.run_process(caller(daemon, src, "-", "--no-progress-bar"), check=False)
    assert done.returncode == 0, done.stderr.decode()
    nb = json.loads(done.stdout)
    assert nb["cells"][0]["outputs"][0]["text"] == ["to stdout\n"]


def _stuck_notebook(where: Path) -> tuple[Path, Path]:
    """A notebook whose second cell says it started (the returned file) and then waits for
    a gate nobody opens; and that file."""
    started, gate = where / "started", where / "gate"
    src = write_notebook(
        where / "in.ipynb",
        [
            code("print('first')"),
            code(f"open({str(started)!r}, 'w').close()\n" + wait_for_file_code(gate)),
            code("print('never')"),
        ],
    )
    return src, started


async def test_ctrl_c_at_the_caller_interrupts_the_cell_and_saves_what_ran(
    daemon: Daemon, short_tmp: Path
) -> None:
    src, started = _stuck_notebook(short_tmp)
    out = short_tmp / "out.ipynb"
    async with await anyio.open_process(
        caller(daemon, src, out, "--no-progress-bar"), stderr=subprocess.PIPE
    ) as proc:
        try:
            await _wait_for(started.exists, "the cell")
            proc.send_signal(signal.SIGINT)
            with anyio.fail_after(DEADLINE):
                status = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()
        assert proc.stderr is not None
        errors = b"".join([chunk async for chunk in proc.stderr]).decode()
    assert status == 130, errors
    assert "interrupted" in errors
    cells = json.loads(out.read_text())["cells"]
    assert cells[1]["outputs"][0]["text"] == ["first\n"]  # marker cells come first
    assert any(o.get("ename") == "KeyboardInterrupt" for c in cells for o in c.get("outputs", []))


async def test_a_killed_caller_stops_its_run_which_saves_what_ran(
    daemon: Daemon, short_tmp: Path
) -> None:
    src, started = _stuck_notebook(short_tmp)
    out = short_tmp / "out.ipynb"
    async with await anyio.open_process(caller(daemon, src, out, "--no-progress-bar")) as proc:
        await _wait_for(started.exists, "the cell")
        proc.kill()
        await proc.wait()
    # Nobody waits for it any more: the child stops the run, saves it and closes the notebook.
    await _wait_for(lambda: not daemon.rooms.entries(), "the run's end")
    cells = json.loads(out.read_text())["cells"]
    assert any(o.get("ename") == "KeyboardInterrupt" for c in cells for o in c.get("outputs", []))


async def test_another_interpreter_is_declined_before_anything_runs(
    daemon: Daemon, short_tmp: Path
) -> None:
    ran = short_tmp / "ran"
    src = write_notebook(short_tmp / "in.ipynb", [code(f"open({str(ran)!r}, 'w').close()")])
    other = short_tmp / "python"
    other.symlink_to(sys.executable)  # the same binary by another name: not sys.executable
    done = await anyio.run_process(
        caller(daemon, src, short_tmp / "out.ipynb", python=str(other)), check=False
    )
    assert done.returncode == FELL_BACK, done.stderr.decode()
    await anyio.sleep(0.5)
    assert not ran.exists()
    assert not daemon.rooms.entries()


async def test_the_runner_ends_with_its_daemon(short_tmp: Path) -> None:
    paths = RuntimedPaths(socket=short_tmp / "d" / "rt.sock", home=short_tmp / "dhome")
    instance = Daemon(paths, config=DaemonConfig(runtimes=RuntimesConfig(pool_size=0)))
    instance.runner.delay = 0.0
    async with anyio.create_task_group() as tg:
        await tg.start(instance.run)
        await _wait_for(lambda: instance.runner.process is not None, "the runner")
        process = instance.runner.process
        assert process is not None
        await _wait_for(lambda: os.path.exists(runner_socket(paths.socket)), "its socket")
        instance.request_stop()
    assert process is not None
    assert process.returncode is not None
    assert not os.path.exists(runner_socket(paths.socket))
