"""stdin/stdout for the MCP server without a worker thread per message.

The SDK's ``stdio_server`` reads and writes the standard streams through ``anyio.wrap_file``:
every line in and every reply out is a hop to a worker thread, which on a busy machine costs
milliseconds per tool call. When stdin and stdout are pipes or sockets (how MCP clients start
servers) they are read and written here by the event loop itself (asyncio's pipe transports;
``runt`` runs on asyncio/uvloop), and handed to the SDK's ``stdio_server`` as its streams.
Anything else (a terminal, a file) falls back to the SDK's own handling, as does
``RUNTIMED_MCP_SDK_STDIO=1`` (an escape hatch, and the peer in ``bench/bench_mcp.py``).

As the SDK does, while serving, fd 0 reads the null device and fd 1 points at stderr, so
nothing a library prints can corrupt the protocol stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.stdio import stdio_server

__all__ = ["fast_stdio_server"]

MAX_LINE = 256 * 1024 * 1024  # one JSON-RPC message; tool arguments are bounded far below


def _is_stream(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _Lines:
    """``async for line in ...`` over a StreamReader, as ``stdio_server`` reads its stdin."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Writer:
    """``write``/``flush`` over a StreamWriter, as ``stdio_server`` writes its stdout."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


@asynccontextmanager
async def fast_stdio_server() -> AsyncIterator[tuple[Any, Any]]:
    """Like ``mcp.server.stdio.stdio_server()``; yields (read_stream, write_stream)."""
    if os.environ.get("RUNTIMED_MCP_SDK_STDIO") or not (_is_stream(0) and _is_stream(1)):
        async with stdio_server() as streams:
            yield streams
        return
    sys.stdout.flush()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
    )
    write_transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
    try:
        async with stdio_server(_Lines(reader), _Writer(writer)) as streams:  # type: ignore[arg-type]
            yield streams
    finally:
        read_transport.close()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await writer.drain()
        write_transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
