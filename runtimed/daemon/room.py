"""A notebook room: one open notebook's two documents and the clients syncing them.

The room applies incoming Automerge sync messages, relays changes by marking every other
peer dirty (each peer's writer then generates a sync message when it can send — so a slow
peer gets one message carrying many changes, never a growing queue), and lets requests wait
until the document contains given heads.

A client's sync message never reaches the live notebook document untried: one that may carry
changes is applied to a fork, checked there (its cells read, the reply generated), and only
then does the fork replace the document. A message that makes the Automerge binding panic is
refused with :class:`SyncRejected` (the connection is closed) and the document is left exactly
as it was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
from automerge.core import Document, Message, SyncState

from protocol.errors import ProtocolError
from protocol.messages import DocKind, RuntimeResync, encode
from runtimed.daemon.synccheck import check_readable
from runtimed.documents.boundary import DocumentError, automerge_errors, is_panic
from runtimed.documents.notebook import KERNEL_METADATA_KEY, NotebookDoc
from runtimed.documents.runtime import RuntimeDoc
from runtimed.documents.syncwire import heads_count, may_carry_changes
from runtimed.errors import HeadsTimeout, InvalidRequest, RuntimedError

__all__ = ["NotebookRoom", "Peer", "RoomCallbacks", "SyncRejected"]

log = logging.getLogger(__name__)

# Replies generated while a message is checked wait for the peer's writer; past this many
# (a peer sending faster than it reads), replies are left to the writer to generate.
_MAX_PENDING_REPLIES = 8

# Documents the binding poisoned (a panic while it held the document's lock): freeing one
# crashes the process, so they are kept for the life of the daemon. Expected to stay empty.
_POISONED: list[Document] = []


class SyncRejected(DocumentError):
    """A client's sync message made the Automerge binding fail; the document was left as it
    was before the message, and the connection is to be closed (its sync state is lost)."""


class Peer(Protocol):
    """What a room needs from a connected client session."""

    def mark_dirty(self, notebook_id: str, doc: DocKind) -> None:
        """Schedule a sync message for ``doc`` to this peer."""

    def send_event_bytes(self, payload: bytes) -> None:
        """Queue an encoded control event for this peer."""


@dataclass(frozen=True, kw_only=True)
class RoomCallbacks:
    """What a room tells its owner. Called on the event loop; must not block."""

    on_notebook_change: Callable[[NotebookRoom], None] | None = None
    """The notebook document changed (a peer's edit or the daemon's)."""
    on_runtime_change: Callable[[NotebookRoom], None] | None = None
    """The daemon wrote the runtime document."""


_NO_CALLBACKS = RoomCallbacks()


class NotebookRoom:
    """State of one open notebook shared by every client that opened it."""

    def __init__(
        self,
        *,
        notebook_id: str,
        path: Path | None,
        notebook: NotebookDoc,
        runtime: RuntimeDoc,
        callbacks: RoomCallbacks = _NO_CALLBACKS,
    ) -> None:
        self.notebook_id = notebook_id
        self.path = path
        self.notebook = notebook
        self.runtime = runtime
        self._callbacks = callbacks
        self._sync: dict[Peer, dict[DocKind, SyncState]] = {}
        self._replies: dict[Peer, dict[DocKind, list[bytes]]] = {}
        self._shadow: Document | None = None  # see _fork
        self._changed = anyio.Event()
        self._runtime_refused: set[Peer] = set()
        # Told to drop their runtime replica (replace_runtime): no runtime sync until their
        # replica is empty, which the first message after the drop says (no heads).
        self._runtime_replaced: set[Peer] = set()
        self.dirty_since_save = False
        # A run's context (OpenNotebook.kernel_env / kernel_cwd): for kernels started later.
        self.kernel_env: dict[str, str] = {}
        self.kernel_cwd: Path | None = None

    # ------------------------------------------------------------ run context

    def set_run_context(self, *, env: dict[str, str] | None, cwd: str | None) -> None:
        """Kernels started for this notebook from now on get ``env`` (set over the daemon's
        environment) and run in ``cwd``; None leaves that part as it is."""
        if env is not None:
            self.kernel_env = dict(env)
        if cwd is not None:  # checked to be an absolute folder by the OpenNotebook handler
            self.kernel_cwd = Path(cwd)

    def adopt_kernel_info(self, kernel_info: dict[str, object] | None) -> None:
        """Refresh ``metadata.language_info`` from a new kernel's ``kernel_info_reply``, as
        nbclient does, so a saved notebook says what language it holds (nbconvert's
        ``--to script`` picks the file extension from it)."""
        info = (kernel_info or {}).get("language_info")
        if not isinstance(info, dict) or not isinstance(info.get("name"), str):
            return
        try:  # only plain JSON reaches the live document (a bad write could poison it)
            clean = json.loads(json.dumps(info))
        except (TypeError, ValueError):
            return
        if self.notebook.metadata().get(KERNEL_METADATA_KEY) != clean:
            self.notebook.set_metadata(KERNEL_METADATA_KEY, clean)
            self.notebook_changed()

    # ------------------------------------------------------------ peers

    @property
    def peers(self) -> list[Peer]:
        return list(self._sync)

    def join(self, peer: Peer) -> None:
        """Start syncing both documents with ``peer`` (fresh sync states: a reconnecting
        client catches up from whatever its replica holds)."""
        self._sync[peer] = {"notebook": SyncState(), "runtime": SyncState()}
        self._replies.pop(peer, None)
        self._runtime_refused.discard(peer)
        self._runtime_replaced.discard(peer)
        peer.mark_dirty(self.notebook_id, "notebook")
        peer.mark_dirty(self.notebook_id, "runtime")

    def leave(self, peer: Peer) -> None:
        self._sync.pop(peer, None)
        self._replies.pop(peer, None)
        self._runtime_refused.discard(peer)
        self._runtime_replaced.discard(peer)

    def replace_runtime(self, runtime: RuntimeDoc) -> None:
        """Make ``runtime`` (the same state without the history: :meth:`RuntimeDoc.fresh_copy`)
        the live runtime document; every peer is told to drop its replica (``RuntimeResync``)
        and gets the new document once its next message shows its replica empty. Messages
        about the old document still in flight from a peer are ignored, and nothing of the
        old one is sent after the event."""
        self.runtime = runtime
        event = encode(RuntimeResync(notebook_id=self.notebook_id))
        for peer, states in self._sync.items():
            states["runtime"] = SyncState()
            self._replies.get(peer, {}).pop("runtime", None)
            self._runtime_refused.discard(peer)
            self._runtime_replaced.add(peer)
            peer.send_event_bytes(event)
        if self._callbacks.on_runtime_change is not None:
            self._callbacks.on_runtime_change(self)

    def has_peer(self, peer: Peer) -> bool:
        return peer in self._sync

    def broadcast(self, payload: bytes) -> None:
        """Queue an encoded event for every peer."""
        for peer in list(self._sync):
            peer.send_event_bytes(payload)

    # ------------------------------------------------------------ sync

    def generate(self, peer: Peer, doc: DocKind) -> bytes | None:
        """The next sync message for ``peer`` (None: nothing to send now).

        Raises:
            DocumentError: the binding failed generating it (the peer cannot be synced).
        """
        states = self._sync.get(peer)
        if states is None or (
            doc == "runtime" and (peer in self._runtime_refused or peer in self._runtime_replaced)
        ):
            return None
        pending = self._replies.get(peer, {}).get(doc)
        if pending:
            peer.mark_dirty(self.notebook_id, doc)  # more may follow: ask again
            return pending.pop(0)
        target = self.notebook.doc if doc == "notebook" else self.runtime.doc
        with automerge_errors(f"generating a {doc} sync message for notebook {self.notebook_id}"):
            message = target.generate_sync_message(states[doc])
        return None if message is None else bytes(message.encode())

    def receive(self, peer: Peer, doc: DocKind, data: bytes) -> None:
        """Apply a sync message from ``peer``.

        Raises:
            InvalidRequest: the peer has not opened this notebook, or tried to change the
                daemon-authoritative runtime document.
            ProtocolError: the bytes are not an Automerge sync message.
            SyncRejected: the message made the binding panic; nothing was changed, the peer
                has left the room, and its connection should be closed.
        """
        states = self._sync.get(peer)
        if states is None:
            raise InvalidRequest(f"notebook {self.notebook_id!r} is not open on this connection")
        try:
            with automerge_errors("decoding a sync message"):
                message = Message.decode(data)
        except DocumentError as exc:
            raise ProtocolError(f"invalid Automerge sync message: {exc.__cause__}") from exc
        try:
            if doc == "notebook":
                self._receive_notebook(peer, states[doc], message, data)
            else:
                self._receive_runtime(peer, states, message, data)
        except SyncRejected:
            log.warning("notebook %s: refused a sync message: the peer leaves", self.notebook_id)
            self.leave(peer)
            raise

    def _receive_notebook(
        self, peer: Peer, state: SyncState, message: Message, data: bytes
    ) -> None:
        live = self.notebook.doc
        if not may_carry_changes(data):
            # No changes in it: the document cannot change, only the sync state; the reply
            # generated now is the check.
            _apply(live, state, message)
            self._queue_reply(peer, "notebook", live, state)
            return
        # Fork, apply, check, swap: the live document never holds what has not been tried.
        fork = self._fork()
        before = list(fork.get_heads())
        try:
            _apply(fork, state, message)
            changed = list(fork.get_heads()) != before
            if changed:
                self._check_readable(fork, before)
            self._queue_reply(peer, "notebook", fork if changed else live, state)
        except BaseException:
            self._shadow = None  # it may hold the refused change (or be poisoned)
            _dispose(fork)
            raise
        if changed:
            self.notebook.doc = fork
            # The previous document becomes the next fork: catching up is a merge of the
            # changes just tried, not a copy of the whole document per message.
            try:
                with automerge_errors("updating the notebook's fork"):
                    live.merge(fork)
                self._shadow = live
            except DocumentError:
                log.exception("notebook %s: dropped its fork", self.notebook_id)
                self._shadow = None
            self.notebook_changed(exclude=None)

    def _fork(self) -> Document:
        """A document equal to the live one, to try a message on (kept between messages)."""
        live = self.notebook.doc
        with automerge_errors(f"forking notebook {self.notebook_id}"):
            shadow = self._shadow
            if shadow is None:
                shadow = self._shadow = live.fork()
                shadow.set_actor(live.get_actor())  # the daemon's edits keep one actor
            elif shadow.get_heads() != live.get_heads():
                shadow.merge(live)  # the daemon's own edits since the last message
        return shadow

    def _check_readable(self, fork: Document, before: list[bytes]) -> None:
        try:
            check_readable(fork, before)
        except DocumentError as exc:
            raise SyncRejected(
                f"a sync message for notebook {self.notebook_id} was refused: "
                f"the notebook could not be read after it ({exc})"
            ) from exc
        except RuntimedError:
            # A schema complaint (a cell our reader rejects), not a binding failure: taken
            # as before; the request that reads that cell reports it.
            pass

    def _receive_runtime(
        self, peer: Peer, states: dict[DocKind, SyncState], message: Message, data: bytes
    ) -> None:
        # The runtime document is daemon-authoritative: a client may only acknowledge.
        live = self.runtime.doc
        if heads_count(data) == 0:
            # The peer's replica is empty (new, or dropped after RuntimeResync): sync it from
            # scratch, whatever this connection's sync state remembers having sent.
            states["runtime"] = SyncState()
            self._runtime_replaced.discard(peer)
        elif peer in self._runtime_replaced:
            return  # about the document replace_runtime retired: the peer drops it
        if not may_carry_changes(data):
            _apply(live, states["runtime"], message)
            self._runtime_refused.discard(peer)
            self._queue_reply(peer, "runtime", live, states["runtime"])
            return
        # It may carry changes: try it on a fork and refuse it if it adds any.
        with automerge_errors("forking a runtime document"):
            probe = live.fork()
            before = probe.get_heads()
        try:
            _apply(probe, states["runtime"], message)
            changed = probe.get_heads() != before
        finally:
            _dispose(probe)
        if changed:
            # The peer's replica diverged for good. Answering would bounce the change
            # back and forth forever, so: no runtime sync with it until it has dropped
            # its replica (RuntimeResync) and starts again from empty.
            states["runtime"] = SyncState()
            self._replies.get(peer, {}).pop("runtime", None)
            if peer in self._runtime_refused:
                return
            self._runtime_refused.add(peer)
            peer.send_event_bytes(encode(RuntimeResync(notebook_id=self.notebook_id)))
            raise InvalidRequest(
                "the runtime document is written only by the daemon; your replica was "
                "refused: drop it and resync (RuntimeResync)"
            )
        self._runtime_refused.discard(peer)
        self._queue_reply(peer, "runtime", live, states["runtime"])

    def _queue_reply(self, peer: Peer, doc: DocKind, target: Document, state: SyncState) -> None:
        """Generate the answer to a message just received (the last check that the binding
        can work with it) and keep it for the peer's writer."""
        pending = self._replies.setdefault(peer, {}).setdefault(doc, [])
        if len(pending) < _MAX_PENDING_REPLIES:
            try:
                with automerge_errors("answering a sync message"):
                    reply = target.generate_sync_message(state)
            except DocumentError as exc:
                raise SyncRejected(
                    f"a {doc} sync message for notebook {self.notebook_id} was refused: {exc}"
                ) from exc
            if reply is not None:
                pending.append(bytes(reply.encode()))
        peer.mark_dirty(self.notebook_id, doc)

    def notebook_changed(self, *, exclude: Peer | None = None) -> None:
        """The notebook document changed (a peer's sync or a daemon edit): relay and wake."""
        self.dirty_since_save = True
        for other in list(self._sync):
            if other is not exclude:
                other.mark_dirty(self.notebook_id, "notebook")
        self._changed.set()
        self._changed = anyio.Event()
        if self._callbacks.on_notebook_change is not None:
            self._callbacks.on_notebook_change(self)

    def runtime_changed(self) -> None:
        """The daemon wrote the runtime document: schedule a sync to every peer."""
        for peer in list(self._sync):
            peer.mark_dirty(self.notebook_id, "runtime")
        if self._callbacks.on_runtime_change is not None:
            self._callbacks.on_runtime_change(self)

    async def wait_for_heads(self, heads: list[str], *, timeout: float) -> None:
        """Return once the notebook document contains ``heads``.

        Raises:
            HeadsTimeout: they did not arrive within ``timeout`` seconds.
            InvalidRequest: ``heads`` are not hex change hashes.
        """
        with anyio.move_on_after(timeout):
            while not self.notebook.has_heads(heads):
                await self._changed.wait()
            return
        raise HeadsTimeout(
            f"the daemon did not receive the notebook changes {', '.join(h[:12] for h in heads)}"
            f" within {timeout:g} s; sync the document before executing"
        )


def _apply(target: Document, state: SyncState, message: Message) -> None:
    """``receive_sync_message`` at the boundary: an error is a bad message (ProtocolError,
    the connection stays); a panic is a message the binding cannot take (SyncRejected)."""
    try:
        with automerge_errors("applying a sync message"):
            target.receive_sync_message(state, message)
    except DocumentError as exc:
        cause = exc.__cause__
        if cause is not None and is_panic(cause):
            raise SyncRejected(f"a sync message was refused: {exc}") from exc
        raise ProtocolError(f"invalid Automerge sync message: {cause}") from exc


def _dispose(doc: Document) -> None:
    """Drop a fork, unless the binding poisoned it (then freeing it would crash the process)."""
    try:
        doc.get_heads()
    except BaseException as exc:
        if not (isinstance(exc, Exception) or is_panic(exc)):
            raise
        log.error("an Automerge document was poisoned by a panic; it is kept, never freed")
        _POISONED.append(doc)
