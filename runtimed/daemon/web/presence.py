"""Who is viewing which notebook, and which cell each viewer is in.

Ephemeral by design (the "presence" row of the architecture): held in the web server's
memory, never written to the notebook or runtime document, gone when the viewer's WebSocket
closes. Each change wakes every viewer of that notebook, whose session then sends the whole
(small) list; a burst of cursor moves coalesces into one message per wake-up.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import anyio
import msgspec

__all__ = ["PresenceRegistry", "Viewer", "ViewerInfo"]

_COLOURS = ("#d9480f", "#1971c2", "#2f9e44", "#9c36b5", "#e8590c", "#0c8599", "#c2255c")
MAX_NAME = 40


class ViewerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One viewer as the page sees it (JSON on the WebSocket: ``{"type": "presence", ...}``)."""

    viewer_id: str
    name: str
    colour: str
    cell_id: str | None = None
    editing: bool = False


@dataclass(eq=False)
class Viewer:
    viewer_id: str
    notebook_id: str
    name: str
    colour: str
    cell_id: str | None = None
    editing: bool = False
    changed: anyio.Event = field(default_factory=anyio.Event)

    def info(self) -> ViewerInfo:
        return ViewerInfo(
            viewer_id=self.viewer_id,
            name=self.name,
            colour=self.colour,
            cell_id=self.cell_id,
            editing=self.editing,
        )


class PresenceRegistry:
    def __init__(self) -> None:
        self._viewers: dict[str, dict[str, Viewer]] = {}
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
        self._notify(viewer.notebook_id)

    def update(
        self, viewer: Viewer, *, cell_id: str | None, editing: bool, name: str | None
    ) -> None:
        viewer.cell_id = cell_id[:64] if cell_id else None
        viewer.editing = editing
        if name:
            viewer.name = name.strip()[:MAX_NAME] or viewer.name
        self._notify(viewer.notebook_id)

    def viewers(self, notebook_id: str) -> list[ViewerInfo]:
        return [v.info() for v in self._viewers.get(notebook_id, {}).values()]

    def _notify(self, notebook_id: str) -> None:
        for viewer in self._viewers.get(notebook_id, {}).values():
            viewer.changed.set()
