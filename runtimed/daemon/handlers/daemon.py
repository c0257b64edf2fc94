"""Answers to the daemon requests: ``Ping``, ``DaemonStatus``, ``Shutdown``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import assert_never

from protocol import framing
from protocol.messages import DaemonStatus, Ok, Ping, Pong, Shutdown, StatusReply
from runtimed.config import DaemonConfig
from runtimed.daemon.handlers.notebooks import notebook_info
from runtimed.daemon.rooms import RoomRegistry
from runtimed.paths import RuntimedPaths
from runtimed.runtimes.manager import RuntimeManager
from runtimed.version import __version__

__all__ = ["DaemonHandlers", "DaemonReplyKind", "DaemonRequest"]

DaemonRequest = Ping | DaemonStatus | Shutdown
DaemonReplyKind = Pong | StatusReply | Ok


class DaemonHandlers:
    """Liveness, status and shutdown.

    Args:
        clients: how many client connections are open now.
        http_port: the HTTP endpoint's port now (None: disabled or not started).
        request_stop: ask the daemon to stop cleanly.
    """

    def __init__(
        self,
        paths: RuntimedPaths,
        rooms: RoomRegistry,
        runtimes: RuntimeManager,
        *,
        config: DaemonConfig,
        clients: Callable[[], int],
        http_port: Callable[[], int | None],
        request_stop: Callable[[], None],
    ) -> None:
        self._paths = paths
        self._rooms = rooms
        self._runtimes = runtimes
        self._config = config
        self._clients = clients
        self._http_port = http_port
        self._request_stop = request_stop
        self.started_at = time.time()

    def answer(self, request: DaemonRequest) -> DaemonReplyKind:
        match request:
            case Ping():
                return Pong(id=request.id)
            case DaemonStatus():
                return self.status(request)
            case Shutdown():
                self._request_stop()
                return Ok(id=request.id)
            case _:
                assert_never(request)

    def status(self, request: DaemonStatus) -> StatusReply:
        return StatusReply(
            id=request.id,
            pid=os.getpid(),
            version=__version__,
            protocol_version=framing.PROTOCOL_VERSION,
            socket=str(self._paths.socket),
            home=str(self._paths.home),
            uptime_seconds=time.time() - self.started_at,
            notebooks=[notebook_info(e, self._runtimes) for e in self._rooms.entries()],
            clients=self._clients(),
            blob_dir=str(self._paths.blobs),
            http_port=self._http_port(),
            kernels=self._runtimes.kernels(),
            max_kernels=self._config.runtimes.max_kernels,
            pool=self._runtimes.pool_info(),
        )
