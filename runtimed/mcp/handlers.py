"""The tools' implementations: one async function per tool, ``(session, args) -> ToolResult``.

Arguments arrive validated against the tool's schema (:mod:`runtimed.mcp.tools`); each
function checks what the schema cannot (the cell exists, is code, the text occurs once) before
it changes anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from protocol.states import ExecutionStatus
from runtimed.client import AsyncNotebook
from runtimed.documents.history import max_seq, parse_version
from runtimed.documents.runtime import FINISHED
from runtimed.mcp.outputs import Image
from runtimed.mcp.results import ToolError, ToolResult
from runtimed.mcp.session import AgentSession
from runtimed.mcp.views import (
    cell_state,
    check_source,
    execution_view,
    index_for,
    label,
    ok_result,
    outline,
    rendered_outputs,
    require_cell,
    version_of,
)

VERSION_WAIT = 10.0  # s: changes_since(to=...) waits this long for a version to arrive

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
    return ToolResult(data=outline(nb))


async def create_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    path = args.get("path")
    if path is not None and await (await anyio.Path(path).expanduser()).exists():
        raise ToolError(f"{path} already exists; open it with open_notebook")
    nb = await session.create(path, args.get("kernel"))
    return ToolResult(data=outline(nb))


async def save_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    saved = await nb.save(args.get("path"))
    return ok_result(nb, path=str(saved))


async def close_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    name = label(nb)
    await session.close(nb)
    return ToolResult(data={"closed": name})


# ---------------------------------------------------------------- cells


async def get_notebook(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    return ToolResult(data=outline(await session.notebook(args["notebook"])))


async def get_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id = args["cell_id"]
    require_cell(nb, cell_id)
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
        data["state"] = cell_state(nb, cell_id)
        rendered = rendered_outputs(session, nb, cell_id)
        data["outputs"] = rendered.data["outputs"]
        images = rendered.images
    data["version"] = version_of(nb)
    return ToolResult(data=data, images=images)


async def insert_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    source = args.get("source", "")
    check_source(session, source, "insert_cell")
    index = index_for(nb, args)
    cell_id = await nb.add_cell(args.get("cell_type", "code"), source, index=index)
    return ok_result(nb, cell_id=cell_id, index=nb.cell_ids().index(cell_id))


async def replace_source(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id, source = args["cell_id"], args["source"]
    check_source(session, source, f"cell {cell_id!r}")
    require_cell(nb, cell_id)
    await nb.set_source(cell_id, source)
    return ok_result(nb, cell_id=cell_id)


async def edit_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id, find, replace = args["cell_id"], args["find"], args["replace"]
    require_cell(nb, cell_id)
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
    check_source(session, new_source, f"cell {cell_id!r}")
    # One splice of the matched span: concurrent edits elsewhere in the cell are kept.
    await nb.splice_source(cell_id, at, len(find), replace)
    return ok_result(nb, cell_id=cell_id, source=nb.cell(cell_id).source)


def cid(cell_id: str) -> str:
    return repr(cell_id)


async def delete_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    require_cell(nb, args["cell_id"])
    await nb.delete_cell(args["cell_id"])
    return ok_result(nb, deleted=args["cell_id"])


async def move_cell(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id = args["cell_id"]
    require_cell(nb, cell_id)
    if "after_cell_id" not in args and "position" not in args:
        raise ToolError("move_cell: give after_cell_id or position ('start' or 'end')")
    await nb.move_cell(cell_id, index_for(nb, args, moving=cell_id))
    return ok_result(nb, cell_id=cell_id, index=nb.cell_ids().index(cell_id))


async def set_cell_type(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    require_cell(nb, args["cell_id"])
    nb.doc.set_cell_type(args["cell_id"], args["cell_type"])
    await session.current_client.push(nb.id, "notebook")  # AsyncNotebook has no setter yet
    return ok_result(nb, cell_id=args["cell_id"], cell_type=args["cell_type"])


# ---------------------------------------------------------------- execution


def _code_cell(nb: AsyncNotebook, cell_id: str) -> None:
    require_cell(nb, cell_id)
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
    result = execution_view(session, nb, execution_id)
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
    return execution_view(session, nb, execution_id)


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
    failed = [
        c
        for c in cells
        if c["status"] in (ExecutionStatus.ERROR, ExecutionStatus.DIED, ExecutionStatus.TIMEOUT)
    ]
    if failed:
        data["failed_cell"] = failed[0]["cell_id"]
    if not finished:
        data["hint"] = "not all cells finished; collect them with get_execution"
    data["version"] = version_of(nb)
    return ToolResult(data=data)


async def interrupt_kernel(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    await nb.interrupt()
    return ok_result(nb, interrupted=label(nb))


async def restart_kernel(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    await nb.restart()
    return ok_result(nb, restarted=label(nb))


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
    from runtimed.client.history import CHECKPOINT_PREFIX, checkpoint_version

    nb = await session.notebook(args["notebook"])
    since, to = args["version"], args.get("to")
    # A saved checkpoint (ck:<file hash>, as `runt log` lists them) names a version too.
    if isinstance(since, str) and since.startswith(CHECKPOINT_PREFIX):
        since = await checkpoint_version(await session.client(), nb, since)
    if isinstance(to, str) and to.startswith(CHECKPOINT_PREFIX):
        to = await checkpoint_version(await session.client(), nb, to)
    if to is not None:
        # A version another client reported may not have reached this replica yet: wait for
        # it (bounded) rather than diff against less than was asked for.
        heads, seq = parse_version(to)

        def arrived() -> bool:
            return nb.doc.has_heads(heads) and max_seq(nb.runtime) >= seq

        if not await session.wait(arrived, VERSION_WAIT):
            raise ToolError(
                f"version {to!r} has not reached this session within {VERSION_WAIT:g} s; it may "
                f"belong to another notebook than {label(nb)}"
            )
    diff = nb.changes_since(since, to)
    data = diff.to_json()
    data.pop("jep8")  # agents get the readable form; `runt diff --json` has JEP 8 too
    data["version"] = diff.to
    return ToolResult(data=data)


async def complete(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    nb = await session.notebook(args["notebook"])
    cell_id = args["cell_id"]
    require_cell(nb, cell_id)
    reply = await nb.complete(cell_id, args.get("cursor"), timeout=args.get("timeout"))
    items = {item.text: item.type for item in reply.items}
    return ok_result(
        nb,
        cell_id=cell_id,
        cursor_start=reply.cursor_start,
        cursor_end=reply.cursor_end,
        matches=[{"text": m, "type": items.get(m)} for m in reply.matches[:100]],
        more=max(0, len(reply.matches) - 100),
    )


async def inspect(session: AgentSession, args: dict[str, Any]) -> ToolResult:
    from runtimed.mcp.outputs import strip_ansi, truncate

    nb = await session.notebook(args["notebook"])
    cell_id = args["cell_id"]
    require_cell(nb, cell_id)
    reply = await nb.inspect(
        cell_id,
        args.get("cursor"),
        detail_level=int(args.get("detail_level", 0)),
        timeout=args.get("timeout"),
    )
    text = reply.data.get("text/plain")
    help_text = truncate(strip_ansi(text), 8000)[0] if isinstance(text, str) else ""
    return ok_result(nb, cell_id=cell_id, found=reply.found, help=help_text)
