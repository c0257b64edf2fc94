"""Per-notebook execution: the I/O shell around the pure :mod:`runtimed.daemon.queue`.

The queue decides (FIFO, one at a time, skip after a failure unless ``raises-exception``,
``skip-execution``, cancel on restart and close, forget old records); this module performs
what it decides: runtime-document writes, events to every client, kernel requests. It keeps
only what needs I/O: the kernel and getting it, output manifests and blobs, the output
flusher, display updates and ``input()`` answers.

``ExecuteCell`` reads the cell's source from the notebook document when it is queued (after
the daemon has the client's heads), so what runs is exactly what the client saw. Outputs go
to the runtime document as the kernel produces them, rate-limited so that a flood of output
costs a bounded number of document writes; ``ExecutionStarted``/``ExecutionDone`` events go
to every client of the notebook.

Kernel policy: the kernel comes from the daemon's runtime manager
(:mod:`runtimed.runtimes`), which picks the runtime from the notebook's metadata. It is
acquired when the notebook is opened if the pool is enabled (:meth:`NotebookExecutor.prewarm`;
usually a pre-warmed kernel), else on the first execution; errors getting it are reported by
that execution. If it dies, the running execution ends as ``died`` with a ``KernelDied``
error, the queue is skipped, and the next execution gets a fresh kernel. A kernel is never
shared: closing the notebook releases (shuts down) it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, assert_never

import anyio

from blobstore import BlobStore
from protocol.messages import InputRequested, KernelStatusChanged, encode
from protocol.states import ExecutionStatus, KernelState
from runtimed.daemon.adopted import AdoptedExecutions, AdoptedLease
from runtimed.daemon.comms import CommRecorder
from runtimed.daemon.outputs import OutputRecorder
from runtimed.daemon.queue import (
    AbandonSent,
    Broadcast,
    Close,
    Effect,
    Entry,
    Execute,
    ExecutionQueue,
    Finished,
    ForgetRecords,
    Interrupt,
    InterruptKernel,
    QueueAll,
    QueueCell,
    RecordNotRun,
    RecordOutcome,
    RecordQueued,
    RecordRunning,
    Restart,
    SendAhead,
    SentAhead,
    StartNext,
)
from runtimed.daemon.room import NotebookRoom
from runtimed.documents.boundary import DocumentError
from runtimed.errors import (
    ExecutionNotFound,
    InvalidRequest,
    KernelError,
    KernelNotRunning,
    RuntimedError,
)
from runtimed.kernels.session import KernelSession, Submitted
from runtimed.runtimes.selection import RuntimeRequest, runtime_request_for

if TYPE_CHECKING:
    from runtimed.config import DaemonConfig
    from runtimed.kernels.records import KernelRecord
    from runtimed.runtimes.manager import KernelLease, RuntimeManager

__all__ = ["NotebookExecutor", "kernel_cwd_for"]

log = logging.getLogger(__name__)

# Kernel states after which no process holds anything a notebook ran (kernel.used = False).
_NEW_PROCESS_STATES = frozenset(
    {
        KernelState.STARTING,
        KernelState.BUILDING_ENV,
        KernelState.RESTARTING,
        KernelState.DEAD,
        KernelState.SHUTDOWN,
    }
)
_INTERNAL_ERROR = "the daemon failed running this cell; see its log"
RUNTIME_COMPACT_EVERY = 200
"""Executions after which an idle notebook's runtime document is replaced by a copy of its
state without history (:meth:`RuntimeDoc.fresh_copy`): every read and write of a key costs
time in proportion to its past values, and each execution overwrites the same keys (a
``1+1`` went from 8 to 28 ms over 4,000 executions without it; ``bench/bench_execute.py``)."""

# Effects performed without awaiting: document writes, events, dropping a request.
_Immediate = RecordQueued | RecordRunning | RecordNotRun | ForgetRecords | Broadcast | AbandonSent


@dataclass(eq=False)
class _Acquisition:
    """Getting a kernel from the runtime manager, in the executor's kernel task group."""

    request: RuntimeRequest
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    error: RuntimedError | None = None


def kernel_cwd_for(metadata: dict[str, Any], path: Path | None) -> Path:
    """Where the kernel runs: ``metadata.runtimed.cwd`` (relative to the notebook's folder)
    when it names a directory, else the notebook's folder (home for untitled notebooks).

    A stale ``runtimed.cwd`` (a notebook shared from another machine: the folder does not
    exist, or is not a directory) is logged as a warning and the notebook's folder is used.

    Touches the filesystem (``resolve``, ``is_dir``): call it in a worker thread.
    """
    base = path.parent if path else Path.home()
    runtimed_meta = metadata.get("runtimed")
    requested = runtimed_meta.get("cwd") if isinstance(runtimed_meta, dict) else None
    if not requested:
        return base
    cwd = (base / str(requested)).resolve()
    if not cwd.is_dir():
        log.warning(
            "metadata.runtimed.cwd %r of %s is not a directory (%s); "
            "the kernel runs in the notebook's folder %s instead",
            str(requested),
            path if path else "an untitled notebook",
            cwd,
            base,
        )
        return base
    return cwd


class NotebookExecutor:
    """Owns one notebook's kernel and performs its execution queue. Run :meth:`run` in a
    task group."""

    def __init__(
        self,
        room: NotebookRoom,
        *,
        config: DaemonConfig,
        blobs: BlobStore,
        runtimes: RuntimeManager,
        adopt: KernelRecord | None = None,
    ) -> None:
        self.room = room
        self.config = config
        self._runtimes = runtimes
        self._blobs = blobs
        self._queue = ExecutionQueue(
            room.notebook_id,
            new_execution_id=lambda: uuid.uuid4().hex,
            keep_executions=config.keep_executions,
            finished=room.runtime.finished_by_age(),
            next_seq=room.runtime.max_seq() + 1,
        )
        self._runtime_dirty = False  # written since the last runtime_changed()
        self._since_compact = 0  # executions started since the runtime document was replaced
        self._inputs: dict[str, tuple[anyio.Event, list[str]]] = {}  # execution id -> waiter
        self._wake = anyio.Event()
        self._kernel: KernelSession | None = None
        self._lease: KernelLease | None = None
        self._kernel_used = False  # an execution ran on the leased kernel
        self._acquiring: _Acquisition | None = None
        self._prewarm = False
        self._tg: anyio.abc.TaskGroup | None = None
        # The head of the queue, already sent to the kernel while the cell before it is
        # recorded (the queue's SendAhead): its execution id, the session, the request.
        self._sent: tuple[str, KernelSession, Submitted] | None = None
        self._scope = anyio.CancelScope()
        self._stopped = anyio.Event()
        self._idle_changed = anyio.Event()
        self._kernel_written: tuple[str, str | None, int | None, str, bool] | None = None
        self._outputs = OutputRecorder(room, blobs, running=self._running_entry)
        self.comms = CommRecorder(room, blobs)  # the kernel's comms (widgets) into the document
        # A kernel the previous daemon left running (runtimed.daemon.adopted): adopted first.
        self._adopt = adopt
        self._adopted = AdoptedExecutions(room, self._outputs)
        if adopt is None:
            self._adopted.done.set()
        else:  # clients opening the notebook see it at once: a kernel is on its way
            self._set_kernel(KernelState.STARTING)

    def _running_entry(self) -> Entry | None:
        return self._queue.running or self._adopted.entry

    # ------------------------------------------------------------ requests

    def queue_cell(
        self, cell_id: str, *, allow_stdin: bool = False, timeout: float | None = None
    ) -> str:
        """Queue ``cell_id`` with its current source; returns the execution id.

        Raises:
            CellNotFound, CellNotCode, CellEmpty.
        """
        cell = self.room.notebook.cell(cell_id)
        queued = self._queued(
            self._queue.handle(QueueCell(cell, allow_stdin=allow_stdin, timeout=timeout))
        )
        return queued[0][1]

    def queue_all(
        self, *, allow_stdin: bool = False, timeout: float | None = None
    ) -> list[tuple[str, str]]:
        """Queue every non-empty code cell in document order (``skip-execution`` excluded);
        returns ``(cell_id, execution_id)`` pairs."""
        cells = list(self.room.notebook.cells())
        return self._queued(
            self._queue.handle(QueueAll(cells, allow_stdin=allow_stdin, timeout=timeout))
        )

    def _queued(self, effects: list[Effect]) -> list[tuple[str, str]]:
        self._perform_now(effects)
        if effects:
            self._wake.set()
        return [(e.cell_id, e.execution_id) for e in effects if isinstance(e, RecordQueued)]

    async def interrupt(self) -> None:
        if self._kernel is None:
            return
        await self._perform(self._queue.handle(Interrupt()))

    async def restart(self) -> None:
        """Restart the kernel: queued executions are cancelled, the running one ends."""
        self._perform_now(self._queue.handle(Restart()))
        self._note_progress()
        if self._kernel is None:
            return
        self._set_kernel(KernelState.RESTARTING)
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
                self._adopt_kernel_info(self._kernel)
        except RuntimedError as exc:
            self._set_kernel(KernelState.DEAD, message=f"restart failed: {exc}")
            raise
        self._set_kernel(KernelState.IDLE)

    def running_kernel(self) -> KernelSession:
        """The notebook's kernel, for requests beside the queue (completion, inspection,
        history); it is not started for them.

        Raises:
            KernelNotRunning: the notebook has no live kernel.
        """
        kernel = self._kernel
        if kernel is None or kernel.state in (KernelState.DEAD, KernelState.STARTING):
            state = "not running" if kernel is None else str(kernel.state)
            raise KernelNotRunning(
                f"notebook {self.room.notebook_id!r} has no running kernel (it is {state});"
                " run a cell to start one"
            )
        return kernel

    def clear_outputs(self, cell_ids: list[str] | None) -> None:
        targets = cell_ids if cell_ids is not None else self.room.notebook.cell_ids()
        if cell_ids is not None:
            for cell_id in cell_ids:
                self.room.notebook.cell(cell_id)  # CellNotFound before anything is cleared
        running = self._queue.running
        for cell_id in targets:
            if running is not None and running.cell_id == cell_id:
                continue
            self.room.runtime.clear_cell(cell_id)
        self.room.runtime_changed()

    def answer_input(self, execution_id: str, value: str) -> None:
        if self._queue.get(execution_id) is None:
            raise ExecutionNotFound(f"no execution {execution_id!r} in this notebook")
        waiter = self._inputs.get(execution_id)
        if waiter is None:
            raise InvalidRequest(f"execution {execution_id!r} is not waiting for input")
        event, box = waiter
        box.append(value)
        event.set()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run queued executions until :meth:`aclose`."""
        # Getting the kernel happens in its own task group, outside the cancel scope aclose()
        # cancels, so closing cancels a start or releases the kernel gracefully.
        async with anyio.create_task_group() as kernels:
            self._tg = kernels
            if self._adopt is not None:
                self._start_adoption(self._adopt)
            if self._prewarm:
                self._start_acquire_for_prewarm()
            try:
                with self._scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._outputs.run)
                        tg.start_soon(self.comms.run)
                        while True:
                            while not self._queue.can_start:
                                written = self._kernel_written
                                if written and written[0] == KernelState.BUSY:
                                    self._set_kernel(KernelState.IDLE)
                                if self._since_compact >= RUNTIME_COMPACT_EVERY:
                                    await self._compact_runtime()
                                await self._wake.wait()
                                self._wake = anyio.Event()
                            await self._run_next()
            finally:
                with anyio.CancelScope(shield=True):
                    self._perform_now(self._queue.handle(Close()))
                    self._note_progress()
                    await self._close_kernel()
                    self._stopped.set()

    async def _run_next(self) -> None:
        # After what the previous daemon had sent to an adopted kernel (a no-op otherwise).
        # Not awaited when already set: waiting on a set event still yields to the loop, and
        # the connection writer would then send "queued" and "running" as two sync messages.
        if not self._adopted.done.is_set():
            await self._adopted.done.wait()
        self._queue.reserve_seq(self._adopted.highest_seq)
        self._since_compact += 1
        effects = self._queue.handle(StartNext())
        started = self._queue.running
        assert started is not None
        try:
            await self._perform(effects)
        except Exception:
            # A bug must cost one execution, never the notebook or daemon.
            log.exception("internal error running %s", started.execution_id)
            self._outputs.pending = None
            running = self._queue.running
            if running is not None:
                await self._perform(self._queue.handle(_failed(running, "InternalError")))
        self._note_progress()

    @property
    def idle(self) -> bool:
        return self._queue.idle

    async def _compact_runtime(self) -> None:
        """Replace the runtime document by a copy of its state without history (see
        :data:`RUNTIME_COMPACT_EVERY`). Only between executions, after adoption, and not
        while comms are being written; a failure keeps the document as it is."""
        if not self._adopted.done.is_set() or not self._queue.idle:
            return
        room = self.room
        async with self.comms.writing:
            if not self._queue.idle:
                return  # an execution was queued meanwhile: at the next idle moment
            self._since_compact = 0
            try:
                fresh = room.runtime.fresh_copy()
            except DocumentError:
                log.exception("notebook %s: could not copy its runtime document", room.notebook_id)
                return
            room.replace_runtime(fresh)
        log.info("notebook %s: runtime document replaced by a copy of it", room.notebook_id)

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
        self.comms.detach()
        if lease is not None:
            await lease.release()
            self._set_kernel(KernelState.SHUTDOWN)

    async def _ensure_kernel(self) -> KernelSession:
        kernel = self._kernel
        if kernel is not None and kernel.state != KernelState.DEAD and self._kernel_used:
            return kernel
        request = self._runtime_request()
        if (
            kernel is not None
            and kernel.state != KernelState.DEAD
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

    def _start_adoption(self, record: KernelRecord) -> None:
        try:
            request = self._runtime_request()
        except RuntimedError:
            request = RuntimeRequest()  # malformed metadata: a restart reports it
        self._acquiring = _Acquisition(request)
        assert self._tg is not None
        self._tg.start_soon(self._adopt_kernel, self._acquiring, record)

    async def _adopt_kernel(self, acquisition: _Acquisition, record: KernelRecord) -> None:
        """Adopt the previous daemon's kernel; if that fails, get one as usual."""
        room = self.room
        env = {**room.kernel_env, "RUNTIMED_NOTEBOOK_ID": room.notebook_id}
        if room.path is not None:
            env["RUNTIMED_NOTEBOOK_PATH"] = str(room.path)
        assert self._tg is not None
        lease: AdoptedLease | None = None
        try:
            with acquisition.scope:
                cwd = room.kernel_cwd  # for restarts; the adopted kernel runs where it ran
                if cwd is None:
                    metadata = room.notebook.metadata()
                    cwd = await anyio.to_thread.run_sync(kernel_cwd_for, metadata, room.path)
                lease = AdoptedLease(record, acquisition.request, cwd=cwd, env=env)
                lease.kernel.on_adopted = self._adopted.on_adopted
                self._set_kernel(KernelState.STARTING, name=lease.runtime.name)
                await lease.start(self._tg)
        except RuntimedError as exc:
            log.warning("could not adopt kernel %s of %s: %s", record.pid, room.notebook_id, exc)
            self._adopted.done.set()
            await self._acquire(acquisition)
            return
        if acquisition.scope.cancelled_caught or lease is None:
            self._adopted.done.set()
            acquisition.done.set()
            return
        self._lease, self._kernel = lease, lease.kernel  # type: ignore[assignment]
        if self._acquiring is acquisition:
            self._acquiring = None
        self._kernel_used = True
        self._adopt_kernel_info(lease.kernel)
        self._set_kernel(KernelState.BUSY, name=lease.runtime.name, pid=lease.kernel.pid)
        acquisition.done.set()
        self._tg.start_soon(self._follow_adopted, lease.kernel)

    async def _follow_adopted(self, kernel: KernelSession) -> None:
        await self._adopted.follow(kernel)
        self._note_progress()
        if self._queue.idle and kernel.state != KernelState.DEAD:
            self._set_kernel(KernelState.IDLE)
        self._wake.set()

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
                self._set_kernel(
                    KernelState.STARTING, name=self._runtimes.describe(acquisition.request)
                )
                metadata = room.notebook.metadata()
                # resolve() and is_dir() touch the filesystem: not on the event loop.
                cwd = room.kernel_cwd
                if cwd is None:
                    cwd = await anyio.to_thread.run_sync(kernel_cwd_for, metadata, room.path)
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
                self.comms.attach(lease.kernel)
                self._adopt_kernel_info(lease.kernel)
                self._set_kernel(KernelState.IDLE, name=lease.runtime.name, pid=lease.kernel.pid)
        except RuntimedError as exc:
            acquisition.error = exc
            self._set_kernel(KernelState.DEAD, message=str(exc))
        except Exception as exc:  # a bug: fail this acquisition, not the executor
            log.exception("could not get a kernel for %s", room.notebook_id)
            acquisition.error = KernelError(f"internal error getting a kernel: {exc!r}")
            self._set_kernel(KernelState.DEAD, message="the kernel failed to start")
        finally:
            acquisition.done.set()

    def _adopt_kernel_info(self, kernel: KernelSession) -> None:
        # A new kernel process: its kernel_info_reply goes to the notebook's language_info
        # (for the saved file) and to the runtime document's kernel_info (for clients).
        self.room.adopt_kernel_info(kernel.kernel_info)
        if self.room.runtime.set_kernel_info(kernel.kernel_info or {}):
            self.room.runtime_changed()

    def _on_runtime_progress(self, line: str) -> None:
        # Environment build progress: the runtime document and KernelStatusChanged events.
        self._set_kernel(KernelState.BUILDING_ENV, message=line)

    def _set_kernel(
        self,
        state: KernelState,
        *,
        name: str | None = None,
        pid: int | None = None,
        message: str = "",
    ) -> None:
        if (
            pid is None
            and self._kernel is not None
            and state not in (KernelState.DEAD, KernelState.SHUTDOWN)
        ):
            pid = self._kernel.pid
        used = self._kernel_written[4] if self._kernel_written else False
        if state in _NEW_PROCESS_STATES:
            used = False  # a new process (or none yet): nothing of a notebook has run in it
        elif state == KernelState.BUSY:
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

    # ------------------------------------------------------------ performing effects

    def _perform_now(self, effects: Sequence[Effect]) -> None:
        """Perform effects that need no await (every effect of queueing, restart, close)."""
        for effect in effects:
            assert isinstance(effect, _Immediate), f"{effect!r} must be awaited"
            self._apply(effect)
        self._sync_runtime()

    async def _perform(
        self, effects: Sequence[Effect], *, kernel: KernelSession | None = None
    ) -> None:
        """Perform the queue's effects in order; ``kernel``: the one the execution that just
        finished ran on (for :class:`SendAhead`)."""
        for effect in effects:
            match effect:
                case (
                    RecordQueued()
                    | RecordRunning()
                    | RecordNotRun()
                    | ForgetRecords()
                    | Broadcast()
                    | AbandonSent()
                ):
                    self._apply(effect)
                case Execute():
                    await self._run_job(effect.entry, sent_ahead=effect.sent_ahead)
                case SendAhead():
                    await self._send_ahead(effect.entry, kernel)
                case RecordOutcome():
                    await self._outputs.record_outcome(effect)
                case InterruptKernel():
                    await self._interrupt_kernel()
                case _:
                    assert_never(effect)
        self._sync_runtime()

    def _apply(self, effect: _Immediate) -> None:
        runtime = self.room.runtime
        match effect:
            case RecordQueued():
                runtime.add_execution(effect.execution_id, effect.cell_id, effect.seq)
                self._runtime_dirty = True
            case RecordRunning():
                runtime.update_execution(effect.execution_id, status=ExecutionStatus.RUNNING)
                runtime.start_cell_run(effect.cell_id, effect.execution_id)
                self._runtime_dirty = True
            case RecordNotRun():
                runtime.update_execution(
                    effect.execution_id, status=effect.status, evalue=effect.reason
                )
                self._runtime_dirty = True
            case ForgetRecords():
                runtime.forget(list(effect.execution_ids))
                self._runtime_dirty = True
            case Broadcast():
                # Clients get the document changes before the event that announces them.
                self._sync_runtime()
                self.room.broadcast(encode(effect.event))
            case AbandonSent():
                # Restart or close (the process it runs in is being replaced or stopped), or
                # the send landed after the execution was cancelled: it must not run.
                sent = self._sent
                if sent is not None and sent[0] == effect.execution_id:
                    sent[2].abandon()
                    self._sent = None
            case _:
                assert_never(effect)

    def _sync_runtime(self) -> None:
        if self._runtime_dirty:
            self._runtime_dirty = False
            self.room.runtime_changed()

    async def _interrupt_kernel(self) -> None:
        kernel = self._kernel
        if kernel is None:
            return
        try:
            await kernel.interrupt()
        except KernelError as exc:
            log.info("interrupt of %s ignored: %s", self.room.notebook_id, exc)

    # ------------------------------------------------------------ one execution

    async def _run_job(self, entry: Entry, *, sent_ahead: bool) -> None:
        # Blobs written for this run are pinned until the runtime document references them.
        async with self._blobs.pin() as pins:
            self._outputs.pins = pins
            try:
                finished, kernel = await self._execute(entry, sent_ahead=sent_ahead)
                await self._perform(self._queue.handle(finished), kernel=kernel)
            finally:
                self._outputs.end_execution()

    async def _execute(
        self, entry: Entry, *, sent_ahead: bool
    ) -> tuple[Finished, KernelSession | None]:
        """Run ``entry`` on the kernel (getting one first if needed) until it ends."""
        sent, self._sent = self._sent, None
        assert (sent is not None) == sent_ahead, "the executor and the queue agree on it"
        assert sent is None or sent[0] == entry.execution_id, "sent ahead: the queue's head"
        if self._outputs.pending is not None:
            self._outputs.wake()  # outputs it sent before it became the running job
        kernel: KernelSession | None = None
        try:
            try:
                kernel = sent[1] if sent is not None else await self._ensure_kernel()
            except RuntimedError as exc:  # kernel start failures, a bad runtimed.cwd, ...
                return _failed(entry, type(exc).__name__, str(exc)), None
            self._set_kernel(KernelState.BUSY)
            try:
                if sent is not None:
                    submitted = sent[2]
                else:
                    submitted = await kernel.submit(
                        entry.source,
                        on_change=self._outputs.on_change,
                        stdin=self._stdin_for(entry) if entry.allow_stdin else None,
                        **_request_tags(entry),
                    )
                outcome = await kernel.wait(submitted, timeout=entry.timeout)
            except KernelError as exc:
                finished = _failed(entry, type(exc).__name__, str(exc))
            else:
                error = outcome.error
                if outcome.timing:
                    # The kernel's own times, for nbclient's metadata.execution (runt run).
                    self.room.runtime.update_execution(
                        entry.execution_id, kernel_timing=dict(outcome.timing)
                    )
                    self._runtime_dirty = True
                finished = Finished(
                    entry.execution_id,
                    outcome.status,
                    execution_count=outcome.execution_count,
                    outputs=outcome.outputs,
                    ename=error.ename if error else None,
                    evalue=error.evalue if error else None,
                    traceback=error.traceback if error else (),
                    display_ids=outcome.display_ids,
                )
            if kernel.state == KernelState.DEAD:
                self._set_kernel(KernelState.DEAD, message="the kernel died")
            elif not self._queue.has_waiting:
                self._set_kernel(KernelState.IDLE)
            # else it stays "busy" for the next cell: back-to-back cells cost no
            # kernel-state writes or events (run() sets "idle" if the queue is dropped).
            return finished, kernel
        finally:
            self._outputs.pending = None

    async def _send_ahead(self, entry: Entry, kernel: KernelSession | None) -> None:
        """Send the next queued cell now, so the kernel runs it while this one is recorded
        (the queue asks only after a cell finished ``ok``, and not for one that may ask for
        input)."""
        if kernel is None or kernel.state == KernelState.DEAD:
            return
        try:
            submitted = await kernel.submit(
                entry.source, on_change=self._outputs.on_change, **_request_tags(entry)
            )
        except KernelError:
            return  # the normal path tries again and records the error
        self._sent = (entry.execution_id, kernel, submitted)
        self._perform_now(self._queue.handle(SentAhead(entry.execution_id)))

    def _stdin_for(self, entry: Entry) -> Any:
        async def answer(prompt: str, password: bool) -> str:
            event, box = anyio.Event(), list[str]()
            self._inputs[entry.execution_id] = (event, box)
            self.room.broadcast(
                encode(
                    InputRequested(
                        notebook_id=self.room.notebook_id,
                        execution_id=entry.execution_id,
                        prompt=prompt,
                        password=password,
                    )
                )
            )
            try:
                await event.wait()
            finally:
                self._inputs.pop(entry.execution_id, None)
            return str(box[0])

        return answer


def _request_tags(entry: Entry) -> dict[str, Any]:
    # The execution id as msg_id, the cell and seq in the header: what a daemon adopting
    # this kernel after a crash reads from IOPub (runtimed.daemon.adopted).
    return {
        "request_id": entry.execution_id,
        "tags": {"cell_id": entry.cell_id, "seq": entry.seq},
    }


def _failed(entry: Entry, ename: str, evalue: str = _INTERNAL_ERROR) -> Finished:
    """The execution ends ``error`` without a kernel error of its own (no traceback)."""
    return Finished(entry.execution_id, ExecutionStatus.ERROR, ename=ename, evalue=evalue)
