"""One run's notebook in the daemon, followed cell by cell (``runt run``'s engine).

:class:`LiveRun` opens the output notebook :func:`~runtimed.automation.report.materialize`
wrote, queues every code cell with ``RunAll`` and follows them through the synced runtime
document, keeping papermill's ``metadata.papermill`` records (and nbclient's
``metadata.execution`` timings) on the notebook; on failure it adds papermill's marker
cells; stopped (Ctrl-C) it interrupts what runs and saves what ran; if the daemon goes away
it writes the output from its local replica.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from protocol.states import ExecutionStatus, KernelState
from runtimed.automation import nodes, phases
from runtimed.automation.progress import (
    ExecutionWatcher,
    Finished,
    OutputLog,
    ProgressBar,
    RunObserver,
    open_fresh,
)
from runtimed.automation.report import (
    CellTimeline,
    FailedCell,
    Prepared,
    RunResult,
    cell_tags,
    error_marker_cells,
    error_output,
    is_clean_exit,
    notebook_link,
    now_iso,
)
from runtimed.errors import ConnectionClosed, ConnectionLost, RuntimedError

if TYPE_CHECKING:
    from runtimed.client import AsyncClient

__all__ = ["LiveRun"]

log = logging.getLogger(__name__)

_FAILED = frozenset({ExecutionStatus.ERROR, ExecutionStatus.DIED, ExecutionStatus.TIMEOUT})
_NOT_RUN = frozenset({ExecutionStatus.SKIPPED, ExecutionStatus.CANCELLED, ExecutionStatus.ABORTED})
_RECORD_SYNC_DELAY = 0.1  # s; papermill records reach the daemon in batches this often
_RECONNECT_WAIT = 20.0  # s; a daemon gone mid-run must be back within this (or the start timeout)
_from_dict: Callable[[object], Any] = nodes.from_dict


class LiveRun:
    """One output notebook's RunAll in the daemon, followed cell by cell while papermill's
    records are kept on the notebook (the file :func:`materialize` wrote)."""

    def __init__(
        self,
        prepared: Prepared,
        *,
        parameters: dict[str, object],
        execution_timeout: float | None,
        start_timeout: float,
        observer: RunObserver,
        outputs: OutputLog,
        bar: ProgressBar | None,
        autosave_every: float,
        keep_open: bool,
        started_at: float,
        kernel_env: dict[str, str] | None = None,
        kernel_name: str | None = None,
    ) -> None:
        self.prepared, self.expected = prepared, prepared.nb
        self.kernel_env, self.kernel_name = kernel_env, kernel_name
        self.cells = [(str(c.id), str(c.source), cell_tags(c)) for c in prepared.nb.cells]
        self.index_of = {cell_id: i for i, (cell_id, _, _) in enumerate(self.cells)}
        self.parameters = parameters
        self.execution_timeout, self.start_timeout = execution_timeout, start_timeout
        self.observer, self.outputs, self.bar = observer, outputs, bar
        self.autosave_every, self.keep_open = autosave_every, keep_open
        self.started_at = started_at
        self.timeline = CellTimeline(len(self.cells))
        self.outputs_of: dict[int, list[dict[str, Any]]] = {}
        self.executed = 0
        self.failed: FailedCell | None = None
        self.exception: bool | None = None  # metadata.papermill.exception
        self._clock0 = self._last_save = time.monotonic()
        self._metadata_done = False
        self.kernel_timing: dict[int, dict[str, str]] = {}
        self.stop = anyio.Event()  # set: interrupt the running cell, drop the rest, save
        self._records_written = anyio.Event()  # papermill records not yet synced
        self._current: tuple[int, str] | None = None
        self._ran: set[int] = set()  # cells the kernel ran (they get metadata.execution)
        self._queued: list[tuple[str, str]] = []  # (cell id, execution id) in run order

    # -------------------------------------------------------------- lifecycle

    async def run(self, client: AsyncClient) -> RunResult:
        self.client = client
        if self.kernel_name:
            await self._use_installed_kernelspec()
        self.nb = nb = await open_fresh(
            client,
            self.prepared.output,
            self.expected,
            kernel_env=self.kernel_env,
            kernel_cwd=self.prepared.kernel_cwd,
        )
        phases.stamp("opened")
        self.watcher = ExecutionWatcher(client, nb)
        self.watcher.on_building = self.observer.environment_progress
        try:
            queued = await nb.queue_all(cell_timeout=self.execution_timeout)
            self.observer.run_started(
                input_path=self.prepared.input_path,
                output_path=self.prepared.output_path,
                notebook_id=nb.id,
                link=nb.url or notebook_link(nb.id),
                total=len(self.cells),
            )
            await self._follow_until_stopped([(q.cell_id, q.execution_id) for q in queued])
            phases.stamp("executed")
            self._finish_metadata()
            await nb.save()
            phases.stamp("saved")
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                await self._salvage()
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                try:
                    await nb.close(unload=not self.keep_open)
                except RuntimedError as exc:
                    log.info("could not close %s: %s", self.prepared.output, exc)
            phases.stamp("closed")
        from runtimed.glue import read_scraps

        cells = [{"outputs": self.outputs_of[i]} for i in sorted(self.outputs_of)]
        result = RunResult(
            status="failed" if self.failed else "ok",
            input_path=self.prepared.input_path,
            output_path=self.prepared.output_path,
            duration=time.monotonic() - self.started_at,
            cells_executed=self.executed,
            failed_cell=self.failed,
            notebook_id=nb.id,
            notebook_link=notebook_link(nb.id),
            scraps=read_scraps({"cells": cells}),
            parameters=self.parameters,
        )
        self.observer.run_finished(result)
        return result

    async def _use_installed_kernelspec(self) -> None:
        """``-k NAME``: the kernelspec's ``display_name`` and ``language`` as installed
        (papermill reads them from the kernelspec too)."""
        current = self.expected.metadata.get("kernelspec") or {}
        if current.get("name") == self.kernel_name and current.get("display_name") not in (
            None,
            self.kernel_name,  # start_notebook's placeholder
        ):
            return  # the notebook's own kernelspec already names it: kept as it is
        runtimes = await self.client.list_runtimes()
        found = next((r for r in runtimes if r.name == self.kernel_name), None)
        if found is None:
            return  # the daemon says why when it starts the kernel
        spec = {"display_name": found.display_name, "language": found.language}
        self.expected.metadata["kernelspec"] = _from_dict({**spec, "name": self.kernel_name})

    async def _salvage(self) -> None:
        """After an error or cancellation: stop the running cell and write what there is."""
        nb = self.nb
        if self.client.connection.closed and self.failed is None and self._current is not None:
            # The daemon went away mid-run: the running cell is where the run stopped.
            self._fail(
                self._current[0],
                "DaemonDied",
                "the daemon exited during the run",
                ExecutionStatus.DIED,
                [],
                None,
            )
        if not self.client.connection.closed:
            try:
                if nb.runtime.running() is not None:
                    await nb.interrupt()
                self._finish_metadata()
                await nb.save()
                return
            except RuntimedError as exc:
                log.warning(
                    "could not checkpoint %s through the daemon: %s", self.prepared.output, exc
                )
        # The daemon is gone: write what the local replica holds, with papermill's marks.
        from runtimed.storage.ipynb import write_notebook_atomic

        try:
            self._finish_metadata()
        except RuntimedError as exc:
            log.info("could not mark %s as failed: %s", self.prepared.output, exc)
        try:
            data = nb.doc.to_nbformat(lambda cid: (nb.execution_count(cid), nb.outputs(cid)))
            await anyio.to_thread.run_sync(write_notebook_atomic, self.prepared.output, data)
        except (RuntimedError, OSError, ValueError) as exc:
            log.warning("could not write %s from the local replica: %s", self.prepared.output, exc)

    # -------------------------------------------------------------- following

    async def _follow_until_stopped(self, queued: list[tuple[str, str]]) -> None:
        errors: list[Exception] = []
        followed = False
        async with anyio.create_task_group() as tg:

            async def on_stop() -> None:
                await self.stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_stop)
            tg.start_soon(self._sync_records)
            if self.autosave_every > 0:
                tg.start_soon(self._autosave_while_running)
            try:
                await self._follow(queued)
                followed = True
            except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                errors.append(exc)
            tg.cancel_scope.cancel()
        if errors:
            raise errors[0]
        if not followed and self._current is not None:
            await self._interrupted(*self._current)

    async def _autosave_while_running(self) -> None:
        """Checkpoint every ``autosave_every`` s while a cell runs, as papermill's
        ``autosave_cell_every`` (after each cell :meth:`_follow` saves when it is due)."""
        while True:
            due = self._last_save + self.autosave_every
            await anyio.sleep(max(due - time.monotonic(), 0.0))
            if time.monotonic() < self._last_save + self.autosave_every:
                continue  # a save after a cell came in between
            self._last_save = time.monotonic()
            try:
                await self.nb.save()
            except ConnectionLost:
                continue  # the daemon is away; the client reconnects, the run goes on
            except ConnectionClosed:
                raise
            except RuntimedError as exc:
                log.warning("autosave of %s failed: %s", self.prepared.output, exc)

    async def _interrupted(self, index: int, execution_id: str) -> None:
        """Stopped while following cell ``index``: interrupt what runs, drop the queue.

        This client may lag the daemon: cells that finished before the interrupt reached
        the kernel are recorded as they ended, and the cell the interrupt stopped (or the
        next one, when it came between two) is the failed one."""
        nb = self.nb
        await nb.interrupt()
        position = next(i for i, (_, e) in enumerate(self._queued) if e == execution_id)
        done = None
        for cell_id, queued_id in self._queued[position:]:
            index = self.index_of[cell_id]
            done = None
            with anyio.move_on_after(5):
                done = await self.watcher.wait(
                    queued_id,
                    cell_id,
                    start_deadline=time.monotonic() + 5,
                    on_start=lambda: None,
                    on_outputs=None,
                )
            if done is None or done.status != ExecutionStatus.OK:
                break
            self._finished(index, done)  # it completed before the interrupt arrived
        if nb.runtime.running() is not None or nb.runtime.queue():
            await nb.restart()  # the interrupt came between two cells: stop the next one
        if done is not None and done.status not in _NOT_RUN:
            self.executed += 1
            self.outputs_of[index] = done.outputs
        self._fail(
            index,
            "KeyboardInterrupt",
            "the run was interrupted",
            ExecutionStatus.CANCELLED,
            done.outputs if done is not None else [],
            done.execution_count if done else None,
        )

    async def _follow(self, queued: list[tuple[str, str]]) -> None:
        self._queued = queued
        start_deadline = time.monotonic() + self.start_timeout
        position = 0
        resumed = False
        while position < len(self._queued):
            if resumed:
                resumed = await self._resume(position)
                start_deadline = time.monotonic() + self.start_timeout
            cell_id, execution_id = self._queued[position]
            index = self.index_of[cell_id]
            self._current = (index, execution_id)
            on_outputs = None
            if self.outputs.enabled:
                on_outputs = functools.partial(self.outputs.outputs, cell_id, final=False)
            reconnects = self.client.reconnects
            try:
                done = await self.watcher.wait(
                    execution_id,
                    cell_id,
                    start_deadline=start_deadline,
                    on_start=functools.partial(self._cell_started, index),
                    on_outputs=on_outputs,
                )
            except ConnectionLost:
                if not await self._reconnected(reconnects):
                    raise
                resumed = True
                continue
            position += 1
            if done is None:
                await self._start_timed_out(index)
                return
            if not self._finished(index, done):
                return  # the daemon dropped the rest of the queue (a failure stops it)
            if 0 < self.autosave_every <= time.monotonic() - self._last_save:
                self._last_save = time.monotonic()
                await self.nb.save()
        self._apply(self.timeline.passed_over(len(self.cells), now_iso()))

    async def _reconnected(self, reconnects: int) -> bool:
        """The daemon went away mid-run: wait (``_RECONNECT_WAIT``, at most the start
        timeout) for the client to reconnect to the next one (its ``reconnects`` count goes past
        ``reconnects``); False if it does not."""
        log.warning("the daemon went away during the run of %s; reconnecting", self.prepared.output)
        from runtimed.client import ConnectionState

        client = self.client
        try:
            with anyio.fail_after(min(self.start_timeout, _RECONNECT_WAIT)):
                if client.reconnects == reconnects:  # it may not have noticed yet
                    await client.wait_state(ConnectionState.RECONNECTING, ConnectionState.GONE)
                await client.wait_state(ConnectionState.CONNECTED)
        except (TimeoutError, ConnectionClosed):
            return False
        if client.reconnects == reconnects:
            return False
        self.watcher.reconnected()
        return True

    async def _resume(self, position: int) -> bool:
        """After a reconnect, before following ``self._queued[position]``: the new daemon
        adopted the kernel and knows the executions the old one had sent (they go on), or
        it does not (the kernel did not survive, or the cell was still in the dead daemon's
        queue): then this and the rest are queued again. True while unsure (the next
        execution is checked the same way)."""
        _, execution_id = self._queued[position]
        nb = self.nb
        busy = (KernelState.STARTING, KernelState.BUSY, KernelState.BUILDING_ENV)

        def known_or_settled() -> bool:
            runtime = nb.runtime
            if not runtime.ready:
                return False
            if runtime.execution(execution_id) is not None:
                return True
            return runtime.kernel().get("state") not in busy

        await self.client.wait_until(known_or_settled, timeout=self.start_timeout)
        if nb.runtime.execution(execution_id) is not None:
            return True
        rest = self._queued[position:]
        log.warning(
            "the new daemon does not know %d queued cell(s) of %s; queueing them again",
            len(rest),
            self.prepared.output,
        )
        for offset, (cell_id, _) in enumerate(rest):
            again = await nb.queue(cell_id, cell_timeout=self.execution_timeout)
            self._queued[position + offset] = (cell_id, again)
        return False

    # -------------------------------------------------------------- papermill records

    def _apply(self, edits: list[tuple[int, dict[str, Any]]]) -> None:
        # Edit the local replica; _sync_records sends them (save() pushes what is left).
        for index, record in edits:
            cell_id = self.cells[index][0]
            self.nb.doc.set_cell_metadata(cell_id, "papermill", record)
            if record["status"] != ExecutionStatus.RUNNING and index in self._ran:
                # nbclient's record_timing keys: the kernel's message header dates when the
                # daemon recorded them; otherwise the times the run saw the cell start and its
                # result arrive.
                start, end = record["start_time"], record["end_time"]
                kernel = self.kernel_timing.get(index, {})
                timing = {
                    "iopub.status.busy": kernel.get("iopub.status.busy", start),
                    "iopub.execute_input": kernel.get("iopub.execute_input", start),
                    "shell.execute_reply": kernel.get("shell.execute_reply", end),
                    "iopub.status.idle": kernel.get("iopub.status.idle", end),
                }
                self.nb.doc.set_cell_metadata(cell_id, "execution", timing)
        if edits:
            self._records_written.set()
        if self.bar is not None:
            self.bar.update(self.timeline.reached)

    async def _sync_records(self) -> None:
        """Sync the papermill records at most every ``_RECORD_SYNC_DELAY``: one message
        then carries the records of many fast cells (one per cell cost the daemon a receive,
        an acknowledgement and the client a send, for every cell)."""
        while True:
            await self._records_written.wait()
            await anyio.sleep(_RECORD_SYNC_DELAY)
            self._records_written = anyio.Event()
            self.client.mark_dirty(self.nb.id, "notebook")

    def _cell_started(self, index: int) -> None:
        # Cells passed over get their records now; the started cell's "running" record is
        # not written: its "completed"/"failed" record follows (the runtime document shows
        # it running meanwhile), and one metadata write per cell halves the sync traffic.
        *passed_over, _running = self.timeline.started(index, now_iso(), time.monotonic())
        self._apply(passed_over)
        self.observer.cell_started(index, self.cells[index][0])
        if self.outputs.enabled:
            self.outputs.cell_started(index, self.cells[index][0])

    def _finished(self, index: int, done: Finished) -> bool:
        """Record a finished cell; False when the run stops here."""
        cell_id, _, tags = self.cells[index]
        if not self.timeline.is_started(index):
            self._cell_started(index)
        ran = done.status not in _NOT_RUN
        if ran:
            self._ran.add(index)
            self.executed += 1
            self.outputs_of[index] = done.outputs
            self.kernel_timing[index] = done.timing
            if self.outputs.enabled:
                self.outputs.outputs(cell_id, done.outputs, final=True)
                self.outputs.cell_finished(index)
        # raises-exception lets a cell's own error pass (nbclient); a timeout or a dead
        # kernel still fails the run (papermill exits 1 there too).
        allowed = done.status == ExecutionStatus.ERROR and "raises-exception" in tags
        stops = (done.status in _FAILED and not allowed) or not ran
        if not stops:
            self._apply(self.timeline.finished(index, now_iso(), time.monotonic(), failed=False))
        elif is_clean_exit(done.ename, done.evalue):
            # sys.exit()/sys.exit(0) ends the run early without failing it (papermill).
            self.exception = True
            self._apply(self.timeline.finished(index, now_iso(), time.monotonic(), failed=True))
        else:
            ename = done.ename or ("ExecutionCancelled" if not ran else "Error")
            status = done.status if ran else ExecutionStatus.CANCELLED
            self._fail(index, ename, done.evalue or "", status, done.outputs, done.execution_count)
        self.observer.cell_finished(index, cell_id, done.status, done=self.timeline.reached)
        return not stops

    async def _start_timed_out(self, index: int) -> None:
        evalue = f"the kernel did not start within {self.start_timeout:g} s"
        self._fail(
            index, "KernelStartTimeout", evalue, ExecutionStatus.TIMEOUT, [], None, timed=False
        )
        await self.nb.restart()  # drops the queued cells

    def _fail(
        self,
        index: int,
        ename: str,
        evalue: str,
        status: str,
        outputs: list[dict[str, Any]],
        count: int | None,
        *,
        timed: bool = True,
    ) -> None:
        """Cell ``index`` stopped the run: remember it (papermill's record: failed)."""
        error = error_output(outputs, ename) or {}
        # A timeout's own error has no traceback; the interrupt's shows where it was.
        traceback = error.get("traceback") or [
            line
            for o in outputs
            if o.get("output_type") == "error"
            for line in o.get("traceback") or []
        ]
        cell_id, source, _ = self.cells[index]
        self.exception = True
        self.failed = FailedCell(
            index=index,
            cell_id=cell_id,
            source=source,
            ename=ename,
            evalue=evalue,
            traceback=list(traceback),
            execution_count=count,
            status=status,
        )
        self._apply(
            self.timeline.finished(index, now_iso(), time.monotonic(), failed=True, timed=timed)
        )

    def _finish_metadata(self) -> None:
        if self._metadata_done:
            return
        self._metadata_done = True
        meta = dict(self.expected.metadata.get("papermill") or {})
        meta.update(
            end_time=now_iso(),
            duration=round(time.monotonic() - self._clock0, 6),
            exception=self.exception,
        )
        self.nb.doc.set_metadata("papermill", meta)
        if self.failed is not None:
            failed = self.failed
            cell_timeout = (
                failed.status == ExecutionStatus.TIMEOUT and failed.ename != "KernelStartTimeout"
            )
            top, anchor = error_marker_cells(
                failed.execution_count,
                status=ExecutionStatus.TIMEOUT if cell_timeout else ExecutionStatus.ERROR,
                timeout=self.execution_timeout if cell_timeout else None,
            )
            for cell, index in ((anchor, self.failed.index), (top, 0)):
                self.nb.doc.add_cell(
                    "markdown", cell["source"], index=index, metadata=cell["metadata"]
                )
        self.client.mark_dirty(self.nb.id, "notebook")
