"""``execute_cell`` of ``1+1`` through the MCP stdio server vs the same through the Python
client, against one daemon in the same run.

Run: ``python bench/bench_mcp.py [N]`` (default 300). Prints medians, p99s and the ratio. The
MCP path is: SDK stdio client -> JSON-RPC over a pipe -> ``runt mcp`` (argument validation,
the tool, bounded output rendering) -> the daemon, and the JSON result back.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, compile_project, daemon_process, summary, write_notebook
from runtimed.client import AsyncClient


async def client_loop(sock: Path, path: Path, n: int) -> list[float]:
    async with await AsyncClient.connect(sock) as client:
        nb = await client.open(path)
        times = []
        for _ in range(n + 20):
            start = time.perf_counter()
            result = await nb.execute("c0")
            assert result.outputs[-1]["data"]["text/plain"] == "2", result
            times.append(time.perf_counter() - start)
        await nb.close()
        return times[20:]


async def mcp_loop(sock: Path, path: Path, n: int) -> list[float]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "runtimed.cli", "--socket", str(sock), "mcp", "--no-autostart"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.call_tool("open_notebook", {"notebook": str(path)})
        times = []
        args = {"notebook": str(path), "cell_id": "c0", "timeout": 30}
        for _ in range(n + 20):
            start = time.perf_counter()
            result = await session.call_tool("execute_cell", args)
            times.append(time.perf_counter() - start)
            data = json.loads(result.content[0].text)  # type: ignore[union-attr]
            assert data["outputs"][-1]["text"] == "2", data
        return times[20:]


async def tools_loop(sock: Path, path: Path, n: int) -> list[float]:
    """The same tool called in-process (no MCP transport): what the tool layer costs."""
    from runtimed.mcp.session import AgentSession
    from runtimed.mcp.tools import call_tool

    async with AgentSession(sock, autostart=False) as session:
        await call_tool(session, "open_notebook", {"notebook": str(path)})
        args = {"notebook": str(path), "cell_id": "c0", "timeout": 30}
        times = []
        for _ in range(n + 20):
            start = time.perf_counter()
            result = await call_tool(session, "execute_cell", args)
            times.append(time.perf_counter() - start)
            assert result.data["outputs"][-1]["text"] == "2", result.data
        return times[20:]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    compile_project()
    with daemon_process() as (sock, _proc, work):
        path = write_notebook(work / "bench.ipynb", ["1+1"])
        opts = {"use_uvloop": True}
        # Interleaved halves, so drift on a shared machine hits both alike.
        ours: list[float] = []
        theirs: list[float] = []
        direct: list[float] = []
        for _ in range(2):
            theirs += anyio.run(client_loop, sock, path, n // 2, backend_options=opts)
            direct += anyio.run(tools_loop, sock, path, n // 2, backend_options=opts)
            ours += anyio.run(mcp_loop, sock, path, n // 2, backend_options=opts)
    print(summary("Python client execute('1+1')", theirs))
    print(summary("tool layer in-process execute_cell", direct))
    print(summary("MCP stdio execute_cell('1+1')", ours))
    ratio = statistics.median(ours) / statistics.median(theirs)
    added = (statistics.median(ours) - statistics.median(theirs)) * 1000
    print(f"ratio (median MCP / median client): {ratio:.2f}x  (+{added:.2f} ms per call)")


if __name__ == "__main__":
    main()
