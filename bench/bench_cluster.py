"""Batches on Dask: a grid of 32 small notebooks three ways, and the cluster path's per-run cost.

Run: ``python bench/bench_cluster.py [REPEATS] [RUNS]`` (default 1 repeat of the grid, 10
single runs). Needs the test extra (distributed, papermill). Prints, with ``uptime``'s load:

- the grid (32 runs of a 3-cell parameterized notebook), whole commands as a user runs them:
  ``runt run --batch grid.yaml --jobs 2`` on a warm local daemon, ``runt run --batch
  grid.yaml --cluster local:2`` (starts a 2-process LocalCluster, one daemon per worker, and
  stops it all), and 32 ``papermill`` commands one after another; ratios papermill / runt;
- where the ``local:2`` command's time goes: LocalCluster start, a worker's first run (its
  daemon's cold start), and a warm run;
- per run, a 1-cell notebook, submit to result through a warm ``local:2`` cluster
  (``Client.submit(run_on_worker)`` → the output bytes back), against the same run on a
  warm local daemon (``execute_notebook_async``), and the part spent on the worker.

Nothing is asserted.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio

from bench._common import ROOT, compile_project, daemon_process, write_notebook

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
PAPERMILL = [sys.executable, "-m", "papermill", "--no-progress-bar", "--log-level", "WARNING"]
PAPERMILL += ["-k", "python3"]


def load() -> str:
    return os.getloadavg().__repr__()


def timed(cmd: list[str], *, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed


def runt(socket: Path, *args: str | Path) -> list[str]:
    cli = [sys.executable, "-m", "runtimed.cli", "--socket", str(socket), "run"]
    return [*cli, "--no-progress-bar", *map(str, args)]


def grid(work: Path, repeats: int) -> None:
    notebook = write_notebook(work / "small.ipynb", ["x = 0", "y = x * x", "print(y)"])
    text = notebook.read_text().replace(
        '"metadata": {}, "source": "x = 0',
        '"metadata": {"tags": ["parameters"]}, "source": "x = 0',
        1,
    )
    notebook.write_text(text)
    spec = work / "grid.yaml"
    spec.write_text(
        "grid:\n  input: small.ipynb\n  output: 'out/{x}.ipynb'\n"
        f"  parameters:\n    x: [{', '.join(map(str, range(32)))}]\n"
    )
    local, cluster, papermill = [], [], []
    with daemon_process() as (socket, _proc, _):
        timed(runt(socket, notebook, work / "warm.ipynb"))  # first kernel, caches
        for _ in range(repeats):
            print(f"  load {load()}", flush=True)
            local.append(timed(runt(socket, "--batch", spec, "--jobs", "2"), cwd=work))
            cluster.append(timed(runt(socket, "--batch", spec, "--cluster", "local:2"), cwd=work))
            start = time.perf_counter()
            (work / "pm").mkdir(exist_ok=True)
            for x in range(32):
                timed(
                    [*PAPERMILL, str(notebook), str(work / "pm" / f"{x}.ipynb"), "-p", "x", str(x)]
                )
            papermill.append(time.perf_counter() - start)
    pm = statistics.median(papermill)
    for label, values in (
        ("runt run --jobs 2 (warm daemon)", local),
        ("runt run --cluster local:2", cluster),
    ):
        ours = statistics.median(values)
        print(
            f"32-notebook grid: {label:<34} {ours:7.1f} s   papermill in turn {pm:7.1f} s   ratio {pm / ours:5.2f}x",
            flush=True,
        )


async def per_run(work: Path, runs: int) -> None:
    from distributed import Client, LocalCluster

    from runtimed.automation.cluster_worker import (
        PLUGIN_NAME,
        RuntimedWorkerPlugin,
        WorkerJob,
        run_on_worker,
    )
    from runtimed.automation.run import execute_notebook_async

    one = write_notebook(work / "one.ipynb", ["1 + 1"])
    data = one.read_bytes()
    start = time.perf_counter()
    cluster = await anyio.to_thread.run_sync(
        lambda: LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
    )
    started = time.perf_counter() - start
    try:
        client = await Client(cluster.scheduler_address, asynchronous=True)
        try:
            await client.register_plugin(RuntimedWorkerPlugin(), name=PLUGIN_NAME)
            await client.wait_for_workers(2)
            workers = list(client.scheduler_info()["workers"])

            async def submit(index: int, worker: str) -> tuple[float, float]:
                job = WorkerJob(
                    index, str(one), str(work / f"o{index}.ipynb"), data, {}, {"cwd": str(work)}
                )
                t = time.perf_counter()
                future = client.submit(run_on_worker, job, pure=False, workers=[worker])
                outcome = await future
                return time.perf_counter() - t, outcome.result.duration

            first = [await submit(i, w) for i, w in enumerate(workers)]  # each daemon's cold start
            warm = [await submit(100 + i, workers[i % 2]) for i in range(runs)]
        finally:
            await client.close()
    finally:
        await anyio.to_thread.run_sync(cluster.close)
    with daemon_process() as (socket, _proc, _):
        await execute_notebook_async(one, work / "lw.ipynb", socket=socket, progress_bar=False)
        local = []
        for i in range(runs):
            t = time.perf_counter()
            await execute_notebook_async(
                one, work / f"l{i}.ipynb", socket=socket, progress_bar=False
            )
            local.append(time.perf_counter() - t)
    total = statistics.median(w[0] for w in warm)
    on_worker = statistics.median(w[1] for w in warm)
    here = statistics.median(local)
    print(
        f"local:2 start (LocalCluster, 2 worker processes)     {started * 1000:8.0f} ms", flush=True
    )
    print(
        f"first run on each worker (daemon cold start + run)  {', '.join(f'{f[0] * 1000:.0f}' for f in first)} ms",
        flush=True,
    )
    print(
        f"1-cell run, cluster submit->result (warm), median   {total * 1000:8.0f} ms   n={runs}",
        flush=True,
    )
    print(
        f"  of which execute_notebook_async on the worker      {on_worker * 1000:8.0f} ms",
        flush=True,
    )
    print(
        f"  Dask + transfer + staging (the rest)              {(total - on_worker) * 1000:8.0f} ms",
        flush=True,
    )
    print(
        f"1-cell run, local warm daemon execute_notebook_async {here * 1000:8.0f} ms   n={runs}",
        flush=True,
    )
    print(
        f"cluster path overhead per run                       {(total - here) * 1000:8.0f} ms   ratio {total / here:5.2f}x",
        flush=True,
    )


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    compile_project()
    work = Path(tempfile.mkdtemp(prefix="rtc-", dir="/tmp"))
    print(
        f"bench_cluster: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load()}",
        flush=True,
    )
    try:
        anyio.run(per_run, work, runs, backend="asyncio", backend_options={"use_uvloop": True})
        print(f"  load {load()}", flush=True)
        grid(work, repeats)
        print(f"done, load {load()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
