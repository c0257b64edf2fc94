"""A first ``runt run`` starts the daemon before its own imports (runtimed.client.spawn):
one daemon, taken over by the connection, its failures explained as before; nothing is
started for a run that needs no daemon."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.client.spawn import start_early, take_early
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook
from .runtime_helpers import code
from .test_daemon_lifecycle import env_for, run_cli, stop_any

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def stopped_afterwards(paths: RuntimedPaths) -> Iterator[None]:
    """Whatever daemon the test started on ``paths`` is stopped at the end."""
    try:
        yield
    finally:
        stop_any(paths)


def _listening_lines(paths: RuntimedPaths) -> list[str]:
    log = paths.home / "logs" / "runtimed.log"
    return [line for line in log.read_text().splitlines() if " listening on " in line]


def test_a_first_runt_run_starts_one_daemon_and_runs_on_it(short_tmp: Path) -> None:
    paths = RuntimedPaths(socket=short_tmp / "r" / "rt.sock", home=short_tmp / "home")
    src = write_notebook(short_tmp / "in.ipynb", [code("print(6 * 7)")])
    out = short_tmp / "out.ipynb"
    with stopped_afterwards(paths):
        done = run_cli("run", "--no-progress-bar", str(src), str(out), env=env_for(paths))
        assert done.returncode == 0, done.stderr
        assert json.loads(out.read_text())["cells"][0]["outputs"][0]["text"] == ["42\n"]
        status = json.loads(run_cli("daemon", "status", "--json", env=env_for(paths)).stdout)
        assert status["running"] is True
        # One daemon started: a second start would have logged its refusal, not listened.
        assert len(_listening_lines(paths)) == 1
        assert "already running" not in (paths.home / "logs" / "runtimed.log").read_text()


def test_the_connection_takes_over_the_daemon_started_early(short_tmp: Path) -> None:
    paths = RuntimedPaths(socket=short_tmp / "t" / "rt.sock", home=short_tmp / "home")
    env = {"RUNTIMED_HOME": str(paths.home), "RUNTIMED_POOL_SIZE": "0"}

    async def connect() -> int:
        async with await AsyncClient.connect(paths.socket, autostart=True) as client:
            return (await client.status()).pid

    with stopped_afterwards(paths), pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        process = start_early(paths.socket)
        assert process is not None
        assert start_early(paths.socket) is None  # started once
        assert anyio.run(connect) == process.pid
        assert take_early(paths.socket) is None  # the connection took it
        assert len(_listening_lines(paths)) == 1
        # A daemon is there now: nothing more is started.
        assert start_early(paths.socket) is None


def test_a_daemon_started_early_that_fails_is_explained(short_tmp: Path) -> None:
    paths = RuntimedPaths(socket=short_tmp / "f" / "rt.sock", home=short_tmp / "home")
    bad = short_tmp / "bad.toml"
    bad.write_text("[envs]\nmax_age_days = 'many'\n")
    src = write_notebook(short_tmp / "in.ipynb", [code("1")])
    env = dict(env_for(paths), RUNTIMED_CONFIG=str(bad))
    with stopped_afterwards(paths):
        done = run_cli("run", str(src), str(short_tmp / "out.ipynb"), env=env)
    assert done.returncode != 0
    assert "the daemon exited with code 1 while starting" in done.stderr
    assert "max_age_days" in done.stderr


def test_a_stale_socket_is_left_to_the_connection(short_tmp: Path) -> None:
    paths = RuntimedPaths(socket=short_tmp / "s" / "rt.sock", home=short_tmp / "home")
    paths.socket.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(paths.socket))  # a socket file nobody listens on (a killed daemon)
    assert start_early(paths.socket) is None
    src = write_notebook(short_tmp / "in.ipynb", [code("print('ran')")])
    out = short_tmp / "out.ipynb"
    with stopped_afterwards(paths):
        done = run_cli("run", "--no-progress-bar", str(src), str(out), env=env_for(paths))
        assert done.returncode == 0, done.stderr
        assert json.loads(out.read_text())["cells"][0]["outputs"][0]["text"] == ["ran\n"]


def _started_early(short_tmp: Path, paths: RuntimedPaths, argv: list[str]) -> str:
    """Run ``runt`` as its script does (``main()``, ``sys.argv``) with ``argv`` and say
    whether it started a daemon early (the process is then killed)."""
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        f"sys.argv = ['runt', '--socket', {str(paths.socket)!r}, *{argv!r}]\n"
        "from runtimed.cli.main import main\n"
        "from runtimed.client.spawn import take_early\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "finally:\n"
        f"    early = take_early(Path({str(paths.socket)!r}))\n"
        "    print('started early' if early else 'none started')\n"
        "    if early:\n"
        "        early.kill()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=dict(env_for(paths), RUNTIMED_NORMAL_EXIT="1"),  # main() returns, no os._exit
        capture_output=True,
        text=True,
        cwd=short_tmp,
        timeout=60,
        check=False,
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr


@pytest.mark.parametrize("extra", [["--prepare-only"], ["--no-autostart"], ["--help"]])
def test_a_run_that_needs_no_daemon_starts_none(short_tmp: Path, extra: list[str]) -> None:
    paths = RuntimedPaths(socket=short_tmp / "n" / "rt.sock", home=short_tmp / "home")
    src = write_notebook(short_tmp / "in.ipynb", [code("1")])
    argv = ["run", *extra, str(src), str(short_tmp / "out.ipynb")]
    with stopped_afterwards(paths):
        assert _started_early(short_tmp, paths, argv) == "none started"
        assert not paths.socket.exists()


def test_an_early_start_is_only_for_the_command_line(short_tmp: Path) -> None:
    # main(argv) called by a program (not the runt script) starts no daemon before parsing
    # (this run then fails on its missing input before it would connect and autostart).
    paths = RuntimedPaths(socket=short_tmp / "m" / "rt.sock", home=short_tmp / "home")
    program = (
        "from pathlib import Path\n"
        "from runtimed.cli.main import main\n"
        "from runtimed.client.spawn import take_early\n"
        f"main(['--socket', {str(paths.socket)!r}, 'run', 'missing.ipynb', 'o.ipynb'])\n"
        f"early = take_early(Path({str(paths.socket)!r}))\n"
        "print('started early' if early else 'none started')\n"
        "if early:\n"
        "    early.kill()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=env_for(paths),
        capture_output=True,
        text=True,
        cwd=short_tmp,
        timeout=60,
        check=False,
    )
    assert "missing.ipynb" in done.stderr, done.stderr
    assert done.stdout.strip() == "none started"
    assert not paths.socket.exists()
