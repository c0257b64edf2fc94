"""What the daemon acknowledged is durable (issue 10 §2): a real daemon process, killed with
SIGKILL (at random moments, or at an injected step of a save or persist) or stopped with
SIGTERM while kernels are busy, and a new daemon started on the same state."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest

from runtimed.client import Client
from runtimed.errors import RuntimedError
from runtimed.paths import RuntimedPaths
from runtimed.storage.documents import CRASH_AFTER_ENV

from .conftest import wait_for_socket, write_notebook

ROOT = Path(__file__).resolve().parents[2]


class DaemonRunner:
    """Starts daemon processes on one socket and home, one after another; stops them all."""

    def __init__(self, base: Path) -> None:
        self.paths = RuntimedPaths(socket=base / "s" / "rt.sock", home=base / "home")
        self._config = base / "no-config.toml"
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, **extra_env: str) -> subprocess.Popen[bytes]:
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            RUNTIMED_CONFIG=str(self._config),
            RUNTIMED_POOL_SIZE="0",
            **extra_env,
        )
        if CRASH_AFTER_ENV not in extra_env:
            env.pop(CRASH_AFTER_ENV, None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtimed.daemon.main",
                "--socket",
                str(self.paths.socket),
                "--home",
                str(self.paths.home),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._procs.append(proc)
        wait_for_socket(self.paths.socket, proc)
        return proc

    def descendants(self, proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            found = psutil.Process(proc.pid).children(recursive=True)
        return found

    def stop_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                for child in self.descendants(proc):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                proc.kill()
            proc.wait(timeout=30)

    @property
    def documents(self) -> Path:
        return self.paths.documents


@pytest.fixture
def runner(short_tmp: Path) -> Iterator[DaemonRunner]:
    daemons = DaemonRunner(short_tmp)
    try:
        yield daemons
    finally:
        daemons.stop_all()


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def set_aside(runner: DaemonRunner) -> list[Path]:
    return sorted(runner.documents.glob("*.stale.automerge"))


def temp_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.glob(".*.tmp"))


def sources(runner: DaemonRunner, path: Path) -> list[str]:
    with Client.connect(runner.paths.socket) as client:
        nb = client.open(path)
        found = [cell.source for cell in nb.cells()]
        nb.close()
    return found


# ---------------------------------------------------------------- flush()


def test_flushed_edits_survive_kill_9(runner: DaemonRunner, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "n.ipynb", [{"cell_type": "code", "source": "a = 1"}])
    proc = runner.start()
    with Client.connect(runner.paths.socket) as client:
        nb = client.open(path)
        for i in range(5):
            nb.add_cell("code", f"edit_{i} = {i}", cell_id=f"e{i}")
            nb.flush()
        kill9(proc)  # at once: well inside the persist debounce
    runner.start()
    assert sources(runner, path) == ["a = 1", *[f"edit_{i} = {i}" for i in range(5)]]
    assert set_aside(runner) == []


def test_execute_answers_only_durable_edits(runner: DaemonRunner, short_tmp: Path) -> None:
    """A queued ExecuteCell was answered: the edit it carried the heads of is durable."""
    path = write_notebook(short_tmp / "n.ipynb", [{"cell_type": "code", "source": "a = 1"}])
    proc = runner.start()
    with Client.connect(runner.paths.socket) as client:
        nb = client.open(path)
        nb.set_source("cell0", "a = 'edited then queued'")
        nb.queue("cell0")
        kill9(proc)
    runner.start()
    assert sources(runner, path) == ["a = 'edited then queued'"]
    assert set_aside(runner) == []


# ---------------------------------------------------------------- crash at each step


@pytest.mark.parametrize("step", ["save:record", "save:file"])
def test_save_killed_at_each_step_keeps_the_document(
    runner: DaemonRunner, short_tmp: Path, step: str
) -> None:
    path = write_notebook(short_tmp / "n.ipynb", [{"cell_type": "code", "source": "a = 1"}])
    proc = runner.start(**{CRASH_AFTER_ENV: step})
    with Client.connect(runner.paths.socket) as client:
        nb = client.open(path)
        nb.set_source("cell0", "a = 'saved when killed'")
        with pytest.raises(RuntimedError):
            nb.save()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    if step == "save:file":
        assert "saved when killed" in path.read_text()  # the new file replaced the old
    runner.start()
    assert sources(runner, path) == ["a = 'saved when killed'"]
    assert set_aside(runner) == []  # not "changed outside the daemon"
    assert temp_files(runner.documents, short_tmp) == []


@pytest.mark.parametrize("step", ["persist:record", "persist:notebook"])
def test_persist_killed_at_each_step_leaves_a_loadable_state(
    runner: DaemonRunner, short_tmp: Path, step: str
) -> None:
    path = write_notebook(short_tmp / "n.ipynb", [{"cell_type": "code", "source": "a = 1"}])
    # A first daemon persists the document it builds from the file as it opens it; the
    # persist under test is then the edit's, in the second.
    first = runner.start()
    with Client.connect(runner.paths.socket) as client:
        client.open(path)
    first.terminate()
    assert first.wait(timeout=30) == 0
    proc = runner.start(**{CRASH_AFTER_ENV: step})
    with Client.connect(runner.paths.socket) as client:
        nb = client.open(path)
        nb.set_source("cell0", "a = 'being persisted'")
        with pytest.raises(RuntimedError):
            nb.flush()  # never acknowledged: the daemon died persisting it
    assert proc.wait(timeout=30) == -signal.SIGKILL
    runner.start()
    found = sources(runner, path)
    if step == "persist:notebook":  # the document was written (and fsynced) before the kill
        assert found == ["a = 'being persisted'"]
    else:
        assert found in (["a = 1"], ["a = 'being persisted'"])
    assert set_aside(runner) == []
    assert temp_files(runner.documents) == []


def test_interrupted_temp_files_are_removed(runner: DaemonRunner, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "n.ipynb", [{"cell_type": "code", "source": "a = 1"}])
    runner.documents.mkdir(parents=True)
    planted = [
        runner.documents / ".0123abcd.automerge.k3j_x9zq.tmp",  # an interrupted persist
        short_tmp / ".n.ipynb.0123456789ab.tmp",  # an interrupted checkpoint of n.ipynb
    ]
    for temp in planted:
        temp.write_bytes(b"half written")
    unrelated = short_tmp / ".other.tmp"
    unrelated.write_bytes(b"not ours")
    runner.start()
    assert sources(runner, path) == ["a = 1"]
    assert [p.exists() for p in planted] == [False, False]
    assert unrelated.exists()


# ---------------------------------------------------------------- clean stop


def test_sigterm_checkpoints_every_notebook_while_kernels_are_busy(
    runner: DaemonRunner, short_tmp: Path
) -> None:
    """Two notebooks with a kernel in time.sleep(60), a third with an unsaved edit: SIGTERM
    writes the edit and the daemon exits within its per-room bounds (5 s here)."""
    proc = runner.start(RUNTIMED_SHUTDOWN_TIMEOUT="5")
    busy = [short_tmp / "busy0.ipynb", short_tmp / "busy1.ipynb"]
    edited = write_notebook(short_tmp / "edited.ipynb", [{"cell_type": "code", "source": "a = 1"}])
    with Client.connect(runner.paths.socket) as client:
        for index, path in enumerate(busy):
            started = short_tmp / f"started{index}"
            code = f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(60)\n"
            write_notebook(path, [{"cell_type": "code", "source": code}])
            client.open(path).queue("cell0")
        deadline = time.monotonic() + 120
        while not all((short_tmp / f"started{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline, "the busy cells never started"
            time.sleep(0.05)
        nb = client.open(edited)
        nb.set_source("cell0", "a = 'unsaved at SIGTERM'")
        nb.flush()
        kernels = runner.descendants(proc)
        assert len(kernels) >= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0  # within the bounds, never 2 x 60 s
    saved = nbformat.read(edited, as_version=4)
    assert [c.source for c in saved.cells] == ["a = 'unsaved at SIGTERM'"]
    _, alive = psutil.wait_procs(kernels, timeout=20)
    assert alive == []
