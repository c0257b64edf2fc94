"""``execute_cell`` of ``1+1`` through the MCP stdio server vs the same through the Python
client, against one daemon in the same run.

Run: ``python bench/bench_mcp.py [N]`` (default 300; keep 3*(N+20) under IPython's output
cache of 1000). Prints medians, p99s and the ratio; the three paths are called in turn each
round against one kernel, so load on a shared machine hits them alike. The
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


async def interleaved(sock: Path, path: Path, n: int) -> dict[str, list[float]]:
    """One call of each kind per round, so load drift on a shared machine hits all alike."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    from runtimed.mcp.session import AgentSession
    from runtimed.mcp.tools import call_tool

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "runtimed.cli", "--socket", str(sock), "mcp", "--no-autostart"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    args = {"notebook": str(path), "cell_id": "c0", "timeout": 30}
    times: dict[str, list[float]] = {"client": [], "tools": [], "mcp": []}
    async with (
        await AsyncClient.connect(sock) as client,
        AgentSession(sock, autostart=False) as tools_session,
        stdio_client(params) as (read, write),
        ClientSession(read, write) as mcp_session,
    ):
        await mcp_session.initialize()
        nb = await client.open(path)
        await call_tool(tools_session, "open_notebook", {"notebook": str(path)})
        await mcp_session.call_tool("open_notebook", {"notebook": str(path)})
        for round_ in range(n + 20):
            start = time.perf_counter()
            result = await nb.execute("c0")
            client_time = time.perf_counter() - start
            assert result.outputs[-1]["data"]["text/plain"] == "2", result

            start = time.perf_counter()
            direct = await call_tool(tools_session, "execute_cell", args)
            tools_time = time.perf_counter() - start
            assert direct.data["outputs"][-1]["text"] == "2", direct.data

            start = time.perf_counter()
            over_mcp = await mcp_session.call_tool("execute_cell", args)
            mcp_time = time.perf_counter() - start
            data = json.loads(over_mcp.content[0].text)  # type: ignore[union-attr]
            assert data["outputs"][-1]["text"] == "2", data
            if round_ >= 20:
                times["client"].append(client_time)
                times["tools"].append(tools_time)
                times["mcp"].append(mcp_time)
        await nb.close()
    return times


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    compile_project()
    with daemon_process() as (sock, _proc, work):
        path = write_notebook(work / "bench.ipynb", ["1+1"])
        times = anyio.run(interleaved, sock, path, n, backend_options={"use_uvloop": True})
    theirs, direct, ours = times["client"], times["tools"], times["mcp"]
    print(summary("Python client execute('1+1')", theirs))
    print(summary("tool layer in-process execute_cell", direct))
    print(summary("MCP stdio execute_cell('1+1')", ours))
    paired = [m - c for m, c in zip(ours, theirs, strict=True)]
    print(f"MCP - client, paired per round: median {statistics.median(paired) * 1000:.2f} ms")
    ratio = statistics.median(ours) / statistics.median(theirs)
    added = (statistics.median(ours) - statistics.median(theirs)) * 1000
    print(f"ratio (median MCP / median client): {ratio:.2f}x  (+{added:.2f} ms per call)")


if __name__ == "__main__":
    main()
