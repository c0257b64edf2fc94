"""The room registry: which notebooks are open, each in its own supervised scope.

Every open notebook is an :class:`~runtimed.daemon.scope.OpenRoom`: the room (documents and
peers), its persister, its executor, and one task group that all of that notebook's background
work runs in (persisting, executing and flushing outputs, the idle cull). The registry runs a
supervisor task per room; whatever escapes a room's scope — any ``Exception``, or the Automerge
binding's ``PanicException`` — is logged with its traceback and closes that notebook only: its
clients get :class:`~protocol.messages.NotebookFailed`, its kernel is stopped (the executor's
own shutdown path), its last good state is persisted, and every other notebook keeps running.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from blobstore import BlobStore
from protocol.messages import NotebookFailed, encode
from runtimed.config import DaemonConfig
from runtimed.daemon.adopted import Orphans
from runtimed.daemon.connection import ClientSession
from runtimed.daemon.executor import NotebookExecutor
from runtimed.daemon.loading import load_room, new_room, notebook_for_save, recover_untitled
from runtimed.daemon.persister import RoomPersister
from runtimed.daemon.room import NotebookRoom, RoomCallbacks
from runtimed.daemon.scope import OpenRoom, first_leaf, is_fault
from runtimed.documents.history import max_seq
from runtimed.errors import InvalidRequest, NotebookIOError, NotebookNotFound, ShuttingDown
from runtimed.runtimes.manager import RuntimeManager
from runtimed.storage.documents import DocumentStore, crash_point
from runtimed.storage.ipynb import notebook_bytes, remove_interrupted_temps, write_bytes_atomic
from runtimed.storage.journal import Checkpoint, append_checkpoint

_UNTITLED_ID = re.compile(r"[0-9a-f]{32}")  # a document id (uuid4 hex)

__all__ = ["RoomRegistry", "resolved"]

log = logging.getLogger(__name__)


class RoomRegistry:
    """Open notebooks by id and by path; opens, joins, leaves, saves and closes them.

    Run :meth:`run` in a task group: it owns the supervisors of every room.
    """

    def __init__(
        self,
        store: DocumentStore,
        blobs: BlobStore,
        runtimes: RuntimeManager,
        *,
        config: DaemonConfig,
    ) -> None:
        self.store = store
        self._blobs = blobs
        self._runtimes = runtimes
        self._config = config
        self._rooms: dict[str, OpenRoom] = {}
        self._by_path: dict[Path, str] = {}
        self._open_locks: dict[Path | str, anyio.Lock] = {}  # by path; untitled: by id
        self._tg: TaskGroup | None = None
        self.orphans: Orphans | None = None
        """Kernels a killed daemon left running, for their notebooks (set by the daemon)."""
        self.stopping = False
        self._callbacks = RoomCallbacks(
            on_notebook_change=self._notebook_changed, on_runtime_change=self._runtime_changed
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Supervise rooms until cancelled."""
        # Temp files of persists a crash interrupted (the previous daemon's): never read.
        await anyio.to_thread.run_sync(self.store.remove_interrupted)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    # ------------------------------------------------------------ lookup

    def entries(self) -> list[OpenRoom]:
        return list(self._rooms.values())

    def get(self, notebook_id: str) -> OpenRoom | None:
        return self._rooms.get(notebook_id)

    def room_or_none(self, notebook_id: str) -> NotebookRoom | None:
        entry = self._rooms.get(notebook_id)
        return entry.room if entry else None

    def entry(self, notebook_id: str) -> OpenRoom:
        entry = self._rooms.get(notebook_id)
        if entry is None:
            raise NotebookNotFound(
                f"no open notebook with id {notebook_id!r}; open it first (runt ps lists them)"
            )
        return entry

    async def entry_or_recover(self, notebook_id: str) -> OpenRoom:
        """The open room ``notebook_id``, or an untitled notebook a previous daemon persisted
        under that id, loaded now (a client rejoining it after a restart).

        Raises:
            NotebookNotFound: neither.
        """
        entry = self._rooms.get(notebook_id)
        if entry is not None:
            return entry
        if not _UNTITLED_ID.fullmatch(notebook_id):  # never a path component we did not make
            return self.entry(notebook_id)
        lock = self._open_locks.setdefault(notebook_id, anyio.Lock())
        async with lock:
            entry = self._rooms.get(notebook_id)
            if entry is not None:
                return entry
            room = await anyio.to_thread.run_sync(
                recover_untitled, notebook_id, self.store, self._callbacks
            )
            if room is None:
                return self.entry(notebook_id)  # NotebookNotFound
            return await self._register(room, file_sha256=None)

    def joined(self, session: ClientSession, notebook_id: str) -> OpenRoom:
        """The room ``session`` has open.

        Raises:
            NotebookNotFound: no such open notebook.
            InvalidRequest: it is open, but not on this connection.
        """
        entry = self.entry(notebook_id)
        if notebook_id not in session.open_notebooks:
            raise InvalidRequest(f"notebook {notebook_id!r} is not open on this connection")
        return entry

    # ------------------------------------------------------------ opening

    async def open_path(
        self, path: Path, *, on_entry: Callable[[OpenRoom], None] | None = None
    ) -> OpenRoom:
        """The room for ``path``, loading it if no client has it open.

        ``on_entry`` is called with the room's entry as soon as there is one: for a notebook
        loaded now, before its new document is persisted, so that what it starts (the
        kernel's hand-over, ``NotebookHandlers.open``) overlaps that write."""
        path = await resolved(path)
        lock = self._open_locks.setdefault(path, anyio.Lock())
        async with lock:
            existing = self._by_path.get(path)
            if existing is not None and existing in self._rooms:
                entry = self._rooms[existing]
                if on_entry is not None:
                    on_entry(entry)
                return entry
            # No room has this file open, so no checkpoint of it is under way: a temp file
            # beside it is one a crashed daemon left.
            await anyio.to_thread.run_sync(remove_interrupted_temps, path)
            loaded = await load_room(path, self.store, self._blobs, callbacks=self._callbacks)
            room, digest, new_document = loaded
            entry = await self._register(room, file_sha256=digest)
            if on_entry is not None:
                on_entry(entry)
            if new_document:
                # Before any client has it: offline edits of a client that opened it merge
                # into the next daemon's copy only if that copy is this one.
                # Everything at once (document, snapshot, record), so no follow-up persist is
                # left pending; a refused write is logged and retried, the open goes on.
                await entry.persister.persist_now()
            if self.orphans is not None and self.orphans.has(room.notebook_id):
                self.executor(entry)  # adopts the kernel now: its running cell goes on
            return entry

    async def create(self, path: Path | None, kernel_name: str | None) -> OpenRoom:
        """A new notebook, saved at once when it has a ``path``.

        Raises:
            InvalidRequest: ``path`` exists already.
        """
        if path is not None:
            path = await resolved(path)
            if path in self._by_path or await anyio.Path(path).exists():
                raise InvalidRequest(f"{path} already exists; open it instead")
        room = new_room(path, kernel_name=kernel_name, callbacks=self._callbacks)
        entry = await self._register(room, file_sha256=None)
        if path is None:
            # Persisted before the reply, as a document built from a file: a client's edits
            # are changes on top of this one, and the next daemon must be able to find it
            # (by its id: a client rejoins an untitled notebook after a restart).
            await entry.persister.persist_now()
        else:
            try:
                await self.save(entry, path)
            except BaseException:
                self._unregister(entry)
                entry.mark_closed()
                raise
        return entry

    async def _register(self, room: NotebookRoom, *, file_sha256: str | None) -> OpenRoom:
        if self._tg is None or self.stopping:
            raise ShuttingDown("the daemon is shutting down")
        persister = RoomPersister(room, self.store, config=self._config, file_sha256=file_sha256)
        entry = OpenRoom(room, persister)
        await self._tg.start(self._supervise, entry, name=f"room {room.notebook_id}")
        self._rooms[room.notebook_id] = entry
        if room.path is not None:
            self._by_path[room.path] = room.notebook_id
        return entry

    def _unregister(self, entry: OpenRoom) -> None:
        room = entry.room
        if self._rooms.get(room.notebook_id) is entry:
            del self._rooms[room.notebook_id]
        if room.path is not None and self._by_path.get(room.path) == room.notebook_id:
            del self._by_path[room.path]

    def join(self, session: ClientSession, entry: OpenRoom) -> None:
        entry.cancel_cull()
        session.open_notebooks.add(entry.room.notebook_id)
        # Sync frames for this notebook may reach the client before the reply; clients
        # create a replica on the first frame for an id (see runtimed.client).
        entry.room.join(session)

    # ------------------------------------------------------------ supervision

    async def _supervise(self, entry: OpenRoom, *, task_status: TaskStatus[None]) -> None:
        try:
            async with entry:
                task_status.started()
                await entry.wait_closed()
        except BaseException as exc:
            if not is_fault(exc):
                raise
            await self._fail(entry, exc)

    async def _fail(self, entry: OpenRoom, exc: BaseException) -> None:
        """Close a room whose scope failed; its executor has already stopped its kernel."""
        room = entry.room
        leaf = first_leaf(exc)
        reason = f"{type(leaf).__name__}: {leaf}"
        log.error(
            "notebook %s failed and was closed (%s); other notebooks are unaffected",
            room.path or room.notebook_id,
            reason,
            exc_info=exc,
        )
        peers = room.peers
        path = room.path
        lock = self._open_locks.setdefault(path, anyio.Lock()) if path else None
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._config.shutdown_timeout):
            # Under the path's open lock: an open of the same file waits for this persist,
            # then loads the state it wrote.
            async with lock if lock is not None else contextlib.nullcontext():
                self._unregister(entry)
                for peer in peers:
                    room.leave(peer)
                    if isinstance(peer, ClientSession):
                        peer.open_notebooks.discard(room.notebook_id)
                try:
                    await entry.persister.persist_now()
                except Exception:
                    log.exception("could not persist the last state of %s", room.notebook_id)
        payload = encode(
            NotebookFailed(
                notebook_id=room.notebook_id, path=str(path) if path else None, reason=reason
            )
        )
        for peer in peers:
            peer.send_event_bytes(payload)

    # ------------------------------------------------------------ leaving and closing

    def leave(self, entry: OpenRoom, session: ClientSession, *, unload: bool) -> None:
        """``session`` left the room; a room nobody has open is closed (kernel stopped) at once
        when the last client asked to ``unload`` it, else after ``idle_timeout`` of idleness."""
        entry.room.leave(session)
        if entry.room.peers or self.stopping or entry.closing:
            return
        delay = 0.0 if unload else self._config.idle_timeout
        entry.schedule_cull(lambda scope: self._cull_when_idle(entry, scope, delay))

    async def _cull_when_idle(
        self, entry: OpenRoom, scope: anyio.CancelScope, delay: float
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
                await self.close(entry, checkpoint=False)

    async def close(self, entry: OpenRoom, *, checkpoint: bool) -> None:
        """Stop the room's kernel, checkpoint it (if asked and it has unsaved changes),
        persist it and forget it."""
        room = entry.room
        if entry.executor is not None:
            await entry.executor.aclose()
        if checkpoint and room.path is not None and room.dirty_since_save:
            try:
                await self.save(entry, None)
            except Exception:
                log.exception("could not checkpoint %s while closing", room.path)
        await entry.persister.persist_now()
        self._unregister(entry)
        entry.mark_closed()

    async def close_all(self, *, checkpoint: bool) -> None:
        """Close every room (daemon shutdown); no new room opens after this starts.

        Two phases, each over all rooms in parallel and each room with its own
        ``shutdown_timeout``: first every notebook with unsaved changes is checkpointed and
        persisted (busy kernels do not delay it), then kernels are stopped. One slow room
        never uses up another's time.
        """
        self.stopping = True
        entries = self.entries()
        bound = self._config.shutdown_timeout
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                step = self._checkpoint if checkpoint else self._persist
                for entry in entries:
                    tg.start_soon(self._bounded, bound, "checkpoint", step, entry)
            async with anyio.create_task_group() as tg:
                for entry in entries:
                    tg.start_soon(self._bounded, bound, "stop", self._stop, entry)

    async def _bounded(
        self, bound: float, what: str, step: Callable[[OpenRoom], Awaitable[None]], entry: OpenRoom
    ) -> None:
        with anyio.move_on_after(bound) as scope:
            try:
                await step(entry)
            except Exception:
                log.exception("could not %s %s cleanly", what, entry.room.path or entry)
        if scope.cancelled_caught:
            log.warning("%s of %s took over %.0f s; gave up", what, entry.room.path, bound)

    async def _checkpoint(self, entry: OpenRoom) -> None:
        room = entry.room
        if room.path is not None and room.dirty_since_save:
            await self.save(entry, None)
        else:
            await entry.persister.persist_now()

    async def _persist(self, entry: OpenRoom) -> None:
        await entry.persister.persist_now()

    async def _stop(self, entry: OpenRoom) -> None:
        try:
            if entry.executor is not None:
                await entry.executor.aclose()
            await entry.persister.persist_now()  # the runtime state the kernel left
        finally:
            self._unregister(entry)
            entry.mark_closed()

    # ------------------------------------------------------------ saving, executing

    async def save(self, entry: OpenRoom, path: Path | None) -> Path:
        """Checkpoint the notebook to ``path`` (None: its own path); returns where.

        Raises:
            InvalidRequest: no path to save to, or ``path`` is another open notebook's.
            NotebookIOError, NotebookInvalid, BlobUnavailable: from writing the file.
        """
        room = entry.room
        target = await resolved(path) if path else room.path
        if target is None:
            raise InvalidRequest("this notebook has no path yet; save it with a path")
        if target != room.path and target in self._by_path:
            raise InvalidRequest(f"{target} is open as another notebook; close it first")
        if entry.executor is not None:
            await entry.executor.comms.flush()  # the latest widget state, for metadata.widgets
        nb = await notebook_for_save(room, self._blobs)
        heads = room.notebook.heads_hex()  # what nb was read from (no await in between)
        data, digest = await anyio.to_thread.run_sync(_bytes_and_digest, nb)
        persister = entry.persister
        # Crash-consistent: the record names the file about to be written (and the document
        # it was made from is persisted) before the file replaces the old one, so a crash at
        # any point finds either the old file or the new one recorded as the daemon's own.
        if target == room.path:
            persister.pending_sha256 = digest
            try:
                await persister.persist_now(runtime=False, strict=True)
            except OSError as exc:
                persister.pending_sha256 = None
                raise NotebookIOError(f"{target}: cannot record the checkpoint: {exc}") from exc
            crash_point("save:record")
        try:
            await anyio.to_thread.run_sync(write_bytes_atomic, target, data)
        finally:
            persister.pending_sha256 = None
        crash_point("save:file")
        await self._journal(target, room, heads, digest)
        persister.file_sha256 = digest
        if room.path is None or target != room.path:
            if room.path is not None:
                self._by_path.pop(room.path, None)
            room.path = target
            self._by_path[target] = room.notebook_id
        room.dirty_since_save = False
        # Record the new file hash now, not after the debounce.
        await persister.persist_now()
        return target

    async def _journal(
        self, target: Path, room: NotebookRoom, heads: list[str], digest: str
    ) -> None:
        """Append this save to the notebook's checkpoint journal (``runt log``); a journal
        that cannot be written is logged, never a failed save (the file is written)."""
        entry = Checkpoint(
            time=time.time(),
            path=str(target),
            sha256=digest,
            heads=tuple(heads),
            seq=max_seq(room.runtime),
        )
        journal = self.store.journal_path(DocumentStore.key_for(target, room.notebook_id))
        try:
            await anyio.to_thread.run_sync(append_checkpoint, journal, entry)
        except OSError as exc:
            log.warning("%s: saved, but its checkpoint journal %s failed: %s", target, journal, exc)

    def executor(self, entry: OpenRoom) -> NotebookExecutor:
        """The room's executor, started (in the room's scope) on first use.

        Raises:
            ShuttingDown: the daemon is stopping.
            NotebookNotFound: the room is closing.
        """
        if entry.executor is None:
            if self.stopping:
                raise ShuttingDown("the daemon is shutting down")
            orphans = self.orphans
            executor = NotebookExecutor(
                entry.room,
                config=self._config,
                blobs=self._blobs,
                runtimes=self._runtimes,
                adopt=orphans.claim(entry.room.notebook_id) if orphans is not None else None,
            )
            entry.start_soon(executor.run, name=f"execute {entry.room.notebook_id}")
            entry.executor = executor
        return entry.executor

    # ------------------------------------------------------------ room callbacks

    def _notebook_changed(self, room: NotebookRoom) -> None:
        entry = self._rooms.get(room.notebook_id)
        if entry is not None and entry.room is room:  # not a closed room's late change
            entry.persister.want()

    def _runtime_changed(self, room: NotebookRoom) -> None:
        entry = self._rooms.get(room.notebook_id)
        if entry is not None and entry.room is room:
            entry.persister.runtime_changed()


def _bytes_and_digest(nb: dict[str, Any]) -> tuple[bytes, str]:
    data = notebook_bytes(nb)
    return data, hashlib.sha256(data).hexdigest()


async def resolved(path: Path) -> Path:
    """``path`` made absolute with symlinks resolved (filesystem calls: in a worker thread)."""
    return await anyio.to_thread.run_sync(lambda: path.expanduser().resolve())
