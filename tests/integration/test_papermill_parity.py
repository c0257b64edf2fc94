"""Issue 13: a papermill user switches to ``runt run`` without surprises.

Each test runs the real ``runt`` command (or the Python API) against a real daemon and a
real ipykernel, and where papermill defines the behaviour, runs papermill on the same
notebook and compares.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import nbformat
import papermill
import pytest
from anyio.streams.text import TextReceiveStream

from runtimed.automation.report import ERROR_MARKER_TAG, NotebookExecutionError
from runtimed.automation.run import execute_notebook, execute_notebook_async
from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.glue import read_scraps
from runtimed.paths import RuntimedPaths

from .conftest import wait_for_file_code, write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "papermill"


def code(source: str, *tags: str) -> dict[str, Any]:
    return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}}


def load(path: Path) -> dict[str, Any]:
    nb: dict[str, Any] = nbformat.reads(path.read_text(), as_version=4)
    return nb


def text_of(nb: dict[str, Any], index: int) -> str:
    return "".join(
        o.get("text", "") for o in nb["cells"][index]["outputs"] if o["output_type"] == "stream"
    )


async def runt(
    socket: Path,
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> tuple[int, str, str]:
    """``python -m runtimed.cli --socket S ...`` as a user runs it."""
    done = await anyio.run_process(
        [sys.executable, "-m", "runtimed.cli", "--socket", str(socket), *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=cwd,
        input=stdin,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def papermill_cli(*args: str | Path, env: dict[str, str] | None = None) -> int:
    """papermill's own command line, in a subprocess (its exit status is what we compare)."""
    done = subprocess.run(
        [sys.executable, "-m", "papermill", *map(str, args), "--no-progress-bar"],
        env={**os.environ, **(env or {})},
        capture_output=True,
        check=False,
        timeout=120,
    )
    return done.returncode


# ---------------------------------------------------------------- 1. environment


async def test_the_run_kernel_gets_the_callers_environment(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(
        short_tmp / "env.ipynb", [code("import os\nprint(os.environ.get('MYVAR', '<unset>'))")]
    )
    out, theirs = short_tmp / "out.ipynb", short_tmp / "theirs.ipynb"
    status, _, err = await runt(
        daemon.paths.socket, "run", src, out, "--no-autostart", env={"MYVAR": "hello"}
    )
    assert status == 0, err
    assert text_of(load(out), 0) == "hello\n"
    assert papermill_cli(src, theirs, env={"MYVAR": "hello"}) == 0
    assert text_of(load(theirs), 0) == "hello\n"
    # Not sticky: the next caller's value is the next run's.
    status, _, err = await runt(
        daemon.paths.socket, "run", src, out, "--no-autostart", env={"MYVAR": "bye"}
    )
    assert status == 0, err
    assert text_of(load(out), 0) == "bye\n"
    # Opt out: the daemon's environment only (the in-process daemon has no MYVAR).
    assert "MYVAR" not in os.environ
    status, _, err = await runt(
        daemon.paths.socket,
        "run",
        src,
        out,
        "--no-autostart",
        "--no-inherit-env",
        env={"MYVAR": "hello"},
    )
    assert status == 0, err
    assert text_of(load(out), 0) == "<unset>\n"


async def test_python_api_env_and_interactive_kernels_unaffected(
    client: AsyncClient, daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(
        short_tmp / "env.ipynb", [code("import os\nprint(os.environ.get('RUN_ONLY', '<unset>'))")]
    )
    result = await execute_notebook_async(
        src,
        short_tmp / "out.ipynb",
        env={"RUN_ONLY": "yes"},
        client=client,
        progress_bar=False,
    )
    assert result.ok
    assert text_of(load(short_tmp / "out.ipynb"), 0) == "yes\n"
    # A notebook opened for interactive use gets the daemon's environment.
    nb = await client.open(src)
    executed = await nb.execute("cell0", timeout=60)
    assert executed.outputs[0]["text"] == "<unset>\n"


# ---------------------------------------------------------------- 2. cwd metadata


async def test_no_machine_specific_metadata_and_stale_cwd_warns(
    daemon: Daemon, short_tmp: Path
) -> None:
    data = short_tmp / "data"
    data.mkdir()
    src = write_notebook(
        short_tmp / "in.ipynb",
        [code("import os\nprint(os.getcwd())")],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "runtimed": {"cwd": "/home/someone-else/project"},
        },
    )
    out = short_tmp / "out.ipynb"
    status, _, err = await runt(daemon.paths.socket, "run", src, out, "--no-autostart", cwd=data)
    assert status == 0, err
    assert "metadata.runtimed.cwd '/home/someone-else/project'" in err
    nb = load(out)
    assert "cwd" not in nb["metadata"].get("runtimed", {})
    assert text_of(nb, 0) == f"{data}\n"  # the caller's folder, as papermill


# ---------------------------------------------------------------- 3. language_info, -k


async def test_language_info_and_kernelspec_match_papermill(
    daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [code("1 + 1")],
        metadata={"kernelspec": {"name": "other", "display_name": "Other"}},
    )
    ours, theirs = short_tmp / "ours.ipynb", short_tmp / "theirs.ipynb"
    status, _, err = await runt(
        daemon.paths.socket, "run", src, ours, "-k", "python3", "--no-autostart"
    )
    assert status == 0, err
    assert papermill_cli(src, theirs, "-k", "python3") == 0
    a, b = load(ours)["metadata"], load(theirs)["metadata"]
    # papermill leaves the notebook's kernelspec (naming a kernel that did not run); ours
    # names the kernel that ran, display name and language as the daemon has it installed.
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        spec = next(r for r in await client.list_runtimes() if r.name == "python3")
    assert a["kernelspec"] == {
        "name": "python3",
        "display_name": spec.display_name,
        "language": spec.language,
    }
    assert b["kernelspec"]["name"] == "other"
    assert a["language_info"]["name"] == b["language_info"]["name"] == "python"
    assert a["language_info"]["file_extension"] == b["language_info"]["file_extension"]
    assert set(a["language_info"]) == set(b["language_info"])


async def test_interactive_save_writes_language_info(client: AsyncClient, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "nb.ipynb",
        [code("1 + 1")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    nb = await client.open(path)
    assert (await nb.execute("cell0", timeout=60)).ok
    await nb.save()
    info = load(path)["metadata"]["language_info"]
    assert info["name"] == "python"
    assert info["file_extension"] == ".py"


# ---------------------------------------------------------------- 4. timing


async def test_per_cell_timing_metadata_like_papermill(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [{"cell_type": "markdown", "source": "# t"}, code("x = 1"), code("print(x)")],
    )
    ours, theirs = short_tmp / "ours.ipynb", short_tmp / "theirs.ipynb"
    status, _, err = await runt(daemon.paths.socket, "run", src, ours, "--no-autostart")
    assert status == 0, err
    assert papermill_cli(src, theirs) == 0
    a, b = load(ours), load(theirs)
    for mine, peer in zip(a["cells"], b["cells"], strict=True):
        assert set(mine["metadata"].get("execution", {})) == set(
            peer["metadata"].get("execution", {})
        )
        record = mine["metadata"]["papermill"]
        assert set(record) == set(peer["metadata"]["papermill"])
        assert record["status"] == peer["metadata"]["papermill"]["status"] == "completed"
    timing = a["cells"][1]["metadata"]["execution"]
    assert timing["iopub.execute_input"] <= timing["shell.execute_reply"]


# ---------------------------------------------------------------- 5. timeouts


async def test_timeout_keeps_only_kernel_outputs_and_fails_raises_exception_cells(
    daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("print('start')"),
            code("import time\ntime.sleep(30)", "raises-exception"),
            code("print('never')"),
        ],
    )
    out = short_tmp / "out.ipynb"
    with anyio.fail_after(60):
        status, stdout, err = await runt(
            daemon.paths.socket,
            "run",
            src,
            out,
            "--execution-timeout",
            "2",
            "--no-autostart",
            "--json",
        )
    assert status == 1, err  # papermill exits 1 here too
    nb = load(out)
    errors = [o["ename"] for o in nb["cells"][3]["outputs"] if o["output_type"] == "error"]
    assert errors == ["KeyboardInterrupt"]
    assert "timed out" in err
    assert nb["cells"][4]["metadata"]["papermill"]["status"] == "pending"
    assert not nb["cells"][4]["outputs"]
    result = json.loads(stdout)
    assert result["failed_cell"]["status"] == "timeout"
    assert result["failed_cell"]["ename"] == "ExecutionTimeout"
    assert ERROR_MARKER_TAG in nb["cells"][0]["metadata"]["tags"]
    marker = "".join(nb["cells"][0]["source"])
    assert "timed out after 2 s" in marker  # papermill's marker, plus why it stopped


# ---------------------------------------------------------------- 6. Ctrl-C twice


async def test_two_quick_ctrl_c_still_save_what_ran(
    daemon_subprocess: tuple[subprocess.Popen[bytes], RuntimedPaths], short_tmp: Path
) -> None:
    _, paths = daemon_subprocess
    gate = short_tmp / "running"
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("print('first')"),
            code(f"open({str(gate)!r}, 'w').close()\nimport time\ntime.sleep(30)"),
            code("print('never')"),
        ],
    )
    out = short_tmp / "out.ipynb"
    proc = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "runtimed.cli",
            "--socket",
            str(paths.socket),
            "run",
            str(src),
            str(out),
            "--no-autostart",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    said = b""
    try:
        with anyio.fail_after(60):
            while not gate.exists():  # readiness: the cell runs
                await anyio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        await anyio.sleep(0.02)  # the scenario: a second Ctrl-C 20 ms after the first
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        with anyio.fail_after(20):  # far less than the 30 s the cell sleeps
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    said += await proc.stderr.receive()
            status = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.aclose()
    assert status == 130, said.decode()
    assert b"Traceback" not in said
    nb = load(out)
    assert text_of(nb, 1) == "first\n"  # index 1: after papermill's marker cell
    assert nb["cells"][3]["metadata"]["papermill"]["status"] == "failed"
    assert nb["cells"][3]["outputs"][-1]["ename"] == "KeyboardInterrupt"


# ---------------------------------------------------------------- 7. daemon killed


@pytest.fixture
def daemon_subprocess(short_tmp: Path) -> Any:
    from .conftest import spawn_test_daemon

    # Its kernels are not kept for adoption: they go with the daemon (tests/integration/
    # test_adopt*.py cover adoption).
    env = {"RUNTIMED_POOL_SIZE": "0", "RUNTIMED_KERNEL_ORPHAN_TIMEOUT": "0"}
    proc, paths = spawn_test_daemon(short_tmp, "k", env=env)
    try:
        yield proc, paths
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_daemon_killed_during_a_run_is_one_screen(
    daemon_subprocess: tuple[subprocess.Popen[bytes], RuntimedPaths], short_tmp: Path
) -> None:
    proc, paths = daemon_subprocess
    go, running = short_tmp / "go", short_tmp / "running"
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code("print('first')"),
            code(f"{wait_for_file_code(go)}open({str(running)!r}, 'w').close()\ntime.sleep(30)"),
        ],
    )
    out = short_tmp / "out.ipynb"
    argv = [sys.executable, "-m", "runtimed.cli", "--socket", str(paths.socket), "run"]
    argv += [str(src), str(out), "--no-autostart", "--log-output"]
    lines: list[str] = []
    with anyio.fail_after(120):
        async with await anyio.open_process(
            argv, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL
        ) as run:
            assert run.stderr is not None
            async for chunk in TextReceiveStream(run.stderr):
                lines.append(chunk)
                # The kill comes once `runt` has printed the first cell's end (it has that
                # cell's result), while the second runs: not in the moment between the two,
                # when the first one's result may still be on its way.
                if "Ending Cell 1-" in "".join(lines) and not go.exists():
                    go.touch()
                    while not running.exists():
                        await anyio.sleep(0.02)
                    proc.kill()
            status = await run.wait()
    err = "".join(lines)
    assert status == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) < 25, err
    assert "daemon" in err
    nb = load(out)
    assert ERROR_MARKER_TAG in nb["cells"][0]["metadata"]["tags"]
    assert text_of(nb, 1) == "first\n"


# ---------------------------------------------------------------- 8. tolerated invalid input


async def test_nbclient_output_notebook_runs_with_a_warning_like_papermill(
    daemon: Daemon, short_tmp: Path
) -> None:
    # nbclient's Output.ipynb is invalid (its kernelspec has no name). Its metadata, with one
    # plain cell: papermill (nbclient) running the widget cells themselves can hang on
    # ipykernel 7.4 once ipywidgets is installed (nbclient sends each Output widget's outputs
    # back to the kernel; seen on a loaded machine, the papermill peer timed out after 120 s),
    # and ours are checked in tests/integration/test_widgets.py.
    fixture = json.loads((FIXTURES / "Output.ipynb").read_text())
    fixture["cells"] = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
         "source": "print('ran')"}
    ]  # fmt: skip
    src = short_tmp / "Output.ipynb"
    src.write_text(json.dumps(fixture))
    ours, theirs = short_tmp / "ours.ipynb", short_tmp / "theirs.ipynb"
    status, _, err = await runt(
        daemon.paths.socket, "run", src, ours, "-k", "python3", "--no-autostart"
    )
    expected = papermill_cli(src, theirs, "-k", "python3")
    assert status == expected == 0, err
    assert "'name' is a required property" in err
    assert load(ours)["metadata"]["kernelspec"]["name"] == "python3"
    assert len(load(ours)["cells"]) == len(load(theirs)["cells"])
    # Not a notebook at all: still a clear exit 2.
    bad = short_tmp / "bad.ipynb"
    bad.write_text("{not json")
    status, _, err = await runt(daemon.paths.socket, "run", bad, ours, "--no-autostart")
    assert status == 2
    assert "invalid JSON" in err


# ---------------------------------------------------------------- 9. autosave in a long cell


async def test_autosave_happens_while_a_long_cell_runs(daemon: Daemon, short_tmp: Path) -> None:
    out = short_tmp / "out.ipynb"
    # The cell waits until its own first output is in the file on disk: only an autosave
    # during the cell can put it there.
    # The marker is built at run time, so the cell's source (in the file from the start)
    # does not contain it.
    waiting = (
        "import time\n"
        "marker = chr(77) * 3\n"
        "print(marker, flush=True)\n"
        "deadline = time.monotonic() + 30\n"
        f"while time.monotonic() < deadline and marker not in open({str(out)!r}).read():\n"
        "    time.sleep(0.05)\n"
        f"print('saw' if marker in open({str(out)!r}).read() else 'not saved')\n"
    )
    src = write_notebook(short_tmp / "in.ipynb", [code(waiting)])
    status, _, err = await runt(
        daemon.paths.socket, "run", src, out, "--autosave-cell-every", "0.5", "--no-autostart"
    )
    assert status == 0, err
    assert text_of(load(out), 0).endswith("saw\n")


# ---------------------------------------------------------------- 10. '-' and fsspec


async def test_stdin_to_stdout(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("print('piped')")])
    status, stdout, err = await runt(
        daemon.paths.socket, "run", "-", "-", "--no-autostart", stdin=src.read_bytes()
    )
    assert status == 0, err
    nb = nbformat.reads(stdout, as_version=4)
    assert nb.cells[0].outputs[0]["text"] == "piped\n"
    assert nb.metadata.papermill["input_path"] == "-"
    assert nb.metadata.papermill["output_path"] == "-"
    assert not (Path.cwd() / "-").exists()


async def test_fsspec_urls_and_a_missing_backend(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    import fsspec

    src = write_notebook(short_tmp / "in.ipynb", [code("print('remote')")])
    with fsspec.open("memory://bucket/in.ipynb", "wb") as f:
        f.write(src.read_bytes())
    result = await execute_notebook_async(
        "memory://bucket/in.ipynb", "memory://bucket/out.ipynb", client=client, progress_bar=False
    )
    assert result.ok
    with fsspec.open("memory://bucket/out.ipynb", "rb") as f:
        nb = nbformat.reads(f.read().decode(), as_version=4)
    assert nb.cells[0].outputs[0]["text"] == "remote\n"
    assert nb.metadata.papermill["output_path"] == "memory://bucket/out.ipynb"
    # file:// through the CLI.
    out = short_tmp / "via-url.ipynb"
    status, _, err = await runt(
        daemon.paths.socket, "run", f"file://{src}", f"file://{out}", "--no-autostart"
    )
    assert status == 0, err
    assert text_of(load(out), 0) == "remote\n"
    # s3 without s3fs: a clear error naming what is missing, nothing written locally.
    status, _, err = await runt(
        daemon.paths.socket, "run", src, "s3://bucket/x.ipynb", "--no-autostart", cwd=short_tmp
    )
    assert status == 2
    assert "s3fs" in err
    assert "Traceback" not in err
    assert not (short_tmp / "s3:").exists()


# ---------------------------------------------------------------- 11. flags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--execution-timeout", "-1"], "--execution-timeout"),
        (["--start-timeout", "0"], "--start-timeout"),
        (["--autosave-cell-every", "-2"], "--autosave-cell-every"),
        (["--engine", "dask"], "engine 'dask' is not available"),
        (["-l", "R"], "language 'R' is not supported"),
        (["--log-level", "LOUD"], "argument --log-level: invalid choice: 'LOUD'"),
    ],
)
async def test_bad_flag_values_exit_2(
    daemon: Daemon, short_tmp: Path, flags: list[str], message: str
) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("1")])
    status, _, err = await runt(
        daemon.paths.socket, "run", src, short_tmp / "o.ipynb", *flags, "--no-autostart"
    )
    assert status == 2, err
    assert message in err
    assert "Traceback" not in err


async def test_jobs_zero_and_papermill_flags_accepted(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("print('x')")])
    status, _, err = await runt(
        daemon.paths.socket, "run", src, "--output-dir", short_tmp / "o", "--jobs", "0"
    )
    assert status == 2
    assert "--jobs" in err
    out, log = short_tmp / "o.ipynb", short_tmp / "stdout.txt"
    status, _, err = await runt(
        daemon.paths.socket,
        "run",
        src,
        out,
        "--engine",
        "nbclient",
        "-l",
        "python",
        "--log-level",
        "DEBUG",
        "--stdout-file",
        log,
        "--no-request-save-on-cell-execute",
        "--no-autostart",
    )
    assert status == 0, err
    assert log.read_text() == "x\n"


# ---------------------------------------------------------------- 12. execute_notebook


async def test_execute_notebook_is_papermills(daemon: Daemon, short_tmp: Path) -> None:
    ours_params = set(inspect.signature(execute_notebook).parameters)
    theirs_params = set(inspect.signature(papermill.execute_notebook).parameters)
    assert theirs_params - {"engine_kwargs"} <= ours_params
    assert "options" not in ours_params
    src = write_notebook(
        short_tmp / "in.ipynb",
        [code("x = 1"), code("print('out')"), code("raise ValueError('boom')"), code("2")],
    )

    def ours() -> NotebookExecutionError:
        with pytest.raises(NotebookExecutionError) as caught:
            execute_notebook(
                src,
                short_tmp / "ours.ipynb",
                progress_bar=False,
                socket=daemon.paths.socket,
                autostart=False,
            )
        return caught.value

    def theirs() -> papermill.PapermillExecutionError:
        with pytest.raises(papermill.PapermillExecutionError) as caught:
            papermill.execute_notebook(
                str(src), str(short_tmp / "theirs.ipynb"), progress_bar=False
            )
        return caught.value

    a = await anyio.to_thread.run_sync(ours)
    b = await anyio.to_thread.run_sync(theirs)
    for name in ("cell_index", "exec_count", "source", "ename", "evalue"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.traceback
    assert b.traceback
    assert a.result.failed_cell is not None

    def ok_run() -> Any:
        return execute_notebook(
            src,
            short_tmp / "ok.ipynb",
            progress_bar=False,
            socket=daemon.paths.socket,
            autostart=False,
            raise_on_error=False,
        )

    nb = await anyio.to_thread.run_sync(ok_run)
    assert isinstance(nb, nbformat.NotebookNode)
    assert nb.result.status == "failed"
    assert "result" not in nb  # an attribute, not a notebook key
    assert nb.cells[2].outputs[0]["text"] == "out\n"  # after the marker cell


# ---------------------------------------------------------------- 13. scraps, blocking stdin


async def test_read_scraps_takes_a_path(client: AsyncClient, short_tmp: Path) -> None:
    src = write_notebook(
        short_tmp / "in.ipynb",
        [
            code(
                f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
                "from runtimed import glue\nglue('n', 3)"
            )
        ],
    )
    result = await execute_notebook_async(
        src, short_tmp / "out.ipynb", client=client, progress_bar=False
    )
    assert result.ok
    # read_scraps reads the file: a worker thread (this test shares the daemon's event loop).
    from_path = await anyio.to_thread.run_sync(read_scraps, short_tmp / "out.ipynb")
    assert from_path == {"n": 3} == read_scraps(load(short_tmp / "out.ipynb"))


async def test_blocking_client_answers_input(daemon: Daemon, short_tmp: Path) -> None:
    from runtimed.client import Client

    path = write_notebook(short_tmp / "ask.ipynb", [code("print('got', input('name? '))")])

    def blocking() -> Any:
        with Client.connect(daemon.paths.socket) as client:
            nb = client.open(path)
            return nb.execute(
                "cell0", timeout=60, allow_stdin=True, on_input=lambda prompt, _pw: "Ada"
            )

    result = await anyio.to_thread.run_sync(blocking)
    assert result.ok, result
    assert "got Ada\n" in "".join(o.get("text", "") for o in result.outputs)


# ---------------------------------------------------------------- 16. runt's other commands


async def test_other_commands_say_runt_message_and_exit_2(daemon: Daemon, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "nb.ipynb",
        [{"cell_type": "markdown", "source": "# md"}, code("print('hi')")],
    )
    sock = daemon.paths.socket
    cases = [
        ("exec", path, "--cell", "nope"),
        ("exec", path, "--cell", "cell0"),  # a markdown cell
        ("exec", short_tmp / "missing.ipynb", "--cell", "cell1"),
        ("run-all", short_tmp / "missing.ipynb"),
        ("save", short_tmp / "missing.ipynb"),
        ("interrupt", short_tmp / "missing.ipynb"),
        ("restart", short_tmp / "missing.ipynb"),
        ("exec", path, "--cell", "cell1", "--timeout", "-3"),
        ("gc", "--grace", "-1"),
    ]
    for args in cases:
        status, _, err = await runt(sock, *args)
        assert status == 2, (args, err)
        assert "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) <= 3, (args, err)
        assert err.startswith("runt: ") or "error:" in err, (args, err)
    status, out, err = await runt(sock, "exec", path, "--cell", "cell1")
    assert (status, out) == (0, "hi\n"), err


async def test_exec_says_why_a_cell_did_not_run(daemon: Daemon, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "nb.ipynb",
        [code("1")],
        metadata={"kernelspec": {"name": "no-such-kernel", "display_name": "x"}},
    )
    status, _, err = await runt(daemon.paths.socket, "exec", path, "--cell", "cell0")
    assert status == 2, err
    assert "no-such-kernel" in err
    assert "Traceback" not in err


async def test_no_colour_into_pipes_or_with_no_color(daemon: Daemon, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "nb.ipynb", [code("1/0")])
    for env in ({}, {"NO_COLOR": "1"}):
        status, _, err = await runt(daemon.paths.socket, "exec", path, "--cell", "cell0", env=env)
        assert status == 1
        assert "ZeroDivisionError" in err
        assert "\x1b[" not in err


async def test_status_into_a_closed_pipe(daemon: Daemon) -> None:
    cmd = (
        f"{sys.executable} -m runtimed.cli --socket {daemon.paths.socket} daemon status | head -c1"
    )
    done = await anyio.run_process(
        ["bash", "-o", "pipefail", "-c", cmd],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert b"BrokenPipe" not in done.stderr
    assert b"Traceback" not in done.stderr


# ---------------------------------------------------------------- 17. runt cells


async def test_runt_cells_lists_ids_for_exec(daemon: Daemon, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "nb.ipynb",
        [{"cell_type": "markdown", "source": "# Title\nmore"}, code("x = 41\nx + 1")],
    )
    status, out, err = await runt(daemon.paths.socket, "cells", path)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["#", "ID", "TYPE", "IN", "FIRST", "LINE"]
    assert lines[1].split() == ["0", "cell0", "markdown", "#", "Title"]
    assert lines[2].split() == ["1", "cell1", "code", "x", "=", "41"]
    status, out, _ = await runt(daemon.paths.socket, "cells", path, "--json")
    assert json.loads(out)[1]["id"] == "cell1"


# ---------------------------------------------------------------- 18. daemon start


async def test_daemon_start_failure_says_why(short_tmp: Path) -> None:
    bad = short_tmp / "bad.toml"
    bad.write_text("[kernels]\nmax_kernels = 'many'\n")
    status, _, err = await runt(
        short_tmp / "s" / "rt.sock",
        "daemon",
        "start",
        "--home",
        short_tmp / "h",
        "--config",
        bad,
        "--log-level",
        "debug",
    )
    assert status == 2
    assert "max_kernels" in err
    assert "did not start" in err
    # Started on demand (runt run, exec, ...): the same reason, one line.
    src = write_notebook(short_tmp / "in.ipynb", [code("1")])
    status, _, err = await runt(
        short_tmp / "s" / "rt.sock",
        "run",
        src,
        short_tmp / "out.ipynb",
        env={"RUNTIMED_CONFIG": str(bad), "RUNTIMED_HOME": str(short_tmp / "h")},
    )
    assert status == 2, err
    assert "max_kernels" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- 20. client errors


async def test_client_errors_come_out_as_themselves(daemon: Daemon, short_tmp: Path) -> None:
    from runtimed.errors import NotebookNotFound

    with pytest.raises(NotebookNotFound):
        async with await AsyncClient.connect(daemon.paths.socket) as client:
            await client.open(short_tmp / "missing.ipynb")


async def test_readme_client_examples_run_as_written(daemon: Daemon, short_tmp: Path) -> None:
    import re

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    examples = [b for b in blocks if "runtimed.client import" in b]
    assert len(examples) == 2
    work = short_tmp / "fresh"
    work.mkdir()
    for source in examples:
        done = await anyio.run_process(
            [sys.executable, "-c", source],
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "RUNTIMED_SOCKET": str(daemon.paths.socket),
            },
            cwd=work,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
    assert (work / "analysis.ipynb").exists()


# ---------------------------------------------------------------- 14. environment builds


async def test_environment_build_progress_is_printed(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(
        short_tmp / "deps.ipynb",
        [code("print(1)")],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "runtimed": {"dependencies": ["this-package-does-not-exist-runtimed"]},
        },
    )
    with anyio.fail_after(240):
        status, _, err = await runt(
            daemon.paths.socket, "run", src, short_tmp / "o.ipynb", "--no-autostart"
        )
    assert status == 1, err
    assert "runt run: building the environment:" in err
    assert "this-package-does-not-exist-runtimed" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- 19. state directory


async def test_reruns_onto_their_own_output_leave_no_stale_documents(
    daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("print('again')")])
    out = short_tmp / "out.ipynb"
    for _ in range(3):
        status, _, err = await runt(daemon.paths.socket, "run", src, out, "--no-autostart")
        assert status == 0, err
    documents = daemon.paths.home / "documents"
    assert list(documents.glob("*.stale.automerge")) == []
    assert text_of(load(out), 0) == "again\n"


async def test_config_show_says_when_the_daemon_differs_from_the_file(
    daemon: Daemon, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = short_tmp / "config.toml"
    config.write_text("[kernels]\nmax_kernels = 7\n")
    monkeypatch.setenv("RUNTIMED_CONFIG", str(config))  # read by the daemon and by runt
    status, out, err = await runt(daemon.paths.socket, "config", "show")
    assert status == 0, err
    assert "differs from the file" in out
    assert "kernels.max_kernels: daemon 16, file 7" in out
    status, out, _ = await runt(daemon.paths.socket, "config", "show", "--json")
    assert {"key": "kernels.max_kernels", "daemon": 16, "file": 7} in json.loads(out)[
        "differs_from_file"
    ]


async def test_exec_timeout_is_a_message(daemon: Daemon, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "slow.ipynb", [code("import time\ntime.sleep(20)")])
    status, _, err = await runt(
        daemon.paths.socket, "exec", path, "--cell", "cell0", "--timeout", "0.5"
    )
    assert status == 2, err
    assert "did not finish within 0.5 s" in err
    assert "Traceback" not in err
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path)
        await nb.interrupt()


async def test_execute_notebook_returns_a_remote_output(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code("print('there')")])

    def blocking() -> Any:
        return execute_notebook(
            src,
            "memory://returned/out.ipynb",
            progress_bar=False,
            socket=daemon.paths.socket,
            autostart=False,
        )

    nb = await anyio.to_thread.run_sync(blocking)
    assert nb.result.ok
    assert nb.cells[0].outputs[0]["text"] == "there\n"
