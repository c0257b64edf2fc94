"""Run a whole notebook through the daemon, papermill style: ``runt run`` and its Python API.

:func:`execute_notebook` (blocking) and :func:`execute_notebook_async` read the input
notebook, inject parameters exactly as papermill does, write the parameterized notebook to
the output path and open *that file* in the daemon, so the run is a live notebook other
clients can watch (``runt ps`` lists it; its link is :func:`notebook_link`). Every code cell
is then queued at once with ``RunAll`` (``skip-execution`` cells are left out by the daemon;
an error stops the queue unless the cell is tagged ``raises-exception``), results are
followed through the synced runtime document, papermill's ``metadata.papermill`` records are
kept on the notebook and on every cell, and the output file is checkpointed by the daemon at
the end — on failure too, with papermill's error marker cells. Then the notebook is unloaded
(its kernel stopped) unless ``keep_open``. Cancelling a run (Ctrl-C in ``runt run``)
interrupts the running cell and still saves what ran.

Where the kernel runs: as papermill, in the caller's working directory unless ``cwd`` is
given. The client records it as ``metadata.runtimed.cwd`` and the daemon starts the
kernel there.

Differences from papermill, on purpose: a ``raises-exception`` cell that raises does not
fail the run (papermill runs on but then reports the error); ``metadata.papermill.version``
is not written; ``language_info`` is not refreshed from the kernel; papermill's per-cell
``metadata.execution`` timestamps are not recorded.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import IO, TYPE_CHECKING, Any

import anyio

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
    NotebookExecutionError,
    Prepared,
    RunResult,
    cell_tags,
    error_marker_cells,
    error_output,
    is_clean_exit,
    materialize,
    notebook_link,
    now_iso,
)
from runtimed.errors import RuntimedError

if TYPE_CHECKING:
    from runtimed.client import AsyncClient

__all__ = [
    "FailedCell",
    "NotebookExecutionError",
    "RunResult",
    "execute_notebook",
    "execute_notebook_async",
    "notebook_link",
]

log = logging.getLogger(__name__)

_FAILED = frozenset({"error", "died", "timeout"})
_NOT_RUN = frozenset({"skipped", "cancelled", "aborted"})
_RECORD_SYNC_DELAY = 0.1  # s; papermill records reach the daemon in batches this often


@asynccontextmanager
async def _connected(
    client: AsyncClient | None, socket: str | os.PathLike[str] | None, autostart: bool
) -> AsyncIterator[AsyncClient]:
    if client is not None:
        yield client
        return
    from runtimed.client import AsyncClient

    where = os.fspath(socket) if socket is not None else None
    async with await AsyncClient.connect(where, autostart=autostart) as connected:
        yield connected


async def execute_notebook_async(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    parameters: Mapping[str, object] | None = None,
    *,
    kernel_name: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    execution_timeout: float | None = None,
    start_timeout: float = 60,
    prepare_only: bool = False,
    report_mode: bool = False,
    log_output: bool = False,
    log_stream: IO[str] | None = None,
    stdout_file: IO[str] | None = None,
    stderr_file: IO[str] | None = None,
    progress_bar: bool = True,
    observer: RunObserver | None = None,
    autosave_cell_every: float = 30,
    keep_open: bool = False,
    socket: str | os.PathLike[str] | None = None,
    autostart: bool = True,
    client: AsyncClient | None = None,
    raise_on_error: bool = False,
) -> RunResult:
    """Execute a notebook through the daemon and write the executed copy to ``output_path``.

    Args:
        input_path: the notebook to run (not modified). Both paths may hold ``{name}``
            fields filled from ``parameters`` (papermill's ``parameterize_path``).
        output_path: where the executed notebook is written (its folder is created); it is
            written even when a cell fails.
        parameters: values injected after the ``parameters`` cell, as papermill does.
        kernel_name: run with this kernelspec instead of the notebook's.
        cwd: the kernel's working directory (default: the current one, as papermill).
        execution_timeout: seconds each cell may run before it is interrupted and the run
            fails (status ``timeout``).
        start_timeout: seconds to wait for the kernel to start.
        prepare_only: only write the parameterized notebook; execute nothing.
        report_mode: hide code cell inputs (``metadata.jupyter.source_hidden``).
        log_output: write outputs as they arrive to ``log_stream`` (default stderr).
        stdout_file, stderr_file: also write the cells' stdout / stderr streams there.
        progress_bar: draw a progress bar on stderr (only when it is a terminal).
        observer: hooks called as the run progresses.
        autosave_cell_every: also checkpoint the output every this many seconds (0: only at
            the end), as papermill's autosave.
        keep_open: leave the notebook and its kernel open in the daemon afterwards (default:
            unload it, stopping the kernel, unless another client has it open).
        socket, autostart: how to reach the daemon (ignored when ``client`` is given).
        client: an already connected client to share (batches do).
        raise_on_error: raise :class:`NotebookExecutionError` instead of returning a
            ``failed`` result.

    Returns:
        The :class:`RunResult`.

    Raises:
        ParameterError: bad parameters or path templates.
        NotebookNotFound, NotebookInvalid, NotebookIOError: the input cannot be read or the
            output cannot be written.
        InvalidRequest: ``cwd`` is not a directory; the output notebook is already being
            executed by another client.
        DaemonNotRunning, ConnectionClosed, RuntimedError: the daemon is unreachable or failed.
        NotebookExecutionError: with ``raise_on_error``, a cell failed.
    """
    started_at = time.monotonic()
    params = dict(parameters or {})
    prepared = await anyio.to_thread.run_sync(
        functools.partial(
            materialize,
            input_path,
            output_path,
            params,
            kernel_name=kernel_name,
            report_mode=report_mode,
            prepare_only=prepare_only,
            cwd=cwd,
        )
    )
    for name in prepared.unknown_parameters:
        log.warning("Passed unknown parameter: %s", name)
    if prepare_only:
        return RunResult(
            status="ok",
            input_path=prepared.input_path,
            output_path=prepared.output_path,
            duration=time.monotonic() - started_at,
            parameters=params,
        )
    if log_output and log_stream is None:
        import sys

        log_stream = sys.stderr
    run = _LiveRun(
        prepared,
        parameters=params,
        execution_timeout=execution_timeout,
        start_timeout=start_timeout,
        observer=observer or RunObserver(),
        outputs=OutputLog(
            log=log_stream if log_output else None, stdout_file=stdout_file, stderr_file=stderr_file
        ),
        bar=ProgressBar(len(prepared.nb.cells)) if progress_bar and not log_output else None,
        autosave_every=autosave_cell_every,
        keep_open=keep_open,
        started_at=started_at,
    )
    result = await _run_stoppable(run, client, socket, autostart)
    if raise_on_error and result.status == "failed":
        raise NotebookExecutionError(result)
    return result


def execute_notebook(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    parameters: Mapping[str, object] | None = None,
    **options: Any,
) -> RunResult:
    """Blocking :func:`execute_notebook_async` (same arguments), like
    ``papermill.execute_notebook``. Safe to call while an event loop runs in this thread
    (e.g. inside Jupyter): the run happens on a private event loop thread.

    ``execute_notebook("in.ipynb", "out.ipynb", {"alpha": 0.5}).scraps``
    """
    from anyio.from_thread import start_blocking_portal

    call = functools.partial(execute_notebook_async, input_path, output_path, parameters, **options)
    with start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        return portal.call(call)


async def _run_stoppable(
    run: _LiveRun,
    client: AsyncClient | None,
    socket: str | os.PathLike[str] | None,
    autostart: bool,
) -> RunResult:
    """Run ``run``; cancelling the caller stops it gracefully.

    The run (and the client it may create) runs shielded, so that on cancellation (Ctrl-C in
    ``runt run``) it can still interrupt the running cell, drop the queue and save the output
    through the daemon; after 30 s it is cancelled outright.
    """
    outcome: list[RunResult | BaseException] = []
    done = anyio.Event()
    scope = anyio.CancelScope(shield=True)

    async def guarded() -> None:
        try:
            with scope:
                async with _connected(client, socket, autostart) as connected:
                    outcome.append(await run.run(connected))
        except BaseException as exc:  # re-raised below, not wrapped in an ExceptionGroup
            outcome.append(exc)
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            run.stop.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await done.wait()
            scope.cancel()
            raise
    if not outcome:
        raise RuntimedError(f"the run of {run.prepared.input_path} was cancelled")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


class _LiveRun:
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
    ) -> None:
        self.prepared, self.expected = prepared, prepared.nb
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
        self.stop = anyio.Event()  # set: interrupt the running cell, drop the rest, save
        self._records_written = anyio.Event()  # papermill records not yet synced
        self._current: tuple[int, str] | None = None

    # -------------------------------------------------------------- lifecycle

    async def run(self, client: AsyncClient) -> RunResult:
        self.client = client
        self.nb = nb = await open_fresh(client, self.prepared.output, self.expected)
        self.watcher = ExecutionWatcher(client, nb)
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
            self._finish_metadata()
            await nb.save()
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

    async def _salvage(self) -> None:
        """After an error or cancellation: stop the running cell and write what there is."""
        nb = self.nb
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
        # The daemon is gone: write what the local replica holds.
        from runtimed.storage.ipynb import write_notebook_atomic

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

    async def _interrupted(self, index: int, execution_id: str) -> None:
        """Stopped while following cell ``index``: interrupt it, drop the queue."""
        nb, cell_id = self.nb, self.cells[index][0]
        await nb.interrupt()
        done = None
        with anyio.move_on_after(5):
            done = await self.watcher.wait(
                execution_id,
                cell_id,
                start_deadline=time.monotonic() + 5,
                on_start=lambda: None,
                on_outputs=None,
            )
        if nb.runtime.running() is not None or nb.runtime.queue():
            await nb.restart()  # the interrupt came between two cells: stop the next one
        if done is not None and done.status not in _NOT_RUN:
            self.executed += 1
            self.outputs_of[index] = done.outputs
        self._fail(
            index,
            "KeyboardInterrupt",
            "the run was interrupted",
            "cancelled",
            done.outputs if done is not None else [],
            done.execution_count if done else None,
        )

    async def _follow(self, queued: list[tuple[str, str]]) -> None:
        start_deadline = time.monotonic() + self.start_timeout
        for cell_id, execution_id in queued:
            index = self.index_of[cell_id]
            self._current = (index, execution_id)
            on_outputs = None
            if self.outputs.enabled:
                on_outputs = functools.partial(self.outputs.outputs, cell_id, final=False)
            done = await self.watcher.wait(
                execution_id,
                cell_id,
                start_deadline=start_deadline,
                on_start=functools.partial(self._cell_started, index),
                on_outputs=on_outputs,
            )
            if done is None:
                await self._start_timed_out(index)
                return
            if not self._finished(index, done):
                return
            if 0 < self.autosave_every <= time.monotonic() - self._last_save:
                self._last_save = time.monotonic()
                await self.nb.save()
        self._apply(self.timeline.passed_over(len(self.cells), now_iso()))

    # -------------------------------------------------------------- papermill records

    def _apply(self, edits: list[tuple[int, dict[str, Any]]]) -> None:
        # Edit the local replica; _sync_records sends them (save() pushes what is left).
        for index, record in edits:
            self.nb.doc.set_cell_metadata(self.cells[index][0], "papermill", record)
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
            self.executed += 1
            self.outputs_of[index] = done.outputs
            if self.outputs.enabled:
                self.outputs.outputs(cell_id, done.outputs, final=True)
                self.outputs.cell_finished(index)
        stops = (done.status in _FAILED and "raises-exception" not in tags) or not ran
        if not stops:
            self._apply(self.timeline.finished(index, now_iso(), time.monotonic(), failed=False))
        elif is_clean_exit(done.ename, done.evalue):
            # sys.exit()/sys.exit(0) ends the run early without failing it (papermill).
            self.exception = True
            self._apply(self.timeline.finished(index, now_iso(), time.monotonic(), failed=True))
        else:
            ename = done.ename or ("ExecutionCancelled" if not ran else "Error")
            status = done.status if ran else "cancelled"
            self._fail(index, ename, done.evalue or "", status, done.outputs, done.execution_count)
        self.observer.cell_finished(index, cell_id, done.status, done=self.timeline.reached)
        return not stops

    async def _start_timed_out(self, index: int) -> None:
        evalue = f"the kernel did not start within {self.start_timeout:g} s"
        self._fail(index, "KernelStartTimeout", evalue, "timeout", [], None, timed=False)
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
            top, anchor = error_marker_cells(self.failed.execution_count)
            for cell, index in ((anchor, self.failed.index), (top, 0)):
                self.nb.doc.add_cell(
                    "markdown", cell["source"], index=index, metadata=cell["metadata"]
                )
        self.client.mark_dirty(self.nb.id, "notebook")
