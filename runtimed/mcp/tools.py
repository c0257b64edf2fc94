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
from dataclasses import dataclass
from typing import Any

from runtimed.errors import ConnectionClosed, DaemonNotRunning, RuntimedError
from runtimed.mcp import handlers as h
from runtimed.mcp.results import ToolError, ToolResult
from runtimed.mcp.session import AgentSession, SessionError

__all__ = ["TOOLS", "Tool", "ToolError", "ToolResult", "call_tool", "tool_names"]

log = logging.getLogger(__name__)

Handler = Callable[[AgentSession, dict[str, Any]], Awaitable[ToolResult]]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    schema: dict[str, Any]
    handler: Handler


# ---------------------------------------------------------------- schemas

VERSION = {
    "type": "string",
    "description": "a version a reply gave you (v1:...) or a saved checkpoint (ck:..., runt log)",
}
NOTEBOOK = {"type": "string", "description": "notebook path or notebook id"}
CELL_ID = {"type": "string", "description": "cell id (from get_notebook)"}
SOURCE = {"type": "string", "description": "cell source"}
TIMEOUT = {
    "type": "number",
    "exclusiveMinimum": 0,
    "description": "seconds to wait before returning what there is so far",
}
CURSOR = {
    "type": "integer",
    "minimum": 0,
    "description": "position in the cell's source, in characters (default: its end)",
}
KERNEL_WAIT = {**TIMEOUT, "description": "seconds to wait for the kernel's answer (default 10)"}
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


# ---------------------------------------------------------------- the table


def _tool(
    name: str, description: str, props: dict[str, Any], required: list[str], h: Handler
) -> Tool:
    return Tool(name, description, _schema(props, required), h)


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in [
        _tool("list_notebooks", "List notebooks open in the daemon and recently used files; "
              "start here to find a notebook.", {}, [], h.list_notebooks),
        _tool("open_notebook", "Open an .ipynb by path to read, edit or run it; returns its "
              "outline and version.", {"notebook": NOTEBOOK}, ["notebook"], h.open_notebook),
        _tool("create_notebook", "Create a new notebook (at path, with a kernel or runtime "
              "name); returns its outline.",
              {"path": {"type": "string"}, "kernel": {"type": "string"}}, [], h.create_notebook),
        _tool("save_notebook", "Write the notebook to its .ipynb (or to path) so people and "
              "tools see your changes.", {"notebook": NOTEBOOK, "path": {"type": "string"}},
              ["notebook"], h.save_notebook),
        _tool("close_notebook", "Close a notebook you are done with (the daemon keeps it "
              "for others until idle).", {"notebook": NOTEBOOK}, ["notebook"], h.close_notebook),
        _tool("get_notebook", "Read the notebook as an outline: cell ids, types, first lines, "
              "execution state and output summary.", {"notebook": NOTEBOOK}, ["notebook"],
              h.get_notebook),
        _tool("get_cell", "Read one cell in full: source, metadata and bounded outputs.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID}, ["notebook", "cell_id"], h.get_cell),
        _tool("insert_cell", "Insert a new cell after a given cell id (or at the start/end); "
              "returns its id.",
              {"notebook": NOTEBOOK, "source": SOURCE, "cell_type": CELL_TYPE, **WHERE},
              ["notebook"], h.insert_cell),
        _tool("replace_source", "Replace a cell's whole source; for a small change prefer "
              "edit_cell.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "source": SOURCE},
              ["notebook", "cell_id", "source"], h.replace_source),
        _tool("edit_cell", "Edit a cell by search-and-replace: 'find' must occur exactly once "
              "in the cell's source.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "find": {"type": "string"},
               "replace": {"type": "string"}}, ["notebook", "cell_id", "find", "replace"],
              h.edit_cell),
        _tool("delete_cell", "Delete a cell by id (get_notebook lists the ids).",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID}, ["notebook", "cell_id"], h.delete_cell),
        _tool("move_cell", "Move a cell after another cell id, or to the start/end.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, **WHERE}, ["notebook", "cell_id"],
              h.move_cell),
        _tool("set_cell_type", "Change a cell's type (code, markdown, raw), e.g. to make a note "
              "runnable.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "cell_type": CELL_TYPE},
              ["notebook", "cell_id", "cell_type"], h.set_cell_type),
        _tool("execute_cell", "Run a code cell and wait up to timeout seconds; if it is still "
              "running you get its execution id and outputs so far.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "timeout": TIMEOUT},
              ["notebook", "cell_id"], h.execute_cell),
        _tool("get_execution", "Get an execution's status and outputs by id (optionally "
              "waiting up to timeout seconds).",
              {"notebook": NOTEBOOK, "execution_id": {"type": "string"}, "timeout": TIMEOUT},
              ["execution_id"], h.get_execution),
        _tool("run_all", "Run every code cell in order and wait up to timeout seconds; "
              "reports each cell's status.", {"notebook": NOTEBOOK, "timeout": TIMEOUT},
              ["notebook"], h.run_all),
        _tool("interrupt_kernel", "Interrupt the running cell (KeyboardInterrupt in the "
              "kernel).", {"notebook": NOTEBOOK}, ["notebook"], h.interrupt_kernel),
        _tool("restart_kernel", "Restart the kernel when it is stuck or state is stale: all "
              "variables are lost.",
              {"notebook": NOTEBOOK}, ["notebook"], h.restart_kernel),
        _tool("answer_input", "Answer a cell's input() prompt (get_execution shows "
              "input_requested), then wait for it.",
              {"notebook": NOTEBOOK, "execution_id": {"type": "string"},
               "value": {"type": "string"}, "timeout": TIMEOUT},
              ["notebook", "execution_id", "value"], h.answer_input),
        _tool("run_notebook", "Run a notebook file with parameters (papermill-compatible); "
              "returns status, failed cell, recorded scraps and the output path.",
              {"notebook": NOTEBOOK, "parameters": {"type": "object"},
               "output_path": {"type": "string"}, "kernel": {"type": "string"},
               "timeout": {**TIMEOUT, "description": "seconds each cell may run"}},
              ["notebook"], h.run_notebook),
        _tool("inspect_parameters", "List a notebook file's parameters (its 'parameters' "
              "cell) with types and defaults.", {"notebook": NOTEBOOK}, ["notebook"],
              h.inspect_parameters),
        _tool("read_scraps", "Read the values a notebook file recorded with glue() (e.g. the "
              "output of run_notebook).", {"notebook": NOTEBOOK}, ["notebook"], h.read_scraps),
        _tool("changes_since", "What changed since a version you saw (cells added, deleted, "
              "moved, edited, who did it, what ran); use before reviewing or resuming.",
              {"notebook": NOTEBOOK, "version": VERSION, "to": VERSION},
              ["notebook", "version"], h.changes_since),
        _tool("complete", "Ask the kernel for completions at a cursor in a code cell (code "
              "points; default: the end); answered even while a cell runs.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "cursor": CURSOR, "timeout": KERNEL_WAIT},
              ["notebook", "cell_id"], h.complete),
        _tool("inspect", "Ask the kernel for help (signature, docstring) on the name at a "
              "cursor in a code cell; detail_level 1 adds the source.",
              {"notebook": NOTEBOOK, "cell_id": CELL_ID, "cursor": CURSOR,
               "detail_level": {"type": "integer", "enum": [0, 1]}, "timeout": KERNEL_WAIT},
              ["notebook", "cell_id"], h.inspect),
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
