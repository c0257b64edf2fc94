"""A long interactive session: two cells re-run in turn thousands of times in one notebook,
the ExecuteCell → result round trip per block of executions, against a bare jupyter_client
loop (the daemon's kernel options) over as many executions, blocks of the two interleaved.

Run: ``python bench/bench_long.py [EXECUTIONS] [BLOCK]`` (default 3000 and 500). Prints one
row per block: median runtimed, median bare, ratio. Without the daemon replacing the runtime
document (``RUNTIME_COMPACT_EVERY``, ``docs/schema.md``) the runtimed column grew with every
block (8 → 28 ms over 4,000 executions on this machine); the bare loop's does not.
Nothing is asserted.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import bare_execute, daemon_process, write_notebook
from runtimed.client import AsyncClient


class BareKernel:
    """The peer: one ipykernel with the daemon's options, driven by jupyter_client."""

    def __init__(self) -> None:
        from jupyter_client.manager import start_new_kernel

        from runtimed.runtimes.registry import MEMORY_HISTORY_ARG, NO_EXECUTE_SLEEP_ARG

        self.km, self.kc = start_new_kernel(
            kernel_name="python3", extra_arguments=[NO_EXECUTE_SLEEP_ARG, MEMORY_HISTORY_ARG]
        )

    def block(self, n: int) -> list[float]:
        kc, times = self.kc, []
        for i in range(n):
            start = time.perf_counter()
            assert bare_execute(kc, "1+1" if i % 2 else "2+2") is not None
            times.append(time.perf_counter() - start)
        return times

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


async def session(sock: Path, work: Path, total: int, block: int, bare: BareKernel) -> None:
    path = write_notebook(work / "long.ipynb", ["1+1", "2+2"])
    async with await AsyncClient.connect(sock) as client:
        nb = await client.open(path)
        await nb.execute("c0", timeout=60)
        done = 0
        while done < total:
            ours = []
            for i in range(block):
                start = time.perf_counter()
                await nb.execute("c0" if i % 2 else "c1", timeout=60)
                ours.append(time.perf_counter() - start)
            done += block
            theirs = await anyio.to_thread.run_sync(bare.block, block)
            mine, peer = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
            print(
                f"executions {done - block + 1:5d}-{done:<5d}  runtimed {mine:7.2f} ms   "
                f"bare {peer:7.2f} ms   {mine / peer:5.2f}x",
                flush=True,
            )


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    block = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"long session, two cells re-run in turn; load {load}, {os.cpu_count()} CPUs")
    bare = BareKernel()
    try:
        with daemon_process() as (sock, _proc, work):
            anyio.run(session, sock, work, total, block, bare, backend_options={"use_uvloop": True})
    finally:
        bare.close()


if __name__ == "__main__":
    main()
