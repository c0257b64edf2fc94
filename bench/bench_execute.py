"""Warm ``1+1`` round trip: ExecuteCell → result visible to the client, vs a bare
jupyter_client execute loop on the same machine (the floor: ipykernel's own cost).

Run: ``python bench/bench_execute.py [N]`` (default 500). Prints medians, p99s and the ratios.
The floor is measured twice: with ipykernel's defaults (what jupyter_client users get) and
with the options the daemon launches ipykernel with (no pre-reply sleep, history in memory,
docs/runtimes.md), so the daemon's own overhead is the ratio against the second.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import bare_execute, daemon_process, summary, write_notebook
from runtimed.client import AsyncClient


def bare_loop(n: int, extra_arguments: list[str] | None = None) -> list[float]:
    """The peer: one kernel, execute_request('1+1'), wait for the reply and IOPub idle."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", extra_arguments=extra_arguments or [])
    try:
        times = []
        for _ in range(n + 20):
            start = time.perf_counter()
            assert bare_execute(kc, "1+1") is not None
            times.append(time.perf_counter() - start)
        return times[20:]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/<pid>/stat``): unlike wall time, barely
    moved by other work on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def daemon_loop(
    sock: Path, work: Path, n: int, daemon_pid: int
) -> tuple[list[float], float, float]:
    """Round trips after 20 warm-ups, and the daemon's and this client's CPU per cell."""
    path = write_notebook(work / "bench.ipynb", ["1+1"])
    async with await AsyncClient.connect(sock) as client:
        nb = await client.open(path)
        times = []
        for i in range(n + 20):
            if i == 20:
                daemon_cpu, client_cpu = cpu_seconds(daemon_pid), time.process_time()
            start = time.perf_counter()
            result = await nb.execute("c0")
            assert result.outputs[0]["data"]["text/plain"] == "2", result
            times.append(time.perf_counter() - start)
        daemon_cpu = (cpu_seconds(daemon_pid) - daemon_cpu) / n
        client_cpu = (time.process_time() - client_cpu) / n
        return times[20:], daemon_cpu, client_cpu


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    from runtimed.runtimes.registry import MEMORY_HISTORY_ARG, NO_EXECUTE_SLEEP_ARG

    bare = bare_loop(n)
    tuned = bare_loop(n, [NO_EXECUTE_SLEEP_ARG, MEMORY_HISTORY_ARG])
    with daemon_process() as (sock, proc, work):
        ours, daemon_cpu, client_cpu = anyio.run(
            daemon_loop, sock, work, n, proc.pid, backend_options={"use_uvloop": True}
        )
    import statistics

    print(
        f"load (uptime): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} CPUs"
    )
    print(summary("bare jupyter_client loop (peer, defaults)", bare))
    print(summary("bare loop, the daemon's kernel options", tuned))
    print(summary("runtimed ExecuteCell -> result at client", ours))
    for label, peer in (("defaults", bare), ("same options", tuned)):
        ratio = statistics.median(ours) / statistics.median(peer)
        print(f"ratio (median runtimed / median bare, {label}): {ratio:.2f}x")
    print(
        f"CPU per cell: daemon {daemon_cpu * 1000:.2f} ms, client {client_cpu * 1000:.2f} ms "
        "(wall time minus these is mostly the kernel and waiting for a CPU)"
    )


if __name__ == "__main__":
    main()
