"""Sync latency: one client splices a character into a cell, other clients see it.

Each receiving client runs in its own process (as real clients do) and stamps the moment its
replica shows the edit with ``time.perf_counter()`` (CLOCK_MONOTONIC: one clock for every
process on the machine); the writer waits until every receiver has stamped edit k before it
makes edit k+1, so this measures latency, not throughput.

Peer, measured in the same run: two Automerge documents in one process, the same edit
synced with ``generate_sync_message``/``receive_sync_message`` through encoded bytes. The
ratio is what the protocol, the daemon relay and the Unix socket add.

Run: ``python bench/bench_sync.py [EDITS] [CLIENTS...]`` (default 1000 edits, with 1 and
with 20 receiving clients).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import daemon_process, summary, write_notebook

if TYPE_CHECKING:
    from runtimed.client import AsyncNotebook

WARMUP = 20
CELL = "c0"


# ---------------------------------------------------------------- receivers (own processes)


def receiver(sock: str, path: str, edits: int, conn: Connection) -> None:
    anyio.run(
        _receive,
        Path(sock),
        Path(path),
        edits,
        conn,
        backend="asyncio",
        backend_options={"use_uvloop": True},
    )


def _reached(nb: AsyncNotebook, length: int) -> bool:
    return len(nb.doc.source(CELL)) >= length


async def _receive(sock: Path, path: Path, edits: int, conn: Connection) -> None:
    from runtimed.client import AsyncClient

    async with await AsyncClient.connect(sock) as client:
        nb = await client.open(path)
        base = len(nb.doc.source(CELL))
        conn.send(base)
        for k in range(1, edits + 1):
            await client.wait_until(functools.partial(_reached, nb, base + k), timeout=60)
            conn.send(time.perf_counter())
        conn.recv()  # the writer says when to leave


# ---------------------------------------------------------------- the writer


async def _write(
    sock: Path, path: Path, edits: int, conns: list[Connection]
) -> tuple[list[float], list[float]]:
    from runtimed.client import AsyncClient

    first: list[float] = []
    every: list[float] = []
    async with await AsyncClient.connect(sock) as client:
        nb = await client.open(path)
        for _ in range(edits):
            start = time.perf_counter()
            await nb.splice_source(CELL, len(nb.doc.source(CELL)), 0, "x")
            stamps = await anyio.to_thread.run_sync(lambda: [c.recv() for c in conns])
            first.append(stamps[0] - start)
            every.append(max(stamps) - start)
        for c in conns:
            c.send("bye")
    return first[WARMUP:], every[WARMUP:]


def run_daemon_case(receivers: int, edits: int) -> tuple[list[float], list[float]]:
    ctx = mp.get_context("spawn")
    with daemon_process() as (sock, _proc, work):
        path = write_notebook(work / "sync.ipynb", ["# edits go here\n"])
        pipes = [ctx.Pipe() for _ in range(receivers)]
        procs = [
            ctx.Process(target=receiver, args=(str(sock), str(path), edits + WARMUP, child))
            for _, child in pipes
        ]
        for p in procs:
            p.start()
        conns = [parent for parent, _ in pipes]
        for c in conns:
            if not c.poll(120):
                raise RuntimeError("a receiver did not open the notebook in time")
            c.recv()
        try:
            return anyio.run(
                _write,
                sock,
                path,
                edits + WARMUP,
                conns,
                backend="asyncio",
                backend_options={"use_uvloop": True},
            )
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()


# ---------------------------------------------------------------- the peer


def run_peer(edits: int) -> list[float]:
    """Raw Automerge: A makes the same edit, sync messages go A -> B as bytes until B has it."""
    from automerge.core import Message, SyncState

    from runtimed.documents.notebook import NotebookDoc

    a = NotebookDoc.new()
    a.add_cell("code", "# edits go here\n", cell_id=CELL)
    b = NotebookDoc.empty()
    a_to_b, b_to_a = SyncState(), SyncState()

    def settle() -> None:
        while True:
            quiet = True
            for src, dst, state_src, state_dst in ((a, b, a_to_b, b_to_a), (b, a, b_to_a, a_to_b)):
                message = src.doc.generate_sync_message(state_src)
                if message is not None:
                    quiet = False
                    dst.doc.receive_sync_message(state_dst, Message.decode(message.encode()))
            if quiet:
                return

    settle()
    times = []
    for k in range(1, edits + WARMUP + 1):
        target = len("# edits go here\n") + k
        start = time.perf_counter()
        a.splice_source(CELL, len(a.source(CELL)), 0, "x")
        while len(b.source(CELL)) < target:
            message = a.doc.generate_sync_message(a_to_b)
            if message is None:  # B must speak first (acknowledge) before A sends more
                reply = b.doc.generate_sync_message(b_to_a)
                assert reply is not None
                a.doc.receive_sync_message(a_to_b, Message.decode(reply.encode()))
                continue
            b.doc.receive_sync_message(b_to_a, Message.decode(message.encode()))
        times.append(time.perf_counter() - start)
        settle()
    return times[WARMUP:]


def main() -> None:
    # No kernel pool: this benchmark runs no code, so its daemon starts no kernel.
    os.environ["RUNTIMED_POOL_SIZE"] = "0"
    edits = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    cases = [int(a) for a in sys.argv[2:]] or [1, 20]
    peer = run_peer(edits)
    print(
        f"sync latency: one character spliced by one client, {edits} edits "
        f"(+{WARMUP} warm-up), receivers in their own processes"
    )
    print(summary("peer: raw automerge A->B in-process", peer))
    peer_median = statistics.median(peer)
    for receivers in cases:
        first, every = run_daemon_case(receivers, edits)
        print(summary(f"runtimed, {receivers:>2} receivers: measured one sees", first))
        if receivers > 1:
            print(summary(f"runtimed, {receivers:>2} receivers: all see it", every))
        print(
            f"    ratio vs peer (median): measured receiver "
            f"{statistics.median(first) / peer_median:.1f}x"
            + (
                f", all receivers {statistics.median(every) / peer_median:.1f}x"
                if receivers > 1
                else ""
            )
        )


if __name__ == "__main__":
    main()
