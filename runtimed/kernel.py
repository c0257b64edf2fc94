"""One Jupyter kernel process, its channels, and the executions run on it.

:class:`KernelSession` is an async context manager owning a kernel process and a task group
with one long-lived reader per channel (shell, control, IOPub, stdin), a process watcher and a
console drain.  Messages follow the Jupyter messaging protocol ("the spec" below:
https://jupyter-client.readthedocs.io/en/stable/messaging.html).
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import zmq
from anyio.abc import Process, TaskGroup, TaskStatus
from jupyter_client.asynchronous.client import AsyncKernelClient

from runtimed.kernel_errors import KernelNotRunning, KernelStartFailed
from runtimed.kernel_launch import (
    ConsoleTail,
    LaunchSpec,
    describe_exit,
    resolve_spec,
    signal_group,
    spawn_kernel,
    write_connection,
)
from runtimed.outputs import Output, OutputAccumulator, OutputChange

__all__ = [
    "ErrorInfo",
    "ExecutionOutcome",
    "ExecutionStatus",
    "KernelSession",
    "KernelState",
    "StdinHandler",
]

logger = logging.getLogger(__name__)

KernelState = Literal["starting", "idle", "busy", "dead"]
ExecutionStatus = Literal["ok", "error", "aborted", "died", "timeout"]
StdinHandler = Callable[[str, bool], Awaitable[str]]
"""``async def handler(prompt: str, password: bool) -> str`` answering ``input()``."""

_READY_RETRY = 1.0  # resend kernel_info_request this often while starting (as jupyter_client)
_IOPUB_GRACE = 0.5  # after kernel_info_reply, wait this long for proof IOPub is subscribed
_IDLE_GRACE = 5.0  # after execute_reply, wait this long for IOPub idle (nbclient: 4 s)
_INTERRUPT_GRACE = 3.0  # after a timeout interrupt, wait this long for the reply
_TERM_GRACE = 2.0  # after SIGTERM, wait this long before SIGKILL
_KILL_WAIT = 3.0  # after SIGKILL, wait this long for the exit and console EOF
_SHUTDOWN_GRACE = 5.0  # default wait for a kernel to exit after shutdown_request
_EOF = "\x04"  # an input_reply of EOT makes ipykernel's input() raise EOFError


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


class _Reply:
    """A request waiting for its reply on shell or control."""

    __slots__ = ("event", "msg")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.msg: dict[str, Any] | None = None


class _Execution:
    __slots__ = (
        "abandoned",
        "acc",
        "callback_error",
        "died",
        "done",
        "idle",
        "input_scopes",
        "on_change",
        "reply",
        "stdin",
    )

    def __init__(
        self, on_change: Callable[[OutputChange], None] | None, stdin: StdinHandler | None
    ) -> None:
        self.acc = OutputAccumulator()
        self.reply = _Reply()
        self.idle = False
        self.done = anyio.Event()
        self.on_change = on_change
        self.stdin = stdin
        self.abandoned = False
        self.callback_error: Exception | None = None
        self.died: str | None = None
        self.input_scopes: set[anyio.CancelScope] = set()


@dataclass(eq=False)
class _Incarnation:
    """One kernel process and everything tied to its lifetime."""

    spec: LaunchSpec
    process: Process
    client: AsyncKernelClient
    conn_dir: Path
    tail: ConsoleTail
    tg: TaskGroup | None = None
    scope: anyio.CancelScope | None = None
    ready: bool = False
    kernel_info: dict[str, Any] | None = None
    returncode: int | None = None
    stop_reason: str | None = None

    def __post_init__(self) -> None:
        self.replies: dict[str, _Reply] = {}
        self.executions: dict[str, _Execution] = {}
        self.iopub_seen = anyio.Event()
        self.exited = anyio.Event()
        self.finished = anyio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid  # start_new_session: also the process group id

    def send(self, channel: str, msg_type: str, content: dict[str, Any], **kw: Any) -> str:
        msg = self.client.session.msg(msg_type, content, **kw)
        try:
            getattr(self.client, f"{channel}_channel").send(msg)
        except zmq.ZMQError as exc:
            raise KernelNotRunning(f"cannot send {msg_type} to the kernel: {exc}") from exc
        return str(msg["header"]["msg_id"])

    def request(self, channel: str, msg_type: str, content: dict[str, Any]) -> tuple[str, _Reply]:
        reply = _Reply()
        msg_id = self.send(channel, msg_type, content)
        self.replies[msg_id] = reply
        return msg_id, reply


class KernelSession:
    """An async context manager owning one kernel process.

    ``kernel_name`` None runs ipykernel on the daemon's own Python; otherwise it names an
    installed kernelspec.  ``env`` is layered over the daemon's environment and the
    kernelspec's.  Entering starts the kernel and waits (``startup_timeout``) until it answers
    ``kernel_info_request`` with IOPub connected; exiting shuts it down (shielded, bounded).
    """

    def __init__(
        self,
        *,
        kernel_name: str | None = None,
        cwd: Path,
        startup_timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> None:
        self._kernel_name = kernel_name
        self._cwd = cwd
        self._startup_timeout = startup_timeout
        self._env = dict(env or {})
        self._spec: LaunchSpec | None = None
        self._tg: TaskGroup | None = None
        self._inc: _Incarnation | None = None
        self._lifecycle = anyio.Lock()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closed:
            raise RuntimeError("a KernelSession can be entered only once")
        self._spec = await resolve_spec(self._kernel_name)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            async with self._lifecycle:
                self._inc = await self._launch()
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(exc_type, exc, tb)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        try:
            deadline = anyio.current_time() + _SHUTDOWN_GRACE + _TERM_GRACE + _KILL_WAIT
            with anyio.CancelScope(shield=True, deadline=deadline):
                await self.shutdown()
        finally:
            self._closed = True
            self._tg.cancel_scope.cancel()
            # Only a cancellation concerns the task group's scope; any other exception is the
            # caller's and must not be wrapped into an ExceptionGroup.  Never suppress it.
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                await self._tg.__aexit__(exc_type, exc, tb)
            else:
                await self._tg.__aexit__(None, None, None)

    @property
    def state(self) -> KernelState:
        """``starting`` until ready, ``busy`` while executions are outstanding, or ``dead``."""
        inc = self._inc
        if inc is None or inc.exited.is_set():
            return "dead"
        if not inc.ready:
            return "starting"
        return "busy" if inc.executions else "idle"

    @property
    def pid(self) -> int | None:
        """The current kernel process id (also its process group id), None when shut down."""
        return None if self._inc is None else self._inc.pid

    @property
    def kernel_info(self) -> dict[str, Any] | None:
        """The content of the current kernel's ``kernel_info_reply``."""
        return None if self._inc is None else self._inc.kernel_info

    async def restart(self) -> None:
        """Replace the kernel with a fresh process (running executions end as "died").

        Works on a dead or shut-down kernel too; the old kernel is stopped like
        :meth:`shutdown` does.  Raises :class:`KernelStartFailed` if the new one does not start.
        """
        async with self._lifecycle:
            if self._tg is None or self._closed:
                raise KernelNotRunning("the kernel session is closed")
            old, self._inc = self._inc, None
            if old is not None:
                await self._stop(old, grace=_SHUTDOWN_GRACE, reason="restarted")
            self._inc = await self._launch()

    # The API takes timeouts (not caller-side cancel scopes) because the phases differ.
    async def shutdown(self, *, timeout: float = _SHUTDOWN_GRACE) -> None:  # noqa: ASYNC109
        """Stop the kernel: shutdown_request, then SIGTERM, then SIGKILL to its process group.

        ``timeout`` bounds the graceful phase; SIGTERM gets 2 s more.  Whatever is left of the
        process group (grandchildren included) is SIGKILLed.  Idempotent.
        """
        async with self._lifecycle:
            inc, self._inc = self._inc, None
            if inc is not None:
                await self._stop(inc, grace=timeout, reason="shut down")

    async def interrupt(self) -> None:
        """Interrupt the running execution (kernelspec ``interrupt_mode``: signal or message)."""
        await self._interrupt(self._running())

    @staticmethod
    async def _interrupt(inc: _Incarnation) -> None:
        if inc.spec.interrupt_mode == "message":
            # Spec: interrupt_request on the control channel for interrupt_mode "message".
            msg_id, reply = inc.request("control", "interrupt_request", {})
            try:
                with anyio.move_on_after(_INTERRUPT_GRACE):
                    await reply.event.wait()
            finally:
                inc.replies.pop(msg_id, None)
        else:
            # As jupyter_client: SIGINT to the whole process group.
            signal_group(inc.pid, signal.SIGINT)

    def _running(self) -> _Incarnation:
        inc = self._inc
        if inc is None or inc.exited.is_set() or not inc.ready:
            raise KernelNotRunning(f"the kernel is {self.state}; restart it")
        return inc

    async def _launch(self) -> _Incarnation:
        assert self._spec is not None
        assert self._tg is not None
        conn_dir = Path(tempfile.mkdtemp(prefix="runtimed-kernel-"))
        try:
            conn_file, info = write_connection(conn_dir, self._spec)
            process = await spawn_kernel(self._spec, conn_file, cwd=self._cwd, env=self._env)
        except BaseException:
            shutil.rmtree(conn_dir, ignore_errors=True)
            raise
        client = AsyncKernelClient()
        client.load_connection_info(info)
        client.start_channels(hb=False)
        inc = _Incarnation(self._spec, process, client, conn_dir, ConsoleTail())
        try:
            await self._tg.start(self._run, inc)
            failure = await self._wait_ready(inc)
        except BaseException:
            await self._stop(inc, grace=0, reason="aborted during startup")
            raise
        if failure is not None:
            await self._stop(inc, grace=0, reason="failed to start")
            raise KernelStartFailed(
                f"kernel {self._spec.name!r} (pid {inc.pid}) {failure}",
                stderr_tail=inc.tail.text(),
            )
        logger.info("kernel %r ready (pid %d)", self._spec.name, inc.pid)
        return inc

    async def _wait_ready(self, inc: _Incarnation) -> str | None:
        """None once kernel_info_reply arrived and IOPub is live, else why not."""
        with anyio.move_on_after(self._startup_timeout):
            while not inc.exited.is_set():
                msg_id, reply = inc.request("shell", "kernel_info_request", {})
                with anyio.move_on_after(_READY_RETRY):
                    await reply.event.wait()  # also set when the process exits
                inc.replies.pop(msg_id, None)
                if reply.msg is None:
                    continue
                # The reply proves shell works; an IOPub message (iopub_welcome or a status)
                # proves our SUB socket is subscribed, so no output of a first cell is lost.
                with anyio.move_on_after(_IOPUB_GRACE):
                    await inc.iopub_seen.wait()
                if inc.iopub_seen.is_set():
                    inc.kernel_info = reply.msg["content"]
                    inc.ready = True
                    return None
            return f"{describe_exit(inc.returncode)} during startup"
        return f"did not answer kernel_info_request within {self._startup_timeout:g} s"

    async def _stop(self, inc: _Incarnation, *, grace: float, reason: str) -> None:
        """Make inc's process group go away and release its resources; always completes."""
        inc.stop_reason = inc.stop_reason or reason
        try:
            if grace > 0 and not inc.exited.is_set():
                # Spec: shutdown_request on the control channel; the kernel replies and exits.
                try:
                    inc.send("control", "shutdown_request", {"restart": False})
                except KernelNotRunning as exc:
                    logger.warning("kernel %d: %s", inc.pid, exc)
                with anyio.move_on_after(grace):
                    await inc.exited.wait()
                if not inc.exited.is_set() and signal_group(inc.pid, signal.SIGTERM):
                    logger.warning("kernel %d ignored shutdown_request; sent SIGTERM", inc.pid)
                    with anyio.move_on_after(_TERM_GRACE):
                        await inc.exited.wait()
        finally:
            # Shielded: even when cancelled we must not leave a process behind.
            with anyio.CancelScope(shield=True):
                if not inc.exited.is_set():
                    signal_group(inc.pid, signal.SIGKILL)
                if inc.scope is not None:  # our tasks run: the watcher reaps, the tail drains
                    with anyio.move_on_after(_KILL_WAIT):
                        await inc.exited.wait()
                        await inc.tail.eof.wait()
                    inc.scope.cancel()
                    with anyio.move_on_after(_KILL_WAIT):
                        await inc.finished.wait()
                with anyio.move_on_after(_KILL_WAIT):
                    await inc.process.aclose()
                inc.client.stop_channels()
                shutil.rmtree(inc.conn_dir, ignore_errors=True)

    # -- per-process tasks ---------------------------------------------------------------

    async def _run(self, inc: _Incarnation, *, task_status: TaskStatus[None]) -> None:
        try:
            with anyio.CancelScope() as scope:
                inc.scope = scope
                async with anyio.create_task_group() as tg:
                    inc.tg = tg
                    tg.start_soon(self._watch, inc)
                    tg.start_soon(inc.tail.drain, inc.process.stdout, inc.pid)
                    tg.start_soon(self._read, inc, "shell")
                    tg.start_soon(self._read, inc, "control")
                    tg.start_soon(self._read, inc, "iopub")
                    tg.start_soon(self._read, inc, "stdin")
                    task_status.started()
        finally:
            inc.finished.set()

    async def _watch(self, inc: _Incarnation) -> None:
        # Event-driven: the event loop's child watcher (SIGCHLD) completes wait(); no polling.
        inc.returncode = await inc.process.wait()
        inc.exited.set()
        # The leader is gone; kill whatever it left in its group (no orphans).  The pgid can't
        # be reused while any member lives, so this only reaches the kernel's descendants.
        signal_group(inc.pid, signal.SIGKILL)
        if inc.stop_reason is None:
            logger.warning("kernel %d %s", inc.pid, describe_exit(inc.returncode))
            why = f"the kernel process {describe_exit(inc.returncode)} while running this cell"
        else:
            why = f"the kernel was {inc.stop_reason} while running this cell"
        for ex in inc.executions.values():
            ex.died = why
            ex.reply.event.set()
            ex.done.set()
            for scope in ex.input_scopes:
                scope.cancel()
        inc.executions.clear()
        for reply in inc.replies.values():
            reply.event.set()
        inc.replies.clear()

    async def _read(self, inc: _Incarnation, channel: str) -> None:
        """One long-lived reader per channel, dispatching by parent msg_id."""
        chan = getattr(inc.client, f"{channel}_channel")
        while True:
            try:
                msg = await chan.get_msg()
            except zmq.ZMQError as exc:  # the boundary for socket failures
                logger.error("kernel %d: %s channel failed: %s; killing it", inc.pid, channel, exc)
                signal_group(inc.pid, signal.SIGKILL)
                return
            except ValueError as exc:  # bad signature or malformed frames (Session)
                logger.warning("kernel %d: dropped invalid %s message: %s", inc.pid, channel, exc)
                continue
            try:
                self._dispatch(inc, channel, msg)
            except (KeyError, TypeError, AttributeError) as exc:
                logger.warning("kernel %d: dropped malformed %s message: %r", inc.pid, channel, exc)
            except KernelNotRunning as exc:
                logger.warning("kernel %d: %s", inc.pid, exc)

    def _dispatch(self, inc: _Incarnation, channel: str, msg: dict[str, Any]) -> None:
        parent_id = msg["parent_header"].get("msg_id")
        msg_type = msg["header"]["msg_type"]
        if channel == "iopub":
            inc.iopub_seen.set()
        ex = inc.executions.get(parent_id)
        if channel in ("shell", "control"):
            reply = inc.replies.get(parent_id)
            if reply is not None:
                reply.msg = msg
                reply.event.set()
        elif channel == "stdin":
            if msg_type == "input_request":
                self._on_input_request(inc, ex, msg)
            return
        elif ex is None:
            return
        elif msg_type == "status":
            ex.idle = ex.idle or msg["content"].get("execution_state") == "idle"
        else:
            change = ex.acc.feed(msg_type, msg["content"])
            if change is not None and ex.on_change is not None and not ex.abandoned:
                try:
                    ex.on_change(change)
                except Exception as exc:  # re-raised by execute() once the cell has finished
                    logger.exception("on_change callback failed; no further changes delivered")
                    ex.callback_error, ex.on_change = exc, None
        # Spec: a request is complete when its reply AND its IOPub idle status have arrived
        # (aborted requests may produce no IOPub traffic at all).
        reply_msg = ex.reply.msg if ex is not None else None
        if ex is None or reply_msg is None:
            return
        if ex.idle or reply_msg["content"].get("status") == "aborted":
            inc.executions.pop(parent_id, None)
            inc.replies.pop(parent_id, None)
            ex.done.set()

    def _on_input_request(
        self, inc: _Incarnation, ex: _Execution | None, msg: dict[str, Any]
    ) -> None:
        if ex is None or ex.stdin is None or ex.abandoned or inc.tg is None:
            # Nobody can answer: reply EOF so input() raises EOFError instead of hanging.
            inc.send("stdin", "input_reply", {"value": _EOF}, parent=msg)
            return
        inc.tg.start_soon(self._answer_input, inc, ex, ex.stdin, msg)

    async def _answer_input(
        self, inc: _Incarnation, ex: _Execution, handler: StdinHandler, msg: dict[str, Any]
    ) -> None:
        content = msg["content"]
        with anyio.CancelScope() as scope:
            ex.input_scopes.add(scope)
            try:
                try:
                    prompt, password = str(content.get("prompt", "")), bool(content.get("password"))
                    value = await handler(prompt, password)
                except Exception:
                    logger.exception("stdin handler failed; answering EOF")
                    value = _EOF
                # Spec: input_reply goes on stdin with the input_request as its parent.
                inc.send("stdin", "input_reply", {"value": value}, parent=msg)
            except KernelNotRunning as exc:
                logger.warning("kernel %d: %s", inc.pid, exc)
            finally:
                ex.input_scopes.discard(scope)

    # -- execution -----------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        *,
        on_change: Callable[[OutputChange], None] | None = None,
        stdin: StdinHandler | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (interrupts the kernel, see below)
    ) -> ExecutionOutcome:
        """Run code and return its outcome once the reply and IOPub idle have both arrived.

        ``on_change`` is called synchronously from the IOPub reader for every change of the
        output list; it must not block.  If it raises, later changes are not delivered and the
        exception is re-raised here after the execution finished.  ``stdin`` answers
        ``input()``; without it ``allow_stdin`` is False and ``input()`` raises
        StdinNotImplementedError in the kernel.  After ``timeout`` seconds the kernel is
        interrupted and the status is "timeout".  If the kernel process exits the status is
        "died" (later calls raise :class:`KernelNotRunning` until :meth:`restart`).
        Cancelling the call does not interrupt the kernel.
        """
        inc = self._running()
        ex = _Execution(on_change, stdin)
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": stdin is not None,
            "stop_on_error": True,
        }
        msg = inc.client.session.msg("execute_request", content)
        msg_id = str(msg["header"]["msg_id"])
        # Register before sending so that no reply or IOPub message can be missed.
        inc.executions[msg_id] = ex
        inc.replies[msg_id] = ex.reply
        try:
            inc.client.shell_channel.send(msg)
        except zmq.ZMQError as exc:
            inc.executions.pop(msg_id, None)
            inc.replies.pop(msg_id, None)
            raise KernelNotRunning(f"cannot send execute_request: {exc}") from exc
        timed_out = False
        try:
            with anyio.move_on_after(timeout) as scope:
                await self._wait_done(inc, msg_id, ex)
            if scope.cancelled_caught:
                timed_out = True
                logger.info("execution %s timed out after %s s; interrupting", msg_id, timeout)
                with anyio.move_on_after(_INTERRUPT_GRACE):
                    if not inc.exited.is_set():
                        await self._interrupt(inc)
                    await self._wait_done(inc, msg_id, ex)
        finally:
            ex.abandoned = True
            for input_scope in ex.input_scopes:
                input_scope.cancel()
        if ex.callback_error is not None:
            raise ex.callback_error
        return self._outcome(ex, timed_out=timed_out, timeout=timeout)

    async def _wait_done(self, inc: _Incarnation, msg_id: str, ex: _Execution) -> None:
        await ex.reply.event.wait()
        with anyio.move_on_after(_IDLE_GRACE) as scope:
            await ex.done.wait()
        if scope.cancelled_caught:
            logger.warning("no IOPub idle for %s within %s s of its reply", msg_id, _IDLE_GRACE)
            inc.executions.pop(msg_id, None)
            inc.replies.pop(msg_id, None)

    @staticmethod
    def _outcome(ex: _Execution, *, timed_out: bool, timeout: float | None) -> ExecutionOutcome:
        outputs = ex.acc.outputs
        reply = ex.reply.msg["content"] if ex.reply.msg is not None else None
        count = ex.acc.execution_count
        if reply is not None and isinstance(reply.get("execution_count"), int):
            count = reply["execution_count"]
        if ex.died is not None and reply is None:
            return ExecutionOutcome("died", count, outputs, ErrorInfo("KernelDied", ex.died, []))
        if timed_out:
            why = f"the cell did not finish within {timeout:g} s and was interrupted"
            return ExecutionOutcome(
                "timeout", count, outputs, ErrorInfo("ExecutionTimeout", why, [])
            )
        assert reply is not None
        status = reply.get("status")
        if status in ("ok", "aborted"):
            return ExecutionOutcome(status, count, outputs, None)
        error = ErrorInfo(
            str(reply.get("ename", "UnknownError")),
            str(reply.get("evalue", f"execute_reply status {status!r}")),
            [str(line) for line in reply.get("traceback", [])],
        )
        return ExecutionOutcome("error", count, outputs, error)
