"""What the tools show of a notebook: outlines, cell states, executions, checks by cell id."""

from __future__ import annotations

from typing import Any

from blobstore import BlobError
from protocol.states import ExecutionStatus
from runtimed.client import AsyncNotebook
from runtimed.documents.runtime import FINISHED
from runtimed.mcp.outputs import Image, render_outputs
from runtimed.mcp.results import ToolError, ToolResult
from runtimed.mcp.session import AgentSession

__all__ = [
    "busy_cells",
    "cell_state",
    "check_source",
    "execution_view",
    "first_line",
    "index_for",
    "label",
    "ok_result",
    "outline",
    "output_summary",
    "rendered_outputs",
    "require_cell",
    "version_of",
]


def version_of(nb: AsyncNotebook) -> str:
    return nb.version


def label(nb: AsyncNotebook) -> str:
    return str(nb.path) if nb.path else f"untitled notebook {nb.id}"


def check_source(session: AgentSession, source: str, what: str) -> None:
    limit = session.limits.max_source_chars
    if len(source) > limit:
        raise ToolError(
            f"{what}: the source is {len(source)} characters; the limit is {limit} "
            "(put large data in a file and read it from the cell)"
        )


def require_cell(nb: AsyncNotebook, cell_id: str) -> None:
    if cell_id not in nb.cell_ids():
        raise ToolError(f"cell {cell_id!r} is not in {label(nb)} (get_notebook lists the cell ids)")


def index_for(nb: AsyncNotebook, args: dict[str, Any], *, moving: str | None = None) -> int:
    """Target index from ``after_cell_id`` / ``position`` (default: the end)."""
    if "after_cell_id" in args and "position" in args:
        raise ToolError("give either after_cell_id or position, not both")
    ids = [c for c in nb.cell_ids() if c != moving]
    after = args.get("after_cell_id")
    if after is not None:
        if after == moving:
            raise ToolError(f"cannot place cell {after!r} after itself")
        require_cell(nb, after)
        return ids.index(after) + 1
    return 0 if args.get("position") == "start" else len(ids)


def first_line(source: str, limit: int = 80) -> str:
    line = source.split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def busy_cells(nb: AsyncNotebook) -> tuple[set[str], str | None]:
    """(cells with a queued execution, the cell running now), read once per reply."""
    runtime = nb.runtime
    if not runtime.ready:
        return set(), None
    queued = {str((runtime.execution(e) or {}).get("cell_id")) for e in runtime.queue()}
    running = runtime.running()
    running_cell = (runtime.execution(running) or {}).get("cell_id") if running else None
    return queued, str(running_cell) if running_cell else None


def cell_state(
    nb: AsyncNotebook, cell_id: str, busy: tuple[set[str], str | None] | None = None
) -> str:
    """idle, queued, running, or the status of the execution whose outputs it shows."""
    queued, running = busy if busy is not None else busy_cells(nb)
    if cell_id == running:
        return ExecutionStatus.RUNNING
    if cell_id in queued:
        return ExecutionStatus.QUEUED
    execution_id = nb.runtime.cell_execution_id(cell_id) if nb.runtime.ready else None
    if execution_id is not None:
        return nb.runtime.execution_status(execution_id) or "idle"
    return "idle"


def output_summary(manifests: list[dict[str, Any]]) -> str:
    if not manifests:
        return ""
    kinds: dict[str, int] = {}
    for m in manifests:
        kind = str(m.get("output_type", "?"))
        if kind == "error":
            return f"error: {m.get('ename', '')}: {m.get('evalue', '')}"[:120]
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items())


def outline(nb: AsyncNotebook) -> dict[str, Any]:
    cells = []
    busy = busy_cells(nb)
    for index, cell in enumerate(nb.cells()):
        entry: dict[str, Any] = {
            "cell_id": cell.id,
            "index": index,
            "cell_type": cell.cell_type,
            "first_line": first_line(cell.source),
            "lines": cell.source.count("\n") + 1 if cell.source else 0,
        }
        if cell.cell_type == "code":
            count, manifests = nb.runtime.cell_state(cell.id) if nb.runtime.ready else (None, [])
            entry["execution_count"] = count
            entry["state"] = cell_state(nb, cell.id, busy)
            entry["outputs"] = output_summary(manifests)
        cells.append(entry)
    kernel = nb.runtime.kernel() if nb.runtime.ready else {}
    return {
        "notebook_id": nb.id,
        "path": str(nb.path) if nb.path else None,
        "version": version_of(nb),
        "kernel": {"state": kernel.get("state"), "name": kernel.get("name")},
        "cells": cells,
    }


def rendered_outputs(session: AgentSession, nb: AsyncNotebook, cell_id: str) -> ToolResult:
    _, manifests = nb.runtime.cell_state(cell_id) if nb.runtime.ready else (None, [])
    client = session.current_client
    try:
        rendered = render_outputs(
            manifests, client.resolve_output, limits=session.limits, blob_url=session.blob_url
        )
    except (BlobError, OSError, ValueError) as exc:  # a missing/corrupt blob: say which cell
        raise ToolError(f"cell {cell_id!r}: its outputs could not be read: {exc}") from exc
    return ToolResult(data={"outputs": rendered.outputs}, images=rendered.images)


def execution_view(session: AgentSession, nb: AsyncNotebook, execution_id: str) -> ToolResult:
    record = nb.runtime.execution(execution_id) if nb.runtime.ready else None
    if record is None:
        raise ToolError(
            f"execution {execution_id!r} is not known in {label(nb)} (it may be from before a "
            "daemon restart, or long finished and forgotten)"
        )
    cell_id = str(record.get("cell_id", ""))
    status = str(record.get("status"))
    data: dict[str, Any] = {
        "execution_id": execution_id,
        "cell_id": cell_id,
        "status": status,
        "finished": status in FINISHED,
        "execution_count": record.get("execution_count"),
    }
    if record.get("ename"):
        data["ename"] = record.get("ename")
        data["evalue"] = record.get("evalue")
    images: list[Image] = []
    if nb.runtime.cell_execution_id(cell_id) == execution_id:
        rendered = rendered_outputs(session, nb, cell_id)
        data["outputs"] = rendered.data["outputs"]
        images = rendered.images
    else:
        data["outputs"] = []
        if status in FINISHED:
            data["note"] = "the cell has run again since; its outputs are from a later execution"
    pending = session.pending_inputs.get(execution_id)
    if pending is not None and status not in FINISHED:
        data["input_requested"] = {"prompt": pending.prompt, "password": pending.password}
        data["hint"] = "answer with answer_input"
    data["version"] = version_of(nb)
    return ToolResult(data=data, images=images)


def ok_result(nb: AsyncNotebook, **fields: Any) -> ToolResult:
    return ToolResult(data={**fields, "version": version_of(nb)})
