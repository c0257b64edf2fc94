"""Persisting one notebook's documents (crash recovery), in that notebook's own scope.

Each open notebook has a :class:`RoomPersister`: edits reach disk ``persist_debounce`` after
they stop, or ``_MAX_DEBOUNCES`` debounces after the first of a stream that does not stop (a
client writing records as cells run: each persist serialises the whole document, 15 ms for 300
cells here); runtime-only changes (outputs, states) at most every ``runtime_persist_interval`` —
a running notebook changes those on every cell. Acknowledged edits never wait for either
(:meth:`RoomPersister.durable`). A
persist writes only what changed since the last one: the notebook document if its heads
moved, the runtime snapshot if it changed, the file record if it changed. A write the disk
refuses (full disk, ...) is kept in memory and retried every second until it succeeds.

Durability (docs/protocol.md): :meth:`RoomPersister.durable` returns once the persisted
notebook document contains everything the live one does (fsynced); ``Flush`` and every
request carrying heads (execute, run all, save, close) call it before they are answered. It
writes only when the notebook document changed since the last persist, so re-running
unchanged cells costs nothing. Persists are serialised (one lock), so a slower earlier
write can never replace a newer one.
"""

from __future__ import annotations

import logging

import anyio

from runtimed.config import DaemonConfig
from runtimed.daemon.room import NotebookRoom
from runtimed.errors import NotebookIOError
from runtimed.storage.documents import DocumentStore, NotebookMeta

__all__ = ["RoomPersister"]

log = logging.getLogger(__name__)

_PERSIST_RETRY = 1.0  # s between attempts to persist a notebook after a failed write
_MAX_DEBOUNCES = 5  # a stream of changes is persisted at least every 5 debounces
_MIN_LOG = 64 * 1024  # appended change bytes allowed before a rewrite, at least


class RoomPersister:
    """What is on disk for one room, and the task that keeps it current (:meth:`run`)."""

    def __init__(
        self,
        room: NotebookRoom,
        store: DocumentStore,
        *,
        config: DaemonConfig,
        file_sha256: str | None,
    ) -> None:
        self.room = room
        self.file_sha256 = file_sha256
        """The sha256 of the notebook's file as the daemon last read or wrote it."""
        self.pending_sha256: str | None = None
        """The sha256 of the checkpoint being written (recorded before the file is)."""
        self._lock = anyio.Lock()
        self._store = store
        self._config = config
        self._wanted = False
        self._wake = anyio.Event()
        self._quieting = False  # run() is waiting for the debounce: changes only stamp
        self._changed_at = float("-inf")  # event-loop time of the last change
        self._persisted_at = float("-inf")  # when the runtime snapshot was last written
        self._runtime_dirty = True
        self._saved_key: str | None = None
        self._saved_heads: list[bytes] | None = None
        self._saved_meta: NotebookMeta | None = None
        self._saved_pending: str | None = None
        self._failed_at = float("-inf")  # the last persist that failed (full disk, ...)
        self._saved_size = 0  # bytes of the notebook document last written whole
        self._appended = 0  # bytes of changes appended to it since

    @property
    def wanted(self) -> bool:
        """A change waits to be persisted."""
        return self._wanted

    def want(self) -> None:
        """The notebook changed: persist it after the debounce.

        Called on every change (several per executed cell): while the persister waits for
        quiet it only notes the time, and it looks at that time when its sleep ends, so a
        stream of changes costs no task wake-up each."""
        self._wanted = True
        if self._quieting:
            self._changed_at = anyio.current_time()
        else:
            self._wake.set()

    def runtime_changed(self) -> None:
        """The runtime document changed: persist its snapshot when its interval allows."""
        self._runtime_dirty = True
        self.want()

    async def run(self) -> None:
        """Persist changes until cancelled (runs in the room's task group)."""
        while True:
            await self._wake.wait()
            await self._quiet()  # debounce: batch a burst
            self._wake = anyio.Event()  # a change from now on asks for the next persist
            self._wanted = False
            now = anyio.current_time()
            if now - self._failed_at < _PERSIST_RETRY:
                self._wanted = True  # the disk failed just now: later
            else:
                # The notebook document goes out now if its heads moved; the runtime
                # snapshot only when its interval has passed.
                due = now - self._persisted_at >= self._config.runtime_persist_interval
                await self.persist_now(runtime=due)
                if self._runtime_dirty:
                    self._wanted = True  # later
            if self._wanted:
                self._wake.set()

    async def _quiet(self) -> None:
        """Return once no change came for ``persist_debounce``, or ``_MAX_DEBOUNCES`` of them
        after the first."""
        debounce = self._config.persist_debounce
        now = anyio.current_time()
        deadline = now + debounce * _MAX_DEBOUNCES
        self._changed_at = now
        self._quieting = True
        try:
            while True:
                wait = min(self._changed_at + debounce, deadline) - anyio.current_time()
                if wait <= 0:
                    return
                await anyio.sleep(wait)  # changes meanwhile move _changed_at: sleep again
        finally:
            self._quieting = False

    async def flush(self) -> None:
        """Persist now if a change waits (the debounce is skipped)."""
        if self._wanted:
            self._wanted = False
            await self.persist_now()

    async def durable(self) -> None:
        """Return once the persisted notebook document holds every change the live one
        does (fsynced). Free when nothing changed since the last persist.

        Raises:
            NotebookIOError: the disk refused the write (the change stays queued for a retry).
        """
        if self.room.notebook.heads() == self._saved_heads and self._saved_meta is not None:
            return
        try:
            await self.persist_now(runtime=False, strict=True)
        except OSError as exc:
            raise NotebookIOError(
                f"notebook {self.room.notebook_id}: could not persist edits: {exc}"
            ) from exc

    async def persist_now(self, *, runtime: bool = True, strict: bool = False) -> None:
        """Write what changed since the last persist: the notebook document if its heads
        moved, the runtime snapshot if it changed (and ``runtime``), the file record if it
        changed. A running notebook edits only metadata per cell: one file, not three.
        ``strict``: a refused write raises (after queueing the retry) instead of only
        being logged."""
        async with self._lock:
            await self._persist(runtime=runtime, strict=strict)

    async def _persist(self, *, runtime: bool, strict: bool) -> None:
        room = self.room
        key = DocumentStore.key_for(room.path, room.notebook_id)
        if key != self._saved_key:  # first persist, or saved under a new path: everything
            self._saved_heads = self._saved_meta = None
            self._runtime_dirty = True
            if strict:  # a durability write needs the document only; the snapshot follows
                self._wanted = True
                self._wake.set()
            else:
                runtime = True
        # Serialise on the event loop (the documents are not shared with threads), write in one.
        # The new changes are appended to the file (their size, not the document's) until
        # they outgrow the document written whole; then it is written whole again.
        heads = room.notebook.heads()
        notebook = changes = None
        if heads != self._saved_heads:
            if self._saved_heads is not None and self._appended < max(self._saved_size, _MIN_LOG):
                changes = room.notebook.changes_since(self._saved_heads)
            else:
                notebook = room.notebook.save()
        snapshot = None
        if runtime and self._runtime_dirty:
            snapshot = room.runtime.snapshot()
            self._runtime_dirty = False
            self._persisted_at = anyio.current_time()
        path = str(room.path) if room.path else None
        meta: NotebookMeta = (path, room.notebook_id, self.file_sha256, not room.dirty_since_save)
        pending = self.pending_sha256
        changed = (meta, pending) != (self._saved_meta, self._saved_pending)
        changed_meta = meta if changed else None
        if notebook is None and changes is None and snapshot is None and changed_meta is None:
            return
        try:
            await anyio.to_thread.run_sync(
                lambda: self._store.save(
                    key,
                    notebook=notebook,
                    runtime=snapshot,
                    meta=changed_meta,
                    pending_sha256=pending,
                    notebook_changes=changes,
                )
            )
        except OSError as exc:
            if changes is not None:
                self._saved_heads = None  # the next attempt writes the document whole
            # Kept in memory and retried (run) until the disk takes it again.
            log.warning("could not persist notebook %s (retrying): %s", room.notebook_id, exc)
            self._runtime_dirty = self._runtime_dirty or snapshot is not None
            self._failed_at = anyio.current_time()
            self.want()
            if strict:
                raise
            return
        self._saved_key, self._saved_heads, self._saved_meta = key, heads, meta
        if notebook is not None:
            self._saved_size, self._appended = len(notebook), 0
        elif changes is not None:
            self._appended += len(changes)
        self._saved_pending = pending
