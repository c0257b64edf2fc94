"""Per-notebook execution: a FIFO queue run one cell at a time on the notebook's kernel.

``ExecuteCell`` reads the cell's source from the notebook document when it is queued (after
the daemon has the client's heads), so what runs is exactly what the client saw. Outputs go
to the runtime document as the kernel produces them, rate-limited so that a flood of output
costs a bounded number of document writes; ``ExecutionStarted``/``ExecutionDone`` events go
to every client of the notebook. An error stops the queue (the rest is marked ``skipped``)
unless the failing cell is tagged ``raises-exception`` (nbclient semantics).

Kernel policy: the kernel comes from the daemon's runtime manager
(:mod:`runtimed.runtimes`), which picks the runtime from the notebook's metadata. It is
acquired when the notebook is opened if the pool is enabled (:meth:`NotebookExecutor.prewarm`;
usually a pre-warmed kernel), else on the first execution; errors getting it are reported by
that execution. If it dies, the running execution ends as ``died`` with a ``KernelDied``
error, the queue is skipped, and the next execution gets a fresh kernel. A kernel is never
shared: closing the notebook releases (shuts down) it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from blobstore import BlobError, BlobStore, PinSet
from protocol.messages import (
    ExecutionDone,
    ExecutionStarted,
    InputRequested,
    KernelStatusChanged,
    encode,
)
from runtimed.daemon.manifests import ManifestWriter
from runtimed.daemon.room import NotebookRoom
from runtimed.documents.notebook import Cell
from runtimed.errors import (
    CellEmpty,
    CellNotCode,
    ExecutionNotFound,
    InvalidRequest,
    KernelError,
    KernelNotRunning,
    RuntimedError,
)
from runtimed.kernels.outputs import DisplayUpdate, OutputChange
from runtimed.kernels.session import ExecutionOutcome, KernelSession, Submitted
from runtimed.runtimes.selection import RuntimeRequest, runtime_request_for

if TYPE_CHECKING:
    from runtimed.config import DaemonConfig
    from runtimed.runtimes.manager import KernelLease, RuntimeManager

__all__ = ["NotebookExecutor"]

log = logging.getLogger(__name__)

_MIN_FLUSH_INTERVAL = 0.02
_FLUSH_BYTES_PER_SECOND = 50e6  # adapt the interval so re-serialising a growing output stays cheap
_FORGET_SLACK = 50
_FAILED = frozenset({"error", "died", "timeout"})
# Kernel states after which no process holds anything a notebook ran (kernel.used = False).
_NEW_PROCESS_STATES = frozenset({"starting", "building_env", "restarting", "dead", "shutdown"})


@dataclass(eq=False)
class _Acquisition:
    """Getting a kernel from the runtime manager, in the executor's kernel task group."""

    request: RuntimeRequest
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    error: RuntimedError | None = None


@dataclass(eq=False)
class _Job:
    execution_id: str
    cell_id: str
    source: str
    tags: frozenset[str]
    allow_stdin: bool = False
    timeout: float | None = None
    input_waiter: tuple[anyio.Event, list[str]] | None = None


def kernel_cwd_for(metadata: dict[str, Any], path: Path | None) -> Path:
    """Where the kernel runs: ``metadata.runtimed.cwd`` (relative to the notebook's folder)
    when it names a directory, else the notebook's folder (home for untitled notebooks).

    Raises:
        InvalidRequest: ``runtimed.cwd`` is set but is not an existing directory.
    """
    base = path.parent if path else Path.home()
    runtimed_meta = metadata.get("runtimed")
    requested = runtimed_meta.get("cwd") if isinstance(runtimed_meta, dict) else None
    if not requested:
        return base
    cwd = (base / str(requested)).resolve()
    if not cwd.is_dir():
        raise InvalidRequest(
            f"metadata.runtimed.cwd {str(requested)!r} is not a directory ({cwd}); "
            "fix it or remove the key"
        )
    return cwd


class NotebookExecutor:
    """Owns one notebook's kernel and execution queue. Run :meth:`run` in a task group."""

    def __init__(
        self,
        room: NotebookRoom,
        *,
        config: DaemonConfig,
        blobs: BlobStore,
        runtimes: RuntimeManager,
    ) -> None:
        self.room = room
        self.config = config
        self._runtimes = runtimes
        self._blobs = blobs
        self._manifests = ManifestWriter(blobs)
        self._pins: PinSet | None = None
        self._queue: collections.deque[_Job] = collections.deque()
        self._jobs: dict[str, _Job] = {}
        self._wake = anyio.Event()
        self._seq = itertools.count(room.runtime.max_seq() + 1)
        self._kernel: KernelSession | None = None
        self._lease: KernelLease | None = None
        self._kernel_used = False  # an execution ran on the leased kernel
        self._acquiring: _Acquisition | None = None
        self._prewarm = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._running: _Job | None = None
        # The head of the queue, already sent to the kernel while the cell before it is
        # recorded (see _send_next): the job, the session it went through, the request.
        self._sent: tuple[_Job, KernelSession, Submitted] | None = None
        self._scope = anyio.CancelScope()
        self._stopped = anyio.Event()
        self._flush_wake = anyio.Event()
        self._pending_change: OutputChange | None = None
        self._idle_changed = anyio.Event()
        self._finished: collections.deque[str] = collections.deque(room.runtime.finished_by_age())
        self._kernel_written: tuple[str, str | None, int | None, str, bool] | None = None
        self._display_updates: list[DisplayUpdate] = []
        self._displays: dict[str, dict[str, tuple[int, ...]]] = {}

    # ------------------------------------------------------------ requests

    def queue_cell(
        self, cell_id: str, *, allow_stdin: bool = False, timeout: float | None = None
    ) -> str:
        """Queue ``cell_id`` with its current source; returns the execution id.

        Raises:
            CellNotFound, CellNotCode, CellEmpty.
        """
        return self._queue_cell(
            self.room.notebook.cell(cell_id), allow_stdin=allow_stdin, timeout=timeout
        )

    def _queue_cell(self, cell: Cell, *, allow_stdin: bool, timeout: float | None) -> str:
        cell_id = cell.id
        if cell.cell_type != "code":
            raise CellNotCode(
                f"cell {cell_id!r} is a {cell.cell_type} cell; only code cells can be executed"
            )
        if not cell.source.strip():
            raise CellEmpty(f"cell {cell_id!r} is empty; there is nothing to execute")
        tags = cell.metadata.get("tags", [])
        job = _Job(
            execution_id=uuid.uuid4().hex,
            cell_id=cell_id,
            source=cell.source,
            tags=frozenset(t for t in tags if isinstance(t, str))
            if isinstance(tags, list)
            else frozenset(),
            allow_stdin=allow_stdin,
            timeout=timeout,
        )
        self._jobs[job.execution_id] = job
        self._queue.append(job)
        self.room.runtime.add_execution(job.execution_id, cell_id, next(self._seq))
        self.room.runtime_changed()
        self._wake.set()
        return job.execution_id

    def queue_all(
        self, *, allow_stdin: bool = False, timeout: float | None = None
    ) -> list[tuple[str, str]]:
        """Queue every non-empty code cell in document order (``skip-execution`` excluded)."""
        queued = []
        for cell in self.room.notebook.cells():
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            tags = cell.metadata.get("tags", [])
            if isinstance(tags, list) and "skip-execution" in tags:
                continue
            queued.append(
                (cell.id, self._queue_cell(cell, allow_stdin=allow_stdin, timeout=timeout))
            )
        return queued

    async def interrupt(self) -> None:
        if self._kernel is None or (self._running is None and self._sent is None):
            return
        try:
            await self._kernel.interrupt()
        except KernelError as exc:
            log.info("interrupt of %s ignored: %s", self.room.notebook_id, exc)

    async def restart(self) -> None:
        """Restart the kernel: queued executions are cancelled, the running one ends."""
        self._cancel_queue("cancelled", "the kernel was restarted")
        if self._kernel is None:
            return
        self._set_kernel("restarting")
        try:
            request: RuntimeRequest | None = self._runtime_request()
        except RuntimedError:
            request = None  # malformed metadata: restart what runs; a new start reports it
        try:
            if request is not None and self._lease is not None and self._lease.request != request:
                # The notebook now asks for another runtime or other dependencies.
                await self._close_kernel()
                await self._ensure_kernel()
            else:
                await self._kernel.restart()
        except RuntimedError as exc:
            self._set_kernel("dead", message=f"restart failed: {exc}")
            raise
        self._set_kernel("idle")

    def clear_outputs(self, cell_ids: list[str] | None) -> None:
        targets = cell_ids if cell_ids is not None else self.room.notebook.cell_ids()
        if cell_ids is not None:
            for cell_id in cell_ids:
                self.room.notebook.cell(cell_id)  # CellNotFound before anything is cleared
        for cell_id in targets:
            if self._running is not None and self._running.cell_id == cell_id:
                continue
            self.room.runtime.clear_cell(cell_id)
        self.room.runtime_changed()

    def answer_input(self, execution_id: str, value: str) -> None:
        job = self._jobs.get(execution_id)
        if job is None:
            raise ExecutionNotFound(f"no execution {execution_id!r} in this notebook")
        if job.input_waiter is None:
            raise InvalidRequest(f"execution {execution_id!r} is not waiting for input")
        event, box = job.input_waiter
        box.append(value)
        event.set()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run queued executions until :meth:`aclose`."""
        # Getting the kernel happens in its own task group, outside the cancel scope aclose()
        # cancels, so closing cancels a start or releases the kernel gracefully.
        async with anyio.create_task_group() as kernels:
            self._tg = kernels
            if self._prewarm:
                self._start_acquire_for_prewarm()
            try:
                with self._scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._flusher)
                        while True:
                            while not self._queue:
                                if self._kernel_written and self._kernel_written[0] == "busy":
                                    self._set_kernel("idle")
                                await self._wake.wait()
                                self._wake = anyio.Event()
                            job = self._queue.popleft()
                            try:
                                await self._run_job(job)
                            except Exception:
                                # A bug must cost one execution, never the notebook or daemon.
                                log.exception("internal error running %s", job.execution_id)
                                self._running = None
                                await self._finish(
                                    job,
                                    _failed(
                                        "InternalError",
                                        "the daemon failed running this cell; see its log",
                                    ),
                                )
                            self._forget_old_executions()
            finally:
                with anyio.CancelScope(shield=True):
                    self._cancel_queue("cancelled", "the notebook was closed")
                    await self._close_kernel()
                    self._stopped.set()

    @property
    def idle(self) -> bool:
        return self._running is None and not self._queue

    async def wait_idle(self) -> None:
        """Return once nothing runs or waits in the queue."""
        while not self.idle:
            await self._idle_changed.wait()

    def _note_progress(self) -> None:
        if self.idle:
            self._idle_changed.set()
            self._idle_changed = anyio.Event()

    async def aclose(self) -> None:
        self._scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.shutdown_timeout):
            await self._stopped.wait()

    def prewarm(self) -> None:
        """Start getting this notebook's kernel now (the notebook is being opened), so the
        first execution finds it ready. A failure is reported by that execution."""
        self._prewarm = True
        if self._tg is not None:
            self._start_acquire_for_prewarm()

    def _start_acquire_for_prewarm(self) -> None:
        failed = self._acquiring
        if failed is not None and failed.done.is_set() and failed.error is not None:
            self._acquiring = None  # opened again after a failure: try again
        if self._kernel is not None or self._acquiring is not None:
            return
        try:
            request = self._runtime_request()
        except RuntimedError:
            return  # malformed dependencies: the first execution reports it
        self._start_acquire(request)

    def _runtime_request(self) -> RuntimeRequest:
        first_code = None
        for cell_id in self.room.notebook.cell_ids():
            cell = self.room.notebook.cell(cell_id)
            if cell.cell_type == "code":
                first_code = cell.source
                break
        return runtime_request_for(self.room.notebook.metadata(), first_code)

    async def _close_kernel(self) -> None:
        acquiring, self._acquiring = self._acquiring, None
        if acquiring is not None and not acquiring.done.is_set():
            acquiring.scope.cancel()
            await acquiring.done.wait()
        lease, self._lease, self._kernel = self._lease, None, None
        self._kernel_used = False
        if lease is not None:
            await lease.release()
            self._set_kernel("shutdown")

    async def _ensure_kernel(self) -> KernelSession:
        kernel = self._kernel
        if kernel is not None and kernel.state != "dead" and self._kernel_used:
            return kernel
        request = self._runtime_request()
        if (
            kernel is not None
            and kernel.state != "dead"
            and self._lease is not None
            and self._lease.request == request
        ):
            self._kernel_used = True
            return kernel
        stale = self._acquiring is not None and self._acquiring.request != request
        if kernel is not None or stale:
            # Dead, or prepared (at open) for what the notebook no longer asks for.
            await self._close_kernel()
        acquisition = self._start_acquire(request)
        await acquisition.done.wait()
        if self._acquiring is acquisition:
            self._acquiring = None  # a failure is reported once; the next execution retries
        if acquisition.error is not None:
            raise acquisition.error
        if self._kernel is None:  # the acquisition was cancelled (the notebook is closing)
            raise KernelNotRunning("the kernel start was cancelled")
        self._kernel_used = True
        return self._kernel

    def _start_acquire(self, request: RuntimeRequest) -> _Acquisition:
        if self._acquiring is None:
            assert self._tg is not None
            self._acquiring = _Acquisition(request)
            self._tg.start_soon(self._acquire, self._acquiring)
        return self._acquiring

    async def _acquire(self, acquisition: _Acquisition) -> None:
        """Get a kernel from the runtime manager and adopt it (or record why not)."""
        room = self.room
        try:
            with acquisition.scope:
                self._set_kernel("starting", name=self._runtimes.describe(acquisition.request))
                metadata = room.notebook.metadata()
                cwd = room.kernel_cwd or kernel_cwd_for(metadata, room.path)
                env = {**room.kernel_env, "RUNTIMED_NOTEBOOK_ID": room.notebook_id}
                if room.path is not None:
                    env["RUNTIMED_NOTEBOOK_PATH"] = str(room.path)
                lease = await self._runtimes.acquire(
                    acquisition.request,
                    notebook_id=room.notebook_id,
                    cwd=cwd,
                    env=env,
                    progress=self._on_runtime_progress,
                )
                self._lease, self._kernel = lease, lease.kernel
                room.adopt_kernel_info(lease.kernel.kernel_info)
                self._set_kernel("idle", name=lease.runtime.name, pid=lease.kernel.pid)
        except RuntimedError as exc:
            acquisition.error = exc
            self._set_kernel("dead", message=str(exc))
        except Exception as exc:  # a bug: fail this acquisition, not the executor
            log.exception("could not get a kernel for %s", room.notebook_id)
            acquisition.error = KernelError(f"internal error getting a kernel: {exc!r}")
            self._set_kernel("dead", message="the kernel failed to start")
        finally:
            acquisition.done.set()

    def _on_runtime_progress(self, line: str) -> None:
        # Environment build progress: the runtime document and KernelStatusChanged events.
        self._set_kernel("building_env", message=line)

    def _forget_old_executions(self) -> None:
        """Keep ``keep_executions`` finished records: dropped in batches, oldest first, from
        an in-memory list (no scan of the document per execution)."""
        keep = self.config.keep_executions
        if len(self._finished) > keep + _FORGET_SLACK:
            drop = [self._finished.popleft() for _ in range(len(self._finished) - keep)]
            self.room.runtime.forget(drop)
            self.room.runtime_changed()

    def _set_kernel(
        self, state: str, *, name: str | None = None, pid: int | None = None, message: str = ""
    ) -> None:
        if pid is None and self._kernel is not None and state not in ("dead", "shutdown"):
            pid = self._kernel.pid
        used = self._kernel_written[4] if self._kernel_written else False
        if state in _NEW_PROCESS_STATES:
            used = False  # a new process (or none yet): nothing of a notebook has run in it
        elif state == "busy":
            used = True
        if (state, name, pid, message, used) == self._kernel_written and name is None:
            return  # unchanged (back-to-back cells): no document write, no event
        self._kernel_written = (state, name, pid, message, used)
        self.room.runtime.set_kernel(state=state, name=name, pid=pid, message=message, used=used)
        self.room.runtime_changed()
        self.room.broadcast(
            encode(
                KernelStatusChanged(notebook_id=self.room.notebook_id, state=state, message=message)
            )
        )

    # ------------------------------------------------------------ one execution

    async def _run_job(self, job: _Job) -> None:
        # Blobs written for this run are pinned until the runtime document references them.
        async with self._blobs.pin() as pins:
            self._pins = pins
            try:
                await self._run_pinned(job)
            finally:
                self._pins = None
                self._manifests.forget()

    async def _run_pinned(self, job: _Job) -> None:
        room, runtime = self.room, self.room.runtime
        self._running = job
        runtime.update_execution(job.execution_id, status="running")
        runtime.start_cell_run(job.cell_id, job.execution_id)
        room.runtime_changed()
        room.broadcast(
            encode(
                ExecutionStarted(
                    notebook_id=room.notebook_id, cell_id=job.cell_id, execution_id=job.execution_id
                )
            )
        )
        sent, self._sent = self._sent, None
        assert sent is None or sent[0] is job, "the job sent ahead is the queue's head"
        if self._pending_change is not None:
            self._flush_wake.set()  # outputs it sent before it became the running job
        kernel: KernelSession | None = None
        try:
            try:
                kernel = sent[1] if sent is not None else await self._ensure_kernel()
            except RuntimedError as exc:  # kernel start failures, a bad runtimed.cwd, ...
                outcome = _failed(type(exc).__name__, str(exc))
            else:
                self._set_kernel("busy")
                try:
                    if sent is not None:
                        submitted = sent[2]
                    else:
                        submitted = await kernel.submit(
                            job.source,
                            on_change=self._on_change,
                            stdin=self._stdin_for(job) if job.allow_stdin else None,
                        )
                    outcome = await kernel.wait(submitted, timeout=job.timeout)
                except KernelError as exc:
                    outcome = _failed(type(exc).__name__, str(exc))
                if kernel.state == "dead":
                    self._set_kernel("dead", message="the kernel died")
                elif not self._queue:
                    self._set_kernel("idle")
                # else it stays "busy" for the next cell: back-to-back cells cost no
                # kernel-state writes or events (run() sets "idle" if the queue is dropped).
        finally:
            self._pending_change = None
            self._running = None
        if outcome.status == "ok" and kernel is not None:
            await self._send_next(kernel)
        await self._finish(job, outcome)
        self._note_progress()

    async def _send_next(self, kernel: KernelSession) -> None:
        """Send the next queued cell now, so the kernel runs it while this one is recorded.

        Only after this cell finished without error: the next one must never run after a
        failure, and ipykernel aborts only requests queued when a cell fails.  Not for a
        cell that may ask for input (its prompt must not come before it is running).
        """
        if not self._queue or self._queue[0].allow_stdin or kernel.state == "dead":
            return
        job = self._queue[0]
        try:
            submitted = await kernel.submit(job.source, on_change=self._on_change)
        except KernelError:
            return  # the normal path tries again and records the error
        self._sent = (job, kernel, submitted)

    async def _finish(self, job: _Job, outcome: ExecutionOutcome) -> None:
        room, runtime = self.room, self.room.runtime
        outputs = list(outcome.outputs)
        error = outcome.error
        if outcome.status == "died" and error is not None:
            # Make the death visible in the notebook, as an error output.  A timeout is not
            # added: the kernel's own KeyboardInterrupt output shows it (as nbclient).
            outputs.append(
                {
                    "output_type": "error",
                    "ename": error.ename,
                    "evalue": error.evalue,
                    "traceback": list(error.traceback),
                }
            )
        try:
            manifests = await self._manifests.build_all(outputs, final=True, pins=self._pins)
        except BlobError as exc:
            # e.g. a full disk: the output is lost, not the execution record; say so.
            manifests = [
                await self._manifests.build(
                    {
                        "output_type": "error",
                        "ename": "OutputNotStored",
                        "evalue": f"the cell's outputs could not be stored: {exc}",
                        "traceback": [],
                    }
                )
            ]
        if room.runtime is runtime:
            runtime.set_outputs(job.cell_id, manifests)
            runtime.set_execution_count(job.cell_id, outcome.execution_count)
            runtime.update_execution(
                job.execution_id,
                status=outcome.status,
                execution_count=outcome.execution_count,
                ename=error.ename if error else None,
                evalue=error.evalue if error else None,
            )
            room.runtime_changed()
        # After this cell's outputs are in place: a display update the next cell (already
        # sent, see _send_next) made to one of them must not be overwritten by them.
        self._record_displays(job.cell_id, outcome.display_ids)
        if self._display_updates:
            await self._apply_display_updates()
        room.broadcast(
            encode(
                ExecutionDone(
                    notebook_id=room.notebook_id,
                    cell_id=job.cell_id,
                    execution_id=job.execution_id,
                    status=outcome.status,
                    execution_count=outcome.execution_count,
                    ename=error.ename if error else None,
                    evalue=error.evalue if error else None,
                    traceback=list(error.traceback) if error else [],
                )
            )
        )
        self._jobs.pop(job.execution_id, None)
        self._finished.append(job.execution_id)
        # raises-exception lets the cell's own error pass; a timeout or death stops the queue.
        if outcome.status in _FAILED and (
            outcome.status != "error" or "raises-exception" not in job.tags
        ):
            self._cancel_queue("skipped", f"skipped: cell {job.cell_id!r} failed before it")

    def _cancel_queue(self, status: str, reason: str) -> None:
        if self._sent is not None:
            # Only on restart or close: the process it runs in is being replaced or stopped.
            self._sent[2].abandon()
            self._sent = None
        while self._queue:
            job = self._queue.popleft()
            self._jobs.pop(job.execution_id, None)
            self._finished.append(job.execution_id)
            self.room.runtime.update_execution(job.execution_id, status=status, evalue=reason)
            self.room.broadcast(
                encode(
                    ExecutionDone(
                        notebook_id=self.room.notebook_id,
                        cell_id=job.cell_id,
                        execution_id=job.execution_id,
                        status=status,  # type: ignore[arg-type]
                        evalue=reason,
                    )
                )
            )
        self.room.runtime_changed()
        self._note_progress()

    def _stdin_for(self, job: _Job) -> Any:
        async def answer(prompt: str, password: bool) -> str:
            event, box = anyio.Event(), list[str]()
            job.input_waiter = (event, box)
            self.room.broadcast(
                encode(
                    InputRequested(
                        notebook_id=self.room.notebook_id,
                        execution_id=job.execution_id,
                        prompt=prompt,
                        password=password,
                    )
                )
            )
            try:
                await event.wait()
            finally:
                job.input_waiter = None
            return str(box[0])

        return answer

    # ------------------------------------------------------------ outputs

    def _on_change(self, change: OutputChange) -> None:
        # Called from the kernel's IOPub reader: never block, just note and wake the flusher.
        self._pending_change = change
        if change.display_update is not None:
            self._display_updates.append(change.display_update)
        self._flush_wake.set()

    async def _apply_display_updates(self) -> None:
        """``update_display_data`` for a display id shown by other cells: rewrite those
        outputs' data and metadata (the Jupyter messaging spec's display_id semantics)."""
        updates, self._display_updates = self._display_updates, []
        running = self._running.cell_id if self._running else None
        changed = False
        for update in updates:
            for cell_id, indices in self._displays.get(update.display_id, {}).items():
                if cell_id == running:
                    continue
                _, manifests = self.room.runtime.cell_state(cell_id)
                for index in indices:
                    if index < len(manifests):
                        old = manifests[index]
                        output: dict[str, Any] = {
                            "output_type": old.get("output_type", "display_data"),
                            "data": update.data,
                            "metadata": update.metadata,
                        }
                        if "execution_count" in old:
                            output["execution_count"] = old["execution_count"]
                        manifests[index] = await self._manifests.build(output, pins=self._pins)
                        changed = True
                self.room.runtime.set_outputs(cell_id, manifests)
        if changed:
            self.room.runtime_changed()

    def _record_displays(self, cell_id: str, display_ids: dict[str, tuple[int, ...]]) -> None:
        for cells in self._displays.values():
            cells.pop(cell_id, None)
        for display_id, indices in display_ids.items():
            self._displays.setdefault(display_id, {})[cell_id] = indices

    async def _flusher(self) -> None:
        """Write the running cell's outputs to the runtime document, at a bounded rate."""
        while True:
            await self._flush_wake.wait()
            self._flush_wake = anyio.Event()
            if self._display_updates:
                try:
                    await self._apply_display_updates()
                except BlobError as exc:
                    log.warning("could not store a display update: %s", exc)
            change, job = self._pending_change, self._running
            if change is None or job is None:
                continue
            outputs = change.outputs
            try:
                manifests = await self._manifests.build_all(outputs, final=False, pins=self._pins)
            except BlobError as exc:
                log.warning("could not store outputs of %s: %s", job.cell_id, exc)
                continue
            if self._running is job and self.room.runtime.ready:
                self.room.runtime.set_outputs(job.cell_id, manifests)
                count = change.accumulator.execution_count
                if count is not None:
                    self.room.runtime.set_execution_count(job.cell_id, count)
                self.room.runtime_changed()
            size = sum(len(str(o.get("text", ""))) for o in outputs)
            await anyio.sleep(max(_MIN_FLUSH_INTERVAL, size / _FLUSH_BYTES_PER_SECOND))


def _failed(ename: str, evalue: str) -> ExecutionOutcome:
    from runtimed.kernels.session import ErrorInfo

    return ExecutionOutcome(
        status="error",
        execution_count=None,
        outputs=[],
        error=ErrorInfo(ename=ename, evalue=evalue, traceback=[]),
    )
