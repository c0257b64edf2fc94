"""The daemon: wires the parts, runs their lifecycle, and dispatches requests.

The parts, each with one job: the listener and its client sessions (here), the room registry
(:mod:`~runtimed.daemon.rooms`: open notebooks, each in its own supervised scope with its
persister and executor), the runtime manager, the HTTP endpoint, and one handler module per
request group (:mod:`~runtimed.daemon.handlers`) behind the thin ``match`` of :meth:`handle`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from typing import TYPE_CHECKING, assert_never

import anyio
from anyio.abc import SocketStream, TaskStatus

from blobstore import BlobStore, GcReport
from protocol.messages import (
    CleanEnvs,
    ClearOutputs,
    ClientRequest,
    CloseNotebook,
    CollectGarbage,
    Complete,
    CreateNotebook,
    DaemonReply,
    DaemonShuttingDown,
    DaemonStatus,
    ExecuteCell,
    Flush,
    GetConfig,
    History,
    InputReply,
    Inspect,
    InterruptKernel,
    JoinNotebook,
    ListEnvs,
    ListNotebooks,
    ListRuntimes,
    OpenNotebook,
    Ping,
    RestartKernel,
    RunAll,
    SaveNotebook,
    SendComm,
    Shutdown,
    encode,
)
from runtimed.config import DaemonConfig
from runtimed.daemon.adopted import Orphans
from runtimed.daemon.connection import ClientSession
from runtimed.daemon.handlers import runtimes as runtime_handlers
from runtimed.daemon.handlers.blobs import BlobHandlers
from runtimed.daemon.handlers.comms import CommHandlers
from runtimed.daemon.handlers.daemon import DaemonHandlers
from runtimed.daemon.handlers.execution import ExecutionHandlers
from runtimed.daemon.handlers.notebooks import NotebookHandlers
from runtimed.daemon.handlers.services import ServiceHandlers
from runtimed.daemon.instance import InstanceLock
from runtimed.daemon.listener import ReceiveBudget, UnixListener
from runtimed.daemon.rooms import RoomRegistry
from runtimed.daemon.runner import WarmRunner
from runtimed.daemon.scope import is_fault
from runtimed.errors import ShuttingDown
from runtimed.kernels.records import CURRENT as CURRENT_KERNEL_RECORDS
from runtimed.kernels.records import KernelRecords
from runtimed.paths import RuntimedPaths
from runtimed.runtimes.manager import RuntimeManager
from runtimed.storage.documents import DocumentStore
from runtimed.version import __version__

if TYPE_CHECKING:
    from runtimed.daemon.web import WebServer

__all__ = ["Daemon", "DaemonConfig"]

log = logging.getLogger(__name__)


class Daemon:
    """Serve notebooks on ``paths.socket`` until :meth:`request_stop` or cancellation."""

    def __init__(self, paths: RuntimedPaths, *, config: DaemonConfig | None = None) -> None:
        self.paths = paths
        self.config = config or DaemonConfig()
        self._sessions: set[ClientSession] = set()
        self._receive_budget = ReceiveBudget(self.config.max_receive_buffer_total)
        self._stop = anyio.Event()
        self._stopping = False
        self.blobs = BlobStore(paths.blobs)
        self.http_port: int | None = None
        self.web: WebServer | None = None  # the web notebook (runtimed.daemon.web)
        self.runtimes = RuntimeManager(
            self.config.runtimes,
            home=paths.home,
            startup_timeout=self.config.kernel_startup_timeout,
        )
        self.rooms = RoomRegistry(
            DocumentStore(paths.documents), self.blobs, self.runtimes, config=self.config
        )
        self._notebooks = NotebookHandlers(self.rooms, self.runtimes, config=self.config)
        self._execution = ExecutionHandlers(self.rooms, config=self.config)
        self._services = ServiceHandlers(self.rooms, config=self.config)
        self._comms = CommHandlers(self.rooms)
        self._blob_handlers = BlobHandlers(self.rooms, self.blobs, config=self.config)
        self.runner = WarmRunner(paths.socket, enabled=self.config.warm_runner)
        self._daemon_handlers = DaemonHandlers(
            paths,
            self.rooms,
            self.runtimes,
            config=self.config,
            clients=lambda: len(self._sessions),
            http_port=lambda: self.http_port,
            request_stop=self.request_stop,
        )

    @property
    def started_at(self) -> float:
        return self._daemon_handlers.started_at

    # ------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket, serve, and on stop shut down cleanly.

        Raises:
            DaemonAlreadyRunning: another daemon holds this socket.
        """
        lock = InstanceLock(self.paths.lock, socket=self.paths.socket)
        # mkdirs, the lock file and the stale socket are file system calls: a worker thread.
        await anyio.to_thread.run_sync(self._claim, lock)
        try:
            # Holding the lock: whatever kernels a previous daemon on this home left running
            # are stopped before any of ours start (docs/principles.md, what survives).
            records = KernelRecords(self.paths.home / "kernels")
            # Live kernels of notebooks are kept for adoption (runtimed.daemon.adopted).
            recovered = await anyio.to_thread.run_sync(records.recover)
            self.rooms.orphans = Orphans(records, recovered.adoptable)
            CURRENT_KERNEL_RECORDS.set(records)
            listener = UnixListener(
                self.paths.socket, self._on_connect, max_connections=self.config.max_connections
            )
            await listener.bind()
            log.info(
                "runtimed %s listening on %s (pid %d)", __version__, self.paths.socket, os.getpid()
            )
            async with anyio.create_task_group() as tg:
                await tg.start(self.rooms.orphans.run)
                await tg.start(self.runtimes.run)
                await tg.start(self.rooms.run)
                tg.start_soon(listener.run)
                await tg.start(self.runner.run)
                if self.config.http_port is not None:
                    # Imported once the socket listens and the pool's kernel is starting
                    # (Starlette and uvicorn load while the first client's kernel launches),
                    # in a worker thread: an import reads files.
                    web = await anyio.to_thread.run_sync(
                        importlib.import_module, "runtimed.daemon.web"
                    )
                    self.web = web.WebServer(
                        socket=self.paths.socket,
                        home=self.paths.home,
                        blobs=self.blobs,
                        port=self.config.http_port,
                        rooms=self.rooms.room_or_none,
                    )
                    self.http_port = await tg.start(self.web.run)
                task_status.started()
                await self._stop.wait()
                await self._shutdown(listener)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._release, lock)
            log.info("runtimed stopped")

    def _claim(self, lock: InstanceLock) -> None:
        self.paths.ensure()
        lock.acquire()
        with contextlib.suppress(FileNotFoundError):
            self.paths.socket.unlink()  # stale: its daemon no longer holds the lock

    def _release(self, lock: InstanceLock) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.paths.socket.unlink()
        lock.release()

    async def _on_connect(self, stream: SocketStream) -> None:
        session = ClientSession(
            stream,
            handler=self.handle,
            rooms=self.rooms.room_or_none,
            max_frame_size=self.config.max_frame_size,
            max_control_frame_size=self.config.max_control_frame_size,
            budget=self._receive_budget,
        )
        self._sessions.add(session)
        try:
            await session.run()
        except BaseException as exc:
            # A bug in serving one client (or a panic of the Automerge binding, which is a
            # BaseException) closes that connection, never the daemon.
            if not is_fault(exc):
                raise
            log.exception("%r: internal error; connection closed", session)
        finally:
            self._sessions.discard(session)
            for notebook_id in list(session.open_notebooks):
                entry = self.rooms.get(notebook_id)
                if entry is not None:
                    self.rooms.leave(entry, session, unload=False)

    async def _shutdown(self, listener: UnixListener) -> None:
        self._stopping = True
        log.info(
            "shutting down: %d notebooks, %d clients",
            len(self.rooms.entries()),
            len(self._sessions),
        )
        with anyio.CancelScope(shield=True):
            payload = encode(DaemonShuttingDown())
            for session in list(self._sessions):
                session.send_event_bytes(payload)
            # Checkpoint every room, then stop their kernels, each room with its own bound.
            await self.rooms.close_all(checkpoint=True)
            with anyio.move_on_after(self.config.shutdown_timeout):
                await self.runtimes.aclose()  # pooled kernels, environment builds
            with anyio.move_on_after(self.config.shutdown_timeout):
                await listener.aclose()

    # ------------------------------------------------------------ requests

    async def collect_garbage(self, *, grace_seconds: float) -> GcReport:
        """See :meth:`BlobHandlers.collect`."""
        return await self._blob_handlers.collect(grace_seconds=grace_seconds)

    async def handle(self, session: ClientSession, request: ClientRequest) -> DaemonReply:
        """Answer one request (raising a RuntimedError becomes an ErrorReply)."""
        if self._stopping and not isinstance(request, Ping | DaemonStatus):
            raise ShuttingDown("the daemon is shutting down")
        match request:
            case Ping() | DaemonStatus() | Shutdown():
                return self._daemon_handlers.answer(request)
            case (
                OpenNotebook()
                | JoinNotebook()
                | CreateNotebook()
                | CloseNotebook()
                | SaveNotebook()
                | Flush()
                | ListNotebooks()
            ):
                return await self._notebooks.answer(session, request)
            case (
                ExecuteCell()
                | RunAll()
                | InterruptKernel()
                | RestartKernel()
                | ClearOutputs()
                | InputReply()
            ):
                return await self._execution.answer(session, request)
            case Complete() | Inspect() | History():
                return await self._services.answer(session, request)
            case SendComm():
                return await self._comms.send(session, request)
            case CollectGarbage():
                return await self._blob_handlers.collect_garbage(request)
            case ListRuntimes() | ListEnvs() | CleanEnvs() | GetConfig():
                return await runtime_handlers.answer(self.runtimes, self.config, request)
            case _:
                assert_never(request)
