"""The daemon as a process: one per socket, owner-only socket, signals, and the runt CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from protocol.framing import PROTOCOL_VERSION
from runtimed import __version__
from runtimed.client import Client
from runtimed.paths import RuntimedPaths

from .conftest import wait_for_socket, write_notebook

ROOT = Path(__file__).resolve().parents[2]
DaemonProcess = tuple[subprocess.Popen[bytes], RuntimedPaths]


def env_for(paths: RuntimedPaths | None = None) -> dict[str, str]:
    # No kernel pool: the daemons these tests start run no code, so start no kernel.
    env = dict(os.environ, PYTHONPATH=str(ROOT), RUNTIMED_POOL_SIZE="0")
    env.pop("RUNTIMED_SOCKET", None)
    env.pop("RUNTIMED_HOME", None)
    if paths is not None:
        env["RUNTIMED_SOCKET"] = str(paths.socket)
        env["RUNTIMED_HOME"] = str(paths.home)
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtimed.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def ping(paths: RuntimedPaths) -> None:
    with Client.connect(paths.socket) as client:
        client.ping()


# ---------------------------------------------------------------- one per socket


def test_a_second_daemon_on_the_same_socket_exits_naming_the_running_pid(
    daemon_process: DaemonProcess, short_tmp: Path
) -> None:
    proc, paths = daemon_process
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtimed.daemon.main",
            "--socket",
            str(paths.socket),
            "--home",
            str(short_tmp / "other-home"),
        ],
        env=env_for(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode != 0
    assert f"already running (pid {proc.pid})" in second.stderr
    assert str(paths.socket) in second.stderr
    # The first daemon is untouched: same socket file, still serving.
    assert proc.poll() is None
    assert paths.socket.exists()
    ping(paths)


def test_socket_is_owner_only(daemon_process: DaemonProcess) -> None:
    _, paths = daemon_process
    assert paths.socket.stat().st_mode & 0o777 == 0o600
    assert paths.socket.parent.stat().st_mode & 0o777 == 0o700
    assert paths.socket.stat().st_uid == os.getuid()


def test_a_stale_socket_file_from_a_dead_daemon_does_not_block_a_start(
    short_tmp: Path,
) -> None:
    paths = RuntimedPaths(socket=short_tmp / "s" / "rt.sock", home=short_tmp / "h")
    paths.socket.parent.mkdir(mode=0o700)
    paths.socket.write_bytes(b"")  # left behind by a crash: no process holds the lock
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtimed.daemon.main",
            "--socket",
            str(paths.socket),
            "--home",
            str(paths.home),
        ],
        env=env_for(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_socket(paths.socket, proc)
        ping(paths)
    finally:
        assert stop(proc) == 0


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_zero_and_removes_the_socket(
    daemon_process: DaemonProcess, signum: int
) -> None:
    proc, paths = daemon_process
    ping(paths)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 0
    assert not paths.socket.exists()


def test_sigterm_while_the_pool_kernel_starts_exits_promptly(short_tmp: Path) -> None:
    """With the default kernel pool the daemon starts a kernel as soon as it listens; a stop
    signal arriving while that kernel is being launched must still stop it promptly (the
    race is narrow, so it is tried a few times)."""
    import psutil

    env = dict(env_for(), RUNTIMED_POOL_SIZE="1")
    for attempt in range(6):
        paths = RuntimedPaths(
            socket=short_tmp / f"k{attempt}" / "rt.sock", home=short_tmp / f"khome{attempt}"
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtimed.daemon.main",
                "--socket",
                str(paths.socket),
                "--home",
                str(paths.home),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_socket(paths.socket, proc)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"attempt {attempt}: the daemon was still running 15 s after "
                    "SIGTERM (stopped while its pool kernel was starting)"
                )
            assert code == 0
            assert not paths.socket.exists()
        finally:
            if proc.poll() is None:  # hung: kill it and the kernel it started
                with contextlib.suppress(psutil.NoSuchProcess):
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        child.kill()
                proc.kill()
                proc.wait()


def test_sigterm_checkpoints_open_notebooks(daemon_process: DaemonProcess, short_tmp: Path) -> None:
    proc, paths = daemon_process
    path = write_notebook(short_tmp / "n.ipynb", [{"cell_type": "code", "source": "a = 1"}])
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        nb.set_source("cell0", "a = 'edited before SIGTERM'")
        nb.add_cell("markdown", "# added", cell_id="added")
        nb.close()  # the daemon has the edits; the file does not yet
        assert "edited" not in path.read_text()
    assert stop(proc) == 0
    saved = nbformat.read(path, as_version=4)
    nbformat.validate(saved)
    assert [c.source for c in saved.cells] == ["a = 'edited before SIGTERM'", "# added"]


# ---------------------------------------------------------------- runt daemon ...


def test_runt_daemon_status_json(daemon_process: DaemonProcess, short_tmp: Path) -> None:
    proc, paths = daemon_process
    path = write_notebook(short_tmp / "s.ipynb", [{"cell_type": "code", "source": "1"}])
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        result = run_cli("--socket", str(paths.socket), "daemon", "status", "--json", env=env_for())
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["pid"] == proc.pid
        assert status["version"] == __version__
        assert status["protocol_version"] == PROTOCOL_VERSION
        assert status["socket"] == str(paths.socket)
        assert isinstance(status["uptime_seconds"], float)
        assert status["uptime_seconds"] >= 0
        [info] = status["notebooks"]
        assert info["notebook_id"] == nb.id
        assert info["path"] == str(path.resolve())
        assert info["cells"] == 1
    # RUNTIMED_SOCKET is honoured when --socket is not given.
    again = run_cli("daemon", "status", "--json", env=env_for(paths))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["pid"] == proc.pid


def test_runt_daemon_status_when_none_is_running(short_tmp: Path) -> None:
    socket = short_tmp / "none" / "rt.sock"
    result = run_cli("--socket", str(socket), "daemon", "status", "--json", env=env_for())
    assert result.returncode != 0
    assert json.loads(result.stdout) == {"running": False, "socket": str(socket)}
    human = run_cli("--socket", str(socket), "daemon", "status", env=env_for())
    assert human.returncode != 0
    assert "no runtimed daemon" in human.stderr
    assert "runt daemon start" in human.stderr


def test_runt_daemon_stop_stops_it(daemon_process: DaemonProcess) -> None:
    proc, paths = daemon_process
    result = run_cli("--socket", str(paths.socket), "daemon", "stop", env=env_for())
    assert result.returncode == 0, result.stderr
    assert f"pid {proc.pid}" in result.stdout
    assert "stopped" in result.stdout
    assert proc.wait(timeout=30) == 0
    assert not paths.socket.exists()
    # Nothing left to stop.
    again = run_cli("--socket", str(paths.socket), "daemon", "stop", env=env_for())
    assert again.returncode != 0
    assert "no runtimed daemon" in again.stderr


@contextlib.contextmanager
def started_by_runt(paths: RuntimedPaths) -> Iterator[subprocess.CompletedProcess[str]]:
    """``runt daemon start`` with RUNTIMED_HOME/RUNTIMED_SOCKET in a temp dir; whatever it
    started is stopped afterwards (``runt daemon stop``, then SIGKILL by pid if need be)."""
    result = run_cli("daemon", "start", env=env_for(paths))
    try:
        yield result
    finally:
        stop_any(paths)


def stop_any(paths: RuntimedPaths) -> None:
    """Stop whatever daemon runs on ``paths`` (``runt daemon stop``, then SIGKILL by pid)."""
    env = env_for(paths)
    status = run_cli("daemon", "status", "--json", env=env)
    pid = json.loads(status.stdout).get("pid") if status.returncode == 0 else None
    stopped = run_cli("daemon", "stop", env=env)
    if pid is not None and stopped.returncode != 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_runt_daemon_start_twice_says_already_running(short_tmp: Path) -> None:
    paths = RuntimedPaths(socket=short_tmp / "r" / "rt.sock", home=short_tmp / "rhome")
    with started_by_runt(paths) as first:
        assert first.returncode == 0, first.stderr
        assert "started" in first.stdout
        status = json.loads(run_cli("daemon", "status", "--json", env=env_for(paths)).stdout)
        assert status["home"] == str(paths.home)  # RUNTIMED_HOME honoured
        assert (paths.home / "logs" / "runtimed.log").exists()

        second = run_cli("daemon", "start", env=env_for(paths))
        assert second.returncode != 0
        assert f"already running (pid {status['pid']})" in second.stderr
        ping(paths)  # the first one is still there
    assert not paths.socket.exists()


def test_runt_daemon_start_passes_its_config_and_log_level(short_tmp: Path) -> None:
    # --config (relative: made absolute for the daemon) and --log-level reach the daemon.
    paths = RuntimedPaths(socket=short_tmp / "c" / "rt.sock", home=short_tmp / "chome")
    (short_tmp / "bad.toml").write_text("[envs]\nmax_age_days = 'many'\n")
    env = env_for(paths)
    result = subprocess.run(
        [sys.executable, "-m", "runtimed.cli", "daemon", "start", "--config", "bad.toml"],
        env=env,
        cwd=short_tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "max_age_days" in result.stderr
    assert str(short_tmp / "bad.toml") in result.stderr
    with started_by_runt(paths) as started:
        assert started.returncode == 0, started.stderr
    debug = run_cli("daemon", "start", "--log-level", "DEBUG", env=env)
    try:
        assert debug.returncode == 0, debug.stderr
        pid = json.loads(run_cli("daemon", "status", "--json", env=env).stdout)["pid"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--log-level") + 1] == b"DEBUG"
    finally:
        run_cli("daemon", "stop", env=env)
