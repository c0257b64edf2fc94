"""Answers to the execution requests: ``ExecuteCell``, ``RunAll``, ``InterruptKernel``,
``RestartKernel``, ``ClearOutputs``, ``InputReply`` — each through the notebook's executor."""

from __future__ import annotations

from typing import assert_never

from protocol.messages import (
    CellQueued,
    ClearOutputs,
    ExecuteCell,
    InputReply,
    InterruptKernel,
    Ok,
    RestartKernel,
    RunAll,
    RunAllQueued,
)
from runtimed.config import DaemonConfig
from runtimed.daemon.connection import ClientSession
from runtimed.daemon.executor import NotebookExecutor
from runtimed.daemon.rooms import RoomRegistry

__all__ = ["ExecutionHandlers", "ExecutionReply", "ExecutionRequest"]

ExecutionRequest = (
    ExecuteCell | RunAll | InterruptKernel | RestartKernel | ClearOutputs | InputReply
)
ExecutionReply = CellQueued | RunAllQueued | Ok


class ExecutionHandlers:
    """Running cells and controlling a notebook's kernel."""

    def __init__(self, rooms: RoomRegistry, *, config: DaemonConfig) -> None:
        self._rooms = rooms
        self._config = config

    async def answer(self, session: ClientSession, request: ExecutionRequest) -> ExecutionReply:
        """The reply to one execution request (a RuntimedError becomes an ErrorReply)."""
        match request:
            case ExecuteCell():
                return await self.execute_cell(session, request)
            case RunAll():
                return await self.run_all(session, request)
            case InterruptKernel():
                await self._executor(session, request.notebook_id).interrupt()
            case RestartKernel():
                await self._executor(session, request.notebook_id).restart()
            case ClearOutputs():
                self._executor(session, request.notebook_id).clear_outputs(request.cell_ids)
            case InputReply():
                executor = self._executor(session, request.notebook_id)
                executor.answer_input(request.execution_id, request.value)
            case _:
                assert_never(request)
        return Ok(id=request.id)

    async def execute_cell(self, session: ClientSession, request: ExecuteCell) -> CellQueued:
        """Queue the cell as the document holds it, once the document has ``heads``."""
        executor = await self._synced(session, request.notebook_id, request.heads)
        execution_id = executor.queue_cell(
            request.cell_id, allow_stdin=request.allow_stdin, timeout=request.timeout
        )
        return CellQueued(
            id=request.id,
            notebook_id=request.notebook_id,
            cell_id=request.cell_id,
            execution_id=execution_id,
        )

    async def run_all(self, session: ClientSession, request: RunAll) -> RunAllQueued:
        executor = await self._synced(session, request.notebook_id, request.heads)
        queued = executor.queue_all(allow_stdin=request.allow_stdin, timeout=request.timeout)
        return RunAllQueued(
            id=request.id,
            notebook_id=request.notebook_id,
            executions=[
                CellQueued(
                    id=request.id,
                    notebook_id=request.notebook_id,
                    cell_id=cell_id,
                    execution_id=execution_id,
                )
                for cell_id, execution_id in queued
            ],
        )

    async def _synced(
        self, session: ClientSession, notebook_id: str, heads: list[str] | None
    ) -> NotebookExecutor:
        entry = self._rooms.joined(session, notebook_id)
        if heads:
            await entry.room.wait_for_heads(heads, timeout=self._config.heads_timeout)
        # Durable before answered (docs/protocol.md): free when the document did not change.
        await entry.persister.durable()
        return self._rooms.executor(entry)

    def _executor(self, session: ClientSession, notebook_id: str) -> NotebookExecutor:
        return self._rooms.executor(self._rooms.joined(session, notebook_id))
