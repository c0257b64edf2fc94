"""Shared pieces of the MCP tests (no tests here): the ``runt mcp`` server as a subprocess,
driven through the MCP SDK's own stdio client, pointed at the test daemon's socket."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp import ClientSession, StdioServerParameters, stdio_client

from runtimed.paths import RuntimedPaths

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 60


class ToolFailed(Exception):
    pass


class Agent:
    """An MCP client session plus the notifications the server sent it."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.updated: list[str] = []
        self._update = anyio.Event()

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updated.append(str(message.params.uri))
            self._update.set()
            self._update = anyio.Event()

    async def wait_updated(self, uri: str, timeout: float = 10) -> None:
        with anyio.fail_after(timeout):
            while uri not in self.updated:
                await self._update.wait()

    async def raw(self, tool: str, **args: Any) -> types.CallToolResult:
        with anyio.fail_after(DEADLINE * 2):
            return await self.session.call_tool(tool, args)

    async def call(self, tool: str, **args: Any) -> dict[str, Any]:
        result = await self.raw(tool, **args)
        text = result.content[0]
        assert isinstance(text, types.TextContent)
        if result.is_error:
            raise ToolFailed(text.text)
        data: dict[str, Any] = json.loads(text.text)
        return data

    async def fails(self, tool: str, **args: Any) -> str:
        result = await self.raw(tool, **args)
        assert result.is_error, f"{tool} should have failed: {result.content}"
        text = result.content[0]
        assert isinstance(text, types.TextContent)
        assert "Traceback" not in text.text
        return text.text


def server_env(paths: RuntimedPaths, tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RUNTIMED_SOCKET": str(paths.socket),
        "RUNTIMED_HOME": str(paths.home),
        "RUNTIMED_CONFIG": str(tmp / "no-config.toml"),
    }


@asynccontextmanager
async def mcp_agent(
    paths: RuntimedPaths, tmp: Path, *extra: str, autostart: bool = False
) -> AsyncIterator[Agent]:
    """``runt mcp`` in a subprocess, connected over stdio with the SDK's client."""
    args = ["-m", "runtimed.cli", "--socket", str(paths.socket), "mcp", *extra]
    if not autostart:
        args.append("--no-autostart")
    params = StdioServerParameters(
        command=sys.executable, args=args, env=server_env(paths, tmp), cwd=str(tmp)
    )
    holder: list[Agent] = []

    async def on_message(message: Any) -> None:
        if holder:
            await holder[0].on_message(message)

    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, message_handler=on_message) as session,
    ):
        with anyio.fail_after(DEADLINE):
            await session.initialize()
        agent = Agent(session)
        holder.append(agent)
        yield agent


def code(source: str, cell_id: str, **metadata: Any) -> dict[str, object]:
    return {"cell_type": "code", "source": source, "metadata": metadata, "id": cell_id}
