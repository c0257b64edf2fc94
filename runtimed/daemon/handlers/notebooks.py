"""Answers to the notebook requests: ``OpenNotebook``, ``CreateNotebook``, ``CloseNotebook``,
``SaveNotebook``, ``Flush``, ``ListNotebooks``.

Every request that carries heads is answered only once those edits are durable (the
persisted document containing them is fsynced; see docs/protocol.md, "Durability")."""

from __future__ import annotations

from pathlib import Path
from typing import assert_never

import anyio

from protocol.messages import (
    CloseNotebook,
    CreateNotebook,
    Flush,
    Flushed,
    JoinNotebook,
    ListNotebooks,
    NotebookClosed,
    NotebookInfo,
    NotebookList,
    NotebookOpened,
    NotebookSaved,
    OpenNotebook,
    SaveNotebook,
)
from protocol.states import KernelState
from runtimed.config import DaemonConfig
from runtimed.daemon.connection import ClientSession
from runtimed.daemon.handlers import runtimes as runtime_service
from runtimed.daemon.rooms import RoomRegistry
from runtimed.daemon.scope import OpenRoom
from runtimed.errors import InvalidRequest
from runtimed.runtimes.manager import RuntimeManager

__all__ = ["NotebookHandlers", "NotebookReply", "NotebookRequest", "notebook_info"]

NotebookRequest = (
    OpenNotebook
    | JoinNotebook
    | CreateNotebook
    | CloseNotebook
    | SaveNotebook
    | Flush
    | ListNotebooks
)
NotebookReply = NotebookOpened | NotebookClosed | NotebookSaved | Flushed | NotebookList


class NotebookHandlers:
    """Opening, creating, closing, saving and listing notebooks."""

    def __init__(
        self, rooms: RoomRegistry, runtimes: RuntimeManager, *, config: DaemonConfig
    ) -> None:
        self._rooms = rooms
        self._runtimes = runtimes
        self._config = config

    async def answer(self, session: ClientSession, request: NotebookRequest) -> NotebookReply:
        """The reply to one notebook request (a RuntimedError becomes an ErrorReply)."""
        match request:
            case OpenNotebook():
                return await self.open(session, request)
            case JoinNotebook():
                entry = await self._rooms.entry_or_recover(request.notebook_id)
                return self._join(session, entry, request.id)
            case CreateNotebook():
                return await self.create(session, request)
            case CloseNotebook():
                return await self.close(session, request)
            case SaveNotebook():
                return await self.save(session, request)
            case Flush():
                return await self.flush(session, request)
            case ListNotebooks():
                return self.list(request)
            case _:
                assert_never(request)

    async def open(self, session: ClientSession, request: OpenNotebook) -> NotebookOpened:
        cwd = request.kernel_cwd
        if cwd is not None and not (Path(cwd).is_absolute() and await anyio.Path(cwd).is_dir()):
            raise InvalidRequest(f"kernel_cwd {cwd!r} is not an absolute path to a folder")

        def prepare(entry: OpenRoom) -> None:
            # Before the prewarm: the kernel it takes gets the run's environment. Called
            # before a newly loaded notebook is persisted: a pooled kernel's hand-over
            # (an execution in the kernel) overlaps that write.
            entry.room.set_run_context(env=request.kernel_env, cwd=cwd)
            self._prewarm(entry)

        entry = await self._rooms.open_path(Path(request.path), on_entry=prepare)
        return self._join(session, entry, request.id)

    async def create(self, session: ClientSession, request: CreateNotebook) -> NotebookOpened:
        path = Path(request.path) if request.path else None
        entry = await self._rooms.create(path, request.kernel_name)
        return self._join(session, entry, request.id)

    async def close(self, session: ClientSession, request: CloseNotebook) -> NotebookClosed:
        entry = self._rooms.joined(session, request.notebook_id)
        if request.heads:
            await entry.room.wait_for_heads(request.heads, timeout=self._config.heads_timeout)
        await entry.persister.durable()
        session.open_notebooks.discard(request.notebook_id)
        self._rooms.leave(entry, session, unload=request.unload)
        return NotebookClosed(id=request.id, notebook_id=request.notebook_id)

    async def save(self, session: ClientSession, request: SaveNotebook) -> NotebookSaved:
        entry = self._rooms.joined(session, request.notebook_id)
        if request.heads:
            await entry.room.wait_for_heads(request.heads, timeout=self._config.heads_timeout)
        saved = await self._rooms.save(entry, Path(request.path) if request.path else None)
        return NotebookSaved(id=request.id, notebook_id=request.notebook_id, path=str(saved))

    async def flush(self, session: ClientSession, request: Flush) -> Flushed:
        entry = self._rooms.joined(session, request.notebook_id)
        if request.heads:
            await entry.room.wait_for_heads(request.heads, timeout=self._config.heads_timeout)
        await entry.persister.durable()
        return Flushed(id=request.id, notebook_id=request.notebook_id)

    def list(self, request: ListNotebooks) -> NotebookList:
        infos = [notebook_info(e, self._runtimes) for e in self._rooms.entries()]
        return NotebookList(id=request.id, notebooks=infos)

    def _prewarm(self, entry: OpenRoom) -> None:
        # Opening a notebook takes its kernel now (from the pool when it can), so the first
        # ExecuteCell skips the launch. Off when the pool is disabled (pool.size = 0).
        if self._runtimes.prewarm_on_open:
            self._rooms.executor(entry).prewarm()

    def _join(self, session: ClientSession, entry: OpenRoom, request_id: int) -> NotebookOpened:
        self._prewarm(entry)  # (done already by an open: prewarm is idempotent)
        self._rooms.join(session, entry)
        room = entry.room
        return NotebookOpened(
            id=request_id,
            notebook_id=room.notebook_id,
            path=str(room.path) if room.path else None,
        )


def notebook_info(entry: OpenRoom, runtimes: RuntimeManager) -> NotebookInfo:
    """One open notebook as ``list_notebooks`` and ``daemon_status`` show it."""
    room = entry.room
    kernel = room.runtime.kernel() if room.runtime.ready else {}
    pid = kernel.get("pid")
    return NotebookInfo(
        notebook_id=room.notebook_id,
        path=str(room.path) if room.path else None,
        cells=len(room.notebook),
        clients=len(room.peers),
        kernel=runtime_service.kernel_info(
            runtimes,
            room.notebook_id,
            state=str(kernel.get("state", KernelState.NOT_STARTED)),
            name=str(kernel.get("name", "")),
            pid=pid if isinstance(pid, int) else None,
        ),
        queue=room.runtime.queue(),
        running=room.runtime.running(),
    )
