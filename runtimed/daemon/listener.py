"""The Unix-socket listener: accepts connections within a cap, survives fd exhaustion.

Running out of file descriptors is a condition of the moment, not a fault of the daemon:
``accept()`` failing with EMFILE/ENFILE (or ENOBUFS/ENOMEM) is logged and retried after a
back-off that grows to one second, while every connection already accepted keeps being
served. A connection beyond ``max_connections`` is answered with a refusing handshake that
says so (``docs/protocol.md``, Handshake) and closed; it never reaches a session.

:class:`ReceiveBudget` bounds the memory every connection together may hold in partly
received frames (each connection is bounded on its own by the frame limits).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import SocketStream, TaskStatus, UNIXSocketStream

import runtimed.aio  # noqa: F401  (anyio's raw-socket race under uvloop; see the module)
from protocol import handshake

__all__ = ["DEFAULT_MAX_CONNECTIONS", "ReceiveBudget", "UnixListener"]

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256
_BACKOFF_START = 0.01
_BACKOFF_MAX = 1.0
_REFUSE_TIMEOUT = 2.0
_BACKLOG = 128
# Out of descriptors (per process / system-wide) or of kernel memory for the socket.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ReceiveBudget:
    """Bytes of partly received frames held by all connections together, against a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[int, int] = {}
        self.total = 0

    def hold(self, owner: int, size: int) -> bool:
        """Record that ``owner`` now buffers ``size`` bytes; False (nothing recorded) when
        that would take the total over the limit."""
        previous = self._held.get(owner, 0)
        if size > previous and self.total - previous + size > self.limit:
            return False
        self.total += size - previous
        if size:
            self._held[owner] = size
        else:
            self._held.pop(owner, None)
        return True

    def release(self, owner: int) -> None:
        self.hold(owner, 0)


class UnixListener:
    """Listen on ``path`` (mode 0600) and run ``on_connect(stream)`` for each connection.

    Args:
        path: the socket path (its directory must exist and be ours; see RuntimedPaths).
        on_connect: serves one connection; it runs in the listener's task group.
        max_connections: connections served at once; more are refused at the handshake.
    """

    def __init__(
        self,
        path: Path,
        on_connect: Callable[[SocketStream], Awaitable[None]],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self._on_connect = on_connect
        self.max_connections = max_connections
        self.active = 0
        self.refused = 0
        """Connections refused for the cap (for tests and status)."""
        self.accept_failures = 0
        """accept() calls that failed for want of descriptors or memory."""
        self._sock: socket.socket | None = None
        self._freed = anyio.Event()

    async def bind(self) -> None:
        """Create the socket, owner-only from the start (umask), then 0600 explicitly."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            old_umask = os.umask(0o177)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old_umask)
            os.chmod(self.path, 0o600)
            sock.listen(_BACKLOG)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept until cancelled or :meth:`aclose`; binds first if :meth:`bind` was not
        called."""
        if self._sock is None:
            await self.bind()
        sock = self._sock
        assert sock is not None
        async with anyio.create_task_group() as tg:
            task_status.started()
            backoff = _BACKOFF_START
            while True:
                # accept() by hand rather than the event loop's sock_accept: uvloop's never
                # completes once accept() has failed with EMFILE, so the daemon went deaf.
                try:
                    await anyio.wait_readable(sock)
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue  # another waiter (or a client that gave up) took it
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                except OSError as exc:
                    if sock.fileno() == -1:
                        return  # closed by aclose()
                    if exc.errno not in _EXHAUSTED:
                        raise
                    self.accept_failures += 1
                    if self.accept_failures == 1 or backoff >= _BACKOFF_MAX:
                        log.warning(
                            "cannot accept a connection: %s (%d served); retrying in %.2f s",
                            exc.strerror or exc,
                            self.active,
                            backoff,
                        )
                    # Until a connection of ours closes (freeing a descriptor) or the back-off
                    # ends (descriptors freed elsewhere in the process or the system).
                    self._freed = anyio.Event()
                    with anyio.move_on_after(backoff):
                        await self._freed.wait()
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                backoff = _BACKOFF_START
                try:
                    stream = await UNIXSocketStream.from_socket(conn)
                except BaseException:
                    conn.close()
                    raise
                if self.active >= self.max_connections:
                    self.refused += 1
                    tg.start_soon(self._refuse, stream)
                else:
                    self.active += 1
                    tg.start_soon(self._serve, stream)

    async def _serve(self, stream: SocketStream) -> None:
        try:
            await self._on_connect(stream)
        finally:
            self.active -= 1
            self._freed.set()

    async def _refuse(self, stream: SocketStream) -> None:
        """Read the client's hello (so it sees our answer, not a reset), refuse, close."""
        message = (
            f"too many connections to this daemon (limit {self.max_connections}, "
            "daemon.max_connections in config.toml); close some clients and retry"
        )
        log.warning("refused a connection: %d already served (the limit)", self.active)
        try:
            with anyio.move_on_after(_REFUSE_TIMEOUT):
                received = 0
                while received < handshake.CLIENT_HELLO_SIZE:
                    received += len(await stream.receive(handshake.CLIENT_HELLO_SIZE - received))
                await stream.send(handshake.encode_daemon_hello(accepted=False, message=message))
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            pass
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
                await stream.aclose()

    async def aclose(self) -> None:
        """Stop accepting (connections already served are not touched)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            anyio.notify_closing(sock)  # wakes run()'s wait_readable
            sock.close()
