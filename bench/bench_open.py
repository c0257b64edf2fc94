"""Opening a 1,000-cell notebook: time until the client's replica is ready, daemon memory.

A generated notebook (mixed code and markdown cells, ~5 lines each) is copied to several
paths; each is opened cold through the client (the daemon reads, validates, builds the
Automerge documents, and syncs them to the client's replica). Also timed: a second client
joining a notebook that is already open (sync only). Daemon RSS (``VmRSS``) is read before
and after.

Peers, measured in the same run on the same file, in-process: ``json.loads``;
``nbformat.read`` (parse + validate, what Jupyter and nbclient do first); and nbclient's
whole pre-kernel step (``nbformat.read`` + ``NotebookClient(nb)``).

Run: ``python bench/bench_open.py [CELLS] [RUNS]`` (default 1000 cells, 5 cold opens).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import daemon_process, rss_kib, write_notebook


def sources(cells: int) -> list[str]:
    out = []
    for i in range(cells):
        if i % 3 == 2:
            out.append(
                f"## Section {i}\n\nSome *markdown* text for cell {i}, with é and 😀.\n"
                f"- item one\n- item two"
            )
        else:
            out.append(
                f"import math\nvalue_{i} = math.sqrt({i})\nfor j in range(3):\n"
                f"    value_{i} += j\nprint(value_{i})"
            )
    return out


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:9.2f} ms"


def time_peer(fn: object, runs: int) -> list[float]:
    fn()  # type: ignore[operator]  # warm-up: imports, schema caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return times


async def open_all(sock: Path, paths: list[Path]) -> tuple[list[float], list[float], int]:
    from runtimed.client import AsyncClient

    cold: list[float] = []
    join: list[float] = []
    cells = 0
    async with await AsyncClient.connect(sock) as client:
        await client.ping()
        for path in paths:
            start = time.perf_counter()
            nb = await client.open(path)  # returns once the replica holds the document
            cells = len(nb.cell_ids())
            cold.append(time.perf_counter() - start)
        for path in paths:
            async with await AsyncClient.connect(sock) as second:
                start = time.perf_counter()
                nb = await second.open(path)
                assert len(nb.cell_ids()) == cells
                join.append(time.perf_counter() - start)
    return cold, join, cells


def main() -> None:
    # No kernel pool: this benchmark runs no code, so its daemon starts no kernel.
    os.environ["RUNTIMED_POOL_SIZE"] = "0"
    n_cells = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5

    with daemon_process() as (sock, proc, work):
        source = write_notebook(work / "big.ipynb", sources(n_cells), markdown_every=3)
        paths = [source]
        for i in range(1, runs):
            paths.append(work / f"big-{i}.ipynb")
            shutil.copyfile(source, paths[-1])
        size = source.stat().st_size

        import nbformat
        from nbclient import NotebookClient

        text = source.read_text()
        peer_runs = max(runs, 10)
        t_json = time_peer(lambda: json.loads(text), peer_runs)
        t_nbformat = time_peer(lambda: nbformat.read(source, as_version=4), peer_runs)
        t_nbclient = time_peer(
            lambda: NotebookClient(nbformat.read(source, as_version=4)), peer_runs
        )

        rss_before = rss_kib(proc.pid)
        cold, join, cells = anyio.run(
            open_all, sock, paths, backend="asyncio", backend_options={"use_uvloop": True}
        )
        rss_after = rss_kib(proc.pid)
        assert cells == n_cells, cells

    per_notebook = (rss_after - rss_before) / len(paths)
    print(f"open a {n_cells}-cell notebook ({size / 1024:.0f} KiB on disk), {runs} runs")
    print(f"peer: json.loads                          median {median_ms(t_json)}")
    print(f"peer: nbformat.read (parse + validate)    median {median_ms(t_nbformat)}")
    print(f"peer: nbclient pre-kernel (read + client) median {median_ms(t_nbclient)}")
    print(
        f"runtimed: cold open until replica ready   median {median_ms(cold)}"
        f"   (first {cold[0] * 1000:.2f} ms, max {max(cold) * 1000:.2f} ms)"
    )
    print(f"runtimed: 2nd client joins an open one    median {median_ms(join)}")
    nb_median = statistics.median(t_nbformat)
    print(f"ratio cold open / nbformat.read:     {statistics.median(cold) / nb_median:6.1f}x")
    print(
        f"ratio cold open / nbclient pre-kernel: "
        f"{statistics.median(cold) / statistics.median(t_nbclient):4.1f}x"
    )
    print(f"ratio join / nbformat.read:          {statistics.median(join) / nb_median:6.1f}x")
    print(
        f"daemon RSS: {rss_before / 1024:.1f} MiB idle -> {rss_after / 1024:.1f} MiB with "
        f"{len(paths)} notebooks open (+{per_notebook / 1024:.1f} MiB per notebook; "
        f"file {size / 1024 / 1024:.2f} MiB)"
    )


if __name__ == "__main__":
    main()
