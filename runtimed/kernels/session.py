"""Kernel lifecycle and execution: :class:`KernelSession` owns one Jupyter kernel.

A session is an async context manager owning a task group; each kernel process it starts
(one at a time; :meth:`KernelSession.restart` replaces it) runs as a
:class:`~runtimed.kernels.process.KernelProcess` task in that group with long-lived channel
readers.  Messages follow the Jupyter messaging protocol ("the spec":
https://jupyter-client.readthedocs.io/en/stable/messaging.html).

How the kernel goes away:

* **Death** is detected by awaiting the process object (the event loop's SIGCHLD child
  watcher; no polling): every running execution ends at once with status "died", later calls
  raise :class:`KernelNotRunning` until :meth:`KernelSession.restart`.
* **Shutdown**: ``shutdown_request`` on control, wait; SIGTERM to the process group, wait;
  SIGKILL to the process group.  Whenever the kernel process exits, for whatever reason,
  what is left of its process group (e.g. a ``sleep`` a cell started) is SIGKILLed.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.connect import KernelConnectionInfo

from protocol.states import ExecutionStatus, KernelState
from runtimed.errors import (
    KernelDied,
    KernelNotRunning,
    KernelRequestTimeout,
    KernelStartFailed,
)
from runtimed.kernels.adoption import (
    NannyLink,
    load_connection,
    spec_from_record,
    wait_journaling,
)
from runtimed.kernels.comms import CommTracker
from runtimed.kernels.cursor import from_kernel_cursor, protocol_version, to_kernel_cursor
from runtimed.kernels.launch import (
    LaunchSpec,
    address_in_use,
    make_kernel_dir,
    resolve_spec,
    spawn_kernel,
    write_connection,
)
from runtimed.kernels.outputs import Output, OutputChange
from runtimed.kernels.process import Execution, ForeignHandler, KernelProcess, StdinHandler
from runtimed.kernels.records import CURRENT as CURRENT_RECORDS
from runtimed.kernels.records import TOKEN_VARIABLE, KernelRecord

__all__ = [
    "ErrorInfo",
    "ExecutionOutcome",
    "ExecutionStatus",
    "KernelSession",
    "KernelState",
    "StdinHandler",
    "Submitted",
]

logger = logging.getLogger(__name__)


_SHUTDOWN_GRACE = 5.0  # default wait for the kernel to exit after shutdown_request
_CLOSE_DEADLINE = _SHUTDOWN_GRACE + 2.0 + 3.0  # + SIGTERM grace + SIGKILL wait
_IDLE_GRACE = 5.0  # after execute_reply, wait this long for IOPub idle (nbclient: 4 s)
_INTERRUPT_GRACE = 3.0  # after a timeout's interrupt, wait this long for the reply
_PORT_ATTEMPTS = 3  # launches tried when a TCP kernel finds a port it was given taken

Connect = Callable[[LaunchSpec, TaskGroup, float], Awaitable[KernelProcess]]
"""``await connect(spec, tg, startup_timeout)``: a ready kernel from another transport
(:class:`runtimed.kernels.gateway.GatewayConnector`), its tasks running in ``tg``."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why an execution failed: the kernel's exception, or KernelDied / ExecutionTimeout."""

    ename: str
    evalue: str
    traceback: list[str]


@dataclass(frozen=True, slots=True)
class ExecutionOutcome:
    """The result of :meth:`KernelSession.execute`."""

    status: ExecutionStatus
    execution_count: int | None
    outputs: list[Output]
    error: ErrorInfo | None
    display_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Display id -> indices into ``outputs`` (targets of later update_display_data)."""
    timing: dict[str, str] = field(default_factory=dict)
    """The kernel's own times, as nbclient records them in ``metadata.execution``:
    ``iopub.execute_input`` and ``shell.execute_reply`` (the messages' header dates, ISO
    8601), each present when that message arrived with a date."""


@dataclass(eq=False, slots=True)
class Submitted:
    """An execute_request sent to one kernel process (:meth:`KernelSession.submit`)."""

    kernel: KernelProcess
    msg_id: str
    execution: Execution
    silent: bool = False
    """The daemon's own setup code, not a notebook's cell."""

    def abandon(self) -> None:
        """Nobody waits for it any more: deliver no more of its changes, answer no input."""
        self.execution.abandoned = True
        for input_scope in self.execution.input_scopes:
            input_scope.cancel()


class KernelSession:
    """An async context manager owning one kernel process at a time.

    ``kernel_name`` None runs ipykernel on the daemon's own Python (``sys.executable``);
    otherwise it names an installed kernelspec (:class:`KernelNotFound` lists the available
    ones).  ``spec``, when given, is the resolved launch spec to use instead (the runtime
    registry resolves runtimes itself).  ``env`` is layered over the daemon's environment and
    the kernelspec's ``env``.  ``connect``, when given, starts each kernel instead of a local
    process (a kernel on a gateway: :mod:`runtimed.kernels.gateway`).
    Entering starts the kernel and waits up to ``startup_timeout`` s until it answers
    ``kernel_info_request`` with IOPub connected (else :class:`KernelStartFailed`, with the
    kernel's console tail); exiting shuts it down, shielded and bounded.
    """

    def __init__(
        self,
        *,
        kernel_name: str | None = None,
        cwd: Path,
        startup_timeout: float = 60,
        env: dict[str, str] | None = None,
        spec: LaunchSpec | None = None,
        connect: Connect | None = None,
        adopt: KernelRecord | None = None,
    ) -> None:
        self._kernel_name = kernel_name
        self._connect = connect
        self._adopt = adopt
        """A live kernel a previous daemon started (under its nanny): entering adopts it
        instead of launching one (a later restart launches as usual)."""
        if adopt is not None and spec is None:
            spec = spec_from_record(adopt)
        self.on_adopted: Callable[[Submitted, dict[str, Any]], bool] | None = None
        """Adopted kernels: called with each execution the previous daemon had sent, when it
        starts (``execute_input``), and its request header; True to follow it (then
        :meth:`wait` on it), False to ignore it."""
        self.settled = anyio.Event()
        """Set once every request the previous daemon sent has been run (at once for a
        kernel this session launched): new executions go after them."""
        self._cwd = cwd
        self._startup_timeout = startup_timeout
        self._env = dict(env or {})
        self._spec: LaunchSpec | None = spec
        self.last_activity: float | None = None
        """Unix time an execution last started or finished (None: none yet)."""
        self.cells_finished = 0
        """How many non-silent executions (a notebook's cells) :meth:`wait` has seen end."""
        self.cell_finished = anyio.Event()
        """Set (and replaced by a fresh one) each time :attr:`cells_finished` grows."""
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None  # set while entered
        self._kernel: KernelProcess | None = None
        self._processes: set[KernelProcess] = set()  # started and not yet fully stopped
        # The daemon's records of its kernels (runtimed.kernels.records), if it keeps them.
        self._records = CURRENT_RECORDS.get()
        self._record_of: dict[KernelProcess, KernelRecord] = {}
        self.comms = CommTracker()
        """The current kernel process's comms (reset for each new process)."""
        self._lifecycle = anyio.Lock()
        self._starting = False
        self._closed = False

    # -- context manager ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None or self._closed:
            raise RuntimeError("a KernelSession can be entered only once")
        if self._spec is None:
            self._spec = await resolve_spec(self._kernel_name)
        failure: BaseException | None = None
        async with AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            # Runs before the task group exits (last in, first out): stop the kernel (whose
            # tasks live in the group), then end whatever else runs there.
            stack.push_async_callback(self._close)
            try:
                async with self._lifecycle:
                    if self._adopt is not None:
                        self._kernel = await self._attach(self._adopt, self._tg)
                    else:
                        self._kernel = await self._launch()
                        self.settled.set()
            except BaseException as exc:
                # Close the stack without handing ``exc`` to the task group, which would
                # wrap it in an ExceptionGroup: it is the caller's error, raised as is below.
                failure = exc
            else:
                self._stack = stack.pop_all()
        if failure is not None:
            raise failure
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # Not ``exc``: the caller's exception is theirs, never the task group's.
            await stack.aclose()

    async def _close(self) -> None:
        assert self._tg is not None
        try:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + _CLOSE_DEADLINE
                await self.shutdown()
        finally:
            self._closed = True
            for kernel in self._processes:  # only if the shutdown could not finish
                logger.error("kernel %d still running at close; killing it", kernel.pid)
                kernel.abort()
            self._tg.cancel_scope.cancel()

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> KernelState:
        """``starting`` until ready, ``busy`` while executions are outstanding, or ``dead``."""
        kernel = self._kernel
        if kernel is None and self._starting:
            return KernelState.STARTING
        if kernel is None or kernel.exited.is_set():
            return KernelState.DEAD
        if not kernel.ready:
            return KernelState.STARTING
        return KernelState.BUSY if kernel.executions else KernelState.IDLE

    @property
    def pid(self) -> int | None:
        """The kernel's process id (also its process group id); None once shut down, and
        for a kernel that is no local process (on a gateway)."""
        kernel = self._kernel
        return None if kernel is None or kernel.pid < 0 else kernel.pid

    @property
    def connection_dir(self) -> Path | None:
        """The current kernel's private directory (mode 0700): its connection file
        ``kernel.json`` and, for the ``ipc`` transport, its sockets.  None once shut down."""
        return None if self._kernel is None else self._kernel.conn_dir

    @property
    def transport(self) -> str | None:
        """``ipc`` or ``tcp`` (see :func:`runtimed.kernels.launch.choose_transport`)."""
        return None if self._kernel is None else self._kernel.transport

    @property
    def kernel_info(self) -> dict[str, Any] | None:
        """The content of the current kernel's ``kernel_info_reply``."""
        return None if self._kernel is None else self._kernel.kernel_info

    async def set_launch_context(self, *, cwd: Path, env: dict[str, str]) -> None:
        """Use ``cwd`` and ``env`` for kernels launched from now on (:meth:`restart`).

        The running kernel is not affected: a pre-started (pooled) kernel is pointed at its
        notebook by its owner; this makes a restart come up in the same place. The running
        kernel's record names its new owner before this returns, so before the notebook's
        first cell: a daemon killed while that cell runs leaves a kernel the next one adopts
        for the notebook (a record still naming no owner would be stopped instead).
        """
        self._cwd = cwd
        self._env = dict(env)
        record = self._record_of.get(self._kernel) if self._kernel is not None else None
        owner = env.get("RUNTIMED_NOTEBOOK_ID")
        if record is not None and owner and self._records is not None:
            record.notebook_id = owner
            await self._rewrite(record)

    async def _rewrite(self, record: KernelRecord) -> None:
        assert self._records is not None
        try:
            await anyio.to_thread.run_sync(self._records.write, record)
        except OSError as exc:
            logger.warning("could not update the record of kernel %s: %s", record.pid, exc)

    async def wait_exited(self) -> None:
        """Return once the current kernel process has exited (at once if there is none)."""
        kernel = self._kernel
        if kernel is not None:
            await kernel.exited.wait()

    def _running(self) -> KernelProcess:
        kernel = self._kernel
        if kernel is None or kernel.exited.is_set() or not kernel.ready:
            state = self.state
            hint = "; restart it" if state == KernelState.DEAD and not self._closed else ""
            raise KernelNotRunning(f"the kernel is {state}{hint}")
        return kernel

    # -- lifecycle ---------------------------------------------------------------------

    async def interrupt(self) -> None:
        """Interrupt the running execution (kernelspec ``interrupt_mode``: signal or message)."""
        await self._running().interrupt()

    async def restart(self) -> None:
        """Replace the kernel with a fresh process; running executions end as "died".

        Also works on a dead or shut-down kernel.  The old kernel is stopped as by
        :meth:`shutdown`.  Raises :class:`KernelStartFailed` if the new one does not start.
        """
        async with self._lifecycle:
            if self._tg is None or self._closed:
                raise KernelNotRunning("the kernel session is closed")
            old, self._kernel = self._kernel, None
            self._starting = True  # the state reads "starting" from now until ready
            try:
                if old is not None:
                    await self._stop(old, grace=_SHUTDOWN_GRACE, reason="restarted")
                self._kernel = await self._launch()
            finally:
                self._starting = False

    # The API takes a timeout (not a caller's cancel scope): the phases need separate waits.
    async def shutdown(self, *, timeout: float = _SHUTDOWN_GRACE) -> None:
        """Stop the kernel: shutdown_request, then SIGTERM, then SIGKILL to its process group.

        ``timeout`` bounds the wait after shutdown_request; SIGTERM gets 2 s more.  Whatever
        is left of the process group (grandchildren included) is SIGKILLed.  Idempotent.
        """
        async with self._lifecycle:
            kernel, self._kernel = self._kernel, None
            if kernel is not None:
                await self._stop(kernel, grace=timeout, reason="shut down")

    async def _stop(self, kernel: KernelProcess, *, grace: float, reason: str) -> None:
        try:
            await kernel.stop(grace=grace, reason=reason)
        finally:
            self._processes.discard(kernel)
            record = self._record_of.pop(kernel, None)
            if record is not None and self._records is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._records.remove, record)

    async def _launch(self) -> KernelProcess:
        assert self._spec is not None
        assert self._tg is not None
        self._starting = True
        try:
            if self._connect is not None:
                kernel = await self._connect(self._spec, self._tg, self._startup_timeout)
                self._processes.add(kernel)
                return kernel
            return await self._launch_process(self._spec, self._tg)
        finally:
            self._starting = False

    async def _launch_process(self, spec: LaunchSpec, tg: TaskGroup) -> KernelProcess:
        attempt = 1
        while True:
            kernel, failure = await self._try_launch(spec, tg)
            if failure is None:
                logger.info("kernel %r ready (pid %d, %s)", spec.name, kernel.pid, kernel.transport)
                return kernel
            console = kernel.tail.text()
            if kernel.transport == "tcp" and attempt < _PORT_ATTEMPTS and address_in_use(console):
                # Ports are picked free and released before the kernel binds them: another
                # process can take one meanwhile (papermill#511). Fresh ports, again.
                logger.warning(
                    "kernel %r: a port was taken before it bound it; retrying", spec.name
                )
                attempt += 1
                continue
            raise KernelStartFailed(
                f"kernel {spec.name!r} (pid {kernel.pid}) {failure}", stderr_tail=console
            )

    async def _try_launch(
        self, spec: LaunchSpec, tg: TaskGroup
    ) -> tuple[KernelProcess, str | None]:
        """Start one kernel process; (kernel, None) once ready, else (stopped kernel, why)."""
        conn_dir, conn_file, info = await anyio.to_thread.run_sync(_prepare_kernel_dir, spec)
        records, record = self._records, None
        env = self._env
        try:
            if records is not None:
                # Written before the spawn: a crash from here on leaves a record to clean by.
                record = KernelRecord(
                    conn_dir=str(conn_dir),
                    notebook_id=self._env.get("RUNTIMED_NOTEBOOK_ID"),
                    nanny=True,
                    spec={
                        "name": spec.name,
                        "argv": list(spec.argv),
                        "env": dict(spec.env),
                        "interrupt_mode": spec.interrupt_mode,
                        "resource_dir": spec.resource_dir,
                    },
                )
                await anyio.to_thread.run_sync(lambda: records.write(record, new=True))
                env = {**self._env, TOKEN_VARIABLE: record.token}
            process = await spawn_kernel(spec, conn_file, cwd=self._cwd, env=env)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_dir, conn_dir)
                if records is not None and record is not None:
                    await anyio.to_thread.run_sync(records.remove, record)
            raise
        client = AsyncKernelClient()
        client.load_connection_info(info)
        client.start_channels(hb=False)
        kernel = KernelProcess(spec, process, client, conn_dir, comms=self.comms)
        self.comms.reset(kernel.send_comm)
        self._processes.add(kernel)
        if records is not None and record is not None:
            self._record_of[kernel] = record
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(records.started, record, process.pid)
            except OSError as exc:  # the kernel runs unrecorded: say so, do not fail it
                logger.warning("could not record kernel %d: %s", process.pid, exc)
        try:
            # start_soon, not start: a cancellation arriving while start() waited would cancel
            # the shielded run() and wait for it forever.
            tg.start_soon(kernel.run)
            failure = await kernel.wait_ready(self._startup_timeout)
            if failure is None:
                failure = await wait_journaling(
                    conn_dir,
                    lambda: kernel.forget(kernel.request("shell", "kernel_info_request", {})[0]),
                    timeout=self._startup_timeout,
                )
        except BaseException:
            await self._stop(kernel, grace=0, reason="aborted during startup")
            raise
        if failure is not None:
            await self._stop(kernel, grace=0, reason="failed to start")
        return kernel, failure

    async def _attach(self, record: KernelRecord, tg: TaskGroup) -> KernelProcess:
        """Adopt the live kernel of ``record`` (see :mod:`runtimed.kernels.adoption`)."""
        assert self._spec is not None
        self._adopt = None  # once: a restart launches a new kernel
        self._starting = True
        try:
            info = await anyio.to_thread.run_sync(load_connection, record)
            link = NannyLink(record)
            await link.connect()
            client = AsyncKernelClient()
            client.load_connection_info(info)  # type: ignore[arg-type]
            client.start_channels(iopub=False, hb=False)
            kernel = KernelProcess(self._spec, link, client, Path(record.conn_dir))
            kernel.on_foreign = self._foreign_handler(kernel)
            self._processes.add(kernel)
            if self._records is not None:
                self._record_of[kernel] = record
                record.daemon_pid = os.getpid()
                await self._rewrite(record)
            tg.start_soon(kernel.run)
            try:
                failure = await kernel.wait_ready(self._startup_timeout)
            except BaseException:
                await self._stop(kernel, grace=0, reason="aborted during adoption")
                raise
            if failure is not None:
                await self._stop(kernel, grace=0, reason="failed to be adopted")
                raise KernelStartFailed(f"cannot adopt kernel {record.pid}: it {failure}")
            logger.info("adopted kernel %d of notebook %s", record.pid, record.notebook_id)
            tg.start_soon(self._settle, kernel)
            return kernel
        finally:
            self._starting = False

    def _foreign_handler(self, kernel: KernelProcess) -> ForeignHandler:
        def handle(msg_id: str, header: dict[str, Any]) -> Execution | None:
            if self.on_adopted is None:
                return None
            ex = Execution(None, None)
            if not self.on_adopted(Submitted(kernel, msg_id, ex), header):
                return None
            return ex

        return handle

    async def _settle(self, kernel: KernelProcess) -> None:
        # Shell requests run in order, and IOPub is one ordered stream: once the idle of our
        # kernel_info_request has come through the nanny, every execute_request the previous
        # daemon queued has run and all it published has been dispatched (the shell reply
        # alone can overtake the journal's replay).
        idle = anyio.Event()
        msg_id, _reply = kernel.request("shell", "kernel_info_request", {})
        kernel.idle_waiters[msg_id] = idle
        try:
            await idle.wait()
        finally:
            kernel.forget(msg_id)
            kernel.idle_waiters.pop(msg_id, None)
            self.settled.set()

    # -- execution ---------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        *,
        on_change: Callable[[OutputChange], None] | None = None,
        stdin: StdinHandler | None = None,
        timeout: float | None = None,
        silent: bool = False,
    ) -> ExecutionOutcome:
        """Run ``code``; return once its execute_reply and IOPub idle have both arrived.

        ``on_change`` is called synchronously from the IOPub reader for every change of the
        output list; it must not block.  If it raises, later changes are not delivered and
        the exception is re-raised here once the execution has finished.  ``stdin`` answers
        ``input()``; without it ``allow_stdin`` is False and ``input()`` raises
        StdinNotImplementedError in the kernel.  After ``timeout`` s the kernel is
        interrupted and the status is "timeout".  If the kernel process exits the status is
        "died" (then calls raise :class:`KernelNotRunning` until :meth:`restart`).
        Cancelling this call does not interrupt the kernel.

        ``silent``: the spec's ``silent=True, store_history=False`` — no execute_input or
        execute_result broadcast, the execution count does not advance, nothing enters the
        history (for the daemon's own setup code, never a notebook's cells).
        """
        submitted = await self.submit(code, on_change=on_change, stdin=stdin, silent=silent)
        return await self.wait(submitted, timeout=timeout)

    async def submit(
        self,
        code: str,
        *,
        on_change: Callable[[OutputChange], None] | None = None,
        stdin: StdinHandler | None = None,
        silent: bool = False,
        request_id: str | None = None,
        tags: dict[str, str | int] | None = None,
    ) -> Submitted:
        """Send ``code`` for execution and return at once (see :meth:`execute`).

        ``request_id``: the request's ``msg_id`` (unique; the daemon uses the execution id);
        ``tags``: put in the request header as ``runtimed_<key>``, so that IOPub (whose
        parent header echoes it) names the cell and its queue position to a daemon that
        adopts the kernel later.

        The kernel runs requests in the order they arrive; :meth:`wait` collects the result.
        Only send a request after the previous one finished if it must not run after a
        failure: ipykernel aborts (``stop_on_error``) only requests queued when a cell fails.
        """
        if stdin is not None:
            await self._running().wait_stdin()
        kernel = self._running()  # again: the kernel may have gone while we waited
        ex = Execution(on_change, stdin)
        content = {
            "code": code,
            "silent": silent,
            "store_history": not silent,
            "user_expressions": {},
            "allow_stdin": stdin is not None,
            "stop_on_error": True,
        }
        header = kernel.client.session.msg_header("execute_request")
        if request_id is not None:
            header["msg_id"] = request_id
        for key, value in (tags or {}).items():
            # Scalars only: ipykernel keys its output buffers by the parent header's items.
            header[f"runtimed_{key}"] = value
        msg = kernel.client.session.msg("execute_request", content, header=header)
        msg_id = str(msg["header"]["msg_id"])
        # Register before sending so that no reply or IOPub message can be missed.
        kernel.executions[msg_id] = ex
        kernel.replies[msg_id] = ex.reply
        try:
            kernel.send_msg("shell", msg)
        except KernelNotRunning:
            kernel.forget(msg_id)
            raise
        self.last_activity = time.time()
        return Submitted(kernel, msg_id, ex, silent)

    async def wait(self, submitted: Submitted, *, timeout: float | None = None) -> ExecutionOutcome:
        """The outcome of a submitted execution (see :meth:`execute`); ``timeout`` counts
        from this call.  If the process it was sent to exits, the status is "died"."""
        kernel, msg_id, ex = submitted.kernel, submitted.msg_id, submitted.execution
        timed_out = False
        try:
            with anyio.move_on_after(timeout) as scope:
                await self._wait_done(kernel, msg_id, ex)
            if scope.cancelled_caught:
                timed_out = True
                logger.info("execution %s timed out after %s s; interrupting", msg_id, timeout)
                with anyio.move_on_after(_INTERRUPT_GRACE):
                    if not kernel.exited.is_set():
                        await kernel.interrupt()
                    await self._wait_done(kernel, msg_id, ex)
        finally:
            self.last_activity = time.time()
            submitted.abandon()
            if not submitted.silent:
                self.cells_finished += 1
                finished, self.cell_finished = self.cell_finished, anyio.Event()
                finished.set()
        if ex.callback_error is not None:
            raise ex.callback_error
        return _outcome(ex, timed_out=timed_out, timeout=timeout)

    @staticmethod
    async def _wait_done(kernel: KernelProcess, msg_id: str, ex: Execution) -> None:
        await ex.reply.event.wait()
        with anyio.move_on_after(_IDLE_GRACE) as scope:
            await ex.done.wait()
        if scope.cancelled_caught:
            logger.warning("no IOPub idle for %s within %s s of its reply", msg_id, _IDLE_GRACE)
            kernel.forget(msg_id)

    # -- comms -------------------------------------------------------------------------

    def send_comm(
        self, comm_id: str, data: dict[str, Any], buffers: list[bytes] | None = None
    ) -> None:
        """Send a ``comm_msg`` to an open comm of the kernel (a widget frontend's update:
        ``{"method": "update", "state": {...}, "buffer_paths": [...]}``); an update also
        changes :attr:`comms` at once.

        Raises:
            KernelNotRunning, CommNotFound, InvalidRequest (see :meth:`CommTracker.send`).
        """
        self._running()
        self.comms.send(comm_id, data, list(buffers or []))

    # -- completion, inspection, history ------------------------------------------------

    async def complete(self, code: str, cursor: int, *, timeout: float) -> dict[str, Any]:
        """The kernel's ``complete_reply`` content for ``code`` with the cursor at ``cursor``
        (code points; converted for a kernel older than protocol 5.2, and so are the
        reply's ``cursor_start``/``cursor_end`` and the ranges of IPython's
        ``_jupyter_types_experimental`` metadata).

        Sent to the kernel's service subshell when it has subshells (answered while a cell
        runs), else on the main shell, where it waits for a running cell to finish.

        Raises:
            KernelNotRunning, KernelDied, KernelRequestTimeout: no answer within ``timeout`` s.
            An error reply from the kernel is logged and gives an empty answer.
        """
        version = self._protocol_version()
        content = await self._service(
            "complete_request",
            {"code": code, "cursor_pos": to_kernel_cursor(code, cursor, version)},
            timeout=timeout,
        )
        for key in ("cursor_start", "cursor_end"):
            value = content.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                content[key] = from_kernel_cursor(code, value, version)
            else:
                content[key] = cursor
        metadata = content.get("metadata")
        items = metadata.get("_jupyter_types_experimental") if isinstance(metadata, dict) else None
        if isinstance(items, list):
            for item in items:
                for key in ("start", "end"):
                    if isinstance(item, dict) and _is_int(item.get(key)):
                        item[key] = from_kernel_cursor(code, item[key], version)
        return content

    async def inspect(
        self, code: str, cursor: int, *, detail_level: int = 0, timeout: float
    ) -> dict[str, Any]:
        """The kernel's ``inspect_reply`` content (``found``, ``data``, ``metadata``) for the
        name at ``cursor`` in ``code``; routed and raising as :meth:`complete`."""
        version = self._protocol_version()
        content = {
            "code": code,
            "cursor_pos": to_kernel_cursor(code, cursor, version),
            "detail_level": detail_level,
        }
        return await self._service("inspect_request", content, timeout=timeout)

    async def history(
        self, *, pattern: str | None = None, n: int = 10, unique: bool = False, timeout: float
    ) -> dict[str, Any]:
        """The kernel's ``history_reply`` content: the last ``n`` inputs (spec: access type
        ``tail``), or with ``pattern`` the last ``n`` matching it (``search``; ``unique``
        drops repeats).  Routed and raising as :meth:`complete`."""
        content: dict[str, Any] = {"output": False, "raw": True, "n": n}
        if pattern is None:
            content["hist_access_type"] = "tail"
        else:
            content.update(hist_access_type="search", pattern=pattern, unique=unique)
        return await self._service("history_request", content, timeout=timeout)

    def _protocol_version(self) -> tuple[int, int]:
        return protocol_version((self._running().kernel_info or {}).get("protocol_version"))

    async def _service(
        self, msg_type: str, content: dict[str, Any], *, timeout: float
    ) -> dict[str, Any]:
        kernel = self._running()
        reply = None
        try:
            with anyio.fail_after(timeout):
                subshell = await kernel.service_subshell()
                msg_id, reply = kernel.request("shell", msg_type, content, subshell_id=subshell)
                try:
                    await reply.event.wait()
                finally:
                    kernel.forget(msg_id)
        except TimeoutError as exc:
            raise KernelRequestTimeout(
                f"the kernel (pid {kernel.pid}) did not answer {msg_type} within {timeout:g} s"
            ) from exc
        if reply.msg is None:  # woken by the kernel's exit
            raise KernelDied(f"the kernel exited before answering {msg_type}")
        answer: dict[str, Any] = reply.msg["content"]
        if answer.get("status", ExecutionStatus.OK) != ExecutionStatus.OK:
            # Spec: an error reply carries ename/evalue and nothing else; the caller sees
            # an empty answer (no matches, nothing found), the log says why.
            logger.warning(
                "kernel %d answered %s with %s: %s",
                kernel.pid,
                msg_type,
                answer.get("status"),
                answer.get("evalue"),
            )
            return {}
        return answer


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prepare_kernel_dir(spec: LaunchSpec) -> tuple[Path, Path, KernelConnectionInfo]:
    """The kernel's 0700 directory and its connection file (blocking: a worker thread)."""
    conn_dir = make_kernel_dir()
    try:
        conn_file, info = write_connection(conn_dir, spec)
    except BaseException:
        _remove_dir(conn_dir)
        raise
    return conn_dir, conn_file, info


def _remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _outcome(ex: Execution, *, timed_out: bool, timeout: float | None) -> ExecutionOutcome:
    outputs, ids = ex.acc.outputs, ex.acc.display_ids
    reply = ex.reply.msg["content"] if ex.reply.msg is not None else None
    count = ex.acc.execution_count
    if reply is not None and isinstance(reply.get("execution_count"), int):
        count = reply["execution_count"]
    error: ErrorInfo | None = None
    status: ExecutionStatus
    if ex.died is not None and reply is None:
        status, error = ExecutionStatus.DIED, ErrorInfo("KernelDied", ex.died, [])
    elif timed_out:
        why = f"the cell did not finish within {timeout} s and was interrupted"
        status, error = ExecutionStatus.TIMEOUT, ErrorInfo("ExecutionTimeout", why, [])
    elif reply is not None and reply.get("status") in (ExecutionStatus.OK, ExecutionStatus.ABORTED):
        status = ExecutionStatus(reply["status"])
    else:
        reply = reply or {}
        status = ExecutionStatus.ERROR
        error = ErrorInfo(
            str(reply.get("ename", "UnknownError")),
            str(reply.get("evalue", f"execute_reply status {reply.get('status')!r}")),
            [str(line) for line in reply.get("traceback", [])],
        )
    timing: dict[str, str] = {}
    reply_date = ex.reply.msg["header"].get("date") if ex.reply.msg is not None else None
    # nbclient's record_timing keys, each the header date of the kernel's message.
    dates = (
        ("iopub.status.busy", ex.busy_date),
        ("iopub.execute_input", ex.input_date),
        ("shell.execute_reply", reply_date),
        ("iopub.status.idle", ex.idle_date),
    )
    for key, date in dates:
        iso = _iso_date(date)
        if iso is not None:
            timing[key] = iso
    return ExecutionOutcome(status, count, outputs, error, ids, timing)


def _iso_date(date: object) -> str | None:
    """A message header's ``date`` (jupyter_client parses it into a datetime) as ISO 8601."""
    if isinstance(date, datetime):
        return date.isoformat()
    return date if isinstance(date, str) and date else None
