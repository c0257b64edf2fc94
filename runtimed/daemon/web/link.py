"""A connection from the web server to its own daemon's Unix socket.

The browser is a client like any other: each notebook page's WebSocket is bridged to one
connection on the daemon's socket, speaking the protocol of docs/protocol.md. So a page
joins the notebook's room as a peer exactly as the Python client does, the daemon counts it
among the notebook's clients, and the web server needs nothing of the daemon's insides.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import SocketStream

import runtimed.aio  # noqa: F401  (anyio's raw-socket race under uvloop; see the module)
from protocol import framing, handshake
from protocol.errors import ProtocolError
from protocol.framing import Frame, FrameDecoder, FrameKind
from protocol.messages import (
    ClientRequest,
    DaemonMessage,
    ErrorReply,
    Reply,
    SyncEnvelope,
    decode_daemon_message,
    encode,
)
from runtimed.errors import ConnectionClosed, error_from_reply

__all__ = ["DaemonLink", "one_request"]

HELLO_TIMEOUT = 10.0


class DaemonLink:
    """One handshaken connection to the daemon. Frames are read by whoever owns the link."""

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder()
        self._pending: list[Frame] = []
        self._ids = itertools.count(1)
        self._send_lock = anyio.Lock()

    @classmethod
    async def connect(cls, socket: Path) -> DaemonLink:
        """Connect and handshake.

        Raises:
            ConnectionClosed: the daemon refused or closed the connection.
        """
        try:
            stream = await anyio.connect_unix(socket)
        except OSError as exc:
            raise ConnectionClosed(f"cannot reach the daemon on {socket}: {exc}") from exc
        link = cls(stream)
        try:
            await link._handshake()
        except BaseException:
            await stream.aclose()
            raise
        return link

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    async def _handshake(self) -> None:
        await self._stream.send(handshake.encode_client_hello())
        buffer = bytearray()
        with anyio.fail_after(HELLO_TIMEOUT):
            while True:
                try:
                    parsed = handshake.decode_daemon_hello(buffer)
                except ProtocolError as exc:
                    raise ConnectionClosed(str(exc)) from exc
                if parsed is not None:
                    break
                try:
                    buffer += await self._stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                    raise ConnectionClosed("the daemon closed the connection") from exc
        hello, used = parsed
        if not hello.accepted:
            raise ConnectionClosed(f"the daemon refused the connection: {hello.message}")
        if used < len(buffer):
            self._pending += self._decoder.feed(bytes(buffer[used:]))

    def next_id(self) -> int:
        return next(self._ids)

    async def send_request(self, request: ClientRequest) -> None:
        await self._send(framing.encode_frame(FrameKind.CONTROL, encode(request)))

    async def send_sync(self, envelope: SyncEnvelope) -> None:
        await self._send(framing.encode_frame(FrameKind.SYNC, encode(envelope)))

    async def _send(self, frame: bytes) -> None:
        async with self._send_lock:
            await self._stream.send(frame)

    async def receive_frames(self) -> list[Frame]:
        """The next frames from the daemon (at least one).

        Raises:
            ConnectionClosed: the daemon closed the connection.
        """
        if self._pending:
            frames, self._pending = self._pending, []
            return frames
        while True:
            try:
                data = await self._stream.receive(1 << 16)
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError) as exc:
                raise ConnectionClosed("the daemon closed the connection") from exc
            try:
                frames = self._decoder.feed(data)
            except ProtocolError as exc:
                raise ConnectionClosed(f"bad frame from the daemon: {exc}") from exc
            if frames:
                return frames

    async def request(self, request: ClientRequest) -> DaemonMessage:
        """Send ``request`` and return its reply (for links used only for requests).

        Raises:
            RuntimedError: the daemon answered with an error.
        """
        await self.send_request(request)
        while True:
            for frame in await self.receive_frames():
                if frame.kind is not FrameKind.CONTROL:
                    continue
                try:
                    message = decode_daemon_message(frame.payload)
                except ProtocolError as exc:
                    raise ConnectionClosed(str(exc)) from exc
                if isinstance(message, Reply) and message.id == request.id:
                    if isinstance(message, ErrorReply):
                        raise error_from_reply(message.code, message.message)
                    return message


async def one_request(socket: Path, request: ClientRequest) -> DaemonMessage:
    """Open a link, ask one thing, close it.

    Raises:
        RuntimedError: the daemon answered with an error, or could not be reached.
    """
    async with await DaemonLink.connect(socket) as link:
        return await link.request(request)
