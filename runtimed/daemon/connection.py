"""One client connection: handshake, frame reader, request dispatch, paced writer.

The writer owns the socket's send side. Control frames wait in a bounded queue; sync
messages are never queued — a dirty flag per (notebook, document) makes the writer generate
one when it can send, so a slow reader gets fewer, larger messages. Before each control frame
the writer flushes pending sync messages, so an event (``ExecutionDone``) always reaches the
client after the document changes it describes.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import msgspec
from anyio.abc import SocketStream

from protocol import framing, handshake
from protocol.errors import ErrorCode, ErrorDetails, ProtocolError
from protocol.framing import FrameDecoder, FrameKind
from protocol.messages import (
    ClientRequest,
    DaemonReply,
    DocKind,
    ErrorReply,
    SyncEnvelope,
    decode_client_message,
    decode_sync,
    encode,
)
from runtimed.daemon.listener import ReceiveBudget
from runtimed.daemon.room import SyncRejected
from runtimed.errors import RuntimedError

if TYPE_CHECKING:
    from runtimed.daemon.room import NotebookRoom

__all__ = ["ClientSession"]

log = logging.getLogger(__name__)

MAX_QUEUED_CONTROL_FRAMES = 10_000
SEND_TIMEOUT = 30.0
MAX_CONCURRENT_REQUESTS = 64
_WRITE_BATCH_BYTES = 1 << 20
_GENERATE_PER_FLUSH = 8  # sync messages for one document in one write, at most

Handler = Callable[["ClientSession", ClientRequest], Awaitable[DaemonReply]]

_session_ids = itertools.count(1)
_LOST = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError)


class SlowClient(Exception):
    """The client stopped reading; it is disconnected rather than waited on."""


class ClientSession:
    """Serve one connected client until it disconnects or misbehaves past recovery."""

    def __init__(
        self,
        stream: SocketStream,
        *,
        handler: Handler,
        rooms: Callable[[str], NotebookRoom | None],
        max_frame_size: int = framing.DEFAULT_MAX_FRAME_SIZE,
        max_control_frame_size: int = framing.DEFAULT_MAX_CONTROL_FRAME_SIZE,
        budget: ReceiveBudget | None = None,
    ) -> None:
        self.id = next(_session_ids)
        self._stream = stream
        self._handler = handler
        self._rooms = rooms
        self._max_frame_size = max_frame_size
        self._max_control_frame_size = max_control_frame_size
        self._budget = budget
        self._control: collections.deque[bytes] = collections.deque()
        self._dirty: dict[tuple[str, DocKind], None] = {}
        self._wake = anyio.Event()
        self._closed = False
        self._writer_done = anyio.Event()
        self._limiter = anyio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self.open_notebooks: set[str] = set()

    def __repr__(self) -> str:
        return f"<ClientSession {self.id}>"

    # ------------------------------------------------------------ Peer protocol

    def mark_dirty(self, notebook_id: str, doc: DocKind) -> None:
        self._dirty[(notebook_id, doc)] = None
        self._wake.set()

    def send_event_bytes(self, payload: bytes) -> None:
        try:
            frame = framing.encode_frame(FrameKind.CONTROL, payload)
        except ProtocolError as exc:
            log.error("%r: dropping an oversized message: %s", self, exc)
            return
        self._queue(frame)

    def send_message(self, message: msgspec.Struct) -> None:
        self.send_event_bytes(encode(message))  # type: ignore[arg-type]

    def _queue(self, frame: bytes) -> None:
        if self._closed:
            return
        if len(self._control) >= MAX_QUEUED_CONTROL_FRAMES:
            log.warning(
                "%r: %d frames unread; disconnecting a slow client", self, len(self._control)
            )
            self._closed = True
        self._control.append(frame)
        self._wake.set()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Handshake, then serve until EOF, a fatal protocol error, or cancellation."""
        try:
            if not await self._handshake():
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._guard, self._writer(tg.cancel_scope), tg.cancel_scope)
                await self._guard(self._reader(tg), tg.cancel_scope)
        except _LOST as exc:
            log.debug("%r: connection lost: %s", self, exc)
        finally:
            self._closed = True
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    async def _guard(self, work: Awaitable[None], scope: anyio.CancelScope) -> None:
        """Run one side of the connection; when it ends for any reason, end the other."""
        try:
            await work
        except _LOST as exc:
            log.debug("%r: connection lost: %s", self, exc)
        except SlowClient:
            log.warning("%r: disconnected: it stopped reading", self)
        finally:
            self._closed = True
            scope.cancel()

    async def _handshake(self) -> bool:
        buffer = b""
        with anyio.move_on_after(10):
            while len(buffer) < handshake.CLIENT_HELLO_SIZE:
                try:
                    chunk = await self._stream.receive(handshake.CLIENT_HELLO_SIZE - len(buffer))
                except anyio.EndOfStream:
                    break
                buffer += chunk
        verdict = handshake.answer_client_hello(buffer)
        if not verdict.accepted:
            log.info("%r: refused: %s", self, verdict.message)
        await self._stream.send(verdict.reply)
        return verdict.accepted

    async def _reader(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            await self._read_frames(tg)
        finally:
            if self._budget is not None:
                self._budget.release(self.id)

    async def _read_frames(self, tg: anyio.abc.TaskGroup) -> None:
        # Memory held for this connection: at most one partial frame (the decoder checks the
        # frame limits from the 5-byte header, before buffering a payload) plus one read;
        # all connections together are held to the daemon's ReceiveBudget.
        decoder = FrameDecoder(
            max_frame_size=self._max_frame_size,
            max_control_frame_size=self._max_control_frame_size,
        )
        while not self._closed:
            try:
                data = await self._stream.receive(1 << 16)
            except anyio.EndOfStream:
                return
            try:
                frames = decoder.feed(data)
                if self._budget is not None and not self._budget.hold(self.id, decoder.buffered):
                    raise ProtocolError(
                        f"the daemon holds {self._budget.total} bytes of partly received "
                        f"frames (limit {self._budget.limit}); this connection's "
                        f"{decoder.buffered} bytes would exceed it. Retry later"
                    )
            except ProtocolError as exc:
                # Framing is lost: answer once, then close only this connection.
                self._reply_error(0, ErrorCode.PROTOCOL_ERROR, str(exc))
                await self._drain_and_close()
                return
            for frame in frames:
                if frame.kind is FrameKind.SYNC:
                    if not self._on_sync(frame.payload):
                        await self._drain_and_close()  # the error reply goes out first
                        return
                else:
                    await self._on_control(frame.payload, tg)

    def _on_sync(self, payload: bytes) -> bool:
        """Apply one sync frame; False when the connection must close."""
        try:
            envelope: SyncEnvelope = decode_sync(payload)
            room = self._rooms(envelope.notebook_id)
            if room is None or envelope.notebook_id not in self.open_notebooks:
                raise ProtocolError(
                    f"sync for notebook {envelope.notebook_id!r}, "
                    "which is not open on this connection"
                )
            room.receive(self, envelope.doc, envelope.data)
        except SyncRejected as exc:
            # The binding could not take this peer's message: the document is as it was,
            # but this connection's sync state is lost. Say why, then close it.
            self._reply_error(0, exc.code, str(exc))
            return False
        except (ProtocolError, RuntimedError) as exc:
            self._reply_error(0, exc.code, str(exc))
        return True

    async def _on_control(self, payload: bytes, tg: anyio.abc.TaskGroup) -> None:
        try:
            request = decode_client_message(payload)
        except ProtocolError as exc:
            self._reply_error(_salvage_id(payload), ErrorCode.UNKNOWN_MESSAGE, str(exc))
            return
        await self._limiter.acquire()
        tg.start_soon(self._handle, request)

    async def _handle(self, request: ClientRequest) -> None:
        try:
            reply = await self._handler(self, request)
            self.send_message(reply)
        except RuntimedError as exc:
            self._reply_error(request.id, exc.code, str(exc), exc.wire_details())
        except Exception:
            log.exception("%r: internal error handling %s", self, type(request).__name__)
            self._reply_error(
                request.id,
                ErrorCode.INTERNAL_ERROR,
                f"internal error handling {type(request).__name__}; see the daemon log",
            )
        finally:
            self._limiter.release()

    def _reply_error(
        self,
        request_id: int,
        code: ErrorCode,
        message: str,
        details: ErrorDetails | None = None,
    ) -> None:
        self.send_message(ErrorReply(id=request_id, code=code, message=message, details=details))

    async def _drain_and_close(self) -> None:
        """Close after the writer (the only task that writes) has sent what is queued —
        the error reply above all — or after 2 s if the peer is not reading."""
        self._closed = True
        self._wake.set()
        with anyio.move_on_after(2):
            await self._writer_done.wait()

    # ------------------------------------------------------------ writer

    async def _writer(self, cancel_scope: anyio.CancelScope) -> None:
        try:
            while True:
                await self._wake.wait()
                # One turn of the event loop before writing: the tasks woken with us (the
                # executor starting the cell just queued, the reader's next frame) make
                # their changes first, and they go out as one sync message in one write —
                # on two cores every write is a wake-up of the client.
                await anyio.lowlevel.checkpoint()
                self._wake = anyio.Event()
                while self._dirty or self._control:
                    if self._closed and not self._control:
                        break
                    await self._flush_once()
                if self._closed:
                    cancel_scope.cancel()
                    return
        finally:
            self._writer_done.set()

    async def _flush_once(self) -> None:
        """Send pending sync messages, then queued control frames, in one batched write."""
        batch: list[bytes] = []
        size = 0
        for key in list(self._dirty):
            del self._dirty[key]
            notebook_id, doc = key
            room = self._rooms(notebook_id)
            if room is None or not room.has_peer(self):
                continue
            # Answers queued for this peer first, then what has changed since: one batch
            # (the room marks the document dirty again when it may have more).
            for _ in range(_GENERATE_PER_FLUSH):
                data = room.generate(self, doc)
                if data is None:
                    break
                envelope = SyncEnvelope(notebook_id=notebook_id, doc=doc, data=data)
                try:
                    # Outgoing frames are held to the protocol's limit (what every client
                    # accepts); max_frame_size is this daemon's limit for what it receives.
                    frame = framing.encode_frame(FrameKind.SYNC, encode(envelope))
                except ProtocolError as exc:
                    # The document outgrew one frame: this peer cannot be synced; drop it.
                    log.error("%r: cannot sync %s: %s", self, notebook_id, exc)
                    self._reply_error(
                        0, ErrorCode.PROTOCOL_ERROR, f"cannot sync notebook {notebook_id}: {exc}"
                    )
                    self._closed = True
                    break
                batch.append(frame)
                size += len(frame)
                if key not in self._dirty or size >= _WRITE_BATCH_BYTES:
                    break  # nothing more now, or the rest in the next write
                del self._dirty[key]
            else:
                self._dirty[key] = None  # more may follow: the next write asks again
        # Control frames queued so far go after the sync messages generated above, so an
        # event never overtakes the document changes made before it.
        while self._control and size < _WRITE_BATCH_BYTES:
            frame = self._control.popleft()
            batch.append(frame)
            size += len(frame)
        if batch:
            try:
                with anyio.fail_after(SEND_TIMEOUT):
                    await self._stream.send(b"".join(batch))
            except TimeoutError as exc:
                raise SlowClient from exc


def _salvage_id(payload: bytes) -> int:
    """Best effort: the ``id`` of an undecodable request, so the error reply can echo it."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return 0
    if isinstance(raw, dict) and isinstance(raw.get("id"), int):
        return int(raw["id"])
    return 0
