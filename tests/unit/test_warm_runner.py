"""The warm runner's messages and its decisions (runtimed.cli.runner), and the daemon's
keeping of its process (runtimed.daemon.runner) with real processes."""

from __future__ import annotations

import os
import socket
import struct
import sys
from pathlib import Path

import anyio
import pytest

import runtimed
from runtimed.cli import runner
from runtimed.daemon import runner as daemon_runner
from runtimed.daemon.runner import WarmRunner


def test_a_message_and_its_descriptors_arrive_whole() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    with a, b:
        runner.send(a, {"argv": ["run", "x" * 100_000]}, fds=(w,))
        message, fds = runner.receive(b, max_fds=3)
        assert message == {"argv": ["run", "x" * 100_000]}
        assert len(fds) == 1
        os.write(fds[0], b"through")  # the same pipe, another descriptor
        assert os.read(r, 7) == b"through"
        for fd in (r, w, *fds):
            os.close(fd)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (struct.pack(">I", 64 * 1024 * 1024), "at most"),
        (struct.pack(">I", 5) + b"[1,2]", "JSON object"),
        (struct.pack(">I", 3) + b"{{{", "Expecting"),
    ],
)
def test_garbage_is_refused_with_a_reason(data: bytes, problem: str) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        with pytest.raises(ValueError, match=problem):
            runner.receive(b)


def test_a_peer_that_closes_mid_message_is_none() -> None:
    a, b = socket.socketpair()
    with b:
        a.sendall(struct.pack(">I", 100) + b'{"a":')
        a.close()
        assert runner.receive(b) == (None, [])


def _request(**changes: object) -> dict[str, object]:
    request: dict[str, object] = {
        "protocol": runner.PROTOCOL,
        "argv": ["runt", "run", "a", "b"],
        "env": {},
        "executable": sys.executable,
        "package": runtimed.__file__,
        "path": ["/somewhere", *sys.path],
    }
    request.update(changes)
    return request


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, ""),
        ({"protocol": 0}, "another runner protocol"),
        ({"executable": "/usr/bin/python9"}, "another interpreter"),
        ({"package": "/elsewhere/runtimed/__init__.py"}, "another runtimed package"),
        ({"path": ["/somewhere", "/extra", *sys.path]}, "another import path"),
        ({"argv": "run a b"}, "a malformed request"),
    ],
)
def test_a_runner_runs_only_what_would_run_the_same(
    changes: dict[str, object], reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "_threads", lambda: 1)  # pytest's process has threads
    snapshot = runner._module_files([runtimed.__file__])
    assert runner._refusal(_request(**changes), [0, 1, 2], snapshot) == (reason, False)


def test_a_runner_whose_code_changed_is_stale(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text("x = 1\n")
    snapshot = runner._module_files([str(module)])
    module.write_text("x = 22\n")  # another size (and mtime)
    assert runner._refusal(_request(), [0, 1, 2], snapshot) == (
        "the runner's code changed on disk",
        True,
    )


def test_a_runner_with_threads_does_not_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_threads", lambda: 2)
    assert runner._refusal(_request(), [0, 1, 2], {}) == (
        "the runner is not single-threaded",
        False,
    )


def test_missing_streams_are_declined() -> None:
    assert runner._refusal(_request(), [0, 1], {})[0] == "the standard streams did not arrive"


@pytest.mark.parametrize(("value", "off"), [("0", True), ("off", True), ("1", False), ("", False)])
def test_the_caller_can_turn_the_runner_off(value: str, off: bool) -> None:
    assert runner.disabled({runner.DISABLE_ENV: value}) is off


def test_the_daemon_knows_the_runners_stale_status() -> None:
    assert daemon_runner.STALE_EXIT == runner.STALE_EXIT


@pytest.mark.anyio
async def test_a_stale_runner_is_replaced_and_a_failing_one_given_up(tmp_path: Path) -> None:
    count = tmp_path / "count"
    # Exits 75 (stale) the first time, then 3 (a failure) every time.
    script = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(count)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        f"sys.exit({runner.STALE_EXIT} if n == 0 else 3)\n"
    )
    keeper = WarmRunner(tmp_path / "rt.sock", delay=0.0)
    keeper.command = [sys.executable, "-c", script]
    keeper.retry_pause = 0.0
    with anyio.fail_after(30):
        await keeper.run()
    assert keeper.starts == 1 + daemon_runner._MAX_FAILURES
    assert count.read_text() == str(keeper.starts)


@pytest.mark.anyio
async def test_a_cancelled_keeper_stops_its_runner(tmp_path: Path) -> None:
    keeper = WarmRunner(tmp_path / "rt.sock", delay=0.0)
    # Like the runner: ends when its standard input closes.
    keeper.command = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        with anyio.fail_after(30):
            while keeper.process is None:
                await anyio.sleep(0.01)
        process = keeper.process
        tg.cancel_scope.cancel()
    assert process.returncode == 0
