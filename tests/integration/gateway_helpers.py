"""A real ``jupyter kernelgateway`` on 127.0.0.1 (a free port, a token) for the gateway tests.

The gateway runs in its own process group; stopping it kills its kernels too (they are its
children, in sessions of their own), so no kernel outlives a test.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

MARK = "runtimed-gateway-test"
"""``GATEWAY_MARK`` in the gateway's environment: a cell printing it proves it ran there."""


@dataclass
class Gateway:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the gateway and every kernel it started (as a crash would, then reaped)."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for child in children:
            with suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(children, timeout=10)

    def delete(self, kernel_id: str) -> None:
        headers = {"Authorization": f"token {self.token}"}
        httpx.delete(f"{self.url}/api/kernels/{kernel_id}", headers=headers).raise_for_status()

    def kernel_ids(self) -> list[str]:
        response = httpx.get(
            f"{self.url}/api/kernels", headers={"Authorization": f"token {self.token}"}
        )
        response.raise_for_status()
        return [str(k["id"]) for k in response.json()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_gateway(workdir: Path, *, deadline: float = 60) -> Iterator[Gateway]:
    """Start ``jupyter kernelgateway``; yield once ``GET /api/kernelspecs`` answers 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    venv_bin = str(Path(sys.executable).parent)
    env = dict(
        os.environ,
        # The kernelspec's argv says "python": the interpreter with ipykernel.
        PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""),
        JUPYTER_CONFIG_DIR=str(workdir / "config"),
        JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
        GATEWAY_MARK=MARK,
    )
    argv = [
        sys.executable,
        "-m",
        "kernel_gateway",
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        f"--KernelGatewayApp.auth_token={token}",
        "--KernelGatewayApp.port_retries=0",
        "--JupyterWebsocketPersonality.list_kernels=True",  # GET /api/kernels for the tests
    ]
    log = workdir / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    gateway = Gateway(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        _wait_ready(gateway, deadline)
        yield gateway
    finally:
        gateway.kill()


def _wait_ready(gateway: Gateway, deadline: float) -> None:
    end = time.monotonic() + deadline
    headers = {"Authorization": f"token {gateway.token}"}
    while time.monotonic() < end:
        if gateway.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited: {gateway.log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{gateway.url}/api/kernelspecs", headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # a retry interval while connecting, not a readiness sleep
    raise TimeoutError(f"no gateway at {gateway.url} after {deadline} s")
