"""runtimed.kernels.records: the next daemon stops only process groups proven to be its
predecessor's kernels (a recycled pid is never killed). Real processes, no daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimed.kernels import records as records_mod
from runtimed.kernels.records import TOKEN_VARIABLE, KernelRecord, KernelRecords

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _sleeper(procs: list[subprocess.Popen[bytes]], env: dict[str, str] | None = None) -> int:
    proc = subprocess.Popen(
        ["sleep", "600"], start_new_session=True, env=dict(os.environ, **(env or {}))
    )
    procs.append(proc)
    return proc.pid


def _record(tmp_path: Path, pid: int, **changes: object) -> KernelRecord:
    conn_dir = tmp_path / f"runtimed-kernel-{pid}"
    conn_dir.mkdir()
    record = KernelRecord(conn_dir=str(conn_dir))
    records = KernelRecords(tmp_path / "kernels")
    records.write(record, new=True)
    records.started(record, pid)
    for key, value in changes.items():
        setattr(record, key, value)
    records.write(record)
    return record


def _running(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def test_the_recorded_leader_is_stopped_with_its_group(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    pid = _sleeper(spawned)
    record = _record(tmp_path, pid)
    assert (tmp_path / "kernels" / f"runtimed-kernel-{pid}.json").stat().st_mode & 0o777 == 0o600

    report = KernelRecords(tmp_path / "kernels").reap()

    assert report.groups_killed == [pid]
    spawned[0].wait(timeout=10)
    assert not Path(record.conn_dir).exists()
    assert list((tmp_path / "kernels").iterdir()) == []


def test_a_recycled_pid_is_left_alone(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    pid = _sleeper(spawned)  # an unrelated process that happens to have the recorded pid
    start = records_mod._start_ticks(pid)
    assert start is not None
    _record(tmp_path, pid, start_ticks=start - 1)

    report = KernelRecords(tmp_path / "kernels").reap()

    assert report.groups_killed == []
    assert _running(spawned[0])
    assert list((tmp_path / "kernels").iterdir()) == []


def test_a_member_carrying_the_token_proves_the_group_is_ours(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    # The leader (the kernel) has exited; what it started inherited the token. Here the
    # stand-in is the group's only process, and its start time is not the recorded one.
    record = KernelRecord(conn_dir=str(tmp_path / "runtimed-kernel-x"))
    pid = _sleeper(spawned, {TOKEN_VARIABLE: record.token})
    start = records_mod._start_ticks(pid)
    assert start is not None
    records = KernelRecords(tmp_path / "kernels")
    records.started(record, pid)
    record.start_ticks = start - 1
    records.write(record)

    assert records.reap().groups_killed == [pid]
    spawned[0].wait(timeout=10)


def test_a_record_from_another_boot_or_unreadable_is_removed_without_killing(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    pid = _sleeper(spawned)
    _record(tmp_path, pid, boot_id="another-boot")
    (tmp_path / "kernels" / "garbage.json").write_text("{not json")
    (tmp_path / "kernels" / "half.123.tmp").write_text("{")

    report = KernelRecords(tmp_path / "kernels").reap()

    assert report.groups_killed == []
    assert report.dirs_removed == 1
    assert _running(spawned[0])
    assert list((tmp_path / "kernels").iterdir()) == []


def test_no_directory_means_nothing_to_do(tmp_path: Path) -> None:
    assert KernelRecords(tmp_path / "absent").reap().records == 0
