"""Fresh-notebook latency: open a notebook and get the result of ``1+1``, the whole round
trip from the client, with the daemon's pre-warmed kernel pool vs a cold
``jupyter_client.manager.start_new_kernel`` + execute (the peer), plus the daemon without a
pool, and a second notebook with the same declared dependencies vs the first (env build).

Run: ``python bench/bench_pool.py [N]`` (default 30). Prints medians, p99s and ratios.
Target (issue 6): pool median under 100 ms and at least 10x faster than cold.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import bare_execute, daemon_process, summary, write_notebook
from runtimed.client import AsyncClient

T = TypeVar("T")


def cold_peer(n: int) -> list[float]:
    """The peer: a fresh kernel per notebook, start_new_kernel + execute('1+1') + result."""
    from jupyter_client.manager import start_new_kernel

    times = []
    for _ in range(n):
        start = time.perf_counter()
        km, kc = start_new_kernel(kernel_name="python3")
        try:
            result = bare_execute(kc, "1+1", timeout=30)
            assert result is not None
            assert result["data"]["text/plain"] == "2"
            times.append(time.perf_counter() - start)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return times


async def _pool_ready(client: AsyncClient, size: int) -> None:
    with anyio.fail_after(60):
        while True:
            status = await client.status()
            if status.pool is not None and status.pool.ready >= size and not status.pool.starting:
                return
            await anyio.sleep(0.01)


async def fresh_notebooks(
    sock: Path, work: Path, n: int, *, pool: int, connect_each: bool
) -> list[float]:
    """Open a never-seen notebook and run its ``1+1`` cell; close it (unloaded) after."""
    times = []
    async with await AsyncClient.connect(sock) as control:
        for i in range(n):
            if pool:
                await _pool_ready(control, pool)  # steady state: the pool has refilled
            path = write_notebook(work / f"fresh-{pool}-{connect_each}-{i}.ipynb", ["1+1"])
            start = time.perf_counter()
            if connect_each:  # as `runt exec` does: connect, open, execute
                async with await AsyncClient.connect(sock) as client:
                    elapsed = await _open_and_run(client, path, start)
            else:
                elapsed = await _open_and_run(control, path, start)
            times.append(elapsed)
    return times


async def _open_and_run(client: AsyncClient, path: Path, start: float) -> float:
    nb = await client.open(path)
    result = await nb.execute("c0", timeout=60)
    elapsed = time.perf_counter() - start
    assert result.outputs[0]["data"]["text/plain"] == "2", result
    await nb.close(unload=True)
    return elapsed


async def dependency_notebooks(sock: Path, work: Path) -> tuple[float, float, int]:
    """First and second notebook declaring the same dependencies (a build, then the cache)."""
    elapsed = []
    async with await AsyncClient.connect(sock) as client:
        for name in ("deps-first", "deps-second"):
            path = write_notebook(work / f"{name}.ipynb", ["import six\n1+1"])
            start = time.perf_counter()
            nb = await client.open(path)
            await nb.set_metadata("runtimed", {"dependencies": ["six"]})
            result = await nb.execute("c0", timeout=600)
            elapsed.append(time.perf_counter() - start)
            assert result.status == "ok", result
            await nb.close(unload=True)
        envs = len((await client.list_envs()).envs)
    return elapsed[0], elapsed[1], envs


def _with_env(**values: str) -> Callable[[], None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)

    def restore() -> None:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return restore


def run_daemon(pool: int, body: Callable[[Path, Path], Awaitable[T]]) -> T:
    """Run ``body(socket, workdir)`` against a fresh daemon subprocess with ``pool`` kernels."""
    restore = _with_env(RUNTIMED_POOL_SIZE=str(pool), RUNTIMED_CONFIG="/nonexistent/runtimed.toml")
    try:
        with daemon_process() as (sock, _proc, work):
            return anyio.run(
                body, sock, work, backend="asyncio", backend_options={"use_uvloop": True}
            )
    finally:
        restore()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    n_cold = max(5, n // 3)
    print(f"fresh notebook, open + result of 1+1 (n={n}; cold n={n_cold})")
    cold = cold_peer(n_cold)

    async def pooled(sock: Path, work: Path) -> tuple[list[float], list[float]]:
        warm = await fresh_notebooks(sock, work, 3, pool=1, connect_each=False)  # warm-up
        del warm
        kept = await fresh_notebooks(sock, work, n, pool=1, connect_each=False)
        each = await fresh_notebooks(sock, work, n, pool=1, connect_each=True)
        return kept, each

    kept, each = run_daemon(1, pooled)

    async def unpooled(sock: Path, work: Path) -> list[float]:
        return await fresh_notebooks(sock, work, n_cold, pool=0, connect_each=False)

    no_pool = run_daemon(0, unpooled)

    async def deps(sock: Path, work: Path) -> tuple[float, float, int]:
        return await dependency_notebooks(sock, work)

    first, second, envs = run_daemon(0, deps)

    print(summary("peer: start_new_kernel + execute (cold)", cold))
    print(summary("runtimed, pool: open + execute", kept))
    print(summary("runtimed, pool: connect + open + execute", each))
    print(summary("runtimed, no pool: open + execute (launch)", no_pool))
    med = statistics.median
    print(
        f"pool vs cold peer: {med(cold) / med(kept):.1f}x faster "
        f"(target >= 10x; median {med(kept) * 1000:.1f} ms, target < 100 ms)"
    )
    print(f"pool vs no pool:   {med(no_pool) / med(kept):.1f}x faster")
    print(
        f"dependencies ['six']: first notebook {first * 1000:.0f} ms (builds the env), "
        f"second {second * 1000:.0f} ms (cached) -> {first / second:.1f}x; "
        f"{envs} env(s) in the cache"
    )


if __name__ == "__main__":
    main()
