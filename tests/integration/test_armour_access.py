"""No other user gets in: the daemon refuses a socket or state directory it does not own,
one others can write, or a symlink, and never writes its lock through a planted symlink.
Each refusal is a real ``runtimed`` process exiting 1 with a message naming the directory."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.paths import RuntimedPaths

from .conftest import wait_for_socket

ROOT = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="making a directory owned by another user needs root (chown)"
)


def _nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def run_daemon(short_tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``runtimed`` until it exits (a refusal is immediate); returns (rc, stderr)."""
    full_env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        RUNTIMED_CONFIG=str(short_tmp / "no-config.toml"),
        RUNTIMED_HTTP_PORT="-1",
        RUNTIMED_POOL_SIZE="0",
        **(env or {}),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "runtimed.daemon.main", *args],
        env=full_env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stderr.decode()


@pytest.fixture
def started(short_tmp: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons a test starts that should keep running; stopped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@needs_root
def test_the_default_socket_directory_made_by_another_user_is_refused(short_tmp: Path) -> None:
    """The attack of issue 10 §5: another user creates $TMPDIR/runtimed-<uid> first."""
    planted = short_tmp / f"runtimed-{os.getuid()}"
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)
    os.chown(planted, _nobody(), -1)
    env = {"TMPDIR": str(short_tmp), "XDG_RUNTIME_DIR": ""}
    env_home = {"RUNTIMED_HOME": str(short_tmp / "home")}
    rc, err = run_daemon(short_tmp, env={**env, **env_home})
    assert rc == 1, err
    assert f"refusing the socket directory {planted}" in err
    assert "owned by nobody" in err
    assert not (planted / "runtimed.sock").exists()


def test_a_socket_directory_others_can_write_is_refused(short_tmp: Path) -> None:
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    rc, err = run_daemon(short_tmp, "--socket", str(shared / "rt.sock"), "--home", str(short_tmp))
    assert rc == 1, err
    assert f"refusing the socket directory {shared}: mode 0777" in err
    assert "chmod 700" in err
    assert not (shared / "rt.sock").exists()


def test_a_symlinked_socket_directory_is_refused(short_tmp: Path) -> None:
    real = short_tmp / "real"
    real.mkdir(mode=0o700)
    link = short_tmp / "link"
    link.symlink_to(real)
    rc, err = run_daemon(short_tmp, "--socket", str(link / "rt.sock"), "--home", str(short_tmp))
    assert rc == 1, err
    assert f"refusing the socket directory {link}: it is a symlink" in err
    assert not (real / "rt.sock").exists()


@needs_root
def test_a_state_directory_of_another_user_is_refused(short_tmp: Path) -> None:
    home = short_tmp / "home"
    home.mkdir(mode=0o700)
    os.chown(home, _nobody(), -1)
    rc, err = run_daemon(
        short_tmp, "--socket", str(short_tmp / "s" / "rt.sock"), "--home", str(home)
    )
    assert rc == 1, err
    assert f"refusing the state directory {home}" in err
    assert "owned by nobody" in err


def test_a_planted_lock_symlink_is_never_written_through(
    short_tmp: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    run_dir = short_tmp / "run"
    run_dir.mkdir(mode=0o700)
    victim = short_tmp / "victim.txt"
    victim.write_text("precious\n")
    (run_dir / "rt.sock.lock").symlink_to(victim)
    rc, err = run_daemon(short_tmp, "--socket", str(run_dir / "rt.sock"), "--home", str(short_tmp))
    assert rc == 1, err
    assert "refusing the lock file" in err
    assert "symlink" in err
    assert victim.read_text() == "precious\n"


@pytest.mark.anyio
async def test_existing_state_directories_are_tightened_to_0700(short_tmp: Path) -> None:
    paths = RuntimedPaths(socket=short_tmp / "run" / "rt.sock", home=short_tmp / "home")
    for directory in (paths.socket.parent, paths.home, paths.documents, paths.blobs):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # what an older version or the default umask left
    daemon = Daemon(
        paths, config=DaemonConfig(http_port=None, runtimes=RuntimesConfig(pool_size=0))
    )
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        try:
            async with await AsyncClient.connect(paths.socket) as client:
                await client.ping()
        finally:
            daemon.request_stop()
    for directory in (paths.socket.parent, paths.home, paths.documents, paths.blobs, paths.logs):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_private_socket_directory_is_served(
    short_tmp: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """The rules refuse only what is unsafe: a fresh directory of ours works as before."""
    socket_path = short_tmp / "ok" / "rt.sock"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        RUNTIMED_CONFIG=str(short_tmp / "no-config.toml"),
        RUNTIMED_HTTP_PORT="-1",
        RUNTIMED_POOL_SIZE="0",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtimed.daemon.main",
            "--socket",
            str(socket_path),
            "--home",
            str(short_tmp / "h"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(proc)
    wait_for_socket(socket_path, proc)
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((socket_path.parent / "rt.sock.lock").stat().st_mode) == 0o600
