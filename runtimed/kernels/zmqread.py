"""Reading a ``zmq.asyncio`` socket without trusting every wake-up.

A zmq socket's file descriptor is edge-triggered: it becomes readable when commands reach the
socket's mailbox, and any ``send``, ``recv`` or ``getsockopt(EVENTS)`` on the socket may
consume that edge. ``zmq.asyncio`` re-checks ``EVENTS`` after its own operations, but not after
every one (zeromq/pyzmq#2173): seen here, a kernel's ``execute_reply`` sat in the daemon's
shell socket (``EVENTS`` said ``POLLIN``) while ``await socket.recv_multipart()`` stayed pending
forever, the loop idle — the execution never ended and the suite hung.

:func:`read_frames` never depends on one wake-up alone. It takes whatever the socket holds
without waiting (``NOBLOCK`` receives while ``EVENTS`` has ``POLLIN``: also the fast path in a
burst, with no future per message), and then waits for more through pyzmq's future, but at
most :data:`RECHECK` seconds at a time: a future still pending then is cancelled (it had
received nothing, so nothing is lost) and the socket is drained again. A missed wake-up costs
at most :data:`RECHECK` seconds, and is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import zmq
import zmq.asyncio

__all__ = ["RECHECK", "read_frames"]

logger = logging.getLogger(__name__)

RECHECK = 0.5
"""Seconds a read waits on pyzmq's wake-up before looking at the socket itself."""


async def read_frames(
    socket: zmq.asyncio.Socket, on_frames: Callable[[list[bytes]], None], *, what: str
) -> None:
    """Call ``on_frames`` with every multipart message ``socket`` receives, in order, until
    cancelled.

    ``on_frames`` runs synchronously between receives (it must not block). ``what`` names the
    socket in the log line of a missed wake-up.

    Raises:
        zmq.ZMQError: the socket failed (e.g. it was closed).
    """
    sync: zmq.Socket[bytes] = zmq.Socket.shadow(socket.underlying)

    def readable() -> bool:
        return bool(cast(int, sync.get(zmq.EVENTS)) & zmq.POLLIN)

    missed = 0
    while True:
        while readable():
            on_frames(sync.recv_multipart(zmq.NOBLOCK))
        future = cast("asyncio.Future[list[bytes]]", socket.recv_multipart())
        try:
            while True:
                await asyncio.wait((future,), timeout=RECHECK)
                if future.done() or not future.cancel():
                    break
                if readable():
                    missed += 1
                    logger.info("%s: a zmq wake-up was missed (%d so far); reading", what, missed)
                    break
                future = cast("asyncio.Future[list[bytes]]", socket.recv_multipart())
        finally:
            if not future.done():
                future.cancel()
        if not future.cancelled():
            on_frames(future.result())
