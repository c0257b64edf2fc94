"""Kernels listen on ipc sockets in their own 0700 directory; TCP only where it must be."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

import runtimed.kernels.session as session_module
from runtimed.kernels.launch import LaunchSpec, Transport, choose_transport, write_connection
from runtimed.kernels.session import KernelSession

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")

# ipykernel started so that its argv does not say so: we cannot know it honours "transport".
_OPAQUE_IPYKERNEL = LaunchSpec(
    name="opaque",
    argv=[
        sys.executable,
        "-c",
        "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()",
        "-f",
        "{connection_file}",
    ],
)


def connection_info(kernel: KernelSession) -> tuple[Path, dict[str, Any]]:
    directory = kernel.connection_dir
    assert directory is not None
    info: dict[str, Any] = json.loads((directory / "kernel.json").read_text())
    return directory, info


def tcp_listening(pid: int) -> list[Any]:
    return [
        c for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
    ]


async def test_ipykernel_listens_on_ipc_in_a_private_directory(tmp_path: Path) -> None:
    async with KernelSession(cwd=tmp_path) as kernel:
        directory, info = connection_info(kernel)
        assert kernel.transport == info["transport"] == "ipc"
        mode = directory.stat()
        assert stat.S_IMODE(mode.st_mode) & 0o777 == 0o700
        assert mode.st_uid == os.getuid()
        for name in _PORTS:
            path = Path(f"{info['ip']}-{info[name]}")
            assert path.parent == directory
            assert stat.S_ISSOCK(path.stat().st_mode), path
            assert len(os.fsencode(path)) < 100  # AF_UNIX sun_path: 108 bytes on Linux
        outcome = await kernel.execute("print('over ipc')\n6 * 7")
        assert outcome.status == "ok"
        assert outcome.outputs[0]["text"] == "over ipc\n"
        assert outcome.outputs[1]["data"]["text/plain"] == "42"
        # No channel is on TCP. The one TCP port ipykernel may still listen on is its own
        # pipe for output from forked subprocesses (tcp://127.0.0.1 is hard-coded there): a
        # PULL socket that sends nothing and takes only messages carrying a random 16-byte
        # key; nobody can read outputs from it.
        pipe = await kernel.execute(
            "import sys\nprint(getattr(sys.stdout.pub_thread, '_pipe_port', None))"
        )
        pipe_port = pipe.outputs[0]["text"].strip()
        assert kernel.pid is not None
        listening = {str(c.laddr.port) for c in tcp_listening(kernel.pid)}
        assert listening <= {pipe_port}
    assert not directory.exists()  # sockets and connection file go with the kernel


async def test_a_kernel_not_known_to_support_ipc_gets_tcp(tmp_path: Path) -> None:
    async with KernelSession(cwd=tmp_path, spec=_OPAQUE_IPYKERNEL) as kernel:
        _, info = connection_info(kernel)
        assert kernel.transport == info["transport"] == "tcp"
        assert info["ip"] == "127.0.0.1"
        outcome = await kernel.execute("1 + 1")
        assert outcome.status == "ok"


def test_ipc_only_when_the_socket_paths_fit(tmp_path: Path) -> None:
    ipykernel = LaunchSpec(name="python3", argv=[sys.executable, "-m", "ipykernel_launcher"])
    assert choose_transport(ipykernel, Path("/tmp/runtimed-kernel-abcdefgh")) == "ipc"
    assert choose_transport(ipykernel, Path("/tmp/" + "d" * 100)) == "tcp"
    assert choose_transport(_OPAQUE_IPYKERNEL, Path("/tmp/k")) == "tcp"


async def test_a_tcp_port_taken_before_the_kernel_binds_it_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process holds the port the first connection file names (the race between
    # picking a free port and the kernel binding it, papermill#511).
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        files: list[dict[str, Any]] = []

        def first_one_collides(
            directory: Path,
            spec: LaunchSpec,
            *,
            transport: Transport | None = None,
            ports: dict[str, int] | None = None,
        ) -> tuple[Path, Any]:
            fixed = {"shell_port": taken} if not files else ports
            path, info = write_connection(directory, spec, transport=transport, ports=fixed)
            files.append(dict(info))
            return path, info

        monkeypatch.setattr(session_module, "write_connection", first_one_collides)
        async with KernelSession(cwd=tmp_path, spec=_OPAQUE_IPYKERNEL) as kernel:
            _, info = connection_info(kernel)
            assert (await kernel.execute("1 + 1")).status == "ok"
    assert [f["shell_port"] == taken for f in files] == [True, False]
    assert info["shell_port"] != taken
