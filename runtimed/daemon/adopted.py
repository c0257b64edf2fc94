"""Kernels a killed daemon left running, adopted by this one (issue 10 §3).

At start-up the daemon keeps the kernel records whose nanny still runs
(:meth:`~runtimed.kernels.records.KernelRecords.recover`) as :class:`Orphans`, by notebook.
When that notebook is opened again (a client reconnecting reopens it), its executor adopts
the kernel (:class:`AdoptedLease`): variables, imports and a running cell are where the
previous daemon left them. What the kernel published meanwhile comes from the nanny's
journal; every execution the previous daemon had sent and that its persisted runtime
document does not show finished is recorded again from it, with its own execution id, and
the cell's outputs are rebuilt from the journal. New executions wait until the kernel has
run everything the previous daemon had sent (``KernelSession.settled``).

Orphans nobody opens within the adoption window (the kernels' orphan timeout) are stopped,
process group and directory, as the reaper does; so are those left when this daemon stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from protocol.states import ExecutionStatus
from runtimed.daemon.outputs import OutputRecorder
from runtimed.daemon.queue import Entry, RecordOutcome
from runtimed.daemon.room import NotebookRoom
from runtimed.kernels.launch import orphan_timeout
from runtimed.kernels.records import KernelRecord, KernelRecords
from runtimed.kernels.session import KernelSession, Submitted

__all__ = ["AdoptedExecutions", "AdoptedLease", "AdoptedRuntime", "Orphans"]

log = logging.getLogger(__name__)


class Orphans:
    """Live kernels of a previous daemon, waiting for their notebooks to be reopened."""

    def __init__(self, records: KernelRecords, adoptable: list[KernelRecord]) -> None:
        self._records = records
        self._by_notebook: dict[str, KernelRecord] = {}
        self._extra: list[KernelRecord] = []
        for record in sorted(adoptable, key=lambda r: r.started_at or 0.0):
            assert record.notebook_id is not None
            older = self._by_notebook.get(record.notebook_id)
            if older is not None:
                self._extra.append(older)  # a notebook has one kernel: the newest
            self._by_notebook[record.notebook_id] = record
        self.bound = orphan_timeout()

    def __len__(self) -> int:
        return len(self._by_notebook)

    def has(self, notebook_id: str) -> bool:
        return notebook_id in self._by_notebook

    def claim(self, notebook_id: str) -> KernelRecord | None:
        """The orphan of ``notebook_id``, now the caller's (None: there is none)."""
        return self._by_notebook.pop(notebook_id, None)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Stop the orphans not claimed within the adoption window (and, shielded, those
        left when cancelled: the daemon stops)."""
        try:
            if self._extra:
                await self._discard(self._extra)
            task_status.started()
            if self._by_notebook:
                log.info(
                    "%d kernel(s) of a previous daemon wait %g s for their notebooks",
                    len(self._by_notebook),
                    self.bound,
                )
                await anyio.sleep(self.bound)
        finally:
            with anyio.CancelScope(shield=True):
                left = list(self._by_notebook.values())
                self._by_notebook.clear()
                if left:
                    await self._discard(left)

    async def _discard(self, records: list[KernelRecord]) -> None:
        for record in records:
            stopped = await anyio.to_thread.run_sync(self._records.discard, record)
            log.warning(
                "kernel %s of notebook %s was not adopted; %s",
                record.pid,
                record.notebook_id,
                "stopped" if stopped else "already gone",
            )


@dataclass(frozen=True, slots=True)
class AdoptedRuntime:
    """What the executor reads of a lease's runtime."""

    name: str


class AdoptedLease:
    """An adopted kernel held by one notebook, shaped like the runtime manager's lease
    (``kernel``, ``request``, ``runtime``, ``release()``); hosted in the executor's kernel
    task group. Not counted against the kernel limit."""

    def __init__(
        self, record: KernelRecord, request: object, *, cwd: Path, env: dict[str, str]
    ) -> None:
        self.request = request
        self.kernel = KernelSession(cwd=cwd, env=env, adopt=record)
        self.runtime = AdoptedRuntime(name=str((record.spec or {}).get("name") or "adopted"))
        self.from_pool = False
        self._release = anyio.Event()
        self._gone = anyio.Event()

    async def start(self, tg: TaskGroup) -> None:
        """Adopt the kernel (raises what entering the session raises)."""
        await tg.start(self._host)

    async def _host(self, *, task_status: TaskStatus[None]) -> None:
        try:
            async with self.kernel:
                task_status.started()
                await self._release.wait()
        finally:
            self._gone.set()

    async def release(self) -> None:
        self._release.set()
        with anyio.CancelScope(shield=True):
            await self._gone.wait()


class AdoptedExecutions:
    """The executions an adopted kernel runs that the previous daemon had sent: recorded
    again in the runtime document (same ids), outputs rebuilt from the nanny's journal and
    then followed live, outcomes read from IOPub. Those the persisted runtime document
    shows finished are left alone: a kernel runs its requests in queue order (``seq``),
    so everything at or below the highest finished ``seq`` was finished and persisted."""

    def __init__(self, room: NotebookRoom, outputs: OutputRecorder) -> None:
        self._room = room
        self._outputs = outputs
        self.floor = room.runtime.max_seq()
        self.highest_seq = self.floor
        self.entry: Entry | None = None
        """The adopted execution running now (the output flusher writes its outputs)."""
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Submitted, Entry]](64)
        self.done = anyio.Event()
        """Set once the kernel has run everything the previous daemon sent, and it is
        recorded: new executions may start."""

    def on_adopted(self, submitted: Submitted, header: dict[str, Any]) -> bool:
        """``KernelSession.on_adopted``: record an execution the previous daemon sent."""
        if self.done.is_set():
            return False
        cell_id, seq = header.get("runtimed_cell_id"), header.get("runtimed_seq")
        if not isinstance(cell_id, str) or not isinstance(seq, int) or seq <= self.floor:
            log.debug(
                "execution %s (cell %r, seq %r) of the previous daemon: not followed (floor %d)",
                submitted.msg_id,
                cell_id,
                seq,
                self.floor,
            )
            return False
        runtime = self._room.runtime
        execution_id = submitted.msg_id
        if runtime.execution_status(execution_id) is None:
            runtime.add_execution(execution_id, cell_id, seq)
        runtime.update_execution(execution_id, status=ExecutionStatus.RUNNING)
        runtime.start_cell_run(cell_id, execution_id)
        self._room.runtime_changed()
        self.highest_seq = max(self.highest_seq, seq)
        entry = Entry(execution_id, cell_id, "", frozenset(), seq)
        submitted.execution.on_change = self._outputs.on_change
        try:
            self._send.send_nowait((submitted, entry))
        except anyio.WouldBlock:
            log.error("too many adopted executions at once; %s is not followed", execution_id)
            return False
        log.info(
            "following execution %s of cell %s, sent by the previous daemon", execution_id, cell_id
        )
        return True

    async def follow(self, session: KernelSession) -> None:
        """Record each adopted execution's outcome; return once the kernel has settled."""
        try:
            async with anyio.create_task_group() as tg:

                async def close_when_settled() -> None:
                    await session.settled.wait()
                    self._send.close()

                tg.start_soon(close_when_settled)
                async with self._receive:
                    async for submitted, entry in self._receive:
                        self.entry = entry
                        try:
                            await self._record(session, submitted, entry)
                        finally:
                            self.entry = None
        finally:
            self.done.set()

    async def _record(self, session: KernelSession, submitted: Submitted, entry: Entry) -> None:
        outcome = await session.wait(submitted)
        error = outcome.error
        if outcome.timing:
            self._room.runtime.update_execution(
                entry.execution_id, kernel_timing=dict(outcome.timing)
            )
        await self._outputs.record_outcome(
            RecordOutcome(
                execution_id=entry.execution_id,
                cell_id=entry.cell_id,
                status=outcome.status,
                execution_count=outcome.execution_count,
                outputs=tuple(outcome.outputs),
                ename=error.ename if error else None,
                evalue=error.evalue if error else None,
                display_ids=outcome.display_ids,
            )
        )
