"""``runt mcp``: the agent tools and notebooks as resources, over MCP stdio.

Built on the official ``mcp`` SDK's low-level :class:`mcp.server.lowlevel.Server`, so each
tool keeps the explicit JSON schema :mod:`runtimed.mcp.tools` gives it. A client of the daemon
like any other: it connects (autostarting the daemon) on the first call and never touches
kernels itself.

Resources: ``notebook://{notebook_id}`` (the outline, JSON) for every notebook open in this
session and ``notebook://{notebook_id}/cells/{cell_id}`` (one cell, JSON). A client that
subscribes to one (``resources/subscribe``) gets ``notifications/resources/updated`` when it
changes — whoever changed it. (The 2026-07-28 protocol's ``subscriptions/listen`` is not
served yet: clients negotiate the 2025-11-25 handshake, which has ``resources/subscribe``.)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from typing import Any

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from runtimed.errors import ConnectionClosed
from runtimed.mcp import tools
from runtimed.mcp.outputs import OutputLimits
from runtimed.mcp.session import AgentSession
from runtimed.mcp.views import first_line
from runtimed.version import __version__

__all__ = ["ResourceWatcher", "build_server", "serve_stdio"]

log = logging.getLogger(__name__)

SCHEME = "notebook://"
INSTRUCTIONS = (
    "Tools to read, edit and run Jupyter notebooks held by the runtimed daemon. Address cells "
    "by cell_id (get_notebook lists them), never by index. Every read returns the notebook's "
    "'version'; pass it to changes_since later to see what changed (also edits by people). "
    "execute_cell returns after its timeout with an execution_id if the cell is still running: "
    "collect it with get_execution."
)


def _parse_uri(uri: str) -> tuple[str, str | None]:
    if not uri.startswith(SCHEME):
        raise tools.ToolError(f"unknown resource {uri!r}; notebook resources start {SCHEME}")
    rest = uri[len(SCHEME) :].strip("/")
    notebook_id, _, tail = rest.partition("/")
    if not tail:
        return notebook_id, None
    kind, _, cell_id = tail.partition("/")
    if kind != "cells" or not cell_id:
        raise tools.ToolError(f"unknown resource {uri!r}; use {SCHEME}<id>/cells/<cell_id>")
    return notebook_id, cell_id


class ResourceWatcher:
    """Sends resource-updated notifications for subscribed notebooks and cells."""

    def __init__(self, session: AgentSession) -> None:
        self.session = session
        self.subscribers: dict[str, set[ServerSession]] = {}
        self._seen: dict[str, object] = {}
        self._wake = anyio.Event()

    def fingerprint(self, uri: str) -> object:
        notebook_id, cell_id = _parse_uri(uri)
        nb = self.session.notebooks.get(notebook_id)
        if nb is None or not nb.doc.ready:
            return None
        if cell_id is None:
            return tuple(nb.doc.heads_hex())
        if cell_id not in nb.cell_ids():
            return "deleted"
        cell = nb.cell(cell_id)
        return (cell.cell_type, cell.source, json.dumps(cell.metadata, sort_keys=True))

    def subscribe(self, uri: str, server_session: ServerSession | None) -> None:
        _parse_uri(uri)
        if server_session is not None:
            self.subscribers.setdefault(uri, set()).add(server_session)
        self._seen[uri] = self.fingerprint(uri)
        self._poke()

    def unsubscribe(self, uri: str, server_session: ServerSession | None) -> None:
        sessions = self.subscribers.get(uri, set())
        if server_session is not None:
            sessions.discard(server_session)
        if not sessions:
            self.subscribers.pop(uri, None)
        self._poke()

    def _poke(self) -> None:
        self._wake.set()
        self._wake = anyio.Event()

    def _uris(self) -> list[str]:
        return list(self.subscribers)

    async def run(self) -> None:
        while True:
            client = self.session.connected_client
            generation = self.session.generation
            if client is None or not self._uris():
                await self._wake.wait()
                continue
            before = {u: self._seen.get(u) for u in self._uris()}
            changed = functools.partial(self._changed_from, before)

            wake = self._wake
            async with anyio.create_task_group() as tg:
                tg.start_soon(_then_cancel, tg, client.wait_until(changed))
                tg.start_soon(_then_cancel, tg, wake.wait())
            if client.connection.closed:
                # The daemon went away: the next tool call reconnects and reopens.
                await self.session.wait_connected(generation)
            await self._notify_changed()

    def _changed_from(self, before: dict[str, object]) -> bool:
        return any(self.fingerprint(u) != seen for u, seen in before.items())

    async def _notify_changed(self) -> None:
        for uri in self._uris():
            now = self.fingerprint(uri)
            if now == self._seen.get(uri):
                continue
            self._seen[uri] = now
            for server_session in list(self.subscribers.get(uri, ())):
                try:
                    await server_session.send_resource_updated(uri)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self.subscribers.get(uri, set()).discard(server_session)


async def _then_cancel(tg: anyio.abc.TaskGroup, waiting: Any) -> None:
    with contextlib.suppress(ConnectionClosed):  # seen as connection.closed by the caller
        await waiting
    tg.cancel_scope.cancel()


def _tool_result(result: tools.ToolResult) -> types.CallToolResult:
    content: list[Any] = [
        types.TextContent(type="text", text=json.dumps(result.data, default=str, indent=1))
    ]
    for image in result.images:
        content.append(types.ImageContent(type="image", data=image.data, mime_type=image.mime_type))
    return types.CallToolResult(
        content=content, structured_content=json.loads(json.dumps(result.data, default=str))
    )


def build_server(session: AgentSession, watcher: ResourceWatcher) -> Server[Any]:
    """The MCP server for ``session`` (run it with ``server.run(read, write, options)``)."""

    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.schema)
                for t in tools.TOOLS.values()
            ]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            result = await tools.call_tool(session, params.name, params.arguments)
        except tools.ToolError as exc:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=str(exc))], is_error=True
            )
        return _tool_result(result)

    async def list_resources(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        resources = []
        for nb in session.notebooks.values():
            label = str(nb.path) if nb.path else f"untitled {nb.id}"
            resources.append(
                types.Resource(
                    uri=f"{SCHEME}{nb.id}",
                    name=label,
                    description="notebook outline (cells, state, version)",
                    mime_type="application/json",
                )
            )
            for cell in nb.cells():
                resources.append(
                    types.Resource(
                        uri=f"{SCHEME}{nb.id}/cells/{cell.id}",
                        name=f"{label} cell {cell.id}",
                        description=first_line(cell.source),
                        mime_type="application/json",
                    )
                )
        return types.ListResourcesResult(resources=resources)

    async def read_resource(
        ctx: Any, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        try:
            notebook_id, cell_id = _parse_uri(uri)
            if cell_id is None:
                result = await tools.call_tool(session, "get_notebook", {"notebook": notebook_id})
            else:
                result = await tools.call_tool(
                    session, "get_cell", {"notebook": notebook_id, "cell_id": cell_id}
                )
        except tools.ToolError as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from exc
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=uri, mime_type="application/json", text=json.dumps(result.data, default=str)
                )
            ]
        )

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        try:
            watcher.subscribe(str(params.uri), ctx.session)
        except tools.ToolError as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from exc
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        watcher.unsubscribe(str(params.uri), ctx.session)
        return types.EmptyResult()

    return Server(
        "runtimed",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
    )


async def serve_stdio(
    socket: str | None = None,
    *,
    autostart: bool = True,
    limits: OutputLimits | None = None,
) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin."""
    async with AgentSession(socket, autostart=autostart, limits=limits) as session:
        watcher = ResourceWatcher(session)
        server = build_server(session, watcher)
        async with stdio_server() as (read, write), anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await server.run(read, write, server.create_initialization_options())
            tg.cancel_scope.cancel()
