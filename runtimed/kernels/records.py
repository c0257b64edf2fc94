"""Records of the kernels a daemon started, so that the next daemon can stop what is left.

A kernel runs in its own session (``start_new_session``: its pid is its process group id).
Before it is spawned, the daemon writes a record (0600, ``O_EXCL|O_NOFOLLOW``) naming its
connection directory; once it runs, the record gets its pid/pgid, the pid's start time (in
clock ticks since boot, from ``/proc``), the boot id, its owning notebook and a random token
that the kernel — and every process it starts — inherits as ``RUNTIMED_KERNEL_TOKEN``. A
clean stop removes the record with the directory.

After a crash (``kill -9``) ipykernel exits on its own (its parent poller), but what its
cells started stays alive in its process group. A new daemon, holding the instance lock of
the same home, calls :meth:`KernelRecords.reap` before serving: for every record it SIGKILLs
the process group if it is still ours, then removes the connection directory and the record.
"Still ours" is checked, never assumed, so that a recycled pid is never killed: the group's
leader with the recorded start time, or a member of the group started no earlier than the
kernel whose environment carries the kernel's token (a pgid cannot be reused while any
member of the group lives). Linux only (``/proc``); elsewhere records are removed and
processes left alone, with a warning.

Kernels started under a nanny (:mod:`runtimed.kernels.nanny`) survive a daemon crash: for
those :meth:`KernelRecords.recover` keeps the records whose nanny still runs (the group's
leader with the recorded start time, and its ``nanny.sock``) and that belong to a notebook,
so the new daemon can adopt them (:mod:`runtimed.kernels.adoption`); it reaps the rest as
above. The record also says how to start the kernel again (its launch spec), for a restart
of an adopted kernel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import time
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "CURRENT",
    "TOKEN_VARIABLE",
    "KernelRecord",
    "KernelRecords",
    "ReapReport",
    "RecoverReport",
]

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "RUNTIMED_KERNEL_TOKEN"
_PROC = Path("/proc")


@dataclass(slots=True)
class KernelRecord:
    """What the next daemon needs to find one kernel's processes."""

    conn_dir: str
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    pid: int | None = None
    start_ticks: int | None = None
    boot_id: str | None = None
    notebook_id: str | None = None
    started_at: float | None = None
    daemon_pid: int = field(default_factory=os.getpid)
    nanny: bool = False
    """Started under a nanny: it outlives the daemon and can be adopted."""
    spec: dict[str, object] | None = None
    """The launch spec (name, argv, env, interrupt_mode, resource_dir) it was started with."""

    @property
    def nanny_socket(self) -> Path:
        return Path(self.conn_dir) / "nanny.sock"


@dataclass(frozen=True, slots=True)
class ReapReport:
    records: int
    groups_killed: list[int]
    dirs_removed: int


@dataclass(frozen=True, slots=True)
class RecoverReport:
    adoptable: list[KernelRecord]
    """Live kernels (under their nanny) of notebooks, records kept for the adopter."""
    reaped: ReapReport


class KernelRecords:
    """The records in one directory (``<home>/kernels``). Blocking: call from a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, record: KernelRecord) -> Path:
        return self.directory / f"{Path(record.conn_dir).name}.json"

    def write(self, record: KernelRecord, *, new: bool = False) -> None:
        """Write ``record`` (0600); ``new``: it must not exist yet (O_EXCL)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self._path(record)
        data = json.dumps(asdict(record)).encode()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        if new:
            fd = os.open(target, flags, 0o600)
            path = target
        else:
            path = target.with_suffix(f".{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fd = os.open(path, flags, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if path != target:
            os.replace(path, target)

    def started(self, record: KernelRecord, pid: int) -> None:
        """The kernel runs as ``pid`` (its process group too): record how to recognise it."""
        record.pid = pid
        record.start_ticks = _start_ticks(pid)
        record.boot_id = _boot_id()
        record.started_at = time.time()
        self.write(record)

    def remove(self, record: KernelRecord) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(record).unlink()

    def recover(self) -> RecoverReport:
        """Keep the adoptable kernels (see the module docstring); :meth:`reap` the rest."""
        return RecoverReport(*self._sweep(keep=True))

    def reap(self) -> ReapReport:
        """Stop what the previous daemon's kernels left running; remove their records and
        connection directories. Call only while holding the home's instance lock."""
        return self._sweep(keep=False)[1]

    def discard(self, record: KernelRecord) -> bool:
        """Stop an adoptable kernel nobody adopted (if it is still ours); remove its record
        and directory. True if a process group was stopped."""
        killed = record.boot_id == _boot_id() and record.pid is not None and _kill_if_ours(record)
        conn_dir = Path(record.conn_dir)
        if conn_dir.name.startswith("runtimed-kernel-") and conn_dir.is_dir():
            shutil.rmtree(conn_dir, ignore_errors=True)
        self.remove(record)
        return killed

    def _sweep(self, *, keep: bool) -> tuple[list[KernelRecord], ReapReport]:
        kept: list[KernelRecord] = []
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return kept, ReapReport(0, [], 0)
        killed: list[int] = []
        records = dirs = 0
        boot = _boot_id()
        for entry in entries:
            if entry.suffix == ".tmp":
                entry.unlink(missing_ok=True)  # an interrupted write
                continue
            if entry.suffix != ".json" or entry.is_symlink():
                continue
            record = _read(entry)
            if keep and record is not None and _adoptable(record, boot):
                kept.append(record)
                continue
            records += 1
            if record is not None:
                if record.pid is not None and record.boot_id == boot and boot is not None:
                    if _kill_if_ours(record):
                        killed.append(record.pid)
                elif record.pid is not None and boot is None:
                    log.warning("cannot verify kernel %d's processes here; left alone", record.pid)
                conn_dir = Path(record.conn_dir)
                if conn_dir.name.startswith("runtimed-kernel-") and conn_dir.is_dir():
                    shutil.rmtree(conn_dir, ignore_errors=True)
                    dirs += 1
            entry.unlink(missing_ok=True)
        if records:
            log.warning(
                "a previous daemon left %d kernel record(s): stopped %d process group(s) %s, "
                "removed %d connection directory(ies)",
                records,
                len(killed),
                killed,
                dirs,
            )
        return kept, ReapReport(records, killed, dirs)


CURRENT: ContextVar[KernelRecords | None] = ContextVar("runtimed_kernel_records", default=None)
"""The records of the daemon running in this context (set by ``Daemon.run``); kernels
started outside a daemon (tests, tools) keep none."""


def _read(path: Path) -> KernelRecord | None:
    try:
        raw = json.loads(path.read_bytes())
        return KernelRecord(**raw)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("unreadable kernel record %s (%s); removed", path, exc)
        return None


def _adoptable(record: KernelRecord, boot: str | None) -> bool:
    """A nanny'd kernel of a notebook whose nanny (the group leader) still runs."""
    if not record.nanny or record.pid is None or not record.notebook_id or boot is None:
        return False
    if record.boot_id != boot:
        return False
    leader = _stat(record.pid)
    if leader is None or leader[0] != record.pid or leader[1] != record.start_ticks:
        return False
    return record.nanny_socket.is_socket()


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time in ticks) of ``pid``, None if it is gone (or a zombie)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 of proc(5): state; pgrp is field 5, starttime field 22.
    if fields[0] == "Z":
        return None
    return int(fields[2]), int(fields[19])


def _start_ticks(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _has_token(pid: int, token: str) -> bool:
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return f"{TOKEN_VARIABLE}={token}".encode() in environ.split(b"\0")


def _kill_if_ours(record: KernelRecord) -> bool:
    """SIGKILL the record's process group if a live member proves it is the kernel's."""
    assert record.pid is not None
    pgid = record.pid
    leader = _stat(pgid)
    ours = leader is not None and leader[0] == pgid and leader[1] == record.start_ticks
    if not ours:
        since = record.start_ticks or 0
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            stat = _stat(int(entry.name))
            if stat is None or stat[0] != pgid or stat[1] < since:
                continue
            if _has_token(int(entry.name), record.token):
                ours = True
                break
    if not ours:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not permitted to stop process group %d of an earlier kernel", pgid)
        return False
    log.warning(
        "stopped process group %d left by kernel of notebook %s (daemon pid %d)",
        pgid,
        record.notebook_id,
        record.daemon_pid,
    )
    return True
