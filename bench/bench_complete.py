"""Completion round trip: ``Complete`` through the daemon (client → daemon → kernel → client)
vs a bare jupyter_client ``complete_request`` on the same kind of kernel (ipykernel with the
options the daemon launches it with).  Also what a completion costs while a cell runs
(``time.sleep(2)``): through the daemon (the kernel's service subshell answers it) and bare on
the main shell (it waits for the cell).

Run: ``python bench/bench_complete.py [N]`` (default 300). Prints medians, p99s and the ratio.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import daemon_process, summary, write_notebook
from runtimed.client import AsyncClient

CODE = "import os\nos.pa"
SLEEP = "import time; time.sleep(2)"


def bare_loop(n: int, extra_arguments: list[str]) -> tuple[list[float], float]:
    """The peer: one kernel, complete_request on its shell, wait for complete_reply."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", extra_arguments=extra_arguments)
    try:
        kc.execute_interactive("import os", timeout=30)
        times = []
        for _ in range(n + 20):
            start = time.perf_counter()
            kc.complete(CODE, len(CODE))
            reply = kc.get_shell_msg(timeout=10)
            assert "os.path" in reply["content"]["matches"] or "path" in reply["content"]["matches"]
            times.append(time.perf_counter() - start)
        # While a cell sleeps: the main shell answers after it.
        kc.execute(SLEEP)
        time.sleep(0.3)  # a benchmark, not a test: let the cell start
        start = time.perf_counter()
        msg_id = kc.complete(CODE, len(CODE))
        while True:
            reply = kc.get_shell_msg(timeout=10)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        busy = time.perf_counter() - start
        return times[20:], busy
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


async def daemon_loop(sock: Path, work: Path, n: int) -> tuple[list[float], float]:
    path = write_notebook(work / "bench.ipynb", [CODE, "import os", SLEEP])
    async with await AsyncClient.connect(sock) as client:
        nb = await client.open(path)
        assert (await nb.execute("c1")).status == "ok"
        times = []
        for _ in range(n + 20):
            start = time.perf_counter()
            reply = await nb.complete("c0")
            assert "os.path" in reply.matches or "path" in reply.matches, reply
            times.append(time.perf_counter() - start)
        execution_id = await nb.queue("c2")
        await client.wait_until(lambda: nb.runtime.running() == execution_id, timeout=30)
        start = time.perf_counter()
        await nb.complete("c0")
        busy = time.perf_counter() - start
        assert nb.runtime.execution_status(execution_id) == "running"
        await nb.wait_execution(execution_id, timeout=30)
        return times[20:], busy


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    from runtimed.runtimes.registry import MEMORY_HISTORY_ARG, NO_EXECUTE_SLEEP_ARG

    bare, bare_busy = bare_loop(n, [NO_EXECUTE_SLEEP_ARG, MEMORY_HISTORY_ARG])
    with daemon_process() as (sock, _proc, work):
        ours, ours_busy = anyio.run(
            daemon_loop, sock, work, n, backend_options={"use_uvloop": True}
        )
    print(summary("bare jupyter_client complete_request (peer)", bare))
    print(summary("runtimed Complete -> reply at client", ours))
    print(
        f"ratio (median runtimed / median bare): {statistics.median(ours) / statistics.median(bare):.2f}x"
    )
    print(f"ratio (p99 runtimed / p99 bare): {_p99(ours) / _p99(bare):.2f}x")
    print(
        f"while a 2 s cell runs: bare main shell {bare_busy * 1000:.0f} ms (waits for the cell),"
        f" runtimed {ours_busy * 1000:.1f} ms (service subshell)"
    )


def _p99(values: list[float]) -> float:
    from bench._common import percentile

    return percentile(values, 99)


if __name__ == "__main__":
    main()
