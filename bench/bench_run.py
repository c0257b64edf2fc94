"""Whole-process ``runt run`` vs the ``papermill`` command line, on the same notebooks.

Run: ``python bench/bench_run.py [REPEATS] [SCENARIO ...]`` (default 3 repeats, every
scenario: ``small``, ``cold``, ``big``, ``batch``). Every figure is the wall time of a whole
command (``python -m runtimed.cli run ...`` / ``papermill ...``) as a user runs it, median of
REPEATS runs, printed with the ratio papermill / runt (above 1: runt is faster). The runs of
the two tools alternate, so a noisy moment on a shared machine hits both alike.

- a 3-cell parameterized notebook (``-p``), with the daemon already running (warm), and with
  no daemon (``runt`` autostarts a fresh one: cold; the daemon is stopped after each run);
- a 300-cell notebook of trivial cells (daemon running);
- a batch of 16 small notebooks: ``runt run --output-dir ... --jobs 2`` vs 16 papermill
  commands one after another (what a shell loop does).

Nothing is asserted. Each run writes its own output file in a temp directory.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, compile_project, daemon_process, write_notebook

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
PAPERMILL = [
    sys.executable,
    "-m",
    "papermill",
    "--no-progress-bar",
    "--log-level",
    "WARNING",
    "-k",
    "python3",
]


def runt(socket: Path, *args: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "runtimed.cli",
        "--socket",
        str(socket),
        "run",
        "--no-progress-bar",
        *map(str, args),
    ]


def timed(cmd: list[str], *, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed


def paired(
    repeats: int, ours: Callable[[int], float], peer: Callable[[int], float]
) -> tuple[float, float]:
    """Medians of ``ours`` and ``peer``, run alternately."""
    mine, theirs = [], []
    for i in range(repeats):
        mine.append(ours(i))
        theirs.append(peer(i))
    if os.environ.get("BENCH_VERBOSE"):
        print("  runs:", [round(x, 2) for x in mine], [round(x, 2) for x in theirs], flush=True)
    return statistics.median(mine), statistics.median(theirs)


def line(label: str, ours: float, peer: float) -> None:
    print(
        f"{label:<46} runt {ours * 1000:8.0f} ms   papermill {peer * 1000:8.0f} ms   "
        f"ratio {peer / ours:5.2f}x",
        flush=True,
    )


def stop_daemon(socket: Path, home: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "runtimed.cli", "--socket", str(socket), "daemon", "stop"],
        env=ENV,
        capture_output=True,
        check=False,
        timeout=60,
    )
    shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    scenarios = set(sys.argv[2:]) or {"small", "cold", "big", "batch"}
    compile_project()
    work = Path(tempfile.mkdtemp(prefix="rtr-", dir="/tmp"))
    small = write_notebook(
        work / "small.ipynb",
        [
            "alpha = 1\nname = 'x'",
            "print(name * alpha)",
            "result = alpha ** 2\nresult",
        ],
    )
    # write_notebook gives no tags: tag the first cell as the parameters cell.
    text = small.read_text().replace(
        '"metadata": {}, "source": "alpha',
        '"metadata": {"tags": ["parameters"]}, "source": "alpha',
        1,
    )
    small.write_text(text)
    big = write_notebook(work / "big.ipynb", [f"x{i} = {i}" for i in range(300)])
    batch = work / "batch"
    batch.mkdir()
    inputs = [
        write_notebook(batch / f"nb{i:02d}.ipynb", [f"n = {i}", "n * n", "print(n)"])
        for i in range(16)
    ]
    params = ["-p", "alpha", "3", "-p", "name", "y"]
    print(
        f"runt run vs papermill, median of {repeats}; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        with daemon_process() as (socket, _proc, _):
            timed(runt(socket, small, work / "warmup.ipynb", *params))  # first kernel, caches

            def papermill_small(i: int) -> float:
                return timed([*PAPERMILL, str(small), str(work / f"p{i}.ipynb"), *params])

            if "small" in scenarios:
                ours, peer = paired(
                    repeats,
                    lambda i: timed(runt(socket, small, work / f"s{i}.ipynb", *params)),
                    papermill_small,
                )
                line("3-cell parameterized notebook (daemon warm)", ours, peer)

            def cold(i: int) -> float:
                sock, home = work / f"cold{i}.sock", work / f"cold-home{i}"
                try:
                    return timed(
                        runt(sock, small, work / f"c{i}.ipynb", *params),
                        env={**ENV, "RUNTIMED_HOME": str(home)},
                    )
                finally:
                    stop_daemon(sock, home)

            if "cold" in scenarios:
                ours, peer = paired(repeats, cold, papermill_small)
                line("3-cell parameterized notebook (autostart cold)", ours, peer)

            if "big" in scenarios:
                ours, peer = paired(
                    repeats,
                    lambda i: timed(runt(socket, big, work / f"b{i}.ipynb")),
                    lambda i: timed([*PAPERMILL, str(big), str(work / f"bp{i}.ipynb")]),
                )
                line("300 trivial cells (daemon warm)", ours, peer)

            def runt_batch(i: int) -> float:
                return timed(runt(socket, *inputs, "--output-dir", work / f"out{i}", "--jobs", "2"))

            def papermill_batch(i: int) -> float:
                start = time.perf_counter()
                for nb in inputs:
                    timed([*PAPERMILL, str(nb), str(work / f"pout{i}" / nb.name)])
                return time.perf_counter() - start

            if "batch" in scenarios:
                for i in range(repeats):
                    (work / f"pout{i}").mkdir()
                line(
                    "16 notebooks: --jobs 2 vs papermill in turn",
                    *paired(repeats, runt_batch, papermill_batch),
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
