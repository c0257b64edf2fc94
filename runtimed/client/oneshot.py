"""One request, one reply, blocking: what ``runt ps`` and ``runt daemon status`` need.

A command that only asks the daemon a question needs no event loop: :func:`ask` connects a
plain Unix socket, runs the handshake (:mod:`protocol.handshake`, sans-IO), sends one
request and reads frames until its reply (events and sync frames in between are skipped).
Not importing asyncio, anyio and uvloop, nor starting and tearing down a loop, is most of
such a command's cost: see ``bench/bench_run.py``'s ``ps`` figures.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from protocol import framing
from protocol.errors import ProtocolError, VersionMismatch
from protocol.framing import FrameDecoder, FrameKind
from protocol.handshake import ClientHandshake
from protocol.messages import ClientRequest, ErrorReply, Reply, decode_daemon_message, encode
from runtimed.errors import ConnectionClosed, DaemonNotRunning, error_from_reply
from runtimed.paths import check_socket_dir, default_socket_path

__all__ = ["ask"]

ReplyT = TypeVar("ReplyT", bound=Reply)

_REQUEST_ID = 1


def ask(
    path: str | Path | None,
    make: Callable[[int], ClientRequest],
    reply_type: type[ReplyT],
    *,
    timeout: float = 30.0,
) -> ReplyT:
    """Send ``make(id)`` to the daemon on ``path`` (default: the user's socket) and return
    its reply, which must be a ``reply_type``. Blocking; never starts a daemon.

    Raises:
        UnsafeDirectory: the socket's directory is not ours alone (see ``check_socket_dir``).
        DaemonNotRunning: nothing listens on the socket.
        VersionMismatch: the daemon speaks another protocol version.
        RuntimedError: the matching subclass for an ``ErrorReply``.
        ConnectionClosed: the daemon closed the connection first, or answered oddly.
        TimeoutError: no reply within ``timeout`` seconds.
    """
    where = Path(path) if path else default_socket_path()
    check_socket_dir(where)  # never talk through a socket directory someone else controls
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(where))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(
                f"no runtimed daemon on {where}; start one with 'runt daemon start'"
            ) from exc
        shake = ClientHandshake()
        sock.sendall(shake.hello)
        while not shake.done:
            data = _receive(sock, deadline)
            if not data:
                raise ConnectionClosed(str(shake.closed_early()))
            try:
                shake.receive(data)
            except VersionMismatch:
                raise
            except ProtocolError as exc:
                raise ConnectionClosed(str(exc)) from exc
        request = make(_REQUEST_ID)
        sock.sendall(framing.encode_frame(FrameKind.CONTROL, encode(request)))
        decoder = FrameDecoder()
        frames = decoder.feed(shake.leftover)
        while True:
            for frame in frames:
                if frame.kind is not FrameKind.CONTROL:
                    continue  # sync frames: this connection has no notebooks
                message = decode_daemon_message(frame.payload)
                if getattr(message, "id", None) != _REQUEST_ID:
                    continue  # an event, or an error about nothing we sent
                if isinstance(message, reply_type):
                    return message
                if isinstance(message, ErrorReply):
                    raise error_from_reply(message.code, message.message, message.details)
                raise ConnectionClosed(
                    f"the daemon answered {type(request).__name__} with "
                    f"{type(message).__name__}; expected {reply_type.__name__}"
                )
            data = _receive(sock, deadline)
            if not data:
                raise ConnectionClosed("the daemon closed the connection before it answered")
            try:
                frames = decoder.feed(data)
            except ProtocolError as exc:
                raise ConnectionClosed(f"protocol error from the daemon: {exc}") from exc


def _receive(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out waiting for the daemon")
    sock.settimeout(left)
    try:
        return sock.recv(1 << 18)
    except TimeoutError:
        raise
    except ConnectionError:
        return b""
