"""``runt run`` / ``execute_notebook`` against a real daemon and real kernels."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest

from runtimed.automation.report import ERROR_MARKER_TAG
from runtimed.automation.run import execute_notebook, execute_notebook_async
from runtimed.daemon.app import Daemon

from .conftest import wait_for_file_code, write_notebook

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "runtimed" / "examples" / "hello.ipynb"


def code(source: str, *tags: str) -> dict[str, Any]:
    return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}}


async def runt(daemon: Daemon, *args: str | Path, cwd: Path | None = None) -> tuple[int, str, str]:
    """``python -m runtimed.cli --socket S ...`` as a user runs it."""
    done = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "runtimed.cli",
            "--socket",
            str(daemon.paths.socket),
            *map(str, args),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def load(path: Path) -> dict[str, Any]:
    """The notebook with multi-line strings joined (as nbformat.read does)."""
    nb: dict[str, Any] = nbformat.reads(path.read_text(), as_version=4)
    return nb


def statuses(nb: dict[str, Any]) -> list[str | None]:
    """Papermill status of each cell; papermill's error marker cells show as "marker"."""
    return [
        "marker"
        if ERROR_MARKER_TAG in c["metadata"].get("tags", [])
        else c["metadata"].get("papermill", {}).get("status")
        for c in nb["cells"]
    ]


@pytest.fixture
def kernels_import_runtimed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kernels inherit the daemon's environment; runtimed is not installed in the venv.
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.mark.anyio
async def test_execution_timeout_fails_naming_the_cell(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("print('start')"),
            code("import time\ntime.sleep(30)"),
            code("print('never')"),
        ],
    )
    out = short_tmp / "out.ipynb"
    with anyio.fail_after(25):
        status, _, err = await runt(
            daemon, "run", src, out, "--execution-timeout", "2", "--no-autostart"
        )
    assert status == 1, err
    assert "cell 1 (id 'cell1'" in err
    assert "timed out" in err
    assert "ExecutionTimeout" in err
    assert "time.sleep(30)" in err
    nb = load(out)
    assert statuses(nb) == ["marker", "completed", "marker", "failed", "pending"]
    # Only what the kernel produced (nbclient): the interrupt's KeyboardInterrupt.
    errors = [o for o in nb["cells"][3]["outputs"] if o["output_type"] == "error"]
    assert [e["ename"] for e in errors] == ["KeyboardInterrupt"]
    assert nb["cells"][0]["metadata"]["tags"] == [ERROR_MARKER_TAG]


@pytest.mark.anyio
async def test_kernel_death_fails_cleanly(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("x = 1"),
            code("import os\nos._exit(1)"),
            code("print(x)"),
        ],
    )
    result = await execute_notebook_async(
        src, short_tmp / "out.ipynb", socket=daemon.paths.socket, progress_bar=False
    )
    assert result.status == "failed"
    assert result.failed_cell is not None
    assert (result.failed_cell.index, result.failed_cell.status) == (1, "died")
    assert result.failed_cell.ename == "KernelDied"
    assert statuses(load(short_tmp / "out.ipynb")) == [
        "marker",
        "completed",
        "marker",
        "failed",
        "pending",
    ]


@pytest.mark.anyio
async def test_input_fails_cleanly_without_hanging(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("name = input('name? ')"), code("1")])
    with anyio.fail_after(20):
        result = await execute_notebook_async(
            src, short_tmp / "out.ipynb", socket=daemon.paths.socket, progress_bar=False
        )
    assert result.failed_cell is not None
    assert result.failed_cell.ename == "StdinNotImplementedError"
    assert result.cells_executed == 1


@pytest.mark.anyio
async def test_tags_raises_exception_continues_and_skip_execution_skips(
    daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("raise KeyError('expected')", "raises-exception"),
            code("print('skipped!')", "skip-execution"),
            {"cell_type": "markdown", "source": "text"},
            code("import sys\nprint('ran after the expected error')"),
        ],
    )
    out = short_tmp / "out.ipynb"
    result = await execute_notebook_async(src, out, socket=daemon.paths.socket, progress_bar=False)
    assert result.status == "ok"
    assert result.failed_cell is None
    assert result.cells_executed == 2
    nb = load(out)
    assert nb["cells"][0]["outputs"][0]["ename"] == "KeyError"
    assert nb["cells"][1]["outputs"] == []
    assert nb["cells"][1]["execution_count"] is None
    assert nb["cells"][3]["outputs"][0]["text"] == "ran after the expected error\n"
    assert statuses(nb) == ["completed"] * 4
    assert nb["metadata"]["papermill"]["exception"] is None


@pytest.mark.anyio
async def test_sys_exit_zero_stops_without_failing(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("print(1)"),
            code("import sys\nsys.exit(0)"),
            code("print('not run')"),
        ],
    )
    out = short_tmp / "out.ipynb"
    result = await execute_notebook_async(src, out, socket=daemon.paths.socket, progress_bar=False)
    assert result.status == "ok"
    assert result.cells_executed == 2
    nb = load(out)
    assert statuses(nb) == ["completed", "failed", "pending"]  # as papermill records it
    assert not any(ERROR_MARKER_TAG in c["metadata"].get("tags", []) for c in nb["cells"])


@pytest.mark.anyio
async def test_cwd_sets_the_kernel_working_directory(daemon: Daemon, short_tmp: Path) -> None:
    data = short_tmp / "data"
    data.mkdir()
    (data / "numbers.txt").write_text("1 2 3\n")
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code(
                "import os\nprint(sum(map(int, open('numbers.txt').read().split())), os.getcwd())"
            ),
        ],
    )
    out = short_tmp / "out" / "out.ipynb"
    status, _, err = await runt(daemon, "run", src, out, "--cwd", data, "--no-autostart")
    assert status == 0, err
    text = load(out)["cells"][0]["outputs"][0]["text"]
    assert text == f"6 {data}\n"
    # Without --cwd the kernel runs where runt was started (papermill's behaviour).
    status, _, err = await runt(daemon, "run", src, out, "--no-autostart", cwd=data)
    assert status == 0, err
    assert load(out)["cells"][0]["outputs"][0]["text"] == f"6 {data}\n"


@pytest.mark.anyio
async def test_batch_of_eight_with_one_failure(daemon: Daemon, short_tmp: Path) -> None:
    write_notebook(
        short_tmp / "sq.ipynb",
        [
            code("n = 1", "parameters"),
            code("assert n != 5, 'five is not allowed'\nprint(n * n)"),
        ],
    )
    spec = short_tmp / "spec.yaml"
    spec.write_text(
        "grid:\n  input: sq.ipynb\n  output: 'out/sq-{n}.ipynb'\n"
        "  parameters:\n    n: [1, 2, 3, 4, 5, 6, 7]\n"
        "notebooks:\n  - input: sq.ipynb\n    output: out/extra.ipynb\n"
        "    parameters: {n: 10}\n"
    )
    # A hang bound, not a speed test: eight kernel starts and eight `runt` workers took 6 s
    # on a quiet machine and over 60 s at a load of 17.
    with anyio.fail_after(240):
        status, out, err = await runt(
            daemon, "run", "--batch", spec, "--jobs", "2", "--no-autostart"
        )
    assert status == 1, err
    lines = [line for line in out.splitlines() if "sq.ipynb" in line]
    assert len(lines) == 8
    assert sum(" ok " in line for line in lines) == 7
    failed = [line for line in lines if " failed " in line]
    assert len(failed) == 1
    assert "sq-5.ipynb" in failed[0]
    assert "AssertionError" in failed[0]
    assert "7 ok, 1 failed, 8 notebooks" in out
    for n in [1, 2, 3, 4, 6, 7]:
        assert (
            load(short_tmp / "out" / f"sq-{n}.ipynb")["cells"][2]["outputs"][0]["text"]
            == f"{n * n}\n"
        )
    assert load(short_tmp / "out" / "extra.ipynb")["cells"][2]["outputs"][0]["text"] == "100\n"
    assert statuses(load(short_tmp / "out" / "sq-5.ipynb"))[-1] == "failed"
    assert err.count("started ") == 8


@pytest.mark.anyio
@pytest.mark.usefixtures("kernels_import_runtimed")
async def test_glue_values_read_back_with_runt_scraps(daemon: Daemon, short_tmp: Path) -> None:
    a, b = short_tmp / "a.ipynb", short_tmp / "b.ipynb"
    status, _, err = await runt(
        daemon, "run", HELLO, a, "-p", "name", "Ada", "-p", "count", "4", "--no-autostart"
    )
    assert status == 0, err
    status, _, err = await runt(daemon, "run", HELLO, b, "--no-autostart")
    assert status == 0, err
    status, out, err = await runt(daemon, "scraps", a, b, "--json")
    assert status == 0, err
    assert json.loads(out) == {
        str(a): {"greeting": "Hello, Ada!", "squares": [1.0, 4.0, 9.0, 16.0], "total": 30.0},
        str(b): {"greeting": "Hello, world!", "squares": [1.0, 4.0, 9.0], "total": 14.0},
    }
    status, out, _ = await runt(daemon, "scraps", a, b)
    assert "NOTEBOOK" in out
    assert "greeting" in out
    assert '"Hello, Ada!"' in out


@pytest.mark.anyio
@pytest.mark.usefixtures("kernels_import_runtimed")
async def test_execute_notebook_api_result(daemon: Daemon, short_tmp: Path) -> None:
    out = short_tmp / "out-{name}.ipynb"

    def blocking() -> Any:  # the blocking API runs its own event loop thread
        return execute_notebook(
            HELLO, out, {"name": "Bo", "count": 2}, socket=daemon.paths.socket, autostart=False
        ).result

    result = await anyio.to_thread.run_sync(blocking)
    assert result.status == "ok"
    assert result.ok
    assert result.output_path == str(short_tmp / "out-Bo.ipynb")
    assert result.input_path == str(HELLO)
    assert result.cells_executed == 6
    assert result.failed_cell is None
    assert result.notebook_id
    assert result.notebook_link == f"runtimed://notebook/{result.notebook_id}"
    assert result.scraps == {"greeting": "Hello, Bo!", "squares": [1.0, 4.0], "total": 5.0}
    assert result.parameters == {"name": "Bo", "count": 2}
    assert result.duration > 0
    nb = load(short_tmp / "out-Bo.ipynb")
    assert nb["metadata"]["papermill"]["parameters"] == {"name": "Bo", "count": 2}
    assert json.loads(json.dumps(result.to_dict()))["scraps"]["total"] == 5.0
    # The daemon unloads the notebook (stopping its kernel) once the run has left it.
    with anyio.fail_after(10):
        while result.notebook_id in await _list(daemon):
            await anyio.sleep(0.05)
    # keep_open leaves it (and its kernel) to be inspected.
    kept = await execute_notebook_async(
        HELLO, short_tmp / "kept.ipynb", socket=daemon.paths.socket, keep_open=True
    )
    assert kept.notebook_id in await _list(daemon)


async def _list(daemon: Daemon) -> list[str]:
    from runtimed.client import AsyncClient

    async with await AsyncClient.connect(daemon.paths.socket) as client:
        return [n.notebook_id for n in await client.list_notebooks()]


@pytest.mark.anyio
async def test_rerun_same_output_and_log_output(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("v = 'one'", "parameters"),
            # flush=True: ipykernel buffers stdout and stderr separately and flushes each on
            # its own 0.2 s timer (a timer armed by an earlier cell can fire mid-cell), so
            # without it stderr can reach IOPub first, or split around the stdout line.
            code(
                "print('value', v, flush=True)\n"
                "import sys\nprint('to stderr', file=sys.stderr)\nv * 2"
            ),
        ],
    )
    out = short_tmp / "out.ipynb"
    for value in ("first", "second"):
        status, _, err = await runt(
            daemon, "run", src, out, "-p", "v", value, "--log-output", "--no-autostart"
        )
        assert status == 0, err
        assert f"value {value}\n" in err
        assert "to stderr\n" in err
        assert f"'{value * 2}'" in err
        assert "Executing Cell 3---" in err
        assert load(out)["cells"][2]["outputs"][0]["text"] == f"value {value}\n"


@pytest.mark.anyio
async def test_usage_and_input_errors_exit_2(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("1")])
    status, _, err = await runt(daemon, "run", short_tmp / "missing.ipynb", short_tmp / "o.ipynb")
    assert status == 2
    assert "no such notebook file" in err
    assert "Traceback" not in err
    status, _, err = await runt(daemon, "run", src, short_tmp / "o.ipynb", "-y", "a: [1")
    assert status == 2
    assert "YAML" in err
    assert "Traceback" not in err
    status, _, err = await runt(daemon, "run", src)
    assert status == 2
    assert "INPUT and OUTPUT" in err
    (short_tmp / "bad.ipynb").write_text("{not json")
    status, _, err = await runt(daemon, "run", short_tmp / "bad.ipynb", short_tmp / "o.ipynb")
    assert status == 2
    assert "invalid JSON" in err
    assert "Traceback" not in err


@pytest.mark.anyio
async def test_cancelling_a_run_interrupts_the_cell_and_saves(
    daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [code("print('first')"), code("import time\ntime.sleep(30)"), code("print('never')")],
    )
    out = short_tmp / "out.ipynb"
    with anyio.fail_after(20), anyio.move_on_after(3) as scope:
        await execute_notebook_async(src, out, socket=daemon.paths.socket, progress_bar=False)
    assert scope.cancelled_caught
    nb = load(out)
    assert statuses(nb) == ["marker", "completed", "marker", "failed", "pending"]
    assert nb["cells"][3]["outputs"][-1]["ename"] == "KeyboardInterrupt"
    assert nb["cells"][1]["outputs"][0]["text"] == "first\n"


@pytest.mark.anyio
async def test_a_watcher_sees_papermill_records_while_the_run_goes_on(
    daemon: Daemon, short_tmp: Path
) -> None:
    from runtimed.client import AsyncClient

    gate = short_tmp / "go-on"
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("x = 1"),
            code(wait_for_file_code(gate)),
        ],
    )
    out = short_tmp / "out.ipynb"
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: execute_notebook_async(src, out, socket=daemon.paths.socket, progress_bar=False)
        )
        async with await AsyncClient.connect(daemon.paths.socket) as watcher:
            with anyio.fail_after(30):
                while not out.exists():
                    await anyio.sleep(0.02)
                nb = await watcher.open(out)

                def first_cell_completed() -> bool:
                    ids = nb.cell_ids()
                    return bool(ids) and (
                        nb.cell(ids[0]).metadata.get("papermill", {}).get("status") == "completed"
                    )

                # The first cell's record arrives while the second cell still runs.
                await watcher.wait_until(first_cell_completed)
                assert nb.runtime.running() is not None
            await nb.close()
        gate.touch()
    assert statuses(load(out)) == ["completed", "completed"]
