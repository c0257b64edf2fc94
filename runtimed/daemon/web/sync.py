"""One WebSocket per notebook page, bridged to one connection on the daemon's socket.

On the WebSocket (the page's side of docs/web.md "WebSocket"):

- binary messages are Automerge sync messages, the same bytes as a SYNC frame's
  ``SyncEnvelope.data``, prefixed by one byte naming the document (0 notebook, 1 runtime);
- text messages are JSON: from the page, a request of the protocol (``execute_cell``,
  ``run_all``, ``interrupt_kernel``, ``restart_kernel``, ``clear_outputs``, ``input_reply``,
  ``save_notebook`` without a path, ``send_comm`` (a widget's update), ``ping``; msgspec's
  JSON form of the same Structs) or a ``presence`` update; from the server, the daemon's
  replies and events in JSON, plus ``hello`` (once joined) and ``presence`` (the viewer list).

A page may do to its notebook what a person at the keyboard may; nothing else (no shutdown,
no other notebook, no saving elsewhere). Bad input — undecodable JSON, a request outside
that list, an unknown document byte, a flood — closes that WebSocket alone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import anyio
import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import FrameKind
from protocol.messages import (
    ClearOutputs,
    DocKind,
    ErrorReply,
    ExecuteCell,
    InputReply,
    InterruptKernel,
    JoinNotebook,
    NotebookOpened,
    OpenNotebook,
    Ping,
    Reply,
    RestartKernel,
    RunAll,
    SaveNotebook,
    SendComm,
    SyncEnvelope,
    decode_daemon_message,
    decode_sync,
)
from runtimed.daemon.web.link import DaemonLink
from runtimed.daemon.web.presence import PresenceRegistry, Viewer, ViewerInfo
from runtimed.daemon.web.recent import read_records
from runtimed.errors import ConnectionClosed, NotebookNotFound, RuntimedError, error_from_reply

__all__ = ["CLOSE_DAEMON_GONE", "CLOSE_NOT_FOUND", "NotebookSocket"]

log = logging.getLogger(__name__)

DOC_BYTES: dict[int, DocKind] = {0: "notebook", 1: "runtime"}
BYTE_OF: dict[DocKind, bytes] = {"notebook": b"\x00", "runtime": b"\x01"}
SNAPSHOT = b"\x02"  # server to page only: the notebook document, saved (Document.save)

CLOSE_DAEMON_GONE = 1012  # "service restart": the page reconnects
CLOSE_POLICY = 1008
CLOSE_NOT_FOUND = 4404

# A page sends a sync message per keystroke burst and a few requests; far above that is a
# flood. Token bucket: RATE messages per second, bursts up to BURST.
RATE = 500.0
BURST = 2000.0
MAX_TEXT = 1 << 20

PageRequest = (
    Ping
    | ExecuteCell
    | RunAll
    | InterruptKernel
    | RestartKernel
    | ClearOutputs
    | InputReply
    | SendComm
    | SaveNotebook
)
_json = msgspec.json.Encoder()


class PresenceUpdate(msgspec.Struct, frozen=True, kw_only=True, tag="presence", tag_field="type"):
    """From the page: where its viewer is (never persisted; presence.py)."""

    cell_id: str | None = None
    editing: bool = False
    name: str | None = None
    anchor: int | None = None  # the cursor in the cell's source, in code points
    head: int | None = None
    heads: list[str] | None = None  # the notebook heads that cursor is in


# Everything a page may send as text, one decoder (the tag ``type`` picks the Struct).
_page_decoder = msgspec.json.Decoder(PageRequest | PresenceUpdate)


class _Hello(msgspec.Struct, frozen=True, kw_only=True, tag="hello", tag_field="type"):
    notebook_id: str
    path: str | None
    viewer_id: str


class _Presence(msgspec.Struct, frozen=True, kw_only=True, tag="presence", tag_field="type"):
    viewers: list[ViewerInfo]


class _Bye(msgspec.Struct, frozen=True, kw_only=True, tag="bye", tag_field="type"):
    reason: Literal["not_found", "daemon_gone", "bad_input"]
    message: str


_JOIN_ID = (1 << 62) + 1


class _BadInput(Exception):
    pass


class NotebookSocket:
    """Serve one page's WebSocket for notebook ``notebook_id`` until either side closes."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        notebook_id: str,
        socket: Path,
        documents: Path,
        presence: PresenceRegistry,
        snapshot: Callable[[str], bytes | None] | None = None,
    ) -> None:
        self.ws = websocket
        self._snapshot = snapshot
        self.notebook_id = notebook_id
        self._socket = socket
        self._documents = documents
        self._presence = presence
        self._send_lock = anyio.Lock()
        self._tokens = BURST
        self._last = anyio.current_time()
        self._viewer: Viewer | None = None

    async def run(self) -> None:
        await self.ws.accept()
        try:
            link = await DaemonLink.connect(self._socket)
        except ConnectionClosed as exc:
            await self._bye("daemon_gone", str(exc), CLOSE_DAEMON_GONE)
            return
        async with link:
            # A page with an empty replica loads the saved document first (docs/web.md).
            if self._snapshot is not None:
                saved = self._snapshot(self.notebook_id)
                if saved is not None:
                    try:
                        await self._send_bytes(SNAPSHOT + saved)
                    except WebSocketDisconnect:
                        return
            try:
                opened = await self._join(link)
            except NotebookNotFound as exc:
                await self._bye("not_found", str(exc), CLOSE_NOT_FOUND)
                return
            except ConnectionClosed as exc:
                await self._bye("daemon_gone", str(exc), CLOSE_DAEMON_GONE)
                return
            except RuntimedError as exc:
                await self._bye("not_found", str(exc), CLOSE_NOT_FOUND)
                return
            self.notebook_id = opened.notebook_id
            viewer = self._presence.join(self.notebook_id)
            self._viewer = viewer
            hello = _json.encode(
                _Hello(
                    notebook_id=opened.notebook_id,
                    path=opened.path,
                    viewer_id=viewer.viewer_id,
                )
            )
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._guard, self._from_daemon(link, hello), tg.cancel_scope)
                    tg.start_soon(self._guard, self._presence_pusher(viewer), tg.cancel_scope)
                    await self._guard(self._from_page(link), tg.cancel_scope)
            finally:
                self._presence.leave(viewer)

    async def _guard(self, work: Awaitable[None], scope: anyio.CancelScope) -> None:
        """One side ending (for any reason) ends the other: a WebSocket lives or dies whole."""
        try:
            await work
        except WebSocketDisconnect:
            pass
        except ConnectionClosed as exc:
            log.info("web: daemon connection for %s ended: %s", self.notebook_id, exc)
            await self._bye("daemon_gone", "the daemon went away", CLOSE_DAEMON_GONE)
        except _BadInput as exc:
            log.warning("web: closing a WebSocket for %s: %s", self.notebook_id, exc)
            await self._bye("bad_input", str(exc), CLOSE_POLICY)
        finally:
            scope.cancel()

    async def _bye(
        self, reason: Literal["not_found", "daemon_gone", "bad_input"], message: str, code: int
    ) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await self._send_text(_json.encode(_Bye(reason=reason, message=message)))
                await self.ws.close(code=code, reason=reason)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # already closed

    # ------------------------------------------------------------ joining

    async def _join(self, link: DaemonLink) -> NotebookOpened:
        """Join by id when the notebook is loaded; else reopen its file (after a cull or a
        daemon restart) from the daemon's records."""
        try:
            return await self._request_opened(
                link, JoinNotebook(id=_JOIN_ID, notebook_id=self.notebook_id)
            )
        except NotebookNotFound:
            pass
        records = await anyio.to_thread.run_sync(read_records, self._documents)
        for record in records:
            if record.notebook_id == self.notebook_id and record.path:
                return await self._request_opened(link, OpenNotebook(id=_JOIN_ID, path=record.path))
        raise NotebookNotFound(
            f"notebook {self.notebook_id} is not open in the daemon and it has no file on "
            "record; open it again with `runt open PATH`"
        )

    async def _request_opened(
        self, link: DaemonLink, request: JoinNotebook | OpenNotebook
    ) -> NotebookOpened:
        # Frames for the notebook may precede the reply: keep them for the page.
        await link.send_request(request)
        while True:
            for frame in await link.receive_frames():
                if frame.kind is FrameKind.SYNC:
                    await self._forward_sync(frame.payload)
                    continue
                message = self._decode(frame.payload)
                if isinstance(message, Reply) and message.id == _JOIN_ID:
                    if isinstance(message, ErrorReply):
                        raise error_from_reply(message.code, message.message)
                    assert isinstance(message, NotebookOpened)
                    return message

    # ------------------------------------------------------------ daemon -> page

    @staticmethod
    def _decode(payload: bytes) -> msgspec.Struct:
        try:
            return decode_daemon_message(payload)
        except ProtocolError as exc:
            raise ConnectionClosed(f"undecodable message from the daemon: {exc}") from exc

    async def _forward_sync(self, payload: bytes) -> None:
        try:
            envelope = decode_sync(payload)
        except ProtocolError as exc:
            raise ConnectionClosed(str(exc)) from exc
        await self._send_bytes(BYTE_OF[envelope.doc] + envelope.data)

    async def _from_daemon(self, link: DaemonLink, hello: bytes) -> None:
        await self._send_text(hello)
        while True:
            for frame in await link.receive_frames():
                if frame.kind is FrameKind.SYNC:
                    await self._forward_sync(frame.payload)
                else:
                    message = self._decode(frame.payload)
                    await self._send_text(_json.encode(message))
                    if (
                        isinstance(message, ErrorReply)
                        and message.id == 0
                        and (message.code == ErrorCode.PROTOCOL_ERROR)
                    ):
                        # Unsolicited: the daemon could not use what this page sent (an
                        # invalid sync message). Garbage closes this WebSocket.
                        raise _BadInput(message.message)

    async def _presence_pusher(self, viewer: Viewer) -> None:
        while True:
            await viewer.changed.wait()
            viewer.changed = anyio.Event()
            viewers = self._presence.viewers(self.notebook_id)
            await self._send_text(_json.encode(_Presence(viewers=list(viewers))))

    async def _send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(data)

    async def _send_text(self, data: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_text(data.decode())

    # ------------------------------------------------------------ page -> daemon

    def _spend(self) -> None:
        now = anyio.current_time()
        self._tokens = min(BURST, self._tokens + (now - self._last) * RATE)
        self._last = now
        if self._tokens < 1:
            raise _BadInput("too many messages (flood); connection closed")
        self._tokens -= 1

    async def _from_page(self, link: DaemonLink) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self._spend()
            data = message.get("bytes")
            text = message.get("text")
            if data is not None:
                if len(data) < 1 or data[0] not in DOC_BYTES:
                    raise _BadInput("a binary message must start with a document byte (0 or 1)")
                await link.send_sync(
                    SyncEnvelope(
                        notebook_id=self.notebook_id, doc=DOC_BYTES[data[0]], data=bytes(data[1:])
                    )
                )
            elif text is not None:
                await self._on_text(link, text)

    async def _on_text(self, link: DaemonLink, text: str) -> None:
        if len(text) > MAX_TEXT:
            raise _BadInput("text message too large")
        try:
            request = _page_decoder.decode(text)
        except msgspec.DecodeError as exc:
            raise _BadInput(f"not a message a page may send: {exc}") from exc
        if isinstance(request, PresenceUpdate):
            if self._viewer is not None:
                self._presence.update(
                    self._viewer,
                    cell_id=request.cell_id,
                    editing=request.editing,
                    name=request.name,
                    anchor=request.anchor,
                    head=request.head,
                    heads=request.heads,
                )
            return
        if not isinstance(request, Ping) and request.notebook_id != self.notebook_id:
            raise _BadInput("a page may only act on its own notebook")
        if isinstance(request, SaveNotebook) and request.path is not None:
            raise _BadInput("a page saves its notebook where it is (no path)")
        await link.send_request(request)
