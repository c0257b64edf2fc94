"""Per-cell cost of several checkouts in one sitting: ExecuteCell round trips interleaved.

Run: ``python bench/bench_compare.py [--rounds R] [--cells N] CHECKOUT[=PYTHON] ...``

Each checkout gets its own daemon (started by that checkout's ``bench/_common.py``) and one
driver process (this file with ``--drive``, run by ``PYTHON``, default this interpreter),
holding a notebook with a ``1+1`` cell. The drivers take turns: round after round, each
runs N cells while the others wait, the order reversed every other round, so a busy moment
on a shared machine hits every checkout alike. Printed per checkout: the median round trip,
the daemon's CPU per cell, the client's, and the daemon's whole process tree's (its kernels
and their nannies), from ``/proc`` — CPU moves less than wall time with the load.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _tree(pid: int) -> list[int]:
    found, stack = [pid], [pid]
    while stack:
        for task in Path(f"/proc/{stack.pop()}/task").iterdir():
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                children = []
            found += children
            stack += children
    return found


def _tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # exited meanwhile
            total += _cpu(pid)
    return total


def drive(root: Path) -> None:
    """The driver: a daemon of ``root``; each stdin line ``N`` runs N cells, prints JSON."""
    sys.path.insert(0, str(root))
    import anyio

    from bench._common import daemon_process, write_notebook
    from runtimed.client import AsyncClient

    async def run(sock: Path, work: Path, daemon_pid: int) -> None:
        path = write_notebook(work / "bench.ipynb", ["1+1"])
        async with await AsyncClient.connect(sock) as client:
            nb = await client.open(path)
            for _ in range(30):
                await nb.execute("c0")
            print("ready", flush=True)
            while line := (await anyio.to_thread.run_sync(sys.stdin.readline)).strip():
                n, procs = int(line), _tree(daemon_pid)
                daemon, tree, own = _cpu(daemon_pid), _tree_cpu(procs), time.process_time()
                times = []
                for _ in range(n):
                    start = time.perf_counter()
                    await nb.execute("c0")
                    times.append(time.perf_counter() - start)
                figures = {
                    "times": times,
                    "daemon": (_cpu(daemon_pid) - daemon) / n,
                    "tree": (_tree_cpu(procs) - tree) / n,
                    "client": (time.process_time() - own) / n,
                }
                print(json.dumps(figures), flush=True)

    with daemon_process() as (sock, proc, work):
        anyio.run(run, sock, work, proc.pid, backend_options={"use_uvloop": True})


def _ask(pipe: IO[str] | None) -> IO[str]:
    assert pipe is not None
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cells", type=int, default=30, help="cells per turn")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("checkouts", nargs="*", help="CHECKOUT[=PYTHON]")
    args = parser.parse_args()
    if args.drive:
        drive(Path(args.drive))
        return
    targets: list[tuple[str, str]] = []
    for spec in args.checkouts:
        root, _, python = spec.partition("=")
        targets.append((str(Path(root).resolve()), python or sys.executable))
    drivers = {
        root: subprocess.Popen(
            [python, __file__, "--drive", root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=root,  # python -m puts the working directory first on sys.path
            text=True,
        )
        for root, python in targets
    }
    results: dict[str, dict[str, list[Any]]] = {}
    load_before = os.getloadavg()
    try:
        for root, proc in drivers.items():
            while (line := _ask(proc.stdout).readline()) and line.strip() != "ready":
                pass  # what an older checkout prints on stdout while starting
            if not line:
                raise RuntimeError(f"{root}: the driver did not start")
            results[root] = {"times": [], "daemon": [], "tree": [], "client": []}
        order = list(drivers)
        for round_ in range(args.rounds):
            for root in order if round_ % 2 == 0 else order[::-1]:
                proc = drivers[root]
                _ask(proc.stdin).write(f"{args.cells}\n")
                _ask(proc.stdin).flush()
                while not (line := _ask(proc.stdout).readline()).startswith("{"):
                    if not line:
                        raise RuntimeError(f"{root}: the driver stopped")
                figures = json.loads(line)
                results[root]["times"] += figures["times"]
                for key in ("daemon", "tree", "client"):
                    results[root][key].append(figures[key])
    finally:
        for proc in drivers.values():
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in drivers.values():
            proc.wait(timeout=60)
    load = os.getloadavg()
    print(
        f"load (1 min) before {load_before[0]:.2f}, after {load[0]:.2f}; {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds x {args.cells} cells, interleaved"
    )
    print(f"{'checkout':<32} {'median':>9} {'daemon CPU':>11} {'client CPU':>11} {'tree CPU':>9}")
    for root, r in results.items():
        ms = [statistics.median(r[key]) * 1000 for key in ("times", "daemon", "client", "tree")]
        print(f"{root[-32:]:<32} {ms[0]:6.2f} ms {ms[1]:8.2f} ms {ms[2]:8.2f} ms {ms[3]:6.2f} ms")


if __name__ == "__main__":
    main()
