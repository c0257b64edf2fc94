"""Launching a kernel process: kernelspec lookup, connection file, spawn, console capture.

Kernels listen on ``ipc`` sockets inside their own 0700 directory wherever the kernel is
known to support it (ipykernel), so no other local user can connect to IOPub or shell; other
kernels get 127.0.0.1 TCP ports (see :func:`choose_transport`).

The low-level half of :mod:`runtimed.kernels.session`.  We launch kernels ourselves (rather than via
``jupyter_client.AsyncKernelManager``) so that we own the process object (event-driven exit
detection), its console pipe (stderr tail on failure) and its process group (signals).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
from anyio.abc import ByteReceiveStream, Process
from jupyter_client.connect import KernelConnectionInfo, write_connection_file
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from runtimed.errors import KernelNotFound, KernelStartFailed
from runtimed.kernels.nanny import nanny_argv

__all__ = [
    "ConsoleTail",
    "LaunchSpec",
    "Transport",
    "address_in_use",
    "choose_transport",
    "describe_exit",
    "make_kernel_dir",
    "orphan_timeout",
    "resolve_spec",
    "runs_ipykernel",
    "signal_group",
    "spawn_kernel",
    "write_connection",
]

logger = logging.getLogger(__name__)

_TEMPLATE = re.compile(r"\{([A-Za-z0-9_]+)\}")

Transport = Literal["ipc", "tcp"]
# sun_path is 108 bytes on Linux, 104 on macOS (the NUL included): stay below both.
_AF_UNIX_PATH_MAX = 100
_SHORT_BASE_MAX = 60  # a temp dir longer than this is replaced by /tmp for kernel dirs


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What is needed to launch one kind of kernel (a resolved kernelspec)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    interrupt_mode: Literal["signal", "message"] = "signal"
    resource_dir: str = ""


ORPHAN_TIMEOUT_VARIABLE = "RUNTIMED_KERNEL_ORPHAN_TIMEOUT"
_ORPHAN_TIMEOUT = 60.0


def orphan_timeout() -> float:
    """How long a kernel outlives its daemon waiting for the next one to adopt it
    (``$RUNTIMED_KERNEL_ORPHAN_TIMEOUT`` s, default 60); 0: it does not."""
    raw = os.environ.get(ORPHAN_TIMEOUT_VARIABLE, "")
    try:
        return max(0.0, float(raw)) if raw else _ORPHAN_TIMEOUT
    except ValueError:
        logger.warning(
            "%s=%r is not a number; using %g s", ORPHAN_TIMEOUT_VARIABLE, raw, _ORPHAN_TIMEOUT
        )
        return _ORPHAN_TIMEOUT


def _own_python_spec() -> LaunchSpec:
    # The daemon's own interpreter via ipykernel, independent of installed kernelspecs.
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return LaunchSpec(name="python3", argv=argv)


def _resolve_sync(kernel_name: str) -> LaunchSpec:
    manager = KernelSpecManager()  # re-reads JUPYTER_PATH & co. on every lookup
    try:
        spec = manager.get_kernel_spec(kernel_name)
    except NoSuchKernel as exc:
        raise KernelNotFound(kernel_name, list(manager.find_kernel_specs())) from exc
    mode: Literal["signal", "message"] = "message" if spec.interrupt_mode == "message" else "signal"
    return LaunchSpec(
        name=kernel_name,
        argv=list(spec.argv),
        env={str(k): str(v) for k, v in (spec.env or {}).items()},
        interrupt_mode=mode,
        resource_dir=spec.resource_dir or "",
    )


async def resolve_spec(kernel_name: str | None) -> LaunchSpec:
    """The launch spec for an installed kernelspec name, or the daemon's own Python if None.

    Raises :class:`KernelNotFound` (listing the installed kernelspecs) for an unknown name.
    """
    if kernel_name is None:
        return _own_python_spec()
    # Kernelspec discovery walks the Jupyter data directories: keep it off the event loop.
    return await anyio.to_thread.run_sync(_resolve_sync, kernel_name)


def runs_ipykernel(argv: Sequence[str]) -> bool:
    """Whether ``argv`` starts ipykernel (``-m ipykernel_launcher``, ``-m ipykernel``)."""
    return any(
        arg in ("ipykernel_launcher", "ipykernel") or arg.endswith("/ipykernel_launcher.py")
        for arg in argv
    )


def choose_transport(spec: LaunchSpec, directory: Path) -> Transport:
    """``ipc`` when the kernel is known to honour the connection file's ``transport``
    (ipykernel does) and its socket paths fit in an AF_UNIX address; ``tcp`` otherwise.

    A kernelspec does not declare which transports its kernel supports, and a kernel that
    ignores the field would bind TCP ports nobody connects to: only ipykernel is trusted.
    """
    if not runs_ipykernel(spec.argv):
        return "tcp"
    if len(os.fsencode(_ipc_prefix(directory))) + len("-99999") > _AF_UNIX_PATH_MAX:
        return "tcp"
    return "ipc"


def _ipc_prefix(directory: Path) -> str:
    # jupyter_client names ipc sockets "<ip>-<port>": here <dir>/k-1 ... <dir>/k-5.
    return str(directory / "k")


def make_kernel_dir() -> Path:
    """A new directory (mode 0700, ours) for one kernel's connection file and ipc sockets.

    Under the system temp dir, or ``/tmp`` when that is too long for short socket paths.
    Blocking (a mkdir): call it in a worker thread.
    """
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) > _SHORT_BASE_MAX and os.path.isdir("/tmp"):
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="runtimed-kernel-", dir=base))


def write_connection(
    directory: Path,
    spec: LaunchSpec,
    *,
    transport: Transport | None = None,
    ports: Mapping[str, int] | None = None,
) -> tuple[Path, KernelConnectionInfo]:
    """Write a connection file with a fresh HMAC key into ``directory`` (blocking).

    ``transport`` (default: :func:`choose_transport`): ``ipc`` puts the five sockets in
    ``directory`` itself, so only we can reach them; ``tcp`` binds 127.0.0.1 ports picked
    free just now (another process may take one before the kernel binds it: the session
    retries such a collision).  ``ports`` (e.g. ``{"shell_port": 5555}``) fixes some.
    """
    transport = transport or choose_transport(spec, directory)
    ip = _ipc_prefix(directory) if transport == "ipc" else "127.0.0.1"
    fixed = ports or {}
    fname, info = write_connection_file(
        fname=str(directory / "kernel.json"),
        ip=ip,
        key=uuid.uuid4().hex.encode(),
        transport=transport,
        kernel_name=spec.name,
        shell_port=fixed.get("shell_port", 0),
        iopub_port=fixed.get("iopub_port", 0),
        stdin_port=fixed.get("stdin_port", 0),
        control_port=fixed.get("control_port", 0),
        hb_port=fixed.get("hb_port", 0),
    )
    return Path(fname), info


def address_in_use(console: str) -> bool:
    """Whether a kernel's console output says a port it was given was taken (zmq's EADDRINUSE
    message, as ipykernel prints it when it cannot bind)."""
    return "Address already in use" in console


def _format(template: str, ns: dict[str, str]) -> str:
    return _TEMPLATE.sub(lambda m: ns.get(m.group(1), m.group(0)), template)


def _command(
    spec: LaunchSpec, connection_file: Path, env: dict[str, str] | None, nanny: bool
) -> tuple[list[str], dict[str, str]]:
    ns = {
        "connection_file": os.path.realpath(connection_file),
        "prefix": sys.prefix,
        "resource_dir": spec.resource_dir,
    }
    argv = [_format(os.path.expanduser(arg), ns) for arg in spec.argv]
    if argv and argv[0] in {"python", f"python{sys.version_info[0]}"}:
        argv[0] = sys.executable  # as jupyter_client does for "python"/"python3" specs
    full_env = dict(os.environ)
    full_env.update({k: _format(v, ns) for k, v in spec.env.items()})
    full_env.update(env or {})
    # ipykernel exits when its parent goes away (its parent poller), like under Jupyter. With
    # a nanny, the nanny is the parent (it sets the variable): the kernel outlives us.
    full_env["JPY_PARENT_PID"] = str(os.getpid())
    if nanny:
        argv = nanny_argv(
            argv,
            directory=str(connection_file.parent),
            connection_file=os.path.realpath(connection_file),
            orphan_timeout=orphan_timeout(),
        )
    return argv, full_env


async def spawn_kernel(
    spec: LaunchSpec,
    connection_file: Path,
    *,
    cwd: Path,
    env: dict[str, str] | None,
    nanny: bool = True,
) -> Process:
    """Start the kernel in a new session (so its pid is also its process group id).

    ``nanny`` (default): the process started is the kernel's nanny
    (:mod:`runtimed.kernels.nanny`), which starts the kernel in its group; its stdin is a
    pipe from us (its end tells the nanny we are gone). Without: the kernel itself, stdin
    /dev/null. stdout and stderr share one pipe, drained by :class:`ConsoleTail`.
    Environment: the daemon's, then the kernelspec's ``env``, then ``env``.
    """
    # realpath and expanduser touch the filesystem: off the event loop.
    argv, full_env = await anyio.to_thread.run_sync(_command, spec, connection_file, env, nanny)
    try:
        return await anyio.open_process(
            argv,
            stdin=subprocess.PIPE if nanny else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
        )
    except OSError as exc:
        raise KernelStartFailed(f"could not launch kernel {spec.name!r} ({argv!r}): {exc}") from exc


def signal_group(pgid: int, signum: int) -> bool:
    """Send signum to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("not permitted to send %s to process group %d", signum, pgid)
        return False
    return True


def describe_exit(returncode: int | None) -> str:
    """Human wording for a process exit status, e.g. "exited (code 1)"."""
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited (code {returncode})"


class ConsoleTail:
    """Drains a kernel's console pipe, keeping a bounded tail for error messages."""

    def __init__(self, *, limit: int = 16_384) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self.eof = anyio.Event()
        """Set when the pipe reached end-of-file (every writer, grandchildren included, exited)."""

    async def drain(self, stream: ByteReceiveStream | None, pid: int) -> None:
        """Read the pipe to its end (never let the kernel block on a full pipe)."""
        try:
            if stream is None:
                return
            async for chunk in stream:
                logger.debug("kernel %d console: %r", pid, chunk[:500])
                self._chunks.append(chunk)
                self._size += len(chunk)
                while self._size - len(self._chunks[0]) >= self._limit:
                    self._size -= len(self._chunks.popleft())
        finally:
            self.eof.set()

    def text(self, *, max_lines: int = 30) -> str:
        """The last lines written, decoded leniently."""
        data = b"".join(self._chunks)[-self._limit :].decode("utf-8", "replace")
        return "\n".join(data.rstrip().splitlines()[-max_lines:])
