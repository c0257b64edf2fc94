"""The daemon: listens on the Unix socket, owns every notebook room and their kernels."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import assert_never

import anyio
import msgspec
from anyio.abc import SocketStream, TaskStatus

from blobstore import BlobStore, GcReport
from protocol import framing
from protocol.messages import (
    CellQueued,
    CleanEnvs,
    ClearOutputs,
    ClientRequest,
    CloseNotebook,
    CollectGarbage,
    CreateNotebook,
    DaemonShuttingDown,
    DaemonStatus,
    ExecuteCell,
    GarbageCollected,
    GetConfig,
    InputReply,
    InterruptKernel,
    JoinNotebook,
    ListEnvs,
    ListNotebooks,
    ListRuntimes,
    NotebookClosed,
    NotebookInfo,
    NotebookList,
    NotebookOpened,
    NotebookSaved,
    Ok,
    OpenNotebook,
    Ping,
    Pong,
    RestartKernel,
    RunAll,
    RunAllQueued,
    SaveNotebook,
    Shutdown,
    StatusReply,
    encode,
)
from runtimed.config import DaemonConfig
from runtimed.daemon.connection import ClientSession
from runtimed.daemon.executor import NotebookExecutor
from runtimed.daemon.handlers import runtimes as runtime_service
from runtimed.daemon.instance import InstanceLock
from runtimed.daemon.loading import load_room, new_room, notebook_for_save
from runtimed.daemon.room import NotebookRoom
from runtimed.daemon.web import WebServer
from runtimed.documents.manifests import manifest_hashes
from runtimed.errors import InvalidRequest, NotebookNotFound, ShuttingDown
from runtimed.paths import RuntimedPaths
from runtimed.runtimes.manager import RuntimeManager
from runtimed.storage.documents import DocumentStore, NotebookMeta, file_digest
from runtimed.storage.ipynb import write_notebook_atomic
from runtimed.version import __version__

__all__ = ["Daemon", "DaemonConfig"]

log = logging.getLogger(__name__)


_PERSIST_RETRY = 1.0  # s between attempts to persist a notebook after a failed write


class _OpenRoom:
    """A room plus what the daemon keeps beside it."""

    def __init__(self, room: NotebookRoom, *, file_sha256: str | None) -> None:
        self.room = room
        self.file_sha256 = file_sha256
        self.executor: NotebookExecutor | None = None
        self.cull_scope: anyio.CancelScope | None = None
        # What is on disk already (DocumentStore), so a persist writes only what changed.
        self.persisted_at = float("-inf")  # when the runtime snapshot was last written
        self.runtime_dirty = True
        self.saved_key: str | None = None
        self.saved_heads: list[bytes] | None = None
        self.saved_meta: NotebookMeta | None = None
        self.failed_at = float("-inf")  # the last persist that failed (full disk, ...)


class Daemon:
    """Serve notebooks on ``paths.socket`` until :meth:`request_stop` or cancellation."""

    def __init__(self, paths: RuntimedPaths, *, config: DaemonConfig | None = None) -> None:
        self.paths = paths
        self.config = config or DaemonConfig()
        self.started_at = time.time()
        self._rooms: dict[str, _OpenRoom] = {}
        self._by_path: dict[Path, str] = {}
        self._open_locks: dict[Path, anyio.Lock] = {}
        self._sessions: set[ClientSession] = set()
        self._stop = anyio.Event()
        self._stopping = False
        # notebooks with a change to persist (what changed is found out when persisting)
        self._persist_wanted: set[str] = set()
        self._persist_wake = anyio.Event()
        self._store = DocumentStore(paths.documents)
        self.blobs = BlobStore(paths.blobs)
        self._tg: anyio.abc.TaskGroup | None = None
        self.http_port: int | None = None
        self.web: WebServer | None = None  # the web notebook (runtimed.daemon.web)
        self.runtimes = RuntimeManager(
            self.config.runtimes,
            home=paths.home,
            startup_timeout=self.config.kernel_startup_timeout,
        )

    # ------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket, serve, and on stop shut down cleanly.

        Raises:
            DaemonAlreadyRunning: another daemon holds this socket.
        """
        self.paths.ensure()
        lock = InstanceLock(self.paths.lock, socket=self.paths.socket)
        lock.acquire()
        try:
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()  # stale: its daemon no longer holds the lock
            old_umask = os.umask(0o177)
            try:
                listener = await anyio.create_unix_listener(self.paths.socket)
            finally:
                os.umask(old_umask)
            os.chmod(self.paths.socket, 0o600)
            log.info(
                "runtimed %s listening on %s (pid %d)", __version__, self.paths.socket, os.getpid()
            )
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self.runtimes.run)
                tg.start_soon(self._serve, listener)
                tg.start_soon(self._persister)
                if self.config.http_port is not None:
                    self.web = WebServer(
                        socket=self.paths.socket,
                        home=self.paths.home,
                        blobs=self.blobs,
                        port=self.config.http_port,
                        rooms=self._room_or_none,
                    )
                    self.http_port = await tg.start(self.web.run)
                task_status.started()
                await self._stop.wait()
                await self._shutdown(listener)
                tg.cancel_scope.cancel()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
            lock.release()
            log.info("runtimed stopped")

    async def _serve(self, listener: anyio.abc.Listener[SocketStream]) -> None:
        async with listener:
            await listener.serve(self._on_connect)

    async def _on_connect(self, stream: SocketStream) -> None:
        session = ClientSession(
            stream,
            handler=self.handle,
            rooms=self._room_or_none,
            max_frame_size=self.config.max_frame_size,
        )
        self._sessions.add(session)
        try:
            await session.run()
        except Exception:
            # A bug in serving one client closes that connection, never the daemon.
            log.exception("%r: internal error; connection closed", session)
        finally:
            self._sessions.discard(session)
            for notebook_id in list(session.open_notebooks):
                entry = self._rooms.get(notebook_id)
                if entry is not None:
                    self._leave(entry, session, unload=False)

    async def _shutdown(self, listener: anyio.abc.Listener[SocketStream]) -> None:
        self._stopping = True
        log.info("shutting down: %d notebooks, %d clients", len(self._rooms), len(self._sessions))
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.shutdown_timeout):
            payload = encode(DaemonShuttingDown())
            for session in list(self._sessions):
                session.send_event_bytes(payload)
            for entry in list(self._rooms.values()):
                await self._close_room(entry, checkpoint=True)
            await self.runtimes.aclose()  # pooled kernels, environment builds
            await listener.aclose()

    # ------------------------------------------------------------ rooms

    def _room_or_none(self, notebook_id: str) -> NotebookRoom | None:
        entry = self._rooms.get(notebook_id)
        return entry.room if entry else None

    def _entry(self, notebook_id: str) -> _OpenRoom:
        entry = self._rooms.get(notebook_id)
        if entry is None:
            raise NotebookNotFound(
                f"no open notebook with id {notebook_id!r}; open it first (runt ps lists them)"
            )
        return entry

    def _joined(self, session: ClientSession, notebook_id: str) -> _OpenRoom:
        entry = self._entry(notebook_id)
        if notebook_id not in session.open_notebooks:
            raise InvalidRequest(f"notebook {notebook_id!r} is not open on this connection")
        return entry

    async def open_path(self, path: Path) -> _OpenRoom:
        """The room for ``path``, loading it if no client has it open."""
        path = await _resolved(path)
        lock = self._open_locks.setdefault(path, anyio.Lock())
        async with lock:
            existing = self._by_path.get(path)
            if existing is not None and existing in self._rooms:
                return self._rooms[existing]
            room, digest = await load_room(path, self._store, self.blobs)
            return self._register(room, file_sha256=digest)

    def _register(self, room: NotebookRoom, *, file_sha256: str | None) -> _OpenRoom:
        entry = _OpenRoom(room, file_sha256=file_sha256)
        room._on_notebook_change = lambda r: self._want_persist(r.notebook_id)
        room._on_runtime_change = lambda r: self._runtime_changed(r.notebook_id)
        self._rooms[room.notebook_id] = entry
        if room.path is not None:
            self._by_path[room.path] = room.notebook_id
        return entry

    def _leave(self, entry: _OpenRoom, session: ClientSession, *, unload: bool) -> None:
        """``session`` left the room; a room nobody has open is closed (kernel stopped) at once
        when the last client asked to ``unload`` it, else after ``idle_timeout`` of idleness."""
        entry.room.leave(session)
        if entry.room.peers or self._stopping or self._tg is None:
            return
        if entry.cull_scope is not None:
            entry.cull_scope.cancel()
        entry.cull_scope = anyio.CancelScope()
        self._tg.start_soon(
            self._cull_when_idle,
            entry,
            entry.cull_scope,
            0.0 if unload else self.config.idle_timeout,
        )

    async def _cull_when_idle(
        self, entry: _OpenRoom, scope: anyio.CancelScope, delay: float
    ) -> None:
        with scope:
            await anyio.sleep(delay)
            if entry.executor is not None:
                await entry.executor.wait_idle()
            if entry.room.peers or self._rooms.get(entry.room.notebook_id) is not entry:
                return
            scope.shield = True
            # Hold the path's open lock so an open racing this close waits, then loads the
            # document this close persists, instead of joining a room being torn down.
            path = entry.room.path
            lock = self._open_locks.setdefault(path, anyio.Lock()) if path else None
            async with lock if lock is not None else contextlib.nullcontext():
                if entry.room.peers:
                    return
                log.info("closing %s: no clients and idle", path or entry.room.notebook_id)
                await self._close_room(entry, checkpoint=False)

    async def _close_room(self, entry: _OpenRoom, *, checkpoint: bool) -> None:
        room = entry.room
        if entry.executor is not None:
            await entry.executor.aclose()
        if checkpoint and room.path is not None and room.dirty_since_save:
            try:
                await self.save_room(entry, None)
            except Exception:
                log.exception("could not checkpoint %s while closing", room.path)
        await self._persist_now(entry)
        self._unregister(entry)

    def _unregister(self, entry: _OpenRoom) -> None:
        room = entry.room
        if self._rooms.get(room.notebook_id) is entry:
            del self._rooms[room.notebook_id]
        if room.path is not None and self._by_path.get(room.path) == room.notebook_id:
            del self._by_path[room.path]

    async def save_room(self, entry: _OpenRoom, path: Path | None) -> Path:
        room = entry.room
        target = await _resolved(path) if path else room.path
        if target is None:
            raise InvalidRequest("this notebook has no path yet; save it with a path")
        if target != room.path and target in self._by_path:
            raise InvalidRequest(f"{target} is open as another notebook; close it first")
        nb = await notebook_for_save(room, self.blobs)
        await anyio.to_thread.run_sync(write_notebook_atomic, target, nb)
        entry.file_sha256 = await anyio.to_thread.run_sync(file_digest, target)
        if room.path is None or target != room.path:
            if room.path is not None:
                self._by_path.pop(room.path, None)
            room.path = target
            self._by_path[target] = room.notebook_id
        room.dirty_since_save = False
        # Record the new file hash now, not after the debounce: a crash in that window would
        # make the daemon take its own checkpoint for an outside change.
        await self._persist_now(entry)
        return target

    # ------------------------------------------------------------ persistence

    def _runtime_changed(self, notebook_id: str) -> None:
        entry = self._rooms.get(notebook_id)
        if entry is not None:
            entry.runtime_dirty = True
            self._want_persist(notebook_id)

    def _want_persist(self, notebook_id: str) -> None:
        self._persist_wanted.add(notebook_id)
        self._persist_wake.set()

    async def _persister(self) -> None:
        """Persist changed notebooks: edits after ``persist_debounce`` (no acknowledged edit
        should wait long for disk), runtime-only changes (outputs, states) at most every
        ``runtime_persist_interval`` — a running notebook changes those on every cell."""
        while True:
            await self._persist_wake.wait()
            self._persist_wake = anyio.Event()
            await anyio.sleep(self.config.persist_debounce)  # debounce: batch a burst
            wanted, self._persist_wanted = self._persist_wanted, set()
            now = anyio.current_time()
            for notebook_id in wanted:
                entry = self._rooms.get(notebook_id)
                if entry is None:
                    continue
                if now - entry.failed_at < _PERSIST_RETRY:
                    self._persist_wanted.add(notebook_id)  # the disk failed just now: later
                    continue
                # The notebook document goes out now if its heads moved; the runtime
                # snapshot only when its interval has passed.
                runtime_due = now - entry.persisted_at >= self.config.runtime_persist_interval
                await self._persist_now(entry, runtime=runtime_due)
                if entry.runtime_dirty:
                    self._persist_wanted.add(notebook_id)  # later
            if self._persist_wanted:
                self._persist_wake.set()

    async def _persist_now(self, entry: _OpenRoom, *, runtime: bool = True) -> None:
        """Write what changed since the last persist: the notebook document if its heads
        moved, the runtime snapshot if it changed (and ``runtime``), the file record if it
        changed.  A running notebook edits only metadata per cell: one file, not three."""
        room = entry.room
        key = DocumentStore.key_for(room.path, room.notebook_id)
        if key != entry.saved_key:  # first persist, or saved under a new path: everything
            entry.saved_heads = entry.saved_meta = None
            entry.runtime_dirty, runtime = True, True
        # Serialise on the event loop (the documents are not shared with threads), write in one.
        heads = room.notebook.heads()
        notebook = room.notebook.save() if heads != entry.saved_heads else None
        snapshot = None
        if runtime and entry.runtime_dirty:
            snapshot = room.runtime.snapshot()
            entry.runtime_dirty = False
            entry.persisted_at = anyio.current_time()
        path = str(room.path) if room.path else None
        meta = (path, room.notebook_id, entry.file_sha256)
        changed_meta = meta if meta != entry.saved_meta else None
        if notebook is None and snapshot is None and changed_meta is None:
            return
        try:
            await anyio.to_thread.run_sync(
                lambda: self._store.save(
                    key, notebook=notebook, runtime=snapshot, meta=changed_meta
                )
            )
        except OSError as exc:
            # Kept in memory and retried (_persister) until the disk takes it again.
            log.warning("could not persist notebook %s (retrying): %s", room.notebook_id, exc)
            entry.runtime_dirty = entry.runtime_dirty or snapshot is not None
            entry.failed_at = anyio.current_time()
            self._persist_wanted.add(room.notebook_id)
            return
        entry.saved_key, entry.saved_heads, entry.saved_meta = key, heads, meta

    # ------------------------------------------------------------ execution

    def executor(self, entry: _OpenRoom) -> NotebookExecutor:
        if entry.executor is None:
            if self._tg is None or self._stopping:
                raise ShuttingDown("the daemon is shutting down")
            entry.executor = NotebookExecutor(
                entry.room, config=self.config, blobs=self.blobs, runtimes=self.runtimes
            )
            self._tg.start_soon(entry.executor.run)
        return entry.executor

    # ------------------------------------------------------------ blobs

    async def collect_garbage(self, *, grace_seconds: float) -> GcReport:
        """Sweep blobs referenced by no open notebook, persisted document or running
        execution (those pin theirs) and older than ``grace_seconds``."""
        if grace_seconds < 0:
            raise InvalidRequest("grace_seconds must be >= 0")
        # Bring every pending snapshot up to date first: a snapshot on disk that still names
        # a blob the live document dropped would, after a crash, reload a missing blob.
        pending, self._persist_wanted = self._persist_wanted, set()
        for notebook_id in pending:
            entry = self._rooms.get(notebook_id)
            if entry is not None:
                await self._persist_now(entry)

        async def referenced() -> set[str]:
            hashes: set[str] = set()
            open_keys = set()
            for entry in list(self._rooms.values()):
                runtime = entry.room.runtime
                open_keys.add(DocumentStore.key_for(entry.room.path, entry.room.notebook_id))
                for cell_id in runtime.cell_ids():
                    for manifest in runtime.cell_state(cell_id)[1]:
                        hashes |= manifest_hashes(manifest)
            # Open notebooks are marked from their live documents (their snapshots may lag).
            skip = frozenset(open_keys)
            hashes |= await anyio.to_thread.run_sync(
                lambda: self._store.referenced_blobs(skip_keys=skip)
            )
            return hashes

        report = await self.blobs.gc(referenced=referenced, grace_seconds=grace_seconds)
        log.info(
            "gc: removed %d blobs (%d bytes), kept %d",
            report.blobs_removed,
            report.bytes_freed,
            report.blobs_kept,
        )
        return report

    # ------------------------------------------------------------ requests

    def _info(self, entry: _OpenRoom) -> NotebookInfo:
        room = entry.room
        kernel = room.runtime.kernel() if room.runtime.ready else {}
        return NotebookInfo(
            notebook_id=room.notebook_id,
            path=str(room.path) if room.path else None,
            cells=len(room.notebook),
            clients=len(room.peers),
            kernel=runtime_service.kernel_info(
                self.runtimes,
                room.notebook_id,
                state=str(kernel.get("state", "not_started")),
                name=str(kernel.get("name", "")),
                pid=kernel.get("pid") if isinstance(kernel.get("pid"), int) else None,
            ),
            queue=room.runtime.queue(),
            running=room.runtime.running(),
        )

    async def handle(self, session: ClientSession, request: ClientRequest) -> msgspec.Struct:
        """Answer one request (raising a RuntimedError becomes an ErrorReply)."""
        if self._stopping and not isinstance(request, Ping | DaemonStatus):
            raise ShuttingDown("the daemon is shutting down")
        match request:
            case Ping():
                return Pong(id=request.id)
            case OpenNotebook(path=path):
                entry = await self.open_path(Path(path))
                self._prewarm(entry)
                return self._join(session, entry, request.id)
            case JoinNotebook(notebook_id=notebook_id):
                return self._join(session, self._entry(notebook_id), request.id)
            case CreateNotebook(path=path, kernel_name=kernel_name):
                entry = await self._create(Path(path) if path else None, kernel_name)
                self._prewarm(entry)
                return self._join(session, entry, request.id)
            case CloseNotebook(notebook_id=notebook_id, heads=heads):
                entry = self._joined(session, notebook_id)
                if heads:
                    await entry.room.wait_for_heads(heads, timeout=self.config.heads_timeout)
                session.open_notebooks.discard(notebook_id)
                self._leave(entry, session, unload=request.unload)
                return NotebookClosed(id=request.id, notebook_id=notebook_id)
            case SaveNotebook(notebook_id=notebook_id, path=path, heads=heads):
                entry = self._joined(session, notebook_id)
                if heads:
                    await entry.room.wait_for_heads(heads, timeout=self.config.heads_timeout)
                saved = await self.save_room(entry, Path(path) if path else None)
                return NotebookSaved(id=request.id, notebook_id=notebook_id, path=str(saved))
            case ListNotebooks():
                return NotebookList(
                    id=request.id, notebooks=[self._info(e) for e in self._rooms.values()]
                )
            case DaemonStatus():
                return StatusReply(
                    id=request.id,
                    pid=os.getpid(),
                    version=__version__,
                    protocol_version=framing.PROTOCOL_VERSION,
                    socket=str(self.paths.socket),
                    home=str(self.paths.home),
                    uptime_seconds=time.time() - self.started_at,
                    notebooks=[self._info(e) for e in self._rooms.values()],
                    clients=len(self._sessions),
                    blob_dir=str(self.paths.blobs),
                    http_port=self.http_port,
                    kernels=self.runtimes.kernels(),
                    max_kernels=self.config.runtimes.max_kernels,
                    pool=self.runtimes.pool_info(),
                )
            case Shutdown():
                self.request_stop()
                return Ok(id=request.id)
            case ExecuteCell(notebook_id=notebook_id, cell_id=cell_id, heads=heads):
                entry = self._joined(session, notebook_id)
                if heads:
                    await entry.room.wait_for_heads(heads, timeout=self.config.heads_timeout)
                execution_id = self.executor(entry).queue_cell(
                    cell_id, allow_stdin=request.allow_stdin, timeout=request.timeout
                )
                return CellQueued(
                    id=request.id,
                    notebook_id=notebook_id,
                    cell_id=cell_id,
                    execution_id=execution_id,
                )
            case RunAll(notebook_id=notebook_id, heads=heads):
                entry = self._joined(session, notebook_id)
                if heads:
                    await entry.room.wait_for_heads(heads, timeout=self.config.heads_timeout)
                queued = self.executor(entry).queue_all(
                    allow_stdin=request.allow_stdin, timeout=request.timeout
                )
                return RunAllQueued(
                    id=request.id,
                    notebook_id=notebook_id,
                    executions=[
                        CellQueued(
                            id=request.id, notebook_id=notebook_id, cell_id=c, execution_id=e
                        )
                        for c, e in queued
                    ],
                )
            case InterruptKernel(notebook_id=notebook_id):
                await self.executor(self._joined(session, notebook_id)).interrupt()
                return Ok(id=request.id)
            case RestartKernel(notebook_id=notebook_id):
                await self.executor(self._joined(session, notebook_id)).restart()
                return Ok(id=request.id)
            case ClearOutputs(notebook_id=notebook_id, cell_ids=cell_ids):
                self.executor(self._joined(session, notebook_id)).clear_outputs(cell_ids)
                return Ok(id=request.id)
            case InputReply(notebook_id=notebook_id, execution_id=execution_id, value=value):
                self.executor(self._joined(session, notebook_id)).answer_input(execution_id, value)
                return Ok(id=request.id)
            case CollectGarbage(grace_seconds=grace):
                report = await self.collect_garbage(
                    grace_seconds=self.config.gc_grace_seconds if grace is None else grace
                )
                return GarbageCollected(
                    id=request.id,
                    blobs_removed=report.blobs_removed,
                    bytes_freed=report.bytes_freed,
                    blobs_kept=report.blobs_kept,
                )
            case ListRuntimes() | ListEnvs() | CleanEnvs() | GetConfig():
                return await runtime_service.answer(self.runtimes, self.config, request)
            case _:
                assert_never(request)

    def _prewarm(self, entry: _OpenRoom) -> None:
        """Opening a notebook takes its kernel now (from the pool when it can), so the first
        ExecuteCell skips the launch. Off when the pool is disabled (pool.size = 0)."""
        if self.runtimes.prewarm_on_open:
            self.executor(entry).prewarm()

    def _join(self, session: ClientSession, entry: _OpenRoom, request_id: int) -> NotebookOpened:
        room = entry.room
        if entry.cull_scope is not None:
            entry.cull_scope.cancel()
            entry.cull_scope = None
        session.open_notebooks.add(room.notebook_id)
        # Sync frames for this notebook may reach the client before this reply; clients
        # create a replica on the first frame for an id (see runtimed.client).
        room.join(session)
        return NotebookOpened(
            id=request_id,
            notebook_id=room.notebook_id,
            path=str(room.path) if room.path else None,
        )

    async def _create(self, path: Path | None, kernel_name: str | None) -> _OpenRoom:
        if path is not None:
            path = await _resolved(path)
            if path in self._by_path or await anyio.Path(path).exists():
                raise InvalidRequest(f"{path} already exists; open it instead")
        room = new_room(path, kernel_name=kernel_name)
        entry = self._register(room, file_sha256=None)
        if path is not None:
            try:
                await self.save_room(entry, path)
            except BaseException:
                self._unregister(entry)
                raise
        return entry


async def _resolved(path: Path) -> Path:
    """``path`` made absolute with symlinks resolved (filesystem calls: in a worker thread)."""
    return await anyio.to_thread.run_sync(lambda: path.expanduser().resolve())
