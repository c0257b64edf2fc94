"""The agent tool set: plain async functions over :class:`runtimed.client.AsyncClient`.

Each tool has a name, a one-line description that tells an agent when to use it, and a JSON
schema for its arguments; :func:`call_tool` validates the arguments (unknown ones are an
error), runs the tool against an :class:`~runtimed.mcp.session.AgentSession` and returns a
:class:`ToolResult` — or raises :class:`ToolError` with a message naming the notebook or
cell, never a traceback. The MCP server (:mod:`runtimed.mcp.server`) and ``runt nb call``
both go through :func:`call_tool`, so scripts use exactly what agents use.

Cells are always addressed by id, never by index; every reply that reads a notebook carries
its ``version`` (see ``changes_since``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from blobstore import BlobError
from runtimed.client import AsyncNotebook
from runtimed.documents.history import max_seq, parse_version
from runtimed.documents.runtime import FINISHED
from runtimed.errors import ConnectionClosed, DaemonNotRunning, RuntimedError
from runtimed.mcp.outputs import Image, render_outputs
from runtimed.mcp.session import AgentSession, SessionError

__all__ = ["TOOLS", "Tool", "ToolError", "ToolResult", "call_tool", "tool_names"]

log = logging.getLogger(__name__)

VERSION_WAIT = 10.0  # s: changes_since(to=...) waits this long for a version to arrive


class ToolError(Exception):
    """A tool call failed; ``str(error)`` is the message for the agent."""


@dataclass(slots=True)
class ToolResult:
    data: dict[str, Any]
    images: list[Image] = field(default_factory=list)


Handler = Callable[[AgentSession, dict[str, Any]], Awaitable[ToolResult]]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    schema: dict[str, Any]
    handler: Handler


# ---------------------------------------------------------------- schemas

NOTEBOOK = {"type": "string", "description": "notebook path or notebook id"}
CELL_ID = {"type": "string", "description": "cell id (from get_notebook)"}
SOURCE = {"type": "string", "description": "cell source"}
TIMEOUT = {
    "type": "number",
    "exclusiveMinimum": 0,
    "description": "seconds to wait before returning what there is so far",
}
CELL_TYPE = {"type": "string", "enum": ["code", "markdown", "raw"]}
WHERE = {
    "after_cell_id": {"type": "string", "description": "place it after this cell"},
    "position": {"type": "string", "enum": ["start", "end"], "description": "or at the start/end"},
}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "object": dict,
    "array": list,
}


def validate(tool: Tool, args: dict[str, Any]) -> None:
    """Check ``args`` against the tool's schema (the subset the tools use).

    Raises:
        ToolError: unknown or missing arguments, wrong types, values out of range.
    """
    if not isinstance(args, dict):
        raise ToolError(f"{tool.name}: arguments must be a JSON object")
    props: dict[str, Any] = tool.schema["properties"]
    unknown = sorted(set(args) - set(props))
    if unknown:
        raise ToolError(
            f"{tool.name}: unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(props) or 'no arguments'}"
        )
    missing = [name for name in tool.schema["required"] if name not in args]
    if missing:
        raise ToolError(f"{tool.name}: missing required argument(s) {', '.join(missing)}")
    for name, value in args.items():
        spec = props[name]
        kinds = spec.get("type")
        if value is None and not spec.get("nullable"):
            raise ToolError(f"{tool.name}: argument {name!r} must not be null")
        if value is None:
            continue
        expected = _TYPES.get(kinds) if isinstance(kinds, str) else None
        bad_bool = isinstance(value, bool) and kinds in ("number", "integer")
        if expected is not None and (not isinstance(value, expected) or bad_bool):
            raise ToolError(f"{tool.name}: argument {name!r} must be a {kinds}")
        if "enum" in spec and value not in spec["enum"]:
            raise ToolError(f"{tool.name}: argument {name!r} must be one of {spec['enum']}")
        if "exclusiveMinimum" in spec and value <= spec["exclusiveMinimum"]:
            raise ToolError(
                f"{tool.name}: argument {name!r} must be greater than {spec['exclusiveMinimum']}"
                f" (got {value})"
            )
        if "minimum" in spec and value < spec["minimum"]:
            raise ToolError(f"{tool.name}: argument {name!r} must be at least {spec['minimum']}")


# ---------------------------------------------------------------- helpers


def _version(nb: AsyncNotebook) -> str:
    return nb.version


def _label(nb: AsyncNotebook) -> str:
    return str(nb.path) if nb.path else f"untitled notebook {nb.id}"


def _check_source(session: AgentSession, source: str, what: str) -> None:
    limit = session.limits.max_source_chars
    if len(source) > limit:
        raise ToolError(
            f"{what}: the source is {len(source)} characters; the limit is {limit} "
            "(put large data in a file and read it from the cell)"
        )


def _cell(nb: AsyncNotebook, cell_id: str) -> None:
    if cell_id not in nb.cell_ids():
        raise ToolError(
            f"cell {cell_id!r} is not in {_label(nb)} (get_notebook lists the cell ids)"
        )


def _index_for(nb: AsyncNotebook, args: dict[str, Any], *, moving: str | None = None) -> int:
    """Target index from ``after_cell_id`` / ``position`` (default: the end)."""
    if "after_cell_id" in args and "position" in args:
        raise ToolError("give either after_cell_id or position, not both")
    ids = [c for c in nb.cell_ids() if c != moving]
    after = args.get("after_cell_id")
    if after is not None:
        if after == moving:
            raise ToolError(f"cannot place cell {after!r} after itself")
        _cell(nb, after)
        return ids.index(after) + 1
    return 0 if args.get("position") == "start" else len(ids)


def first_line(source: str, limit: int = 80) -> str:
    line = source.split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _busy_cells(nb: AsyncNotebook) -> tuple[set[str], str | None]:
    """(cells with a queued execution, the cell running now), read once per reply."""
    runtime = nb.runtime
    if not runtime.ready:
        return set(), None
    queued = {str((runtime.execution(e) or {}).get("cell_id")) for e in runtime.queue()}
    running = runtime.running()
    running_cell = (runtime.execution(running) or {}).get("cell_id") if running else None
    return queued, str(running_cell) if running_cell else None


def _cell_state(
    nb: AsyncNotebook, cell_id: str, busy: tuple[set[str], str | None] | None = None
) -> str:
    """idle, queued, running, or the status of the execution whose outputs it shows."""
    queued, running = busy if busy is not None else _busy_cells(nb)
    if cell_id == running:
        return "running"
    if cell_id in queued:
        return "queued"
    execution_id = nb.runtime.cell_execution_id(cell_id) if nb.runtime.ready else None
    if execution_id is not None:
        return nb.runtime.execution_status(execution_id) or "idle"
    return "idle"


def _output_summary(manifests: list[dict[str, Any]]) -> str:
    if not manifests:
        return ""
    kinds: dict[str, int] = {}
    for m in manifests:
        kind = str(m.get("output_type", "?"))
        if kind == "error":
            return f"error: {m.get('ename', '')}: {m.get('evalue', '')}"[:120]
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items())


def _outline(nb: AsyncNotebook) -> dict[str, Any]:
    cells = []
    busy = _busy_cells(nb)
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
            entry["state"] = _cell_state(nb, cell.id, busy)
            entry["outputs"] = _output_summary(manifests)
        cells.append(entry)
    kernel = nb.runtime.kernel() if nb.runtime.ready else {}
    return {
        "notebook_id": nb.id,
        "path": str(nb.path) if nb.path else None,
        "version": _version(nb),
        "kernel": {"state": kernel.get("state"), "name": kernel.get("name")},
        "cells": cells,
    }


def _rendered(session: AgentSession, nb: AsyncNotebook, cell_id: str) -> ToolResult:
    _, manifests = nb.runtime.cell_state(cell_id) if nb.runtime.ready else (None, [])
    client = session.current_client
    try:
        rendered = render_outputs(
            manifests, client.resolve_output, limits=session.limits, blob_url=session.blob_url
        )
    except (BlobError, OSError, ValueError) as exc:  # a missing/corrupt blob: say which cell
        raise ToolError(f"cell {cell_id!r}: its outputs could not be read: {exc}") from exc
    return ToolResult(data={"outputs": rendered.outputs}, images=rendered.images)


def _execution_view(session: AgentSession, nb: AsyncNotebook, execution_id: str) -> ToolResult:
    record = nb.runtime.execution(execution_id) if nb.runtime.ready else None
    if record is None:
        raise ToolError(
            f"execution {execution_id!r} is not known in {_label(nb)} (it may be from before a "
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
        rendered = _rendered(session, nb, cell_id)
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
    data["version"] = _version(nb)
    return ToolResult(data=data, images=images)


def _ok(nb: AsyncNotebook, **fields: Any) -> ToolResult:
    return ToolResult(data={**fields, "version": _version(nb)})


# ---------------------------------------------------------------- notebooks


async def list_notebooks(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    client = await session.client()
    mine = {nb.id for nb in session.notebooks.values()}
    infos = await client.list_notebooks()
    open_ = [
        {
            "notebook_id": i.notebook_id,
            "path": i.path,
            "cells": i.cells,
            "kernel": i.kernel.state if i.kernel else None,
            "open_in_this_session": i.notebook_id in mine,
        }
        for i in infos
    ]
    home = session.status.home if session.status is not None else None
    open_paths = {i.path for i in infos if i.path}
    recent = await anyio.to_thread.run_sync(_recent_files, home, open_paths) if home else []
    return ToolResult(data={"open": open_, "recent": recent})


def _recent_files(home: str, open_paths: set[str]) -> list[str]:
    """Files the daemon has kept documents for, most recent first (its DocumentStore's
    ``<key>.json`` records). Blocking: run in a worker thread."""
    import json

    root = Path(home) / "documents"
    found: list[tuple[float, str]] = []
    try:
        records = list(root.glob("*.json"))
    except OSError:
        return []
    for record in records:
        if record.name.endswith(".runtime.json"):
            continue
        try:
            path = json.loads(record.read_text()).get("path")
            mtime = record.stat().st_mtime
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(path, str) and path not in open_paths and Path(path).exists():
            found.append((mtime, path))
    return [p for _, p in sorted(found, reverse=True)[:20]]


async def open_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.open(args["notebook"])
    return ToolResult(data=_outline(nb))


async def create_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    path = args.get("path")
    if path is not None and await (await anyio.Path(path).expanduser()).exists():
        raise ToolError(f"{path} already exists; open it with open_notebook")
    nb = await session.create(path, args.get("kernel"))
    return ToolResult(data=_outline(nb))


async def save_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    saved = await nb.save(args.get("path"))
    return _ok(nb, path=str(saved))


async def close_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    label = _label(nb)
    await session.close(nb)
    return ToolResult(data={"closed": label})


# ---------------------------------------------------------------- cells


async def get_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    return ToolResult(data=_outline(await session.notebook(args["notebook"])))


async def get_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id = args["cell_id"]
    _cell(nb, cell_id)
    cell = nb.cell(cell_id)
    data: dict[str, Any] = {
        "cell_id": cell.id,
        "index": nb.cell_ids().index(cell.id),
        "cell_type": cell.cell_type,
        "source": cell.source,
        "metadata": cell.metadata,
    }
    images: list[Image] = []
    if cell.cell_type == "code":
        data["execution_count"] = nb.execution_count(cell_id) if nb.runtime.ready else None
        data["state"] = _cell_state(nb, cell_id)
        rendered = _rendered(session, nb, cell_id)
        data["outputs"] = rendered.data["outputs"]
        images = rendered.images
    data["version"] = _version(nb)
    return ToolResult(data=data, images=images)


async def insert_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    source = args.get("source", "")
    _check_source(session, source, "insert_cell")
    index = _index_for(nb, args)
    cell_id = await nb.add_cell(args.get("cell_type", "code"), source, index=index)
    return _ok(nb, cell_id=cell_id, index=nb.cell_ids().index(cell_id))


async def replace_source(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id, source = args["cell_id"], args["source"]
    _check_source(session, source, f"cell {cell_id!r}")
    _cell(nb, cell_id)
    await nb.set_source(cell_id, source)
    return _ok(nb, cell_id=cell_id)


async def edit_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id, find, replace = args["cell_id"], args["find"], args["replace"]
    _cell(nb, cell_id)
    if not find:
        raise ToolError("edit_cell: 'find' must not be empty (use replace_source to rewrite)")
    source = nb.cell(cell_id).source
    count = source.count(find)
    if count == 0:
        raise ToolError(
            f"edit_cell: the text to find does not occur in cell {cid(cell_id)}; read it with "
            "get_cell and match it exactly (whitespace included)"
        )
    if count > 1:
        raise ToolError(
            f"edit_cell: the text to find occurs {count} times in cell {cid(cell_id)}; include "
            "more surrounding text so that it matches exactly once"
        )
    at = source.index(find)
    new_source = source[:at] + replace + source[at + len(find) :]
    _check_source(session, new_source, f"cell {cell_id!r}")
    # One splice of the matched span: concurrent edits elsewhere in the cell are kept.
    await nb.splice_source(cell_id, at, len(find), replace)
    return _ok(nb, cell_id=cell_id, source=nb.cell(cell_id).source)


def cid(cell_id: str) -> str:
    return repr(cell_id)


async def delete_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    _cell(nb, args["cell_id"])
    await nb.delete_cell(args["cell_id"])
    return _ok(nb, deleted=args["cell_id"])


async def move_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id = args["cell_id"]
    _cell(nb, cell_id)
    if "after_cell_id" not in args and "position" not in args:
        raise ToolError("move_cell: give after_cell_id or position ('start' or 'end')")
    await nb.move_cell(cell_id, _index_for(nb, args, moving=cell_id))
    return _ok(nb, cell_id=cell_id, index=nb.cell_ids().index(cell_id))


async def set_cell_type(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    _cell(nb, args["cell_id"])
    nb.doc.set_cell_type(args["cell_id"], args["cell_type"])
    await session.current_client.push(nb.id, "notebook")  # AsyncNotebook has no setter yet
    return _ok(nb, cell_id=args["cell_id"], cell_type=args["cell_type"])


# ---------------------------------------------------------------- execution


def _code_cell(nb: AsyncNotebook, cell_id: str) -> None:
    _cell(nb, cell_id)
    cell = nb.cell(cell_id)
    if cell.cell_type != "code":
        raise ToolError(
            f"cell {cell_id!r} is a {cell.cell_type} cell; only code cells can be executed "
            "(set_cell_type changes it)"
        )
    if not cell.source.strip():
        raise ToolError(f"cell {cell_id!r} is empty; there is nothing to execute")


async def _wait_execution(
    session: AgentSession, nb: AsyncNotebook, execution_id: str, timeout: float
) -> ToolResult:
    def settled() -> bool:
        if not nb.runtime.ready:
            return False
        if nb.runtime.execution_status(execution_id) in FINISHED:
            return True
        return execution_id in session.pending_inputs

    await session.wait(settled, timeout)
    result = _execution_view(session, nb, execution_id)
    if not result.data["finished"] and "input_requested" not in result.data:
        result.data["hint"] = (
            f"still {result.data['status']} after {timeout:g} s; collect it later with "
            "get_execution (it keeps running)"
        )
    return result


async def execute_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id = args["cell_id"]
    _code_cell(nb, cell_id)
    execution_id = await nb.queue(cell_id, allow_stdin=True)
    session.executions[execution_id] = nb.id
    return await _wait_execution(session, nb, execution_id, float(args.get("timeout", 30)))


async def get_execution(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    execution_id = args["execution_id"]
    if "notebook" in args:
        nb = await session.notebook(args["notebook"])
    else:
        notebook_id = session.executions.get(execution_id)
        if notebook_id is None or notebook_id not in session.notebooks:
            raise ToolError(
                f"execution {execution_id!r} was not started in this session; pass its notebook"
            )
        nb = session.notebooks[notebook_id]
    if "timeout" in args:
        return await _wait_execution(session, nb, execution_id, float(args["timeout"]))
    return _execution_view(session, nb, execution_id)


async def run_all(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    queued = await nb.queue_all()
    for item in queued:
        session.executions[item.execution_id] = nb.id
    ids = [q.execution_id for q in queued]

    def done() -> bool:
        if not nb.runtime.ready:
            return False
        if any(i in session.pending_inputs for i in ids):
            return True
        return all(nb.runtime.execution_status(i) in FINISHED for i in ids)

    await session.wait(done, float(args.get("timeout", 120)))
    cells = []
    for q in queued:
        record = nb.runtime.execution(q.execution_id) or {}
        entry = {
            "cell_id": q.cell_id,
            "execution_id": q.execution_id,
            "status": record.get("status"),
            "execution_count": record.get("execution_count"),
        }
        if record.get("ename"):
            entry["ename"], entry["evalue"] = record.get("ename"), record.get("evalue")
        cells.append(entry)
    finished = all(c["status"] in FINISHED for c in cells)
    data: dict[str, Any] = {"finished": finished, "executions": cells}
    failed = [c for c in cells if c["status"] in ("error", "died", "timeout")]
    if failed:
        data["failed_cell"] = failed[0]["cell_id"]
    if not finished:
        data["hint"] = "not all cells finished; collect them with get_execution"
    data["version"] = _version(nb)
    return ToolResult(data=data)


async def interrupt_kernel(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    await nb.interrupt()
    return _ok(nb, interrupted=_label(nb))


async def restart_kernel(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    await nb.restart()
    return _ok(nb, restarted=_label(nb))


async def answer_input(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    execution_id = args["execution_id"]
    if execution_id not in session.pending_inputs:
        raise ToolError(
            f"execution {execution_id!r} is not waiting for input (get_execution shows "
            "input_requested when it is)"
        )
    await nb.answer_input(execution_id, args["value"])
    session.pending_inputs.pop(execution_id, None)
    return await _wait_execution(session, nb, execution_id, float(args.get("timeout", 30)))


# ---------------------------------------------------------------- automation


async def _file_of(session: AgentSession, ref: str) -> Path:
    for nb in session.notebooks.values():
        if nb.id == ref and nb.path is not None:
            return nb.path
    path = await anyio.Path(ref).expanduser()
    if not await path.exists():
        raise ToolError(f"notebook file {ref!r} does not exist")
    return Path(path)


async def run_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    from runtimed.automation.run import execute_notebook_async

    source = await _file_of(session, args["notebook"])
    output = args.get("output_path") or str(source.with_name(source.stem + ".output.ipynb"))
    from runtimed.automation.parameters import ParameterError

    client = await session.client()
    try:
        result = await execute_notebook_async(
            source,
            output,
            args.get("parameters") or {},
            kernel_name=args.get("kernel"),
            cwd=str(source.parent),
            execution_timeout=args.get("timeout"),
            progress_bar=False,
            client=client,
        )
    except ParameterError as exc:
        raise ToolError(f"run_notebook ({source}): {exc}") from exc
    failed = result.failed_cell
    data: dict[str, Any] = {
        "status": result.status,
        "output_path": result.output_path,
        "cells_executed": result.cells_executed,
        "duration": round(result.duration, 3),
        "scraps": result.scraps,
        "parameters": result.parameters,
        "failed_cell": None,
    }
    if failed is not None:
        from runtimed.mcp.outputs import strip_ansi, truncate

        data["failed_cell"] = {
            "cell_id": failed.cell_id,
            "index": failed.index,
            "status": failed.status,
            "ename": failed.ename,
            "evalue": failed.evalue,
            "traceback": truncate(strip_ansi("\n".join(failed.traceback)), 4000)[0],
        }
    return ToolResult(data=data)


async def _read_file(path: Path) -> dict[str, Any]:
    from runtimed.storage.ipynb import read_notebook

    return await anyio.to_thread.run_sync(read_notebook, path)


async def inspect_parameters(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    from runtimed.automation.inspect import inspect_parameters as infer

    nb = await _read_file(await _file_of(session, args["notebook"]))
    params = [
        {"name": p.name, "type": p.inferred_type_name, "default": p.default, "help": p.help}
        for p in infer(nb)
    ]
    return ToolResult(data={"parameters": params})


async def read_scraps(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    from runtimed.glue import read_scraps as scraps_of

    nb = await _read_file(await _file_of(session, args["notebook"]))
    return ToolResult(data={"scraps": scraps_of(nb)})


# ---------------------------------------------------------------- review


async def changes_since(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    to = args.get("to")
    if to is not None:
        # A version another client reported may not have reached this replica yet: wait for
        # it (bounded) rather than diff against less than was asked for.
        heads, seq = parse_version(to)

        def arrived() -> bool:
            return nb.doc.has_heads(heads) and max_seq(nb.runtime) >= seq

        if not await session.wait(arrived, VERSION_WAIT):
            raise ToolError(
                f"version {to!r} has not reached this session within {VERSION_WAIT:g} s; it may "
                f"belong to another notebook than {_label(nb)}"
            )
    diff = nb.changes_since(args["version"], to)
    data = diff.to_json()
    data.pop("jep8")  # agents get the readable form; `runt diff --json` has JEP 8 too
    data["version"] = diff.to
    return ToolResult(data=data)


# ---------------------------------------------------------------- the table


def _tool(
    name: str, description: str, props: dict[str, Any], required: list[str], h: Handler
) -> Tool:
    return Tool(name, description, _schema(props, required), h)


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in [
        _tool("list_notebooks", "List notebooks open in the daemon and recently used files; "
              "start here to find a notebook.", {}, [], list_notebooks),
        _tool("open_notebook", "Open an .ipynb by path to read, edit or run it; returns its "
              "outline and version.", {"notebook": NOTEBOOK}, ["notebook"], open_notebook),
        _tool("create_notebook", "Create a new notebook (at path, with a kernel or runtime "
              "name); returns its outline.",
              {"path": {"type": "string"}, "kernel": {"type": "string"}}, [], create_notebook),
        _tool("save_notebook", "Write the notebook to its .ipynb (or to path) so people and "
              "tools see your changes.", {"notebook": NOTEBOOK, "path": {"type": "string"}},
              ["notebook"], save_notebook),
        _tool("close_notebook", "Close a notebook you are done with (the daemon keeps it "
              "for others until idle).", {"notebook": NOTEBOOK}, ["notebook"], close_notebook),
        _tool("get_notebook", "Read the notebook as an outline: cell ids, types, first lines, "
              "execution state and output summary.", {"notebook": NOTEBOOK}, ["notebook"],
              get_notebook),
        _tool("get_cell", "Read one cell in full: source, metadata and bounded outputs.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID}, ["notebook", "cell_id"], get_cell),
        _tool("insert_cell", "Insert a new cell after a given cell id (or at the start/end); "
              "returns its id.",
              {"notebook": NOTEBOOK, "source": SOURCE, "cell_type": CELL_TYPE, **WHERE},
              ["notebook"], insert_cell),
        _tool("replace_source", "Replace a cell's whole source; for a small change prefer "
              "edit_cell.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "source": SOURCE},
              ["notebook", "cell_id", "source"], replace_source),
        _tool("edit_cell", "Edit a cell by search-and-replace: 'find' must occur exactly once "
              "in the cell's source.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "find": {"type": "string"},
               "replace": {"type": "string"}}, ["notebook", "cell_id", "find", "replace"],
              edit_cell),
        _tool("delete_cell", "Delete a cell by id (get_notebook lists the ids).",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID}, ["notebook", "cell_id"], delete_cell),
        _tool("move_cell", "Move a cell after another cell id, or to the start/end.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, **WHERE}, ["notebook", "cell_id"],
              move_cell),
        _tool("set_cell_type", "Change a cell's type (code, markdown, raw), e.g. to make a note "
              "runnable.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "cell_type": CELL_TYPE},
              ["notebook", "cell_id", "cell_type"], set_cell_type),
        _tool("execute_cell", "Run a code cell and wait up to timeout seconds; if it is still "
              "running you get its execution id and outputs so far.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "timeout": TIMEOUT},
              ["notebook", "cell_id"], execute_cell),
        _tool("get_execution", "Get an execution's status and outputs by id (optionally "
              "waiting up to timeout seconds).",
              {"notebook": NOTEBOOK, "execution_id": {"type": "string"}, "timeout": TIMEOUT},
              ["execution_id"], get_execution),
        _tool("run_all", "Run every code cell in order and wait up to timeout seconds; "
              "reports each cell's status.", {"notebook": NOTEBOOK, "timeout": TIMEOUT},
              ["notebook"], run_all),
        _tool("interrupt_kernel", "Interrupt the running cell (KeyboardInterrupt in the "
              "kernel).", {"notebook": NOTEBOOK}, ["notebook"], interrupt_kernel),
        _tool("restart_kernel", "Restart the kernel when it is stuck or state is stale: all "
              "variables are lost.",
              {"notebook": NOTEBOOK}, ["notebook"], restart_kernel),
        _tool("answer_input", "Answer a cell's input() prompt (get_execution shows "
              "input_requested), then wait for it.",
              {"notebook": NOTEBOOK, "execution_id": {"type": "string"},
               "value": {"type": "string"}, "timeout": TIMEOUT},
              ["notebook", "execution_id", "value"], answer_input),
        _tool("run_notebook", "Run a notebook file with parameters (papermill-compatible); "
              "returns status, failed cell, recorded scraps and the output path.",
              {"notebook": NOTEBOOK, "parameters": {"type": "object"},
               "output_path": {"type": "string"}, "kernel": {"type": "string"},
               "timeout": {**TIMEOUT, "description": "seconds each cell may run"}},
              ["notebook"], run_notebook),
        _tool("inspect_parameters", "List a notebook file's parameters (its 'parameters' "
              "cell) with types and defaults.", {"notebook": NOTEBOOK}, ["notebook"],
              inspect_parameters),
        _tool("read_scraps", "Read the values a notebook file recorded with glue() (e.g. the "
              "output of run_notebook).", {"notebook": NOTEBOOK}, ["notebook"], read_scraps),
        _tool("changes_since", "What changed since a version you saw (cells added, deleted, "
              "moved, edited, who did it, what ran); use before reviewing or resuming.",
              {"notebook": NOTEBOOK, "version": {"type": "string"}, "to": {"type": "string"}},
              ["notebook", "version"], changes_since),
    ]
}  # fmt: skip


def tool_names() -> list[str]:
    return list(TOOLS)


async def call_tool(session: AgentSession, name: str, args: dict[str, Any] | None) -> ToolResult:
    """Validate and run one tool.

    Raises:
        ToolError: the call failed (the message is for the agent).
    """
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(TOOLS)}")
    try:
        result = await _run(session, tool, {} if args is None else args)
    except ToolError as exc:
        notices = session.take_notices()
        if notices:
            raise ToolError(" ".join([*notices, str(exc)])) from exc
        raise
    notices = session.take_notices()
    if notices:
        result.data = {"notice": " ".join(notices), **result.data}
    return result


async def _run(session: AgentSession, tool: Tool, args: dict[str, Any]) -> ToolResult:
    name = tool.name
    validate(tool, args)
    try:
        return await tool.handler(session, args)
    except ToolError:
        raise
    except SessionError as exc:
        raise ToolError(f"{name}: {exc}") from exc
    except DaemonNotRunning as exc:
        raise ToolError(
            f"{name}: no daemon answers ({exc}); start one with 'runt daemon start', or run "
            "'runt mcp' without --no-autostart"
        ) from exc
    except ConnectionClosed as exc:
        raise ToolError(
            f"{name}: the connection to the daemon was lost during the call ({exc}); the next "
            "call reconnects — check with get_notebook whether this change landed"
        ) from exc
    except RuntimedError as exc:
        where = f" ({args['notebook']})" if "notebook" in args else ""
        raise ToolError(f"{name}{where}: {exc}") from exc
    except TimeoutError as exc:
        raise ToolError(f"{name}: timed out waiting for the daemon") from exc
    except Exception as exc:
        # A bug: logged with its traceback (stderr), reported to the agent without one.
        log.exception("tool %s failed", name)
        raise ToolError(f"{name}: internal error ({type(exc).__name__}: {exc})") from exc
