"""Accepting HTTP connections for uvicorn, with limits (issue 10 §1, "resource exhaustion").

uvicorn's own accept path is the event loop's server (``loop.create_server``): it accepts
whatever comes, as fast as it comes, and under uvloop a failed ``accept()`` (EMFILE: the
process is out of file descriptors) leaves the listener deaf. 127.0.0.1 is open to every
user of the machine, so another user's 1,100 idle connections would take every descriptor
the daemon has (the default soft limit is 1,024) and its Unix socket, kernels and files
with them.

So the web server accepts by hand, like the daemon's socket listener (``listener.py``):

- at most ``max_connections`` open HTTP connections (WebSockets included); one over the cap
  is closed at once (its descriptor is free again immediately);
- ``accept()`` failing for lack of descriptors or memory backs off (10 ms doubling to 1 s,
  sooner when one of our connections closes) and then accepts again: never fatal, never deaf;
- a connection that has not sent a complete request head within ``header_timeout`` seconds
  is closed (uvicorn has no such deadline: an idle or trickling connection would hold its
  slot forever).

Each accepted socket is handed to uvicorn's protocol with ``loop.connect_accepted_socket``:
everything after ``accept()`` is uvicorn's, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import struct
from collections.abc import Callable, Collection

import anyio
import h11

__all__ = ["HttpAcceptor", "default_max_connections"]

log = logging.getLogger(__name__)

_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
_BACKOFF_START = 0.01
_BACKOFF_MAX = 1.0


def default_max_connections() -> int:
    """A quarter of the process's descriptor limit, between 16 and 512 (256 under the
    default 1,024): the rest stays for the socket's clients, kernels and files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 512
    return max(16, min(512, soft // 4))


class HttpAcceptor:
    """Accept on ``sock`` (listening, non-blocking) into uvicorn's protocol factory.

    Args:
        protocol_factory: uvicorn's ``create_protocol`` (see ``server._Server``).
        connections: uvicorn's live set of connection protocols (``server_state``): the
            count the cap is checked against (a WebSocket counts as its HTTP connection did).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        protocol_factory: Callable[[], asyncio.Protocol],
        connections: Collection[asyncio.Protocol],
        max_connections: int,
        header_timeout: float = 10.0,
    ) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.connections = connections
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.refused = 0
        self.accept_failures = 0
        self.timed_out = 0

    async def run(self) -> None:
        """Accept until cancelled."""
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_START
        while True:
            try:
                await anyio.wait_readable(self.sock)
                conn, _ = self.sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if self.sock.fileno() == -1:
                    return
                if exc.errno in _TRANSIENT:
                    continue  # that client gave up; the next one is fine
                if exc.errno not in _EXHAUSTED:
                    raise
                self.accept_failures += 1
                if self.accept_failures == 1 or backoff >= _BACKOFF_MAX:
                    log.warning(
                        "web: cannot accept an HTTP connection: %s (%d open); retrying in %.2f s",
                        exc.strerror or exc,
                        len(self.connections),
                        backoff,
                    )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_START
            if len(self.connections) >= self.max_connections:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning(
                        "web: %d HTTP connections open (the limit); closing new ones (%d so far)",
                        len(self.connections),
                        self.refused,
                    )
                _close_now(conn)
                continue
            conn.setblocking(False)
            try:
                transport, protocol = await loop.connect_accepted_socket(
                    self.protocol_factory, conn
                )
            except OSError as exc:
                log.info("web: dropped a connection as it was accepted: %s", exc)
                conn.close()
                continue
            loop.call_later(self.header_timeout, self._check_started, transport, protocol)

    def _check_started(self, transport: asyncio.BaseTransport, protocol: object) -> None:
        """Close ``transport`` if its peer has not yet sent a complete request head (h11's
        state for the client is still IDLE and no request cycle runs). A connection that
        became a WebSocket has another protocol by now and is left alone."""
        if transport.is_closing() or protocol not in self.connections:
            return
        conn = getattr(protocol, "conn", None)
        if getattr(protocol, "cycle", None) is not None or conn is None:
            return
        if conn.their_state is h11.IDLE and conn.our_state is h11.IDLE:
            self.timed_out += 1
            transport.close()


def _close_now(conn: socket.socket) -> None:
    # SO_LINGER 0: the peer gets a reset and no TIME_WAIT is left behind on our side.
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
