"""Adopting a kernel a previous daemon started: its nanny's link, seen as a process.

A kernel started under a nanny (:mod:`runtimed.kernels.nanny`) outlives a daemon crash. The
next daemon finds it in the kernel records (:meth:`KernelRecords.recover`) and, when the
notebook it belongs to is opened again, connects to the nanny's socket: from then on the
nanny's stream is the kernel's IOPub (the journal of everything published since the kernel
started, then every new message, in order and without gaps), and the end of the stream is
the kernel's exit. Shell, control and stdin are ordinary ZMQ connections to the kernel.

:class:`NannyLink` stands in for the process object of a kernel we spawned (``pid``,
``wait()``, ``stdout``, ``aclose()``), so :class:`~runtimed.kernels.process.KernelProcess`
runs an adopted kernel with the same watcher, readers and shutdown ladder.

Executions the previous daemon sent carry their execution id as ``msg_id`` and the cell and
queue position in the request header (``runtimed``); their ``execute_reply`` went to the dead
daemon's socket, so their outcome is read from IOPub (:func:`adopted_reply`): the spec's
``execute_input`` (execution count), ``error`` (ename, evalue, traceback) and the closing
``status: idle``.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.abc import SocketStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import runtimed.aio  # noqa: F401  (anyio's raw-socket race under uvloop; see the module)
from protocol.states import ExecutionStatus
from runtimed.errors import KernelStartFailed
from runtimed.kernels.launch import LaunchSpec
from runtimed.kernels.nanny import SOCKET_NAME, exit_status, parse_records
from runtimed.kernels.records import KernelRecord

__all__ = [
    "NannyLink",
    "adopted_reply",
    "load_connection",
    "spec_from_record",
    "wait_journaling",
]

log = logging.getLogger(__name__)

_IOPUB_BUFFER = 256  # messages between the link and the IOPub reader (the link waits)


class NannyLink:
    """A connection to an adopted kernel's nanny: its IOPub stream and exit status."""

    def __init__(self, record: KernelRecord) -> None:
        assert record.pid is not None
        self.pid = record.pid
        self.record = record
        self.returncode: int | None = None
        self.stdout = None  # the console went to the previous daemon (then console.log)
        self._stream: SocketStream | None = None
        self._send: MemoryObjectSendStream[list[bytes]]
        self.iopub: MemoryObjectReceiveStream[list[bytes]]
        self._send, self.iopub = anyio.create_memory_object_stream[list[bytes]](_IOPUB_BUFFER)
        self._exited = anyio.Event()

    async def connect(self) -> None:
        """Connect to the nanny (it replays its journal from here on).

        Raises:
            KernelStartFailed: the nanny is not there any more.
        """
        try:
            self._stream = await anyio.connect_unix(str(self.record.nanny_socket))
        except OSError as exc:
            raise KernelStartFailed(
                f"cannot adopt kernel {self.pid}: its nanny does not answer ({exc})"
            ) from exc

    async def pump(self) -> None:
        """Read the nanny's records until it goes away (run in the kernel's task group)."""
        buffer = bytearray()
        try:
            if self._stream is None:
                return
            async with self._send:
                while self.returncode is None:
                    try:
                        data = await self._stream.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError, OSError):
                        break
                    buffer += data
                    for kind, frames in parse_records(buffer):
                        if kind == b"M":
                            await self._send.send(frames)
                        elif kind == b"X":
                            self.returncode = exit_status(frames)
        finally:
            if self.returncode is None:  # gone without a word: the group was killed
                self.returncode = -signal.SIGKILL
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        self._send.close()


async def wait_journaling(
    directory: Path, poke: Callable[[], object], *, timeout: float
) -> str | None:
    """Wait until a new kernel's nanny has journaled an IOPub message (its SUB socket is
    subscribed: nothing a first cell prints is missing from the journal). ``poke`` makes
    the kernel publish (a kernel_info_request: busy, idle); it is called every half second
    while the journal is empty. None once journaling, else why not.

    PUB/SUB's slow joiner: the nanny connects before the kernel binds and zmq retries every
    100 ms, and a second subscription to the same topic gets no ``iopub_welcome`` (XPUB
    passes duplicates on only once), so the first message is the proof.
    """
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_unix(str(directory / SOCKET_NAME))
            async with stream:
                while True:
                    with anyio.move_on_after(0.5):
                        if await stream.receive():
                            return None
                    poke()
    except TimeoutError:
        return f"its nanny journaled no IOPub message within {timeout:g} s"
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        return f"its nanny does not answer ({exc})"


def spec_from_record(record: KernelRecord) -> LaunchSpec:
    """The launch spec the kernel was started with (for a restart of an adopted kernel)."""
    raw: dict[str, Any] = dict(record.spec or {})
    mode: Literal["signal", "message"] = (
        "message" if raw.get("interrupt_mode") == "message" else "signal"
    )
    return LaunchSpec(
        name=str(raw.get("name") or "python3"),
        argv=[str(a) for a in raw.get("argv") or []],
        env={str(k): str(v) for k, v in dict(raw.get("env") or {}).items()},
        interrupt_mode=mode,
        resource_dir=str(raw.get("resource_dir") or ""),
    )


def load_connection(record: KernelRecord) -> dict[str, Any]:
    """The kernel's connection file (blocking: a worker thread).

    Raises:
        KernelStartFailed: it cannot be read.
    """
    path = Path(record.conn_dir) / "kernel.json"
    try:
        info: dict[str, Any] = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KernelStartFailed(f"cannot adopt kernel {record.pid}: {path}: {exc}") from exc
    return info


def adopted_reply(
    idle: dict[str, Any], count: int | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    """An ``execute_reply`` for an execution whose real reply went to the dead daemon, from
    what IOPub said: ``error`` if it published an error, else ``ok``; dated by its idle."""
    content: dict[str, Any] = {"status": ExecutionStatus.OK, "execution_count": count}
    if error is not None:
        content.update(
            status=ExecutionStatus.ERROR,
            ename=error.get("ename", "Error"),
            evalue=error.get("evalue", ""),
            traceback=list(error.get("traceback") or []),
        )
    return {"header": {"date": idle["header"].get("date")}, "content": content}
