"""An output flood in one notebook vs everyone else: a cell printing 100 MB in 80-byte lines
runs in notebook A while notebook B runs ``1+1`` over and over and a third client pings.

Prints B's execution latency and the ping latency with and without the flood, the flood's
total time through the daemon, the same cell run by nbclient (the peer, on the same machine,
in a subprocess so its memory is its own), and both processes' peak RSS.

Run: ``python bench/bench_flood.py [LINES]`` (default 1 250 000 lines = 100 MB).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import daemon_process, rss_kib, summary, write_notebook
from runtimed.client import AsyncClient
from runtimed.documents.runtime import FINISHED

BASELINE_RUNS = 200
PAIRS = 2  # alternating runtimed-alone / nbclient runs of the flood


def flood_source(lines: int) -> str:
    return f"for i in range({lines}):\n    print('x' * 79)"


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


NBCLIENT_SCRIPT = """
import json, resource, sys, time
import nbformat
from nbclient import NotebookClient
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1+1'),
                                     nbformat.v4.new_code_cell(sys.argv[1])])
client = NotebookClient(nb, kernel_name='python3', timeout=3600)
with client.setup_kernel():
    client.execute_cell(nb.cells[0], 0)  # warm kernel: time the cell only
    start = time.perf_counter()
    client.execute_cell(nb.cells[1], 1)
    seconds = time.perf_counter() - start
outputs = nb.cells[1].outputs
print(json.dumps({"seconds": seconds, "outputs": len(outputs),
                  "chars": sum(len(o.get("text", "")) for o in outputs),
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def nbclient_once(cell: str) -> dict[str, float]:
    """The peer: one run of ``cell`` by nbclient, on a warm kernel, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", NBCLIENT_SCRIPT, cell], capture_output=True, text=True, check=True
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


class Measured(TypedDict):
    """What :func:`measure` found (times in seconds, sizes in KiB unless named bytes)."""

    quiet_exec: list[float]
    quiet_ping: list[float]
    flood_exec: list[float]
    flood_ping: list[float]
    flood_seconds: float
    alone: list[float]
    peer: list[dict[str, float]]
    status: str
    resolve_seconds: float
    runtime_doc_bytes: int
    rss_before_kib: int
    rss_peak_sampled_kib: int
    vmhwm_kib: int
    rss_after_kib: int


async def measure(sock: Path, proc: subprocess.Popen[bytes], work: Path, lines: int) -> Measured:
    flood_path = write_notebook(work / "flood.ipynb", ["1+1", flood_source(lines)])
    other_path = write_notebook(work / "other.ipynb", ["1+1"])
    async with (
        await AsyncClient.connect(sock) as client_a,
        await AsyncClient.connect(sock) as client_b,
        await AsyncClient.connect(sock) as client_c,
    ):
        nb_a = await client_a.open(flood_path)
        nb_b = await client_b.open(other_path)
        await nb_a.execute("c0")  # warm both kernels: measure serving, not startup
        for _ in range(20):
            await nb_b.execute("c0")
            await client_c.ping()

        async def exec_loop(times: list[float], stop: anyio.Event | None, n: int) -> None:
            while (stop is None and len(times) < n) or (stop is not None and not stop.is_set()):
                start = time.perf_counter()
                result = await nb_b.execute("c0")
                # (After 1,000 executions IPython also warns on stderr that its Out cache
                # is full: look for the result among the outputs.)
                values = [o["data"]["text/plain"] for o in result.outputs if "data" in o]
                assert values == ["2"], result
                times.append(time.perf_counter() - start)

        async def ping_loop(times: list[float], stop: anyio.Event | None, n: int) -> None:
            while (stop is None and len(times) < n) or (stop is not None and not stop.is_set()):
                start = time.perf_counter()
                await client_c.ping()
                times.append(time.perf_counter() - start)

        quiet_exec: list[float] = []
        quiet_ping: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(exec_loop, quiet_exec, None, BASELINE_RUNS)
            tg.start_soon(ping_loop, quiet_ping, None, BASELINE_RUNS)

        flood_exec: list[float] = []
        flood_ping: list[float] = []
        stop = anyio.Event()
        peak_sampled = rss_kib(proc.pid)
        rss_before = peak_sampled

        async def sample_rss() -> None:
            nonlocal peak_sampled
            while not stop.is_set():
                peak_sampled = max(peak_sampled, rss_kib(proc.pid))
                with anyio.move_on_after(0.05):
                    await stop.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(exec_loop, flood_exec, stop, 0)
            tg.start_soon(ping_loop, flood_ping, stop, 0)
            tg.start_soon(sample_rss)
            start = time.perf_counter()
            execution_id = await nb_a.queue("c1")

            def finished() -> bool:
                record = nb_a.runtime.execution(execution_id)
                return record is not None and record.get("status") in FINISHED

            await client_a.wait_until(finished)
            flood_seconds = time.perf_counter() - start
            stop.set()
        record = nb_a.runtime.execution(execution_id)
        assert record is not None
        status = str(record["status"])
        start = time.perf_counter()
        [output] = nb_a.outputs("c1")
        resolve_seconds = time.perf_counter() - start
        assert len(output["text"]) == lines * 80, len(output["text"])
        del output
        doc_size = len(nb_a.runtime.save())
        vmhwm = peak_rss_kib(proc.pid)

        # The same flood with nothing else going on, alternating with nbclient's runs so both
        # see the same machine load: the like-for-like comparison.
        alone: list[float] = []
        peer: list[dict[str, float]] = []
        for _ in range(PAIRS):
            start = time.perf_counter()
            execution_id = await nb_a.queue("c1")  # finished() reads this name
            await client_a.wait_until(finished)
            alone.append(time.perf_counter() - start)
            peer.append(await anyio.to_thread.run_sync(nbclient_once, flood_source(lines)))
        return {
            "quiet_exec": quiet_exec,
            "quiet_ping": quiet_ping,
            "flood_exec": flood_exec,
            "flood_ping": flood_ping,
            "flood_seconds": flood_seconds,
            "alone": alone,
            "peer": peer,
            "status": status,
            "resolve_seconds": resolve_seconds,
            "runtime_doc_bytes": doc_size,
            "rss_before_kib": rss_before,
            "rss_peak_sampled_kib": peak_sampled,
            "vmhwm_kib": vmhwm,
            "rss_after_kib": rss_kib(proc.pid),
        }


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 1_250_000
    megabytes = lines * 80 / 1e6
    load = os.getloadavg()[0]
    with daemon_process() as (sock, proc, work):
        got = anyio.run(measure, sock, proc, work, lines, backend_options={"use_uvloop": True})
    peer = got["peer"]

    print(
        f"flood: {lines} lines of 80 bytes = {megabytes:.0f} MB; {os.cpu_count()} CPUs, "
        f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(summary("B 1+1 round trip, no flood", got["quiet_exec"]))
    print(summary("B 1+1 round trip, during the flood", got["flood_exec"]))
    print(summary("ping, no flood", got["quiet_ping"]))
    print(summary("ping, during the flood", got["flood_ping"]))
    for what, quiet_times, flood_times in (
        ("exec", got["quiet_exec"], got["flood_exec"]),
        ("ping", got["quiet_ping"], got["flood_ping"]),
    ):
        quiet, flood = statistics.median(quiet_times), statistics.median(flood_times)
        print(f"  {what} median slowdown during the flood: {flood / quiet:.1f}x")
    ours = statistics.median(got["alone"])
    theirs = statistics.median([p["seconds"] for p in peer])
    print(
        f"flood cell through runtimed while B and the pings ran (queue -> finished in the "
        f"client's replica): {got['flood_seconds']:.2f} s, status {got['status']}"
    )
    print(
        f"  + client reading the {megabytes:.0f} MB output from the blob store: "
        f"{got['resolve_seconds']:.2f} s"
    )
    runs = ", ".join(f"{t:.2f}" for t in got["alone"])
    print(f"flood cell through runtimed, alone: median {ours:.2f} s ({runs})")
    runs = ", ".join(f"{p['seconds']:.2f}" for p in peer)
    print(
        f"flood cell through nbclient (peer, warm kernel), alternating: median {theirs:.2f} s "
        f"({runs}; {int(peer[0]['outputs'])} stream outputs, {peer[0]['chars'] / 1e6:.0f} MB)"
    )
    print(f"ratio runtimed alone / nbclient: {ours / theirs:.2f}x")
    print(
        f"daemon RSS: {got['rss_before_kib'] / 1024:.0f} MiB before, peak during the first flood "
        f"{got['vmhwm_kib'] / 1024:.0f} MiB (VmHWM; sampled {got['rss_peak_sampled_kib'] / 1024:.0f}"
        f" MiB), {got['rss_after_kib'] / 1024:.0f} MiB after"
    )
    print(f"nbclient process peak RSS: {max(p['peak_rss_kib'] for p in peer) / 1024:.0f} MiB")
    print(f"runtime document after the flood: {got['runtime_doc_bytes'] / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
