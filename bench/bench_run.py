"""Whole-process ``runt run`` vs the ``papermill`` command line, on the same notebooks.

Run: ``python bench/bench_run.py [REPEATS] [SCENARIO ...]`` (default 3 repeats, every
scenario: ``small``, ``cold``, ``big``, ``batch``, ``ps``). ``BENCH_PYC=0``: run our code as
an editable checkout under ``PYTHONDONTWRITEBYTECODE=1`` without ``.pyc`` files (they are
removed first); default: byte-compiled, as pip installs a package. Run it with another
virtualenv's python (e.g. one with ``jupyter_server``) to measure that environment. Every figure is the wall time of a whole
command (``python -m runtimed.cli run ...`` / ``papermill ...``) as a user runs it, median of
REPEATS runs, printed with the ratio papermill / runt (above 1: runt is faster). The runs of
the two tools alternate, so a noisy moment on a shared machine hits both alike.

- a 3-cell parameterized notebook (``-p``), with the daemon already running (warm), and with
  no daemon (``runt`` autostarts a fresh one: cold; the daemon is stopped after each run);
- a 300-cell notebook of trivial cells (daemon running);
- a batch of 16 small notebooks: ``runt run --output-dir ... --jobs 2`` vs 16 papermill
  commands one after another (what a shell loop does);
- ``runt ps`` and ``runt daemon status`` (the peer: ``python -c pass``, the interpreter).

The warm and cold small runs also print where the ``runt`` process spent its time (medians,
from ``RUNTIMED_PHASES_FILE`` stamps: :mod:`runtimed.automation.phases`).

Nothing is asserted. Each run writes its own output file in a temp directory.
"""

from __future__ import annotations

import json
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

# The phases a runt run stamps (runtimed.automation.phases), in order, and their labels.
PHASES = (
    ("imported", "loop+imports"),
    ("prepared", "prepare"),
    ("connected", "connect"),
    ("opened", "open"),
    ("executed", "execute"),
    ("saved", "save"),
    ("closed", "close"),
)
BREAKDOWN: dict[str, list[dict[str, float]]] = {}

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


def timed(cmd: list[str], *, env: dict[str, str] | None = None, phases: str | None = None) -> float:
    """Wall time of ``cmd``; with ``phases`` (a BREAKDOWN key) its phase stamps are kept."""
    env = dict(env or ENV)
    stamps = None
    if phases is not None:
        fd, stamps = tempfile.mkstemp(prefix="rtr-phases-", dir="/tmp")
        os.close(fd)
        env["RUNTIMED_PHASES_FILE"] = stamps
    start = time.monotonic()  # CLOCK_MONOTONIC, as the stamps
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    end = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    if phases is not None and stamps is not None:
        marks = dict(json.loads(Path(stamps).read_text() or "[]"))
        os.unlink(stamps)
        if "main" not in marks:
            return end - start  # a runt without phase stamps (an older commit)
        row, last = {"main": marks["main"] - start}, marks["main"]
        for key, _label in PHASES:
            if key in marks:
                row[key], last = marks[key] - last, marks[key]
        row["end"] = end - last
        BREAKDOWN.setdefault(phases, []).append(row)
    return end - start


def interpreter_start(repeats: int) -> float:
    """Median wall time of ``python -c pass``: the floor of any Python command."""
    return statistics.median(timed([sys.executable, "-c", "pass"]) for _ in range(max(repeats, 5)))


def breakdown(key: str, interpreter: float) -> None:
    rows = BREAKDOWN.get(key, [])
    if not rows:
        return
    parts = [("interpreter", interpreter)]
    parts.append(("imports", statistics.median(r["main"] for r in rows) - interpreter))
    for phase, label in PHASES:
        values = [r[phase] for r in rows if phase in r]
        if values:
            parts.append((label, statistics.median(values)))
    parts.append(("exit", statistics.median(r["end"] for r in rows)))
    text = " | ".join(f"{label} {value * 1000:.0f}" for label, value in parts)
    print(f"    runt's time, ms (medians): {text}", flush=True)


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


def line(label: str, ours: float, peer: float, peer_name: str = "papermill") -> None:
    print(
        f"{label:<46} {ours * 1000:8.0f} {peer * 1000:9.0f}  {peer / ours:6.2f}x  {peer_name}",
        flush=True,
    )


def header(repeats: int) -> None:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    import importlib.util

    if importlib.util.find_spec("jupyter_server") is not None:
        extra = "jupyter_server installed"
    else:
        extra = "bare install (no jupyter_server)"
    pyc = "editable, no .pyc (PYTHONDONTWRITEBYTECODE=1)" if NO_PYC else "byte-compiled (.pyc)"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"runt run vs papermill, median of {repeats}; {time.strftime('%Y-%m-%d %H:%M')}; "
        f"commit {commit}{'+' if dirty else ''}; python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs, load {load}; {extra}; {pyc}",
        flush=True,
    )
    print(f"{'figure':<46} {'runt ms':>8} {'peer ms':>9}  {'ratio':>7}  peer", flush=True)


def stop_daemon(socket: Path, home: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "runtimed.cli", "--socket", str(socket), "daemon", "stop"],
        env=ENV,
        capture_output=True,
        check=False,
        timeout=60,
    )
    shutil.rmtree(home, ignore_errors=True)


NO_PYC = os.environ.get("BENCH_PYC", "1") == "0"


def remove_bytecode() -> None:
    for package in ("protocol", "blobstore", "runtimed", "bench"):
        for cache in (ROOT / package).rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    scenarios = set(sys.argv[2:]) or {"small", "cold", "big", "batch", "ps"}
    if NO_PYC:
        remove_bytecode()
        ENV["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
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
    header(repeats)
    interpreter = interpreter_start(repeats)
    try:
        with daemon_process() as (socket, _proc, _):
            timed(runt(socket, small, work / "warmup.ipynb", *params))  # first kernel, caches

            def papermill_small(i: int) -> float:
                return timed([*PAPERMILL, str(small), str(work / f"p{i}.ipynb"), *params])

            if "small" in scenarios:
                ours, peer = paired(
                    repeats,
                    lambda i: timed(
                        runt(socket, small, work / f"s{i}.ipynb", *params), phases="small"
                    ),
                    papermill_small,
                )
                line("3-cell parameterized notebook (daemon warm)", ours, peer)
                breakdown("small", interpreter)

            def cold(i: int) -> float:
                sock, home = work / f"cold{i}.sock", work / f"cold-home{i}"
                try:
                    return timed(
                        runt(sock, small, work / f"c{i}.ipynb", *params),
                        env={**ENV, "RUNTIMED_HOME": str(home)},
                        phases="cold",
                    )
                finally:
                    stop_daemon(sock, home)

            if "cold" in scenarios:
                ours, peer = paired(repeats, cold, papermill_small)
                line("3-cell parameterized notebook (autostart cold)", ours, peer)
                breakdown("cold", interpreter)

            if "big" in scenarios:
                ours, peer = paired(
                    repeats,
                    lambda i: timed(runt(socket, big, work / f"b{i}.ipynb"), phases="big"),
                    lambda i: timed([*PAPERMILL, str(big), str(work / f"bp{i}.ipynb")]),
                )
                line("300 trivial cells (daemon warm)", ours, peer)
                breakdown("big", interpreter)

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

            if "ps" in scenarios:
                for name, args in (
                    ("runt ps", ["ps"]),
                    ("runt daemon status", ["daemon", "status"]),
                ):
                    cmd = [sys.executable, "-m", "runtimed.cli", "--socket", str(socket), *args]
                    ours = statistics.median(timed(cmd) for _ in range(max(repeats, 5)))
                    line(f"{name} (whole process)", ours, interpreter, "python -c pass")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
