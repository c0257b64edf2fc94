"""Who is viewing which notebook, which cell each viewer is in, and where their cursor is.

Ephemeral by design (the "presence" row of the architecture): held in the web server's
memory, never written to the notebook or runtime document, gone when the viewer's WebSocket
closes. Each change wakes every viewer of that notebook, whose session then sends the whole
(small) list; a burst of cursor moves coalesces into one message per wake-up.

Browsers report their place; clients on the daemon's socket (the Python client, ``runt``)
are listed too, as ``kind="client"`` entries without a place: the daemon knows they are
joined to the notebook, not what they look at. Cursor offsets (``anchor``, ``head``) count
code points of the cell's source, as the documents do (the page converts from UTF-16).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import anyio
import msgspec

__all__ = ["PresenceRegistry", "Viewer", "ViewerInfo"]

_COLOURS = ("#d9480f", "#1971c2", "#2f9e44", "#9c36b5", "#e8590c", "#0c8599", "#c2255c")
_CLIENT_COLOUR = "#5c6370"
MAX_NAME = 40
MAX_OFFSET = 1 << 30
MAX_HEADS = 32
_HEX = frozenset("0123456789abcdef")


class ViewerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One viewer as the page sees it (JSON on the WebSocket: ``{"type": "presence", ...}``)."""

    viewer_id: str
    name: str
    colour: str
    cell_id: str | None = None
    editing: bool = False
    kind: Literal["browser", "client"] = "browser"
    anchor: int | None = None
    head: int | None = None
    heads: list[str] | None = None  # the notebook heads the cursor was placed in


@dataclass(eq=False)
class Viewer:
    viewer_id: str
    notebook_id: str
    name: str
    colour: str
    cell_id: str | None = None
    editing: bool = False
    anchor: int | None = None
    head: int | None = None
    heads: list[str] | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)

    def info(self) -> ViewerInfo:
        return ViewerInfo(
            viewer_id=self.viewer_id,
            name=self.name,
            colour=self.colour,
            cell_id=self.cell_id,
            editing=self.editing,
            anchor=self.anchor,
            head=self.head,
            heads=self.heads,
        )


def _offset(value: int | None) -> int | None:
    return value if value is not None and 0 <= value <= MAX_OFFSET else None


def _heads(value: list[str] | None) -> list[str] | None:
    """Change hashes (64 hex digits each), a few at most; anything else is dropped."""
    if not value or len(value) > MAX_HEADS:
        return None
    if all(len(h) == 64 and set(h) <= _HEX for h in value):
        return list(value)
    return None


class PresenceRegistry:
    def __init__(self) -> None:
        self._viewers: dict[str, dict[str, Viewer]] = {}
        self._clients: dict[str, int] = {}
        self._ids = itertools.count(1)

    def join(self, notebook_id: str) -> Viewer:
        n = next(self._ids)
        viewer = Viewer(
            viewer_id=f"v{n}",
            notebook_id=notebook_id,
            name=f"Viewer {n}",
            colour=_COLOURS[n % len(_COLOURS)],
        )
        self._viewers.setdefault(notebook_id, {})[viewer.viewer_id] = viewer
        self._notify(notebook_id)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        room = self._viewers.get(viewer.notebook_id, {})
        room.pop(viewer.viewer_id, None)
        if not room:
            self._viewers.pop(viewer.notebook_id, None)
            self._clients.pop(viewer.notebook_id, None)
        self._notify(viewer.notebook_id)

    def update(
        self,
        viewer: Viewer,
        *,
        cell_id: str | None,
        editing: bool,
        name: str | None,
        anchor: int | None = None,
        head: int | None = None,
        heads: list[str] | None = None,
    ) -> None:
        viewer.cell_id = cell_id[:64] if cell_id else None
        viewer.editing = editing
        viewer.anchor, viewer.head = _offset(anchor), _offset(head)
        viewer.heads = _heads(heads)
        if viewer.anchor is None or viewer.head is None or viewer.cell_id is None:
            viewer.anchor = viewer.head = viewer.heads = None
        if name:
            viewer.name = name.strip()[:MAX_NAME] or viewer.name
        self._notify(viewer.notebook_id)

    def watched(self) -> list[str]:
        """The notebooks someone views in a browser."""
        return list(self._viewers)

    def browsers(self, notebook_id: str) -> int:
        return len(self._viewers.get(notebook_id, {}))

    def set_clients(self, notebook_id: str, count: int) -> None:
        """How many socket clients (not pages) are joined to a watched notebook."""
        count = max(0, count)
        if notebook_id in self._viewers and self._clients.get(notebook_id, 0) != count:
            self._clients[notebook_id] = count
            self._notify(notebook_id)

    def viewers(self, notebook_id: str) -> list[ViewerInfo]:
        browsers = [v.info() for v in self._viewers.get(notebook_id, {}).values()]
        clients = [
            ViewerInfo(
                viewer_id=f"client{i}",
                name="socket client" if i == 1 else f"socket client {i}",
                colour=_CLIENT_COLOUR,
                kind="client",
            )
            for i in range(1, self._clients.get(notebook_id, 0) + 1)
        ]
        return browsers + clients

    def _notify(self, notebook_id: str) -> None:
        for viewer in self._viewers.get(notebook_id, {}).values():
            viewer.changed.set()
