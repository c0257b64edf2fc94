"""What a kernel on a gateway costs against a local one, through the same daemon: the first
execution of a fresh notebook (kernel start included) and a warm ``1+1`` round trip from the
client, each for a local kernel (the peer) and a kernel on a real ``jupyter kernelgateway``
on 127.0.0.1 (REST start, WebSocket channels). Pool off, so both start on first execution.

Run: ``python bench/bench_gateway.py [N]`` (default 30 warm round trips, N // 5 starts).
Prints the machine's load, medians, p99s and the ratios gateway / local.
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import anyio
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import daemon_process, summary, write_notebook
from runtimed.client import AsyncClient


@contextmanager
def running_gateway(work: Path) -> Iterator[tuple[str, str]]:
    """``jupyter kernelgateway`` on 127.0.0.1 (free port, token); (url, token) once it
    answers; the gateway and its kernels are killed afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    token = secrets.token_hex(16)
    env = dict(
        os.environ,
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        JUPYTER_CONFIG_DIR=str(work / "config"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
    )
    argv = [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1"]
    argv += [f"--KernelGatewayApp.port={port}", f"--KernelGatewayApp.auth_token={token}"]
    proc = subprocess.Popen(
        argv,
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                headers = {"Authorization": f"token {token}"}
                if httpx.get(f"{url}/api/kernelspecs", headers=headers).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield url, token
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        for child in children:
            with suppress(psutil.NoSuchProcess):
                child.kill()


async def _measure(
    sock: Path, work: Path, *, n: int, gateway: tuple[str, str] | None
) -> tuple[list[float], list[float]]:
    starts: list[float] = []
    warm: list[float] = []
    env = (
        {"RUNTIMED_RUN_GATEWAY_URL": gateway[0], "RUNTIMED_RUN_GATEWAY_TOKEN": gateway[1]}
        if (gateway)
        else None
    )
    tag = "gw" if gateway else "local"
    async with await AsyncClient.connect(sock) as client:
        for i in range(max(1, n // 5)):
            path = write_notebook(work / f"{tag}{i}.ipynb", ["1+1"])
            begin = time.perf_counter()
            nb = await client.open(path, kernel_env=env)
            cell = nb.cells()[0].id
            result = await nb.execute(cell, timeout=120)
            starts.append(time.perf_counter() - begin)
            assert result.outputs[0]["data"]["text/plain"] == "2", result
            if i == 0:
                for _ in range(n):
                    begin = time.perf_counter()
                    await nb.execute(cell, timeout=60)
                    warm.append(time.perf_counter() - begin)
            await nb.close(unload=True)
    return starts, warm


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    os.environ["RUNTIMED_POOL_SIZE"] = "0"
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    with (
        running_gateway(Path(tempfile.mkdtemp(prefix="rtgw-", dir="/tmp"))) as gateway,
        daemon_process() as (sock, _proc, work),
    ):
        local_starts, local_warm = anyio.run(
            lambda: _measure(sock, work, n=n, gateway=None), backend_options={"use_uvloop": True}
        )
        gw_starts, gw_warm = anyio.run(
            lambda: _measure(sock, work, n=n, gateway=gateway),
            backend_options={"use_uvloop": True},
        )
    print(summary("first execution, local kernel (peer)", local_starts))
    print(summary("first execution, kernel on the gateway", gw_starts))
    print(summary("warm 1+1, local kernel (peer)", local_warm))
    print(summary("warm 1+1, kernel on the gateway", gw_warm))
    start_ratio = statistics.median(gw_starts) / statistics.median(local_starts)
    warm_ratio = statistics.median(gw_warm) / statistics.median(local_warm)
    print(f"ratio gateway/local: first execution {start_ratio:.2f}x, warm 1+1 {warm_ratio:.2f}x")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
