"""A client connection to the daemon: handshake, typed requests with ids, events, sync frames."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import anyio
from anyio.abc import SocketStream

import runtimed.aio  # noqa: F401  (anyio's raw-socket race under uvloop; see the module)
from protocol import framing
from protocol.errors import ProtocolError, VersionMismatch
from protocol.framing import FrameDecoder, FrameKind
from protocol.handshake import ClientHandshake
from protocol.messages import (
    ClientRequest,
    DaemonEvent,
    DaemonReply,
    DocKind,
    ErrorReply,
    Reply,
    SyncEnvelope,
    decode_daemon_message,
    decode_sync,
    encode,
)
from runtimed.client.spawn import spawn_daemon, take_early
from runtimed.errors import (
    ConnectionClosed,
    ConnectionLost,
    DaemonNotRunning,
    RuntimedError,
    error_from_reply,
)
from runtimed.paths import check_socket_dir, default_socket_path

__all__ = ["Connection", "spawn_daemon"]

log = logging.getLogger(__name__)

SyncHandler = Callable[[str, DocKind, bytes], None]
EventHandler = Callable[[DaemonEvent], None]
ReplyT = TypeVar("ReplyT", bound=Reply)

HANDSHAKE_TIMEOUT = 30.0


class _Waiter:
    """One outstanding request: set once, with its reply or the error that ended the wait."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: DaemonReply | None = None
        self.error: RuntimedError | None = None


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
        self._pending: dict[int, _Waiter] = {}
        self._send_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._closed: BaseException | None = None
        self._closed_event = anyio.Event()
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
            UnsafeDirectory: the socket's directory (or ``home``) is a symlink, owned by
                another user, or writable by others: a socket there could be anyone's.
        """
        path = Path(socket) if socket else default_socket_path()
        await anyio.to_thread.run_sync(lambda: check_socket_dir(path, home=home))
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
        # The bytes and the decisions are protocol.handshake's; this only moves them.
        shake = ClientHandshake()
        await self._stream.send(shake.hello)
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            while not shake.done:
                try:
                    data = await self._stream.receive()
                except anyio.EndOfStream as exc:
                    raise ConnectionClosed(str(shake.closed_early())) from exc
                try:
                    shake.receive(data)
                except VersionMismatch:
                    raise
                except ProtocolError as exc:
                    raise ConnectionClosed(str(exc)) from exc
        self._leftover = shake.leftover

    async def __aenter__(self) -> Self:
        # The task group is entered through an exit stack (never by hand) and kept open past
        # this method by pop_all(); __aexit__ unwinds it.
        async with contextlib.AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self._reader)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        assert self._exit_stack is not None
        self._tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()
        # The body's exception is not handed to the task group (it would come out wrapped in
        # an ExceptionGroup); it propagates as itself once the reader has stopped.
        await self._exit_stack.aclose()
        if self._closed is None:
            # Requests still waiting (in other tasks) end now rather than never.
            self._fail(ConnectionClosed("the connection was closed by this client"), None)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def wait_closed(self) -> None:
        """Return once the connection has ended (either side closed it, or it broke)."""
        await self._closed_event.wait()

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
            self._fail(ConnectionLost("the connection to the daemon was lost"), exc)
        except ProtocolError as exc:
            self._fail(ConnectionClosed(f"protocol error from the daemon: {exc}"), exc)

    def _fail(self, error: RuntimedError, cause: BaseException | None) -> None:
        error.__cause__ = cause
        self._closed = error
        self._closed_event.set()
        for waiter in self._pending.values():
            waiter.error = error
            waiter.done.set()
        self._pending.clear()
        if self._on_closed is not None:
            self._on_closed()

    def _dispatch(self, frame: framing.Frame) -> None:
        if frame.kind is FrameKind.SYNC:
            envelope: SyncEnvelope = decode_sync(frame.payload)
            self._on_sync(envelope.notebook_id, envelope.doc, envelope.data)
            return
        message = decode_daemon_message(frame.payload)
        # Events and replies are told apart by type (the two unions of protocol.messages).
        if isinstance(message, DaemonEvent):
            self._on_event(message)
            return
        waiter = self._pending.pop(message.id, None)
        if waiter is not None:
            waiter.reply = message
            waiter.done.set()
        elif isinstance(message, ErrorReply):
            # id 0: a frame the daemon could not attribute to a request (a bad sync frame).
            log.warning("daemon error (%s): %s", message.code, message.message)

    async def send_frame(self, kind: FrameKind, payload: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        frame = framing.encode_frame(kind, payload, max_frame_size=self._max_frame_size)
        async with self._send_lock:
            try:
                await self._stream.send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError) as exc:
                raise ConnectionLost("the connection to the daemon was lost") from exc

    async def send_sync(self, notebook_id: str, doc: DocKind, data: bytes) -> None:
        await self.send_frame(
            FrameKind.SYNC, encode(SyncEnvelope(notebook_id=notebook_id, doc=doc, data=data))
        )

    async def request(
        self,
        make: Callable[[int], ClientRequest],
        reply_type: type[ReplyT],
        *,
        timeout: float | None = None,
    ) -> ReplyT:
        """Send ``make(id)`` and return its reply, which must be a ``reply_type``.

        Raises:
            RuntimedError: the matching subclass for an ``ErrorReply`` (with its attributes).
            ProtocolError: the daemon answered with a reply of another type.
            ConnectionClosed: the connection ended first.
            TimeoutError: no reply within ``timeout``.
        """
        request_id = next(self._ids)
        request = make(request_id)
        waiter = _Waiter()
        self._pending[request_id] = waiter
        try:
            await self.send_frame(FrameKind.CONTROL, encode(request))
            with anyio.fail_after(timeout):
                await waiter.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if waiter.error is not None:
            raise waiter.error
        reply = waiter.reply
        if isinstance(reply, reply_type):
            return reply
        if isinstance(reply, ErrorReply):
            raise error_from_reply(reply.code, reply.message, reply.details)
        raise ProtocolError(
            f"the daemon answered {type(request).__name__} (id {request_id}) with "
            f"{type(reply).__name__}; expected {reply_type.__name__}"
        )


async def _autostart(path: Path, *, home: Path | None, timeout: float) -> SocketStream:
    import tempfile

    # A daemon 'runt run' started before it got here (runtimed.client.spawn), else ours.
    early = take_early(path) if home is None else None
    if early is None:
        log.info("starting a daemon on %s", path)
    with early[1] if early is not None else tempfile.TemporaryFile() as said:  # its stderr
        process = early[0] if early is not None else spawn_daemon(path, home=home, stderr=said)
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
                    # At most 20 ms late: a cold 'runt run' waits for exactly this.
                    delay = min(delay * 2, 0.02)
