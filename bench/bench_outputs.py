"""A cell producing 10 MB of output: time and memory through the daemon vs nbclient.

Through the daemon: queue -> finished in the client's runtime replica, the full
``execute()`` (which also reads the output back from the blob store), and saving the
notebook; the daemon's RSS and peak RSS (VmHWM) before and after; the runtime document's size
before and after (it should hold manifests, not megabytes). The peer: nbclient running the
same cell on a warm kernel in a fresh interpreter (so its peak RSS is its own). Runs of the
two alternate, so both see the same machine load.

Run: ``python bench/bench_outputs.py [REPEATS]`` (default 5).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import daemon_process, rss_kib, summary, write_notebook
from runtimed.client import AsyncClient
from runtimed.documents.runtime import FINISHED

LINES = 125_000  # x 80 bytes = 10 MB
CELL = f"for i in range({LINES}):\n    print('x' * 79)"

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


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def nbclient_once(cell: str) -> dict[str, float]:
    """The peer: one run of ``cell`` by nbclient, on a warm kernel, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", NBCLIENT_SCRIPT, cell], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def measure(sock: Path, pid: int, work: Path, repeats: int) -> dict[str, object]:
    path = write_notebook(work / "outputs.ipynb", ["1+1", CELL])
    async with await AsyncClient.connect(sock) as client:
        nb = await client.open(path)
        await nb.execute("c0")  # warm kernel
        doc_before = len(nb.runtime.save())
        rss_before, hwm_before = rss_kib(pid), peak_rss_kib(pid)
        done_times, result_times, doc_sizes, peer = [], [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            execution_id = await nb.queue("c1")

            def finished(execution_id: str = execution_id) -> bool:
                record = nb.runtime.execution(execution_id)
                return record is not None and record.get("status") in FINISHED

            await client.wait_until(finished)
            done_times.append(time.perf_counter() - start)
            result = await nb.wait_execution(execution_id)
            result_times.append(time.perf_counter() - start)
            assert result.status == "ok"
            assert len(result.outputs[0]["text"]) == LINES * 80
            doc_sizes.append(len(nb.runtime.save()))
            del result
            peer.append(await anyio.to_thread.run_sync(nbclient_once, CELL))
        rss_after, hwm_after = rss_kib(pid), peak_rss_kib(pid)
        start = time.perf_counter()
        saved = await nb.save()
        save_seconds = time.perf_counter() - start
        return {
            "done": done_times,
            "result": result_times,
            "peer": peer,
            "doc_before": doc_before,
            "doc_sizes": doc_sizes,
            "save_seconds": save_seconds,
            "ipynb_bytes": saved.stat().st_size,
            "rss_before": rss_before,
            "hwm_before": hwm_before,
            "rss_after": rss_after,
            "hwm_after": hwm_after,
        }


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    load = os.getloadavg()[0]
    with daemon_process() as (sock, proc, work):
        got = anyio.run(
            measure, sock, proc.pid, work, repeats, backend_options={"use_uvloop": True}
        )
    peer: list[dict[str, float]] = got["peer"]  # type: ignore[assignment]
    peer_times = [p["seconds"] for p in peer]

    print(
        f"cell: {LINES} prints of 80 bytes = {LINES * 80 / 1e6:.0f} MB; {repeats} runs each, "
        f"alternating; {os.cpu_count()} CPUs, load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(summary("runtimed: queue -> finished (replica)", got["done"]))  # type: ignore[arg-type]
    print(summary("runtimed: execute() incl. reading the blob", got["result"]))  # type: ignore[arg-type]
    print(summary("nbclient (peer): execute_cell", peer_times))
    ours = statistics.median(got["done"])  # type: ignore[arg-type]
    theirs = statistics.median(peer_times)
    print(f"ratio (median runtimed finished / median nbclient): {ours / theirs:.2f}x")
    print(
        f"save of the notebook ({got['ipynb_bytes'] / 1e6:.1f} MB .ipynb): "  # type: ignore[operator]
        f"{got['save_seconds'] * 1000:.0f} ms"  # type: ignore[operator]
    )
    print(
        f"daemon RSS: {got['rss_before'] / 1024:.0f} MiB before -> "  # type: ignore[operator]
        f"{got['rss_after'] / 1024:.0f} MiB after; peak {got['hwm_after'] / 1024:.0f} MiB "  # type: ignore[operator]
        f"(was {got['hwm_before'] / 1024:.0f} MiB)"  # type: ignore[operator]
    )
    print(
        f"nbclient process peak RSS: {max(p['peak_rss_kib'] for p in peer) / 1024:.0f} MiB "
        f"({int(peer[0]['outputs'])} stream outputs for the cell)"
    )
    sizes = ", ".join(f"{s / 1024:.1f}" for s in got["doc_sizes"])  # type: ignore[attr-defined]
    print(
        f"runtime document: {got['doc_before'] / 1024:.1f} KiB before, after each run: "  # type: ignore[operator]
        f"{sizes} KiB"
    )


if __name__ == "__main__":
    main()
