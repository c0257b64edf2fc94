"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway: another transport behind
:class:`~runtimed.kernels.session.KernelSession`.

A local kernel is a process with ZeroMQ channels (:class:`~runtimed.kernels.process.KernelProcess`);
a gateway kernel is a kernel id on a gateway, started and stopped over REST
(:mod:`runtimed.kernels.gateway_rest`), whose four channels travel as JSON messages with a
``channel`` field over one WebSocket, ``/api/kernels/{id}/channels`` (Jupyter Server's
default protocol; messages with buffers arrive in its binary framing). :class:`GatewayKernel`
feeds those messages to the same dispatcher a local kernel's readers use, so executions,
outputs, ``input()``, completions and the end-of-execution rule (reply and IOPub idle) are
the session's, unchanged. What differs:

* **interrupt** is ``POST /api/kernels/{id}/interrupt``; **shutdown** is ``DELETE``;
  a **restart** (the session's) of a live kernel is ``POST /api/kernels/{id}/restart`` and
  new channels (a dead one is deleted and a new kernel started);
* **death**: the WebSocket closing, the gateway reporting the kernel ``dead`` or
  ``restarting`` on IOPub (its own restarter), or ``GET /api/kernels/{id}`` answering 404 —
  each ends running executions as ``died`` with a reason naming the gateway;
* there is no local process: no pid, no signals, no connection file.

Only what the daemon sends crosses the network: the cells' code in execute requests (and
completion/inspection requests), and ``input()`` answers. The cwd and environment of the
daemon are not sent; the gateway's kernel runs where and as the gateway starts it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from jupyter_client.asynchronous.client import AsyncKernelClient
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from protocol.states import KernelState
from runtimed.errors import InvalidRequest, KernelError, KernelNotRunning, KernelStartFailed
from runtimed.kernels.comms import CommTracker
from runtimed.kernels.gateway_rest import GatewayRest, GatewayTarget, decode_binary
from runtimed.kernels.launch import ConsoleTail, LaunchSpec
from runtimed.kernels.process import KernelProcess

__all__ = ["GatewayConnector", "GatewayKernel"]

log = logging.getLogger(__name__)

_ALIVE_EVERY = 5.0  # s between GET /api/kernels/{id} (the REST heartbeat)
_SEND_BUFFER = 1024  # messages waiting for the WebSocket writer
_DELETE_WAIT = 5.0  # s a DELETE (with its retries) may take at shutdown
_ENCODER = msgspec.json.Encoder()  # header dates are datetimes: msgspec writes ISO 8601
_CHANNELS = frozenset({"shell", "control", "iopub", "stdin"})
RESTART_REASON = "restarted"  # the reason KernelSession.restart stops the old kernel with


class GatewayKernel(KernelProcess):
    """One kernel on a gateway, from its POST to its DELETE (see the module docstring).

    It shares :class:`KernelProcess`'s message state and dispatcher; the process-specific
    parts (spawn, signals, ZeroMQ sockets) are replaced, so its ``__init__`` sets the shared
    state itself rather than calling the process's.
    """

    def __init__(
        self, spec: LaunchSpec, rest: GatewayRest, kernel_id: str, ws: ClientConnection
    ) -> None:
        # The state KernelProcess's dispatcher, wait_ready and the session read.
        self.spec = spec
        self.client = AsyncKernelClient()  # only its Session: builds message headers
        self.conn_dir = Path()
        self.tail = ConsoleTail()
        self.ready = False
        self.comms = CommTracker()
        self.link = None  # no nanny: a gateway kernel is never adopted by a next daemon
        self.on_foreign = None
        self.idle_waiters = {}
        self.kernel_info: dict[str, Any] | None = None
        self.returncode: int | None = None
        self.stop_reason: str | None = None
        self.replies = {}
        self.executions = {}
        self.iopub_seen = anyio.Event()
        self._subshell_id = None
        self._subshell_refused = False
        self._subshell_lock = anyio.Lock()
        self.stdin_connected = anyio.Event()
        self.stdin_connected.set()  # stdin shares the WebSocket: nothing to wait for
        self.exited = anyio.Event()
        self.finished = anyio.Event()
        self._tg: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._run_scope = anyio.CancelScope(shield=True)
        # Gateway-specific.
        self.rest = rest
        self.kernel_id = kernel_id
        self.ws = ws
        send, receive = anyio.create_memory_object_stream[bytes](_SEND_BUFFER)
        self._outbox: MemoryObjectSendStream[bytes] = send
        self._inbox: MemoryObjectReceiveStream[bytes] = receive
        self.death: str | None = None
        self.kept = False
        """Stopped for a restart: the kernel stays on the gateway for the next connect."""

    @property
    def where(self) -> str:
        return f"kernel {self.kernel_id} on the gateway at {self.rest.target.base}"

    @property
    def transport(self) -> str:
        return "gateway"

    @property
    def pid(self) -> int:
        """No local process: -1 (the session reports ``None``); never signalled."""
        return -1

    # -- sending ------------------------------------------------------------------------

    def send_msg(self, channel: str, msg: dict[str, Any]) -> None:
        if self.exited.is_set():
            raise KernelNotRunning(f"cannot send {msg['header']['msg_type']}: {self.death}")
        if msg.get("buffers"):
            # The JSON channels protocol has no binary frames (the optional
            # v1.kernel.websocket.jupyter.org subprotocol is not spoken): refuse, never drop.
            raise InvalidRequest(
                f"{msg['header']['msg_type']} with binary buffers cannot be sent to {self.where}"
            )
        wire = {
            "header": msg["header"],
            "parent_header": msg.get("parent_header") or {},
            "metadata": msg.get("metadata") or {},
            "content": msg.get("content") or {},
            "buffers": [],
            "channel": channel,
        }
        try:
            self._outbox.send_nowait(_ENCODER.encode(wire))
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise KernelNotRunning(f"cannot send to {self.where}: {exc!r}") from exc

    async def wait_stdin(self) -> None:
        return None  # the WebSocket carries stdin from the start

    # -- lifecycle ----------------------------------------------------------------------

    async def interrupt(self) -> None:
        """``POST /api/kernels/{id}/interrupt`` (the gateway signals or messages its kernel
        per the kernelspec's interrupt_mode)."""
        await self.rest.interrupt(self.kernel_id)

    def _died(self, why: str) -> None:
        """The kernel is gone: wake every waiter, as a local process's exit does."""
        if self.exited.is_set():
            return
        self.death = why
        self.exited.set()
        if self.stop_reason is None:
            log.warning("%s", why)
            text = f"{why} while running this cell"
        else:
            text = f"the kernel was {self.stop_reason} while running this cell"
        self._end_pending(text)

    async def stop(self, *, grace: float, reason: str) -> None:
        """DELETE the kernel on the gateway (bounded), close the WebSocket, end the tasks.
        Always completes; running executions end as died with ``reason``.

        For the session's restart of a live kernel the kernel is kept on the gateway
        instead (:attr:`kept`): the connector restarts it there (``POST .../restart``)."""
        self.stop_reason = self.stop_reason or reason
        self.kept = reason == RESTART_REASON and not self.exited.is_set()
        with anyio.CancelScope(shield=True):
            if not self.kept:
                try:
                    with anyio.move_on_after(max(grace, _DELETE_WAIT)):
                        await self.rest.delete(self.kernel_id)
                except KernelError as exc:
                    log.warning("could not shut down %s: %s", self.where, exc)
            self._died(f"the kernel was {reason}")
            self._outbox.close()
            with anyio.move_on_after(_DELETE_WAIT):
                await self.ws.close()
            if self._scope is not None:
                self._scope.cancel()
                with anyio.move_on_after(_DELETE_WAIT):
                    await self.finished.wait()
            else:
                self._run_scope.cancel()
            if not self.kept:
                await self.rest.__aexit__(None, None, None)

    def abort(self) -> None:
        """Last resort when :meth:`stop` could not run: end the tasks (the gateway's own
        culling is left to reclaim the remote kernel)."""
        log.error("%s abandoned without a DELETE", self.where)
        self._died("the kernel was abandoned")
        self._run_scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reader, writer and REST heartbeat; returns once :meth:`stop` cancelled them."""
        try:
            with self._run_scope as scope:
                self._scope = scope
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    tg.start_soon(self._receive)
                    tg.start_soon(self._send)
                    tg.start_soon(self._heartbeat)
                    task_status.started()
        finally:
            self.finished.set()

    async def _send(self) -> None:
        async with self._inbox:
            async for data in self._inbox:
                try:
                    await self.ws.send(data.decode())
                except ConnectionClosed as exc:
                    self._died(f"the connection to {self.where} closed ({exc})")
                    return

    async def _receive(self) -> None:
        try:
            async for data in self.ws:
                try:
                    msg = (
                        decode_binary(data)
                        if isinstance(data, bytes)
                        else msgspec.json.decode(data)
                    )
                    channel = msg.pop("channel", None)
                    if channel not in _CHANNELS:
                        raise ValueError(f"unknown channel {channel!r}")
                    header = msg["header"]
                    msg.setdefault("parent_header", {})
                    msg.setdefault("content", {})
                    msg["msg_id"], msg["msg_type"] = header["msg_id"], header["msg_type"]
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    log.warning("%s: dropped a malformed message: %r", self.where, exc)
                    continue
                if channel == "iopub" and self._gateway_lost_it(msg):
                    return
                self._dispatch_logged(channel, msg, self.where)
        except ConnectionClosed as exc:
            self._died(f"the connection to {self.where} closed ({exc})")
            return
        self._died(f"the connection to {self.where} closed")

    def _gateway_lost_it(self, msg: dict[str, Any]) -> bool:
        """A status ``dead`` / ``restarting`` the gateway sends itself (no parent): its
        kernel process died (and its restarter may be starting another, without our
        session's state): the kernel we had is dead."""
        if msg["msg_type"] != "status" or msg["parent_header"].get("msg_id"):
            return False
        state = msg["content"].get("execution_state")
        if state not in (KernelState.DEAD, KernelState.RESTARTING):
            return False
        self._died(f"{self.where} died (the gateway reported it {state})")
        return True

    async def _heartbeat(self) -> None:
        # The gateway's REST view is the authority on whether the kernel exists; the
        # WebSocket closing is the fast signal, this catches a kernel culled or deleted
        # behind our back while the socket stays open.
        while not self.exited.is_set():
            await anyio.sleep(_ALIVE_EVERY)
            try:
                if not await self.rest.kernel_exists(self.kernel_id):
                    self._died(f"{self.where} vanished (GET /api/kernels/{self.kernel_id}: 404)")
            except KernelError as exc:
                log.info("%s: liveness check failed: %s", self.where, exc)


class GatewayConnector:
    """Starts the kernels of one :class:`~runtimed.kernels.session.KernelSession` on a
    gateway: the session's ``connect`` seam."""

    def __init__(self, target: GatewayTarget) -> None:
        self.target = target
        self._last: GatewayKernel | None = None

    async def connect(
        self, spec: LaunchSpec, tg: TaskGroup, startup_timeout: float
    ) -> KernelProcess:
        """Start a kernel on the gateway, open its channels, wait until it answers
        ``kernel_info_request`` (bounded by ``startup_timeout``), in ``tg``.  After a
        restart of the session, the kernel kept on the gateway is restarted there
        (``POST /api/kernels/{id}/restart``) rather than replaced.

        Raises:
            KernelStartFailed: unreachable gateway, wrong token (401), a kernel name it does
                not offer (listing those it does), or a kernel that never became ready.
        """
        last, self._last = self._last, None
        kernel_id: str | None = None
        if last is not None and last.kept:
            rest = last.rest
            try:
                await rest.restart(last.kernel_id, timeout=startup_timeout)
                kernel_id = last.kernel_id
            except KernelError as exc:  # gone meanwhile: a new kernel, below
                log.warning("could not restart %s (%s); starting a new kernel", last.where, exc)
                with anyio.CancelScope(shield=True):
                    await self._discard(rest, last.kernel_id)
            except BaseException:  # cancelled: nobody will own the kept kernel
                with anyio.CancelScope(shield=True):
                    await self._discard(rest, last.kernel_id)
                raise
        if kernel_id is None:
            rest = GatewayRest(self.target)
            await rest.__aenter__()
        try:
            if kernel_id is None:
                kernel_id = await rest.start_kernel(
                    self.target.kernel_name, timeout=startup_timeout
                )
            ws = await rest.channels(kernel_id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._discard(rest, kernel_id)
            raise
        kernel = GatewayKernel(spec, rest, kernel_id, ws)
        self._last = kernel
        try:
            tg.start_soon(kernel.run)
            failure = await kernel.wait_ready(startup_timeout)
        except BaseException:
            await kernel.stop(grace=0, reason="aborted during startup")
            raise
        if failure is not None:
            why = kernel.death or failure
            await kernel.stop(grace=0, reason="failed to start")
            raise KernelStartFailed(f"{kernel.where}: {why}")
        log.info("%s ready", kernel.where)
        return kernel

    @staticmethod
    async def _discard(rest: GatewayRest, kernel_id: str | None) -> None:
        """DELETE ``kernel_id`` (if any, best effort) and close the HTTP client."""
        if kernel_id is not None:
            try:
                with anyio.move_on_after(_DELETE_WAIT):
                    await rest.delete(kernel_id)
            except KernelError as exc:
                log.warning("could not delete gateway kernel %s: %s", kernel_id, exc)
        await rest.__aexit__(None, None, None)
