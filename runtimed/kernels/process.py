"""One running kernel process and its channel readers (internal to :mod:`runtimed.kernels.session`).

A :class:`KernelProcess` lives from spawn to exit.  :meth:`KernelProcess.run` is one task in
the owning session's task group; it owns a task group of its own with a process watcher, a
console drain and one long-lived reader per channel (shell, control, IOPub, stdin), each
dispatching messages by their parent ``msg_id`` (Jupyter messaging protocol, "the spec").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import zmq
from anyio.abc import Process, TaskGroup, TaskStatus
from jupyter_client.asynchronous.client import AsyncKernelClient
from zmq.utils.monitor import parse_monitor_message

from protocol.states import ExecutionStatus, KernelState
from runtimed.errors import KernelNotRunning
from runtimed.kernels.adoption import NannyLink, adopted_reply
from runtimed.kernels.comms import CommTracker
from runtimed.kernels.launch import ConsoleTail, LaunchSpec, describe_exit, signal_group
from runtimed.kernels.outputs import OutputAccumulator, OutputChange
from runtimed.kernels.wire import decode_message
from runtimed.kernels.zmqread import read_frames

__all__ = ["Execution", "KernelProcess", "Reply", "StdinHandler"]

logger = logging.getLogger(__name__)

StdinHandler = Callable[[str, bool], Awaitable[str]]
ForeignHandler = Callable[[str, dict[str, Any]], "Execution | None"]
"""Called (adopted kernels) with the msg_id and request header of an execution another
daemon sent, at its ``execute_input``; returns the Execution to feed, or None to ignore it."""
"""``async def handler(prompt: str, password: bool) -> str`` answering ``input()``."""

_READY_RETRY = 1.0  # resend kernel_info_request this often while starting (as jupyter_client)
# After kernel_info_reply, wait this long for proof that IOPub is subscribed, then ask
# again: the kernel publishes its status for every request, and the first ones often go out
# before the subscription reaches it (ZeroMQ's slow joiner). Waiting 0.5 s before asking
# again cost a kernel start 0.5 s whenever that happened (bench_pool's "no pool" figure was
# 420 or 820 ms, one or the other); jupyter_client's own wait is 0.2 s.
_IOPUB_GRACE = 0.05
_TERM_GRACE = 2.0  # after SIGTERM, wait this long before SIGKILL
_KILL_WAIT = 3.0  # after SIGKILL, wait this long for the exit and the console's EOF
_INTERRUPT_REPLY_WAIT = 3.0  # interrupt_mode "message": wait this long for interrupt_reply
_STDIN_CONNECT_WAIT = 5.0  # an execution allowing stdin waits this long for the stdin handshake
_EOF = "\x04"  # an input_reply of EOT makes ipykernel's input() raise EOFError


class Reply:
    """A request waiting for its reply on shell or control (also woken if the kernel exits)."""

    __slots__ = ("event", "msg")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.msg: dict[str, Any] | None = None


class Execution:
    """State of one execute_request, fed by the readers."""

    __slots__ = (
        "abandoned",
        "acc",
        "adopted",
        "adopted_error",
        "busy_date",
        "callback_error",
        "died",
        "done",
        "idle",
        "idle_date",
        "input_date",
        "input_scopes",
        "on_change",
        "reply",
        "stdin",
    )

    def __init__(
        self, on_change: Callable[[OutputChange], None] | None, stdin: StdinHandler | None
    ) -> None:
        self.acc = OutputAccumulator()
        self.reply = Reply()
        self.idle = False
        self.done = anyio.Event()  # reply and IOPub idle both arrived, or the kernel exited
        self.on_change = on_change
        self.stdin = stdin
        self.abandoned = False  # execute() returned: deliver no more callbacks
        self.callback_error: Exception | None = None
        self.died: str | None = None  # why the kernel went away mid-execution
        self.input_scopes: set[anyio.CancelScope] = set()
        self.input_date: object = None  # header date of its IOPub execute_input
        self.busy_date: object = None  # header dates of its IOPub status busy / idle
        self.idle_date: object = None
        self.adopted = False  # sent by another daemon: its reply is read from IOPub
        self.adopted_error: dict[str, Any] | None = None


class KernelProcess:
    """One kernel process, its client channels and everything tied to its lifetime."""

    def __init__(
        self,
        spec: LaunchSpec,
        process: Process | NannyLink,
        client: AsyncKernelClient,
        conn_dir: Path,
        *,
        comms: CommTracker | None = None,
    ) -> None:
        self.spec = spec
        self.comms = comms if comms is not None else CommTracker()
        self.process = process
        self.link = process if isinstance(process, NannyLink) else None
        """An adopted kernel's nanny: IOPub comes from it, not from a SUB socket of ours."""
        self.on_foreign: ForeignHandler | None = None
        self.idle_waiters: dict[str, anyio.Event] = {}
        """msg_id -> set when IOPub says ``status: idle`` for that request (or on exit)."""
        self.client = client
        self.conn_dir = conn_dir
        self.tail = ConsoleTail()
        self.ready = False
        self.kernel_info: dict[str, Any] | None = None
        self.returncode: int | None = None
        self.stop_reason: str | None = None
        self.replies: dict[str, Reply] = {}
        self.executions: dict[str, Execution] = {}
        self.iopub_seen = anyio.Event()
        self._subshell_id: str | None = None
        self._subshell_refused = False
        self._subshell_lock = anyio.Lock()
        # The kernel's stdin socket is a ROUTER: an input_request sent before our DEALER has
        # finished its ZMTP handshake is silently dropped and input() waits forever.  Watch
        # the handshake from here, synchronously after start_channels and long before the
        # freshly spawned kernel can have bound its ports, so the event cannot be missed.
        self.stdin_connected = anyio.Event()
        self._stdin_monitor = client.stdin_channel.socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.exited = anyio.Event()
        self.finished = anyio.Event()
        self._tg: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None  # set once run() has started its tasks
        # Created up front so stop()/abort() can end run() even before it starts (a
        # cancellation racing the launch must not leave a shielded run() waiting forever).
        self._run_scope = anyio.CancelScope(shield=True)

    @property
    def transport(self) -> str:
        """The connection file's transport: ``ipc`` (sockets in :attr:`conn_dir`) or ``tcp``."""
        return str(self.client.transport)

    @property
    def pid(self) -> int:
        """The kernel's pid; with start_new_session also its process group id."""
        return self.process.pid

    # -- sending ------------------------------------------------------------------------

    def send(self, channel: str, msg_type: str, content: dict[str, Any], **kw: Any) -> str:
        """Build and send a message on a channel; returns its msg_id."""
        msg = self.client.session.msg(msg_type, content, **kw)
        self.send_msg(channel, msg)
        return str(msg["header"]["msg_id"])

    def send_comm(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        """A ``comm_msg`` on shell (spec: comm messages have no reply)."""
        msg = self.client.session.msg("comm_msg", content)
        msg["buffers"] = buffers
        self.send_msg("shell", msg)

    def send_msg(self, channel: str, msg: dict[str, Any]) -> None:
        """Send a built message.  The boundary converting zmq send errors."""
        try:
            getattr(self.client, f"{channel}_channel").send(msg)
        except zmq.ZMQError as exc:
            msg_type = msg["header"]["msg_type"]
            raise KernelNotRunning(f"cannot send {msg_type} to the kernel: {exc}") from exc

    def request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        subshell_id: str | None = None,
    ) -> tuple[str, Reply]:
        """Send a request whose reply the shell/control reader will deliver.

        ``subshell_id``: send it to that kernel subshell (JEP 91: the id goes in the header).
        """
        reply = Reply()
        msg = self.client.session.msg(msg_type, content)
        if subshell_id is not None:
            msg["header"]["subshell_id"] = subshell_id
        self.send_msg(channel, msg)
        msg_id = str(msg["header"]["msg_id"])
        self.replies[msg_id] = reply  # no await since send: the reply cannot have been read
        return msg_id, reply

    @property
    def supports_subshells(self) -> bool:
        """Whether the kernel said (``kernel_info_reply.supported_features``) it has kernel
        subshells (JEP 91; ipykernel 7): shell requests sent to a subshell run in a thread of
        their own, so they are answered while a cell runs on the main shell."""
        features = (self.kernel_info or {}).get("supported_features")
        return isinstance(features, list) and "kernel subshells" in features

    async def service_subshell(self) -> str | None:
        """The subshell this process's completion/inspection/history requests go to:
        created on first use (``create_subshell_request`` on control), then reused; None if
        the kernel has no subshells or refused to create one (then they go to the main
        shell, behind any running cell).  The caller bounds the wait."""
        if not self.supports_subshells or self._subshell_refused:
            return None
        async with self._subshell_lock:
            if self._subshell_id is None and not self._subshell_refused:
                msg_id, reply = self.request("control", "create_subshell_request", {})
                try:
                    await reply.event.wait()
                finally:
                    self.forget(msg_id)
                content = reply.msg["content"] if reply.msg is not None else {}
                subshell_id = content.get("subshell_id")
                if (
                    isinstance(subshell_id, str)
                    and content.get("status", ExecutionStatus.OK) == ExecutionStatus.OK
                ):
                    self._subshell_id = subshell_id
                elif reply.msg is not None:  # an answer, but no subshell: do not ask again
                    logger.warning("kernel %d: no subshell created: %r", self.pid, content)
                    self._subshell_refused = True
        return self._subshell_id

    def forget(self, msg_id: str) -> None:
        self.replies.pop(msg_id, None)
        self.executions.pop(msg_id, None)

    # -- lifecycle ----------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> str | None:
        """None once kernel_info_reply arrived and IOPub is live, else why not.

        An adopted kernel is asked on control: its shell may be running a cell."""
        channel = "control" if self.link is not None else "shell"
        with anyio.move_on_after(timeout):
            while not self.exited.is_set():
                msg_id, reply = self.request(channel, "kernel_info_request", {})
                with anyio.move_on_after(_READY_RETRY):
                    await reply.event.wait()
                self.forget(msg_id)
                if reply.msg is None:
                    continue
                # The reply proves shell works; an IOPub message (iopub_welcome or a status)
                # proves our SUB socket is subscribed, so no output of a first cell is lost.
                with anyio.move_on_after(_IOPUB_GRACE):
                    await self.iopub_seen.wait()
                if self.iopub_seen.is_set():
                    self.kernel_info = reply.msg["content"]
                    self.ready = True
                    return None
            return f"{describe_exit(self.returncode)} during startup"
        return f"did not answer kernel_info_request within {timeout:g} s"

    async def interrupt(self) -> None:
        """Interrupt per the kernelspec's ``interrupt_mode``."""
        if self.spec.interrupt_mode == "message":
            # Spec: interrupt_request on the control channel for interrupt_mode "message".
            msg_id, reply = self.request("control", "interrupt_request", {})
            try:
                with anyio.move_on_after(_INTERRUPT_REPLY_WAIT):
                    await reply.event.wait()
            finally:
                self.forget(msg_id)
        else:
            # As jupyter_client: SIGINT to the whole process group.
            signal_group(self.pid, signal.SIGINT)

    async def stop(self, *, grace: float, reason: str) -> None:
        """Make the process group go away and release every resource; always completes.

        shutdown_request and up to ``grace`` s (skipped if 0), SIGTERM to the group and 2 s,
        then SIGKILL to the group.  Running executions end as died with ``reason``.
        """
        self.stop_reason = self.stop_reason or reason
        try:
            if grace > 0 and not self.exited.is_set():
                # Spec: shutdown_request on the control channel; the kernel replies and exits.
                try:
                    self.send("control", "shutdown_request", {"restart": False})
                except KernelNotRunning as exc:
                    logger.warning("kernel %d: %s", self.pid, exc)
                with anyio.move_on_after(grace):
                    await self.exited.wait()
                if not self.exited.is_set() and signal_group(self.pid, signal.SIGTERM):
                    logger.warning(
                        "kernel %d did not exit %g s after shutdown_request; sent SIGTERM",
                        self.pid,
                        grace,
                    )
                    with anyio.move_on_after(_TERM_GRACE):
                        await self.exited.wait()
        finally:
            # Shielded: even when cancelled we must not leave a process behind.
            with anyio.CancelScope(shield=True):
                if not self.exited.is_set():
                    signal_group(self.pid, signal.SIGKILL)
                if self._scope is not None:  # our tasks run: the watcher reaps, the tail drains
                    with anyio.move_on_after(_KILL_WAIT):
                        await self.exited.wait()
                        await self.tail.eof.wait()
                    self._scope.cancel()
                    with anyio.move_on_after(_KILL_WAIT):
                        await self.finished.wait()
                else:
                    self._run_scope.cancel()  # run() has not started: it will end at once
                with anyio.move_on_after(_KILL_WAIT):
                    await self.process.aclose()
                self.client.stop_channels()
                # The connection file and any ipc sockets the kernel left (a worker thread:
                # deleting files blocks).
                await anyio.to_thread.run_sync(
                    functools.partial(shutil.rmtree, self.conn_dir, ignore_errors=True)
                )

    def abort(self) -> None:
        """Last resort when :meth:`stop` could not run: SIGKILL the group, end the tasks."""
        if not self.exited.is_set():
            signal_group(self.pid, signal.SIGKILL)
        self._run_scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The process's tasks; returns once :meth:`stop` (or :meth:`abort`) cancelled them.

        Shielded: a cancellation of the session's enclosing scope must not silence the
        watcher and readers before the (shielded) shutdown has used them.
        """
        try:
            with self._run_scope as scope:
                self._scope = scope
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    tg.start_soon(self._watch)
                    tg.start_soon(self._watch_stdin_handshake)
                    tg.start_soon(self.tail.drain, self.process.stdout, self.pid)
                    for channel in ("shell", "control", "stdin"):
                        tg.start_soon(self._read, channel)
                    if self.link is None:
                        tg.start_soon(self._read, "iopub")
                    else:
                        tg.start_soon(self.link.pump)
                        tg.start_soon(self._read_link, self.link)
                    task_status.started()
        finally:
            self.finished.set()

    async def _watch(self) -> None:
        # Event-driven: the event loop's child watcher (SIGCHLD) completes wait(); no polling.
        self.returncode = await self.process.wait()
        self.exited.set()
        # The leader is gone: kill what it left in its group (no orphans).  A pgid cannot be
        # reused while any member lives, so this reaches only the kernel's descendants.
        signal_group(self.pid, signal.SIGKILL)
        if self.stop_reason is None:
            logger.warning("kernel %d %s", self.pid, describe_exit(self.returncode))
            why = f"the kernel process {describe_exit(self.returncode)} while running this cell"
        else:
            why = f"the kernel was {self.stop_reason} while running this cell"
        self._end_pending(why)

    def _end_pending(self, why: str) -> None:
        """The process is gone: every execution still waiting ends as died (``why``), every
        request and idle waiter is woken."""
        for ex in self.executions.values():
            ex.died = why
            ex.reply.event.set()
            ex.done.set()
            for scope in ex.input_scopes:
                scope.cancel()
        self.executions.clear()
        for reply in self.replies.values():
            reply.event.set()
        self.replies.clear()
        for waiter in self.idle_waiters.values():
            waiter.set()
        self.idle_waiters.clear()

    async def _watch_stdin_handshake(self) -> None:
        socket = self.client.stdin_channel.socket
        try:
            with anyio.CancelScope() as scope:

                def on_event(frames: list[bytes]) -> None:
                    if parse_monitor_message(frames)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        self.stdin_connected.set()
                        scope.cancel()

                await read_frames(self._stdin_monitor, on_event, what=f"kernel {self.pid} stdin")
        except zmq.ZMQError as exc:  # the socket closed under us: input() cannot work anyway
            logger.debug("kernel %d: stdin monitor ended: %s", self.pid, exc)
        finally:
            with contextlib.suppress(zmq.ZMQError):
                socket.disable_monitor()
            self._stdin_monitor.close(linger=0)

    async def wait_stdin(self) -> None:
        """Wait (bounded) until the kernel can reach us on stdin; see ``stdin_connected``."""
        with anyio.move_on_after(_STDIN_CONNECT_WAIT):
            await self.stdin_connected.wait()
        if not self.stdin_connected.is_set():
            logger.warning(
                "kernel %d: stdin not connected after %g s; input() may not reach us",
                self.pid,
                _STDIN_CONNECT_WAIT,
            )

    # -- receiving ----------------------------------------------------------------------

    async def _read(self, channel: str) -> None:
        """One long-lived reader per channel (:func:`read_frames`: a missed zmq wake-up
        costs a fraction of a second, never the message)."""
        socket = getattr(self.client, f"{channel}_channel").socket
        try:
            await read_frames(
                socket,
                functools.partial(self._on_frames, channel),
                what=f"kernel {self.pid} {channel}",
            )
        except zmq.ZMQError as exc:  # the boundary for socket failures
            logger.error("kernel %d: %s channel failed (%s); killing it", self.pid, channel, exc)
            signal_group(self.pid, signal.SIGKILL)

    def _on_frames(self, channel: str, frames: list[bytes]) -> None:
        try:
            msg = decode_message(self.client.session, frames)
        except ValueError as exc:  # bad signature or malformed frames
            logger.warning("kernel %d: dropped invalid %s message: %s", self.pid, channel, exc)
            return
        self._dispatch_logged(channel, msg, f"kernel {self.pid}")

    def _dispatch_logged(self, channel: str, msg: dict[str, Any], where: str) -> None:
        """:meth:`_dispatch`, a malformed message or a send to a gone kernel logged."""
        try:
            self._dispatch(channel, msg)
        except (KeyError, TypeError, AttributeError) as exc:
            logger.warning("%s: dropped malformed %s message: %r", where, channel, exc)
        except KernelNotRunning as exc:
            logger.warning("%s: %s", where, exc)

    async def _read_link(self, link: NannyLink) -> None:
        """An adopted kernel's IOPub: the nanny's journal, then live (see adoption)."""
        self.iopub_seen.set()
        async for frames in link.iopub:
            self._on_frames("iopub", frames)

    def _dispatch(self, channel: str, msg: dict[str, Any]) -> None:
        parent_id = msg["parent_header"].get("msg_id")
        msg_type = msg["header"]["msg_type"]
        ex = self.executions.get(parent_id)
        if (
            ex is None
            and channel == "iopub"
            and msg_type == "execute_input"
            and self.on_foreign is not None
        ):
            ex = self.on_foreign(str(parent_id), dict(msg["parent_header"]))
            if ex is not None:
                ex.adopted = True
                self.executions[parent_id] = ex
        if channel == "stdin":
            if msg_type == "input_request":
                self._on_input_request(ex, msg)
            return
        if channel == "iopub":
            self.iopub_seen.set()
            if (
                msg_type == "status"
                and parent_id in self.idle_waiters
                and msg["content"].get("execution_state") == KernelState.IDLE
            ):
                self.idle_waiters.pop(parent_id).set()
            # Comm messages, and outputs an Output widget captures (whatever their parent).
            captured = self.comms.feed(msg)
            if ex is None:
                return  # e.g. a timed-out execution's late idle, or kernel_info's statuses
            if msg_type == "status":
                state = msg["content"].get("execution_state")
                if state == KernelState.BUSY and ex.busy_date is None:
                    ex.busy_date = msg["header"].get("date")
                elif state == KernelState.IDLE and not ex.idle:
                    ex.idle_date = msg["header"].get("date")
                ex.idle = ex.idle or state == KernelState.IDLE
            elif not captured:
                if msg_type == "execute_input":
                    ex.input_date = msg["header"].get("date")
                elif msg_type == "error" and ex.adopted:
                    ex.adopted_error = msg["content"]
                self._feed(ex, msg_type, msg["content"])
            if ex.adopted and ex.idle and ex.reply.msg is None:
                ex.reply.msg = adopted_reply(msg, ex.acc.execution_count, ex.adopted_error)
                ex.reply.event.set()
        else:
            reply = self.replies.get(parent_id)
            if reply is not None:
                reply.msg = msg
                reply.event.set()
        # Spec: a request is complete when its reply AND its IOPub idle status have arrived
        # (an aborted request may have no IOPub traffic at all).
        reply_msg = ex.reply.msg if ex is not None else None
        if ex is None or reply_msg is None:
            return
        if ex.idle or reply_msg["content"].get("status") == ExecutionStatus.ABORTED:
            self.forget(parent_id)
            ex.done.set()

    @staticmethod
    def _feed(ex: Execution, msg_type: str, content: dict[str, Any]) -> None:
        change = ex.acc.feed(msg_type, content)
        if change is None or ex.on_change is None or ex.abandoned:
            return
        try:
            ex.on_change(change)
        except Exception as exc:  # re-raised by execute() once the cell has finished
            logger.exception("on_change callback failed; no further changes delivered")
            ex.callback_error, ex.on_change = exc, None

    def _on_input_request(self, ex: Execution | None, msg: dict[str, Any]) -> None:
        if ex is None or ex.stdin is None or ex.abandoned or self._tg is None:
            # Nobody can answer: reply EOF so input() raises EOFError instead of hanging.
            self.send("stdin", "input_reply", {"value": _EOF}, parent=msg)
            return
        self._tg.start_soon(self._answer_input, ex, ex.stdin, msg)

    async def _answer_input(
        self, ex: Execution, handler: StdinHandler, msg: dict[str, Any]
    ) -> None:
        content = msg["content"]
        with anyio.CancelScope() as scope:  # cancelled when the execution ends
            ex.input_scopes.add(scope)
            try:
                try:
                    prompt, password = str(content.get("prompt", "")), bool(content.get("password"))
                    value = await handler(prompt, password)
                except Exception:
                    logger.exception("stdin handler failed; answering EOF")
                    value = _EOF
                # Spec: input_reply goes on stdin with the input_request as its parent.
                self.send("stdin", "input_reply", {"value": value}, parent=msg)
            except KernelNotRunning as exc:
                logger.warning("kernel %d: %s", self.pid, exc)
            finally:
                ex.input_scopes.discard(scope)
