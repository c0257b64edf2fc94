"""Answers to the kernel service requests beside execution: ``Complete``, ``Inspect``,
``History`` — the kernel's ``complete_reply``, ``inspect_reply`` and ``history_reply``
(Jupyter messaging protocol), as typed replies.

Like ``ExecuteCell`` they never carry code: once the document has the client's ``heads`` the
source is read from it — at those heads when others' edits have arrived since, so the cursor
counts in the text the client saw.  They do not queue: they go straight to the notebook's
running kernel (never starting one), to its service subshell when it has subshells — so they
are answered while a cell runs — else to its main shell (``docs/runtimes.md``).
"""

from __future__ import annotations

import math
from typing import Any, assert_never

from protocol.messages import (
    Complete,
    CompletionItem,
    Completions,
    History,
    HistoryEntries,
    HistoryEntry,
    Inspect,
    Inspection,
)
from runtimed.config import DaemonConfig
from runtimed.daemon.connection import ClientSession
from runtimed.daemon.rooms import RoomRegistry
from runtimed.documents.boundary import automerge_errors
from runtimed.documents.notebook import NotebookDoc
from runtimed.errors import CellNotCode, InvalidRequest
from runtimed.kernels.cursor import check_cursor
from runtimed.kernels.session import KernelSession

__all__ = ["DEFAULT_TIMEOUT", "ServiceHandlers", "ServiceReply", "ServiceRequest"]

ServiceRequest = Complete | Inspect | History
ServiceReply = Completions | Inspection | HistoryEntries

DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for the kernel's answer when the request names no ``timeout``."""


class ServiceHandlers:
    """Completion, inspection and history through a notebook's running kernel."""

    def __init__(self, rooms: RoomRegistry, *, config: DaemonConfig) -> None:
        self._rooms = rooms
        self._config = config

    async def answer(self, session: ClientSession, request: ServiceRequest) -> ServiceReply:
        """The reply to one service request (a RuntimedError becomes an ErrorReply).

        Raises:
            NotebookNotFound, CellNotFound, CellNotCode, HeadsTimeout, InvalidRequest (a
            cursor outside the source, a bad timeout or ``n``), KernelNotRunning,
            KernelRequestTimeout, KernelDied (a kernel error reply gives an empty answer).
        """
        timeout = _timeout(request.timeout)
        match request:
            case Complete():
                code, cursor, kernel = await self._cell(session, request, "completion")
                content = await kernel.complete(code, cursor, timeout=timeout)
                return _completions(request, content, cursor)
            case Inspect():
                code, cursor, kernel = await self._cell(session, request, "inspection")
                content = await kernel.inspect(
                    code, cursor, detail_level=request.detail_level, timeout=timeout
                )
                return Inspection(
                    id=request.id,
                    notebook_id=request.notebook_id,
                    cell_id=request.cell_id,
                    found=bool(content.get("found")),
                    data=_json_object(content.get("data")),
                    metadata=_json_object(content.get("metadata")),
                )
            case History():
                if request.n < 0:
                    raise InvalidRequest(f"history n must be 0 or more, not {request.n}")
                entry = self._rooms.joined(session, request.notebook_id)
                kernel = self._rooms.executor(entry).running_kernel()
                content = await kernel.history(
                    pattern=request.pattern, n=request.n, unique=request.unique, timeout=timeout
                )
                return HistoryEntries(
                    id=request.id,
                    notebook_id=request.notebook_id,
                    entries=_history(content.get("history")),
                )
            case _:
                assert_never(request)

    async def _cell(
        self, session: ClientSession, request: Complete | Inspect, what: str
    ) -> tuple[str, int, KernelSession]:
        entry = self._rooms.joined(session, request.notebook_id)
        notebook = entry.room.notebook
        if request.heads:
            await entry.room.wait_for_heads(request.heads, timeout=self._config.heads_timeout)
            if set(request.heads) != set(notebook.heads_hex()):
                # Others' edits arrived since the client's heads: its cursor counts in the
                # source as it saw it, so read the cell at those heads (a read-only fork).
                notebook = _at_heads(notebook, request.heads)
        cell = notebook.cell(request.cell_id)  # CellNotFound
        if cell.cell_type != "code":
            raise CellNotCode(
                f"cell {request.cell_id!r} is a {cell.cell_type} cell; {what} works only in"
                " code cells"
            )
        cursor = check_cursor(cell.source, request.cursor, cell_id=request.cell_id)
        kernel = self._rooms.executor(entry).running_kernel()
        return cell.source, cursor, kernel


def _at_heads(notebook: NotebookDoc, heads: list[str]) -> NotebookDoc:
    with automerge_errors("reading the notebook at the request's heads"):
        return NotebookDoc(notebook.doc.fork([bytes.fromhex(h) for h in heads]))


def _timeout(value: float | None) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"timeout must be a positive number of seconds, not {value!r}")
    return value


def _completions(request: Complete, content: dict[str, Any], cursor: int) -> Completions:
    matches = content.get("matches")
    metadata = content.get("metadata")
    raw_items = metadata.get("_jupyter_types_experimental") if isinstance(metadata, dict) else None
    items = []
    for item in raw_items if isinstance(raw_items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            continue
        start, end = item.get("start"), item.get("end")
        kind, signature = item.get("type"), item.get("signature")
        items.append(
            CompletionItem(
                text=item["text"],
                start=start if isinstance(start, int) else content["cursor_start"],
                end=end if isinstance(end, int) else content["cursor_end"],
                type=kind if isinstance(kind, str) else None,
                signature=signature if isinstance(signature, str) else None,
            )
        )
    return Completions(
        id=request.id,
        notebook_id=request.notebook_id,
        cell_id=request.cell_id,
        matches=[m for m in matches if isinstance(m, str)] if isinstance(matches, list) else [],
        cursor_start=content.get("cursor_start", cursor),
        cursor_end=content.get("cursor_end", cursor),
        items=items,
    )


def _json_object(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items()}


def _history(value: object) -> list[HistoryEntry]:
    # Spec: a list of (session, line_number, input) triples (with output=False).
    entries = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, list | tuple) or len(item) < 3:
            continue
        session, line, source = item[0], item[1], item[2]
        if isinstance(session, int) and isinstance(line, int) and isinstance(source, str):
            entries.append(HistoryEntry(session=session, line=line, source=source))
    return entries
