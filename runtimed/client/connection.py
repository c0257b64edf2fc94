"""A client connection to the daemon: handshake, requests with ids, events, sync frames."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import msgspec
from anyio.abc import SocketStream

from protocol import framing
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, FrameKind
from protocol.messages import (
    DaemonEvent,
    DocKind,
    ErrorReply,
    SyncEnvelope,
    decode_daemon_message,
    decode_sync,
    encode,
)
from runtimed.errors import (
    ConnectionClosed,
    DaemonNotRunning,
    RuntimedError,
    VersionMismatch,
    error_from_reply,
)
from runtimed.paths import default_socket_path

__all__ = ["Connection", "spawn_daemon"]

log = logging.getLogger(__name__)

SyncHandler = Callable[[str, DocKind, bytes], None]
EventHandler = Callable[[DaemonEvent], None]


def spawn_daemon(
    socket: Path, *, home: Path | None = None, stderr: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start a daemon in the background (its own session, so it outlives this process).

    ``stderr``: where its standard error goes (a file, to show why a start failed)."""
    cmd = [sys.executable, "-m", "runtimed.daemon.main", "--socket", str(socket)]
    if home is not None:
        cmd += ["--home", str(home)]
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
        close_fds=True,
    )


class Connection:
    """One handshaken connection. Use as an async context manager; it owns its reader task.

    ``on_sync`` is called for every sync frame and ``on_event`` for every daemon event, from
    the reader task; they must not block.
    """

    def __init__(
        self,
        stream: SocketStream,
        *,
        on_sync: SyncHandler,
        on_event: EventHandler,
        on_closed: Callable[[], None] | None = None,
        max_frame_size: int = framing.DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self._stream = stream
        self._on_sync = on_sync
        self._on_event = on_event
        self._on_closed = on_closed
        self._max_frame_size = max_frame_size
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._send_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed: BaseException | None = None
        self._leftover = b""

    @classmethod
    async def open(
        cls,
        socket: Path | str | None = None,
        *,
        on_sync: SyncHandler,
        on_event: EventHandler,
        on_closed: Callable[[], None] | None = None,
        autostart: bool = False,
        home: Path | None = None,
        connect_timeout: float = 30.0,
    ) -> Connection:
        """Connect (starting a daemon first if ``autostart`` and none answers).

        Raises:
            DaemonNotRunning: nothing listens on the socket (and autostart is off or failed).
            VersionMismatch: the daemon speaks another protocol version.
        """
        path = Path(socket) if socket else default_socket_path()
        stream: SocketStream
        try:
            stream = await anyio.connect_unix(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if not autostart:
                raise DaemonNotRunning(
                    f"no runtimed daemon on {path}; start one with 'runt daemon start'"
                ) from exc
            stream = await _autostart(path, home=home, timeout=connect_timeout)
        conn = cls(stream, on_sync=on_sync, on_event=on_event, on_closed=on_closed)
        try:
            await conn._handshake()
        except BaseException:
            await stream.aclose()
            raise
        return conn

    async def _handshake(self) -> None:
        await self._stream.send(framing.encode_client_hello())
        buffer = b""
        with anyio.fail_after(30):
            while True:
                try:
                    buffer += await self._stream.receive()
                except anyio.EndOfStream as exc:
                    raise ConnectionClosed(
                        "the daemon closed the connection during the handshake"
                    ) from exc
                try:
                    parsed = framing.decode_server_hello(buffer)
                except ProtocolError as exc:
                    raise ConnectionClosed(str(exc)) from exc
                if parsed is not None:
                    break
        reply, used = parsed
        if not reply.accepted:
            raise VersionMismatch(reply.message or "the daemon refused the connection")
        self._leftover = buffer[used:]

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._reader)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()
        # The body's own exception is not handed to the task group: it would come out
        # wrapped in an ExceptionGroup; the caller gets the error itself.
        await self._tg.__aexit__(None, None, None)
        return None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def _reader(self) -> None:
        decoder = FrameDecoder(max_frame_size=self._max_frame_size)
        frames = decoder.feed(self._leftover)
        try:
            while True:
                for frame in frames:
                    self._dispatch(frame)
                frames = decoder.feed(await self._stream.receive(1 << 18))
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            ConnectionError,
        ) as exc:
            self._fail(ConnectionClosed("the daemon closed the connection"), exc)
        except ProtocolError as exc:
            self._fail(ConnectionClosed(f"protocol error from the daemon: {exc}"), exc)

    def _fail(self, error: RuntimedError, cause: BaseException) -> None:
        error.__cause__ = cause
        self._closed = error
        for event, box in self._pending.values():
            box.append(error)
            event.set()
        self._pending.clear()
        if self._on_closed is not None:
            self._on_closed()

    def _dispatch(self, frame: framing.Frame) -> None:
        if frame.kind is FrameKind.SYNC:
            envelope: SyncEnvelope = decode_sync(frame.payload)
            self._on_sync(envelope.notebook_id, envelope.doc, envelope.data)
            return
        message = decode_daemon_message(frame.payload)
        request_id = getattr(message, "id", None)
        if request_id is None:
            self._on_event(message)  # type: ignore[arg-type]
            return
        waiter = self._pending.pop(request_id, None)
        if waiter is not None:
            waiter[1].append(message)
            waiter[0].set()
        elif isinstance(message, ErrorReply):
            log.warning("daemon error (%s): %s", message.code, message.message)

    async def send_frame(self, kind: FrameKind, payload: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        frame = framing.encode_frame(kind, payload, max_frame_size=self._max_frame_size)
        async with self._send_lock:
            try:
                await self._stream.send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError) as exc:
                raise ConnectionClosed("the daemon closed the connection") from exc

    async def send_sync(self, notebook_id: str, doc: DocKind, data: bytes) -> None:
        await self.send_frame(
            FrameKind.SYNC, encode(SyncEnvelope(notebook_id=notebook_id, doc=doc, data=data))
        )

    async def request(
        self, make: Callable[[int], msgspec.Struct], *, timeout: float | None = None
    ) -> Any:
        """Send ``make(id)`` and return its reply.

        Raises:
            RuntimedError: the matching subclass for an ``ErrorReply``.
            ConnectionClosed: the connection ended first.
            TimeoutError: no reply within ``timeout``.
        """
        request_id = next(self._ids)
        event = anyio.Event()
        box: list[Any] = []
        self._pending[request_id] = (event, box)
        try:
            await self.send_frame(FrameKind.CONTROL, encode(make(request_id)))  # type: ignore[arg-type]
            with anyio.fail_after(timeout):
                await event.wait()
        finally:
            self._pending.pop(request_id, None)
        reply = box[0]
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, ErrorReply):
            raise error_from_reply(reply.code, reply.message)
        return reply


async def _autostart(path: Path, *, home: Path | None, timeout: float) -> SocketStream:
    import tempfile

    log.info("starting a daemon on %s", path)
    with tempfile.TemporaryFile() as said:  # its stderr: why it could not start
        process = spawn_daemon(path, home=home, stderr=said)
        delay = 0.005
        # Readiness is a successful connect within the deadline.
        with anyio.fail_after(timeout):
            while True:
                try:
                    return await anyio.connect_unix(path)
                except (FileNotFoundError, ConnectionRefusedError):
                    if process.poll() is not None and not await anyio.Path(path).exists():
                        said.seek(0)
                        lines = said.read().decode(errors="replace").strip().splitlines()
                        why = "; ".join(line for line in lines[-3:] if line.strip())
                        raise DaemonNotRunning(
                            f"the daemon exited with code {process.returncode} while "
                            f"starting: {why or 'see its log (runt daemon status shows where)'}"
                        ) from None
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.1)
