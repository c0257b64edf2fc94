"""``runt mcp``, ``runt nb tools|call``, ``runt diff`` and ``runt log``: the agent interface.

``runt nb call TOOL --args JSON`` runs exactly what an MCP agent's ``tools/call`` runs
(:func:`runtimed.mcp.tools.call_tool`) and prints the JSON result; each invocation is a new
session, so a ``notebook`` argument naming a file is opened on the fly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "add_parsers"]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _described(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def add_parsers(sub: Any) -> None:
    """Add the agent commands to ``runt``'s subparsers."""
    mcp = sub.add_parser(
        "mcp",
        help="serve the agent tools over MCP (stdio) for an AI agent",
        description=_described("serve the agent tools over MCP (stdio) for an AI agent"),
    )
    mcp.add_argument("--no-autostart", action="store_true", help="do not start the daemon")
    mcp.add_argument("--text-limit", type=int, default=None, help="characters per output text")
    mcp.add_argument(
        "--image-limit", type=int, default=None, help="bytes up to which images are inlined"
    )
    mcp.add_argument("--log-level", default="WARNING", help="logging level (to stderr)")

    nb = sub.add_parser(
        "nb",
        help="the agent tools without MCP",
        description=_described("the agent tools without MCP"),
    )
    nbsub = nb.add_subparsers(dest="action", required=True)
    tools = nbsub.add_parser(
        "tools",
        help="list the tools with their arguments",
        description=_described("list the tools with their arguments"),
    )
    tools.add_argument("--json", action="store_true", help="names, descriptions and schemas")
    call = nbsub.add_parser(
        "call",
        help="call one tool and print its JSON result",
        description=_described("call one tool and print its JSON result"),
    )
    call.add_argument("tool", help="the tool's name (runt nb tools lists them)")
    call.add_argument("--args", default="{}", help="the arguments as a JSON object")

    diff = sub.add_parser(
        "diff",
        help="what changed in a notebook since a version, or between two .ipynb files",
        description=_described(
            "what changed in a notebook since a version, or between two .ipynb files"
        ),
    )
    diff.add_argument("path", help="an .ipynb (the daemon's document of it)")
    diff.add_argument("other", nargs="?", help="a second .ipynb: diff the two files")
    diff.add_argument(
        "--since", help="the version or checkpoint (ck:...) to diff from (default: the first)"
    )
    diff.add_argument("--to", help="the version or checkpoint to diff to (default: now)")
    diff.add_argument("--json", action="store_true", help="the diff as JSON (with its JEP 8 form)")

    log = sub.add_parser(
        "log",
        help="the versions and saved checkpoints of a notebook the daemon keeps",
        description=_described("the versions and saved checkpoints of a notebook the daemon keeps"),
    )
    log.add_argument("path", help="an .ipynb the daemon has open or persisted")
    log.add_argument("--json", action="store_true", help="the versions and checkpoints as JSON")


def _limits(args: argparse.Namespace) -> Any:
    from runtimed.mcp.outputs import OutputLimits

    defaults = OutputLimits()
    return OutputLimits(
        text_chars=getattr(args, "text_limit", None) or defaults.text_chars,
        image_bytes=getattr(args, "image_limit", None) or defaults.image_bytes,
    )


async def _mcp(args: argparse.Namespace) -> int:
    import logging

    from runtimed.mcp.server import serve_stdio

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    await serve_stdio(args.socket, autostart=not args.no_autostart, limits=_limits(args))
    return 0


async def _nb_tools(args: argparse.Namespace) -> int:
    from runtimed.mcp.tools import TOOLS

    if args.json:
        _out(json.dumps([
            {"name": t.name, "description": t.description, "input_schema": t.schema}
            for t in TOOLS.values()
        ], indent=1))  # fmt: skip
        return 0
    for tool in TOOLS.values():
        props = tool.schema["properties"]
        required = set(tool.schema["required"])
        names = [p if p in required else f"[{p}]" for p in props]
        _out(f"{tool.name}({', '.join(names)})\n    {tool.description}")
    return 0


async def _nb_call(args: argparse.Namespace) -> int:
    from runtimed.mcp.session import AgentSession
    from runtimed.mcp.tools import ToolError, call_tool

    try:
        arguments = json.loads(args.args)
    except ValueError as exc:
        _err(f"runt: --args is not JSON: {exc}")
        return 2
    async with AgentSession(args.socket, auto_open=True, limits=_limits(args)) as session:
        try:
            result = await call_tool(session, args.tool, arguments)
        except ToolError as exc:
            _out(json.dumps({"error": str(exc)}, indent=1))
            return 1
    data = dict(result.data)
    if result.images:
        data["images"] = [{"mime_type": i.mime_type, "data": i.data} for i in result.images]
    _out(json.dumps(data, indent=1, default=str))
    return 0


async def _diff(args: argparse.Namespace) -> int:
    from runtimed.documents.history import diff_nbformat, format_diff

    if args.other is not None:
        if args.since or args.to:
            _err("runt: --since/--to diff versions of one notebook, not two files")
            return 2
        import anyio

        from runtimed.storage.ipynb import read_notebook

        a = await anyio.to_thread.run_sync(read_notebook, Path(args.path))
        b = await anyio.to_thread.run_sync(read_notebook, Path(args.other))
        diff = diff_nbformat(a, b, since=args.path, to=args.other)
    else:
        from runtimed.client.history import CHECKPOINT_PREFIX, checkpoint_version

        async def body(client: Any, nb: Any) -> Any:
            since, to = args.since, args.to
            if since is None:
                from runtimed.client.history import notebook_versions

                since = notebook_versions(nb)[0]["version"]
            elif since.startswith(CHECKPOINT_PREFIX):
                since = await checkpoint_version(client, nb, since)
            if to is not None and to.startswith(CHECKPOINT_PREFIX):
                to = await checkpoint_version(client, nb, to)
            return nb.changes_since(since, to)

        diff = await _with_notebook(args, body)
    _out(json.dumps(diff.to_json(), indent=1) if args.json else format_diff(diff))
    return 0


async def _log(args: argparse.Namespace) -> int:
    from runtimed.client.history import notebook_log

    entries = await _with_notebook(args, notebook_log)
    if args.json:
        _out(json.dumps(entries, indent=1))
        return 0
    number = 0
    for entry in entries:
        if entry["kind"] == "checkpoint":
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["time"]))
            gone = "" if entry["in_history"] else "  (not in this document's history)"
            _out(f"   *  saved {when}  {entry['checkpoint']}  {entry['path']}{gone}")
            _out(f"      {entry['version']}")
            continue
        number += 1
        cells = ", ".join(c or "(metadata)" for c in entry["cells"][:6])
        if len(entry["cells"]) > 6:
            cells += f", ... ({len(entry['cells'])} cells)"
        _out(f"{number:>4}  {entry['actor'][:8]}  {entry['changes']:>5} changes  {cells}")
        _out(f"      {entry['version']}")
    return 0


async def _with_notebook(
    args: argparse.Namespace, body: Callable[[Any, Any], Awaitable[Any]]
) -> Any:
    from runtimed.client import AsyncClient

    async with await AsyncClient.connect(args.socket, autostart=True) as client:
        nb = await client.open(args.path)
        try:
            return await body(client, nb)
        finally:
            await nb.close()


COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace], Awaitable[int]]] = {
    ("mcp", None): _mcp,
    ("nb", "tools"): _nb_tools,
    ("nb", "call"): _nb_call,
    ("diff", None): _diff,
    ("log", None): _log,
}
