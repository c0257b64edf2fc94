"""A notebook room: one open notebook's two documents and the clients syncing them.

The room applies incoming Automerge sync messages, relays changes by marking every other
peer dirty (each peer's writer then generates a sync message when it can send — so a slow
peer gets one message carrying many changes, never a growing queue), and lets requests wait
until the document contains given heads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import anyio
from automerge.core import Message, SyncState

from protocol.errors import ProtocolError
from protocol.messages import DocKind, RuntimeResync, encode
from runtimed.documents.notebook import NotebookDoc
from runtimed.documents.runtime import RuntimeDoc
from runtimed.documents.syncwire import may_carry_changes
from runtimed.errors import HeadsTimeout, InvalidRequest

__all__ = ["NotebookRoom", "Peer"]

log = logging.getLogger(__name__)


class Peer(Protocol):
    """What a room needs from a connected client session."""

    def mark_dirty(self, notebook_id: str, doc: DocKind) -> None:
        """Schedule a sync message for ``doc`` to this peer."""

    def send_event_bytes(self, payload: bytes) -> None:
        """Queue an encoded control event for this peer."""


class NotebookRoom:
    """State of one open notebook shared by every client that opened it."""

    def __init__(
        self,
        *,
        notebook_id: str,
        path: Path | None,
        notebook: NotebookDoc,
        runtime: RuntimeDoc,
        on_notebook_change: Callable[[NotebookRoom], None] | None = None,
    ) -> None:
        self.notebook_id = notebook_id
        self.path = path
        self.notebook = notebook
        self.runtime = runtime
        self._sync: dict[Peer, dict[DocKind, SyncState]] = {}
        self._changed = anyio.Event()
        self._on_notebook_change = on_notebook_change
        self._runtime_refused: set[Peer] = set()
        self._on_runtime_change: Callable[[NotebookRoom], None] | None = None
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
        if cwd is not None:
            folder = Path(cwd)
            if not folder.is_absolute() or not folder.is_dir():
                raise InvalidRequest(f"kernel_cwd {cwd!r} is not an absolute path to a folder")
            self.kernel_cwd = folder

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
        if self.notebook.metadata().get("language_info") != clean:
            self.notebook.set_metadata("language_info", clean)
            self.notebook_changed()

    # ------------------------------------------------------------ peers

    @property
    def peers(self) -> list[Peer]:
        return list(self._sync)

    def join(self, peer: Peer) -> None:
        """Start syncing both documents with ``peer`` (fresh sync states: a reconnecting
        client catches up from whatever its replica holds)."""
        self._sync[peer] = {"notebook": SyncState(), "runtime": SyncState()}
        self._runtime_refused.discard(peer)
        peer.mark_dirty(self.notebook_id, "notebook")
        peer.mark_dirty(self.notebook_id, "runtime")

    def leave(self, peer: Peer) -> None:
        self._sync.pop(peer, None)
        self._runtime_refused.discard(peer)

    def has_peer(self, peer: Peer) -> bool:
        return peer in self._sync

    def broadcast(self, payload: bytes) -> None:
        """Queue an encoded event for every peer."""
        for peer in list(self._sync):
            peer.send_event_bytes(payload)

    # ------------------------------------------------------------ sync

    def generate(self, peer: Peer, doc: DocKind) -> bytes | None:
        """The next sync message for ``peer`` (None: nothing to send now)."""
        states = self._sync.get(peer)
        if states is None or (doc == "runtime" and peer in self._runtime_refused):
            return None
        target = self.notebook.doc if doc == "notebook" else self.runtime.doc
        message = target.generate_sync_message(states[doc])
        return None if message is None else bytes(message.encode())

    def receive(self, peer: Peer, doc: DocKind, data: bytes) -> None:
        """Apply a sync message from ``peer``.

        Raises:
            InvalidRequest: the peer has not opened this notebook, or tried to change the
                daemon-authoritative runtime document.
            ProtocolError: the bytes are not an Automerge sync message.
        """
        states = self._sync.get(peer)
        if states is None:
            raise InvalidRequest(f"notebook {self.notebook_id!r} is not open on this connection")
        try:
            message = Message.decode(data)
        except Exception as exc:  # the binding raises a bare Exception for bad bytes
            raise ProtocolError(f"invalid Automerge sync message: {exc}") from exc
        if doc == "notebook":
            before = self.notebook.doc.get_heads()
            self._apply(self.notebook, states[doc], message)
            if self.notebook.doc.get_heads() != before:
                self.notebook_changed(exclude=None)
                return
        else:
            # The runtime document is daemon-authoritative: a client may only acknowledge.
            if not may_carry_changes(data):
                try:
                    self.runtime.doc.receive_sync_message(states[doc], message)
                except Exception as exc:
                    raise ProtocolError(f"invalid Automerge sync message: {exc}") from exc
                self._runtime_refused.discard(peer)
                peer.mark_dirty(self.notebook_id, doc)
                return
            # It may carry changes: try it on a fork and refuse it if it adds any.
            probe = self.runtime.doc.fork()
            before = probe.get_heads()
            try:
                probe.receive_sync_message(states[doc], message)
            except Exception as exc:
                raise ProtocolError(f"invalid Automerge sync message: {exc}") from exc
            if probe.get_heads() != before:
                # The peer's replica diverged for good. Answering would bounce the change
                # back and forth forever, so: no runtime sync with it until it has dropped
                # its replica (RuntimeResync) and starts again from empty.
                states[doc] = SyncState()
                if peer in self._runtime_refused:
                    return
                self._runtime_refused.add(peer)
                peer.send_event_bytes(encode(RuntimeResync(notebook_id=self.notebook_id)))
                raise InvalidRequest(
                    "the runtime document is written only by the daemon; your replica was "
                    "refused: drop it and resync (RuntimeResync)"
                )
            self._runtime_refused.discard(peer)
        peer.mark_dirty(self.notebook_id, doc)

    @staticmethod
    def _apply(target: NotebookDoc, state: SyncState, message: Message) -> None:
        try:
            target.doc.receive_sync_message(state, message)
        except Exception as exc:
            raise ProtocolError(f"invalid Automerge sync message: {exc}") from exc

    def notebook_changed(self, *, exclude: Peer | None = None) -> None:
        """The notebook document changed (a peer's sync or a daemon edit): relay and wake."""
        self.dirty_since_save = True
        for other in list(self._sync):
            if other is not exclude:
                other.mark_dirty(self.notebook_id, "notebook")
        self._changed.set()
        self._changed = anyio.Event()
        if self._on_notebook_change is not None:
            self._on_notebook_change(self)

    def runtime_changed(self) -> None:
        """The daemon wrote the runtime document: schedule a sync to every peer."""
        for peer in list(self._sync):
            peer.mark_dirty(self.notebook_id, "runtime")
        if self._on_runtime_change is not None:
            self._on_runtime_change(self)

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
