"""The worker side of batches on Dask: one runtimed daemon per worker, and the task that
runs one notebook through it.

:class:`RuntimedWorkerPlugin` is registered on every worker (``Client.register_plugin``).
The first run a worker gets starts its daemon — ``python -m runtimed.automation.cluster_daemon``
with its own socket and home under the worker's ``local_directory`` — and every later run on
that worker reuses it (warm: the daemon's pool keeps a kernel started). The plugin's
``teardown`` (the worker closing) stops it; a worker that dies takes its daemon with it
(the lifeline pipe, see :mod:`runtimed.automation.cluster_daemon`).

:func:`run_on_worker` is the Dask task: it runs the notebook with
:func:`~runtimed.automation.run.execute_notebook_async` exactly as a local ``runt run``
does, on that daemon, then returns the output notebook's bytes (or writes it to its fsspec
URL from the worker) with the :class:`RunResult`. Blocking code: it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from runtimed.automation.locations import is_url
from runtimed.automation.progress import RunObserver
from runtimed.automation.report import RunResult
from runtimed.errors import DaemonNotRunning, RuntimedError

if TYPE_CHECKING:
    from distributed import Worker

__all__ = [
    "PLUGIN_NAME",
    "RuntimedWorkerPlugin",
    "WorkerJob",
    "WorkerOutcome",
    "cancel_batch",
    "run_on_worker",
]

log = logging.getLogger(__name__)

PLUGIN_NAME = "runtimed"
# A Unix socket path must fit in sockaddr_un (107 bytes on Linux).
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """One run, as it crosses the network to a worker.

    ``input_bytes`` is the caller's local input notebook (None: ``input_name`` is a URL the
    worker reads itself); the output goes back as bytes unless ``output_name`` is a URL,
    which the worker writes. ``options`` are :func:`execute_notebook_async`'s keywords.
    """

    index: int
    input_name: str
    output_name: str
    input_bytes: bytes | None
    parameters: dict[str, object] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerOutcome:
    """What comes back: the result (paths as the caller named them), the output notebook
    (None when the worker wrote it to its URL, or wrote nothing) and the worker's address."""

    result: RunResult
    output_bytes: bytes | None
    worker: str


class RuntimedWorkerPlugin(WorkerPlugin):
    """Starts one runtimed daemon per Dask worker on first use; stops it at teardown."""

    idempotent = True  # a second batch on the same cluster keeps the running daemons
    name = PLUGIN_NAME

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout

    def setup(self, worker: Worker) -> None:
        self.address: str = worker.address
        self.folder = Path(worker.local_directory) / "runtimed"
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        self._socket: Path | None = None
        self._short: Path | None = None
        # Runs going on here, by batch: their loop and cancel scope (cancel_batch).
        self.running: dict[str, list[tuple[asyncio.AbstractEventLoop, Any]]] = {}

    async def teardown(self, worker: Worker) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs (tests assert it is gone afterwards)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def ensure_daemon(self) -> Path:
        """The socket of this worker's daemon, started now if it is not running.

        Raises:
            DaemonNotRunning: it exited while starting, or did not accept connections
                within ``start_timeout`` (the message has its last stderr lines).
        """
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                assert self._socket is not None
                return self._socket
            self._stop_locked()
            return self._start_locked()

    def _start_locked(self) -> Path:
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        sock = self.folder / "run" / "rt.sock"
        if len(os.fsencode(sock)) > _MAX_SOCKET_PATH:
            self._short = Path(tempfile.mkdtemp(prefix="runtimed-dask-"))
            sock = self._short / "rt.sock"
        stderr_path = self.folder / "daemon.stderr"
        read_end, write_end = os.pipe()
        argv = [sys.executable, "-m", "runtimed.automation.cluster_daemon"]
        argv += ["--lifeline", str(read_end), "--", "--socket", str(sock), "--home", str(home)]
        argv += ["--log-level", "WARNING"]
        try:
            with open(stderr_path, "wb") as stderr:
                # Its own session: a Ctrl-C in the terminal that started a local cluster
                # must not stop the daemon under a run; the lifeline does that.
                self._process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(read_end,),
                    start_new_session=True,
                )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._lifeline, self._socket = write_end, sock
        log.info("worker %s: runtimed daemon %d on %s", self.address, self._process.pid, sock)
        self._wait_ready(sock, stderr_path)
        return sock

    def _wait_ready(self, sock: Path, stderr_path: Path) -> None:
        # Readiness is a successful connect within the deadline, as the client's autostart.
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            try:
                probe.connect(str(sock))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            finally:
                probe.close()
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = stderr_path.read_text(errors="replace").strip().splitlines()[-3:]
                code = self._process.poll()
                self._stop_locked()
                state = f"exited with code {code}" if code is not None else "did not answer"
                raise DaemonNotRunning(
                    f"the runtimed daemon of Dask worker {self.address} {state} while "
                    f"starting: {'; '.join(tail) or 'no message'}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def stop(self) -> None:
        """Stop the daemon (it checkpoints and stops its kernels) and wait for it."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self, timeout: float = 30.0) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)  # end-of-file on the daemon's side: its clean stop
            self._lifeline = None
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker %s: daemon %d ignored its stop", self.address, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._short is not None:
            shutil.rmtree(self._short, ignore_errors=True)
            self._short = None


class _Announcer(RunObserver):
    """Tells the caller (a Dask event on the batch's topic) that the run started here."""

    def __init__(self, worker: Worker, job: WorkerJob) -> None:
        self.worker, self.job = worker, job

    def run_started(
        self, *, input_path: str, output_path: str, notebook_id: str, link: str, total: int
    ) -> None:
        if self.job.topic is None:
            return
        self.worker.log_event(
            self.job.topic,
            {
                "index": self.job.index,
                "event": "started",
                "worker": self.worker.address,
                "notebook_id": notebook_id,
                "link": link,
                "total": total,
            },
        )


def _safe_name(name: str, default: str) -> str:
    tail = name.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    tail = tail.replace("{", "").replace("}", "")
    return tail if tail not in ("", ".", "..") else default


def _renamed(path: Path, input_name: str, output_name: str) -> bytes:
    """The output notebook with papermill's recorded paths set to the caller's names."""
    from runtimed.storage.ipynb import notebook_bytes, read_notebook

    nb = read_notebook(path)
    papermill = nb.get("metadata", {}).get("papermill")
    if isinstance(papermill, dict):
        papermill["input_path"], papermill["output_path"] = input_name, output_name
    return notebook_bytes(nb)


def run_on_worker(job: WorkerJob) -> WorkerOutcome:
    """The Dask task: run ``job`` through this worker's daemon.

    Raises:
        RuntimedError: the plugin is not registered, the daemon cannot start, the input
            cannot be read; Dask retries the task (``retries=``) and then reports it.
    """
    import anyio
    from distributed import get_worker

    from runtimed.automation.run import execute_notebook_async

    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, RuntimedWorkerPlugin):
        raise DaemonNotRunning(
            f"Dask worker {worker.address} has no runtimed plugin; "
            "submit runs through runtimed.automation.cluster"
        )
    sock = plugin.ensure_daemon()
    jobs = plugin.folder / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"run{job.index}-", dir=jobs))
    try:
        if job.input_bytes is None:
            input_path = job.input_name.replace("{", "{{").replace("}", "}}")
        else:
            local = folder / "input" / _safe_name(job.input_name, "input.ipynb")
            local.parent.mkdir()
            local.write_bytes(job.input_bytes)
            input_path = str(local)
        output = folder / "output" / _safe_name(job.output_name, "output.ipynb")
        options = dict(job.options)
        cwd = options.get("cwd")
        if cwd is not None and not os.path.isdir(cwd):
            # The caller's folder is not on this machine (a remote worker): the run's own.
            log.warning(
                "worker %s: no folder %s here; the kernel runs in %s", worker.address, cwd, folder
            )
            options["cwd"] = str(folder)
        run = functools.partial(
            execute_notebook_async,
            input_path,
            str(output),
            job.parameters,
            socket=sock,
            autostart=False,
            observer=_Announcer(worker, job),
            **{**options, "progress_bar": False},
        )
        result = anyio.run(
            _cancellable, plugin, job, run, backend="asyncio", backend_options={"use_uvloop": True}
        )
        data = _renamed(output, job.input_name, job.output_name) if output.exists() else None
        if data is not None and is_url(job.output_name):
            from runtimed.automation.locations import _write_url

            _write_url(job.output_name, data)
            data = None
        named = replace(result, input_path=job.input_name, output_path=job.output_name)
        return WorkerOutcome(named, data, worker.address)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _cancellable(
    plugin: RuntimedWorkerPlugin, job: WorkerJob, run: Callable[[], Awaitable[RunResult]]
) -> RunResult:
    """``run()``, cancelled by :func:`cancel_batch` (the run then interrupts its cell and
    saves what ran, as a local ``runt run`` on Ctrl-C)."""
    import anyio

    entry = (asyncio.get_running_loop(), anyio.CancelScope())
    batch = plugin.running.setdefault(job.topic or "", [])
    batch.append(entry)
    try:
        with entry[1]:
            return await run()
    finally:
        batch.remove(entry)
    raise RuntimedError(f"the run of {job.input_name} was cancelled with its batch")


def cancel_batch(batch: str, dask_worker: Worker) -> int:
    """``Client.run`` target: cancel this worker's runs of ``batch``; returns how many.

    Dask cannot stop a task that runs; this frees the worker at once instead of leaving it
    busy until the notebook ends."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, RuntimedWorkerPlugin):
        return 0
    entries = list(plugin.running.get(batch, []))
    for loop, scope in entries:
        loop.call_soon_threadsafe(scope.cancel)
    return len(entries)
