"""Run a whole notebook through the daemon, papermill style: ``runt run`` and its Python API.

:func:`execute_notebook` (blocking) and :func:`execute_notebook_async` read the input
notebook, inject parameters exactly as papermill does, write the parameterized notebook to
the output path and open *that file* in the daemon, so the run is a live notebook other
clients can watch (``runt ps`` lists it; its link is :func:`notebook_link`). Every code cell
is then queued at once with ``RunAll`` (``skip-execution`` cells are left out by the daemon;
an error stops the queue unless the cell is tagged ``raises-exception``), results are
followed through the synced runtime document, papermill's ``metadata.papermill`` records are
kept on the notebook and on every cell, and the output file is checkpointed by the daemon at
the end — on failure too, with papermill's error marker cells.

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
from runtimed.errors import InvalidRequest, RuntimedError

if TYPE_CHECKING:
    from runtimed.client import AsyncClient, AsyncNotebook

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


@asynccontextmanager
async def _connected(client: AsyncClient | None, socket: str | os.PathLike[str] | None,
                     autostart: bool) -> AsyncIterator[AsyncClient]:
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
    prepared = await anyio.to_thread.run_sync(functools.partial(
        materialize, input_path, output_path, params, kernel_name=kernel_name,
        report_mode=report_mode, prepare_only=prepare_only, cwd=cwd,
    ))
    for name in prepared.unknown_parameters:
        log.warning("Passed unknown parameter: %s", name)
    if prepare_only:
        return RunResult(status="ok", input_path=prepared.input_path,
                         output_path=prepared.output_path,
                         duration=time.monotonic() - started_at, parameters=params)
    if log_output and log_stream is None:
        import sys

        log_stream = sys.stderr
    run = _LiveRun(
        prepared, parameters=params, execution_timeout=execution_timeout,
        start_timeout=start_timeout, observer=observer or RunObserver(),
        outputs=OutputLog(log=log_stream if log_output else None, stdout_file=stdout_file,
                          stderr_file=stderr_file),
        bar=ProgressBar(len(prepared.nb.cells)) if progress_bar and not log_output else None,
        autosave_every=autosave_cell_every, keep_open=keep_open, started_at=started_at,
    )
    async with _connected(client, socket, autostart) as connected:
        result = await run.run(connected)
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

    call = functools.partial(execute_notebook_async, input_path, output_path, parameters,
                             **options)
    with start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        return portal.call(call)


class _LiveRun:
    """One output notebook's RunAll in the daemon, followed cell by cell while papermill's
    records are kept on the notebook (the file :func:`materialize` wrote)."""

    def __init__(self, prepared: Prepared, *, parameters: dict[str, object],
                 execution_timeout: float | None, start_timeout: float,
                 observer: RunObserver, outputs: OutputLog, bar: ProgressBar | None,
                 autosave_every: float, keep_open: bool, started_at: float) -> None:
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

    # -------------------------------------------------------------- lifecycle

    async def run(self, client: AsyncClient) -> RunResult:
        self.client = client
        self.nb = nb = await client.open(self.prepared.output)
        self.watcher = ExecutionWatcher(client, nb)
        try:
            await self._reconcile(nb)
            queued = await nb.queue_all(cell_timeout=self.execution_timeout)
            self.observer.run_started(
                input_path=self.prepared.input_path, output_path=self.prepared.output_path,
                notebook_id=nb.id, link=notebook_link(nb.id), total=len(self.cells),
            )
            await self._follow([(q.cell_id, q.execution_id) for q in queued])
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
                    if not self.keep_open:
                        await self._wait_unloaded()
                except RuntimedError as exc:
                    log.info("could not close %s: %s", self.prepared.output, exc)
        from runtimed.glue import read_scraps

        cells = [{"outputs": self.outputs_of[i]} for i in sorted(self.outputs_of)]
        result = RunResult(
            status="failed" if self.failed else "ok", input_path=self.prepared.input_path,
            output_path=self.prepared.output_path, duration=time.monotonic() - self.started_at,
            cells_executed=self.executed, failed_cell=self.failed, notebook_id=nb.id,
            notebook_link=notebook_link(nb.id), scraps=read_scraps({"cells": cells}),
            parameters=self.parameters,
        )
        self.observer.run_finished(result)
        return result

    async def _reconcile(self, nb: AsyncNotebook) -> None:
        """Make sure the daemon's document is the file just written.

        The daemon does not re-read a notebook some client still has open (or that was left
        open with ``keep_open``): then replace its cells and restart its kernel, so nothing
        of an earlier run leaks into this one.
        """
        runtime = nb.runtime
        if runtime.running() or runtime.queue():
            raise InvalidRequest(
                f"{self.prepared.output} is being executed by another client (see 'runt ps'); "
                "wait for it or write to another output path"
            )
        want = [(c.id, c.cell_type, c.source, c.metadata) for c in self.expected.cells]
        have = [(c.id, c.cell_type, c.source, c.metadata) for c in nb.cells()]
        if want != have or nb.metadata() != self.expected.metadata:
            log.info("%s was open in the daemon already; replacing its content",
                     self.prepared.output)
            for cell_id in nb.cell_ids():
                nb.doc.delete_cell(cell_id)
            for c in self.expected.cells:
                nb.doc.add_cell(c.cell_type, c.source, cell_id=c.id, metadata=c.metadata)
            for key, value in self.expected.metadata.items():
                nb.doc.set_metadata(key, value)
            await self.client.push(nb.id, "notebook")
            await nb.clear_outputs()
        if str(runtime.kernel().get("state", "")) not in ("", "not_started", "shutdown", "dead"):
            await nb.restart()

    async def _wait_unloaded(self) -> None:
        """Wait (bounded) until the daemon has stopped the kernel and closed the notebook,
        as papermill returns only after its kernel shut down.

        Also works around a daemon race: a notebook being unloaded stays registered while
        its kernel stops, and an OpenNotebook in that window joins the dying room (whose
        executions then never run), so a run right after this one could hang.
        """
        delay = 0.005
        with anyio.move_on_after(10):
            while True:
                infos = await self.client.list_notebooks()
                mine = [i for i in infos if i.notebook_id == self.nb.id]
                if not mine or mine[0].clients > 0:
                    return
                await anyio.sleep(delay)  # the daemon sends no event for a closed notebook
                delay = min(delay * 2, 0.1)

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
                log.warning("could not checkpoint %s through the daemon: %s",
                            self.prepared.output, exc)
        # The daemon is gone: write what the local replica holds.
        from runtimed.notebook_file import write_notebook_atomic

        try:
            data = nb.doc.to_nbformat(lambda cid: (nb.execution_count(cid), nb.outputs(cid)))
            await anyio.to_thread.run_sync(write_notebook_atomic, self.prepared.output, data)
        except (RuntimedError, OSError, ValueError) as exc:
            log.warning("could not write %s from the local replica: %s",
                        self.prepared.output, exc)

    # -------------------------------------------------------------- following

    async def _follow(self, queued: list[tuple[str, str]]) -> None:
        start_deadline = time.monotonic() + self.start_timeout
        for cell_id, execution_id in queued:
            index = self.index_of[cell_id]
            on_outputs = None
            if self.outputs.enabled:
                on_outputs = functools.partial(self.outputs.outputs, cell_id, final=False)
            done = await self.watcher.wait(
                execution_id, cell_id, start_deadline=start_deadline,
                on_start=functools.partial(self._cell_started, index), on_outputs=on_outputs,
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
        # Edit the local replica and let the client's writer sync it: one sync message then
        # carries the records of many fast cells.
        for index, record in edits:
            self.nb.doc.set_cell_metadata(self.cells[index][0], "papermill", record)
        if edits:
            self.client.mark_dirty(self.nb.id, "notebook")
        if self.bar is not None:
            self.bar.update(self.timeline.reached)

    def _cell_started(self, index: int) -> None:
        self._apply(self.timeline.started(index, now_iso(), time.monotonic()))
        self.observer.cell_started(index, self.cells[index][0])
        if self.outputs.enabled:
            self.outputs.cell_started(index, self.cells[index][0])

    def _finished(self, index: int, done: Finished) -> bool:
        """Record a finished cell; False when the run stops here."""
        cell_id, source, tags = self.cells[index]
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
        if stops:
            self.exception = True
            # sys.exit()/sys.exit(0) ends the run early without failing it (papermill).
            if not is_clean_exit(done.ename, done.evalue):
                error = error_output(done.outputs, done.ename) or {}
                self.failed = FailedCell(
                    index=index, cell_id=cell_id, source=source,
                    ename=done.ename or ("ExecutionCancelled" if not ran else "Error"),
                    evalue=done.evalue or "", traceback=list(error.get("traceback") or []),
                    execution_count=done.execution_count,
                    status=done.status if ran else "cancelled",
                )
        self._apply(self.timeline.finished(index, now_iso(), time.monotonic(), failed=stops))
        self.observer.cell_finished(index, cell_id, done.status, done=self.timeline.reached)
        return not stops

    async def _start_timed_out(self, index: int) -> None:
        cell_id, source, _ = self.cells[index]
        self.exception = True
        self.failed = FailedCell(
            index=index, cell_id=cell_id, source=source, ename="KernelStartTimeout",
            evalue=f"the kernel did not start within {self.start_timeout:g} s", status="timeout",
        )
        self._apply(self.timeline.finished(index, now_iso(), time.monotonic(), failed=True,
                                           timed=False))
        await self.nb.restart()  # drops the queued cells

    def _finish_metadata(self) -> None:
        meta = dict(self.expected.metadata.get("papermill") or {})
        meta.update(end_time=now_iso(), duration=round(time.monotonic() - self._clock0, 6),
                    exception=self.exception)
        self.nb.doc.set_metadata("papermill", meta)
        if self.failed is not None:
            top, anchor = error_marker_cells(self.failed.execution_count)
            for cell, index in ((anchor, self.failed.index), (top, 0)):
                self.nb.doc.add_cell("markdown", cell["source"], index=index,
                                     metadata=cell["metadata"])
        self.client.mark_dirty(self.nb.id, "notebook")
