"""Batches fanned out on a Dask cluster: ``runt run ... --cluster ADDRESS``.

Each run of a batch (:mod:`runtimed.automation.batch`) becomes one Dask task,
:func:`~runtimed.automation.cluster_worker.run_on_worker`, which executes it through the
runtimed daemon of the worker it lands on (started by
:class:`~runtimed.automation.cluster_worker.RuntimedWorkerPlugin`) exactly as a local
``runt run`` does. What crosses the network: the input notebook's bytes (or its URL), the
parameters and options, and back the output notebook's bytes (unless its URL is written by
the worker) with the :class:`RunResult`. Nothing else of the caller's machine is sent: the
kernel gets the worker's environment and the caller's folder only if the worker has it.

Addresses (:func:`parse_cluster`): ``dask://HOST:PORT`` (= ``tcp://HOST:PORT``), any Dask
address with a scheme (``tcp://``, ``tls://``, ``ws://``, ...), ``local:N`` (a
``distributed.LocalCluster`` of N worker processes, started and stopped with the batch),
or the path of a scheduler file (``dask scheduler --scheduler-file``).

Failure: a task whose worker dies is rescheduled by Dask (``local:N`` allows that once;
another scheduler follows its ``distributed.scheduler.allowed-failures``), a task that
raises is retried once (``retries=1``); if it fails again the run is reported with status
``error`` and the others go on. Cancelling the batch (Ctrl-C) cancels every task not done;
the outputs of finished runs are already written.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from runtimed.automation.batch import BatchRun
from runtimed.automation.locations import is_url
from runtimed.automation.progress import RunObserver
from runtimed.automation.report import RunResult, format_path
from runtimed.errors import InvalidRequest, RuntimedError

if TYPE_CHECKING:
    from distributed import Client, Future

    from runtimed.automation.cluster_worker import WorkerJob, WorkerOutcome

__all__ = [
    "ClusterAddress",
    "ClusterError",
    "connect_cluster",
    "parse_cluster",
    "run_cluster_batch",
]

log = logging.getLogger(__name__)

#: Seconds to reach the scheduler, and to wait for its first worker.
DEFAULT_CONNECT_TIMEOUT = 30.0
# Options that cannot cross the network (open files, objects of this process) or that the
# worker sets itself.
_LOCAL_ONLY = frozenset(
    {
        "log_output",
        "log_stream",
        "stdout_file",
        "stderr_file",
        "observer",
        "client",
        "socket",
        "autostart",
        "raise_on_error",
    }
)
_HOST_PORT = re.compile(r"^[\w.\-]+:\d+$")


class ClusterError(InvalidRequest):
    """The Dask cluster cannot take the batch: a bad or unreachable address, no workers,
    a worker without runtimed, Dask not installed. The message names the address or the
    worker."""


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """Where the batch goes (see :func:`parse_cluster`)."""

    kind: Literal["local", "address", "scheduler_file"]
    address: str = ""
    workers: int = 0

    def __str__(self) -> str:
        return f"local:{self.workers}" if self.kind == "local" else self.address


def parse_cluster(text: str) -> ClusterAddress:
    """Read ``--cluster``'s value.

    Raises:
        ClusterError: ``local:`` without a positive whole number, or neither an address
            nor an existing scheduler file.
    """
    text = text.strip()
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise ClusterError(f"cluster {text!r}: local:N needs N, a number of workers >= 1")
        return ClusterAddress("local", workers=int(count))
    if text.startswith("dask://"):
        return ClusterAddress("address", "tcp://" + text.removeprefix("dask://"))
    if "://" in text:
        return ClusterAddress("address", text)
    if Path(text).expanduser().is_file():
        return ClusterAddress("scheduler_file", str(Path(text).expanduser()))
    if _HOST_PORT.match(text):
        return ClusterAddress("address", "tcp://" + text)
    raise ClusterError(
        f"cluster {text!r}: not an address nor a scheduler file; give dask://HOST:PORT, "
        "tcp://HOST:PORT, local:N or the path of a scheduler file"
    )


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ClusterError(
            "--cluster needs Dask's distributed: pip install 'runtimed[dask]'"
        ) from exc
    return distributed


@asynccontextmanager
async def connect_cluster(
    cluster: str | ClusterAddress, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> AsyncIterator[Client]:
    """An asynchronous ``distributed.Client`` on ``cluster`` with at least one worker, each
    of which can import runtimed; ``local:N`` starts the cluster and stops it at the end.

    Raises:
        ClusterError: unreachable scheduler (after ``connect_timeout``, naming the
            address), no worker within ``connect_timeout``, a worker without runtimed.
    """
    distributed = _distributed()
    where = cluster if isinstance(cluster, ClusterAddress) else parse_cluster(cluster)
    local: Any = None
    try:
        if where.kind == "local":
            local = await anyio.to_thread.run_sync(_start_local_cluster, where.workers)
            address = local.scheduler_address
        else:
            address = where.address
        try:
            if where.kind == "scheduler_file":
                client = await distributed.Client(
                    scheduler_file=address, asynchronous=True, timeout=connect_timeout
                )
            else:
                client = await distributed.Client(
                    address, asynchronous=True, timeout=connect_timeout
                )
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {where} within {connect_timeout:g} s: {exc}"
            ) from exc
        try:
            await _check_workers(client, where, connect_timeout)
            yield client
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await client.close()
    finally:
        if local is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(local.close)


def _start_local_cluster(workers: int) -> Any:
    import dask
    from distributed import LocalCluster

    # One retry for a task whose worker died (Dask's default is 3): "retried once, then
    # reported". Read by the scheduler, which runs in this process.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        return LocalCluster(
            n_workers=workers,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )


async def _check_workers(client: Any, where: ClusterAddress, timeout: float) -> None:
    import cloudpickle

    from runtimed.automation import cluster_probe

    # A local cluster's workers all start now: waiting for them spreads the first runs
    # over all of them (otherwise they may queue on the first worker up).
    try:
        await client.wait_for_workers(where.workers or 1, timeout=timeout)
    except TimeoutError as exc:
        raise ClusterError(
            f"the Dask cluster at {where} has no worker after {timeout:g} s"
        ) from exc
    # By value: the probe must run where runtimed cannot be imported.
    cloudpickle.register_pickle_by_value(cluster_probe)
    answers = await client.run(cluster_probe.runtimed_on_worker, on_error="return")
    missing = []
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            missing.append(f"{worker}: {type(answer).__name__}: {answer}")
        elif answer.get("version") is None:
            missing.append(f"{worker} ({answer.get('python')}): {answer.get('error')}")
    if missing:
        raise ClusterError(
            "runtimed is not installed on Dask worker "
            + "; ".join(missing)
            + " — install runtimed (pip install 'runtimed[dask]') in every worker's environment"
        )


def _job(index: int, run: BatchRun, options: Mapping[str, Any], topic: str) -> WorkerJob:
    from runtimed.automation.cluster_worker import WorkerJob
    from runtimed.storage.ipynb import read_notebook_bytes

    input_name = format_path(run.input, run.parameters)
    output_name = format_path(run.output, run.parameters)
    data = None if is_url(input_name) else read_notebook_bytes(Path(input_name).expanduser())
    merged = {**options, **run.options}
    merged.setdefault("cwd", os.getcwd())  # papermill's rule: the caller's folder
    if merged["cwd"] is None:
        merged["cwd"] = os.getcwd()
    merged = {k: v for k, v in merged.items() if k not in _LOCAL_ONLY}
    return WorkerJob(index, input_name, output_name, data, dict(run.parameters), merged, topic)


def _write_output(outcome: WorkerOutcome) -> None:
    from runtimed.storage.ipynb import write_bytes_atomic

    if outcome.output_bytes is None:
        return
    path = Path(outcome.result.output_path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, outcome.output_bytes)


def _error(run: BatchRun, message: str, duration: float) -> RunResult:
    return RunResult(
        status="error",
        input_path=run.input,
        output_path=run.output,
        duration=duration,
        parameters=run.parameters,
        error=message,
    )


async def run_cluster_batch(
    runs: Sequence[BatchRun],
    *,
    cluster: str | ClusterAddress,
    jobs: int | None = None,
    observer: Callable[[int, BatchRun], RunObserver] | None = None,
    on_done: Callable[[int, RunResult], None] | None = None,
    announce: Callable[[str], None] | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    **options: Any,
) -> list[RunResult]:
    """Run ``runs`` on the Dask cluster ``cluster``, one task each, and write their outputs.

    Args:
        jobs: at most this many runs submitted at once (default: all; Dask spreads them
            over the workers' threads).
        observer: makes run ``i``'s :class:`RunObserver`; its ``run_started`` is called
            when the run starts on a worker (``link`` names the worker).
        on_done: called with each result as runs finish (its output is written by then).
        announce: called with lines for the user (the dashboard link).
        options: :func:`~runtimed.automation.run.execute_notebook_async`'s keywords, for
            every run beneath its own options.

    Returns:
        One result per run, in ``runs`` order; a run that could not be sent or whose task
        failed twice has status ``error`` and says why (naming the worker when known).

    Raises:
        ClusterError: as :func:`connect_cluster`.
    """
    from distributed import as_completed

    from runtimed.automation.cluster_worker import (
        PLUGIN_NAME,
        RuntimedWorkerPlugin,
        cancel_batch,
        run_on_worker,
    )

    results: list[RunResult | None] = [None] * len(runs)
    workers: dict[int, str] = {}
    started = anyio.current_time()
    token = uuid.uuid4().hex[:12]
    topic = f"runtimed-batch-{token}"

    def finish(index: int, result: RunResult) -> None:
        results[index] = result
        if on_done is not None:
            on_done(index, result)

    def on_event(event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        index = int(msg.get("index", -1))
        if not 0 <= index < len(runs) or msg.get("event") != "started":
            return
        workers[index] = str(msg.get("worker"))
        if observer is not None:
            run = runs[index]
            observer(index, run).run_started(
                input_path=format_path(run.input, run.parameters),
                output_path=format_path(run.output, run.parameters),
                notebook_id=str(msg.get("notebook_id")),
                link=f"{msg.get('link')} on worker {msg.get('worker')}",
                total=int(msg.get("total", 0)),
            )

    pending: list[tuple[int, WorkerJob]] = []
    for index, run in enumerate(runs):
        try:
            pending.append(
                (index, await anyio.to_thread.run_sync(_job, index, run, options, topic))
            )
        except RuntimedError as exc:
            finish(index, _error(run, str(exc), 0.0))
    async with connect_cluster(cluster, connect_timeout=connect_timeout) as client:
        if announce is not None:
            link = _dashboard(client)
            if link:
                announce(f"Dask dashboard: {link}")
        await client.register_plugin(RuntimedWorkerPlugin(), name=PLUGIN_NAME)
        client.subscribe_topic(topic, on_event)
        by_key: dict[str, int] = {}
        submitted: list[Future[Any]] = []
        limit = max(jobs or len(pending), 1)
        queue = list(reversed(pending))

        def submit() -> Future[Any]:
            index, job = queue.pop()
            key = f"runt-run-{index}-{token}"
            by_key[key] = index
            future = client.submit(run_on_worker, job, key=key, retries=1, pure=False)
            submitted.append(future)
            return future

        futures = as_completed([submit() for _ in range(min(limit, len(queue)))])
        try:
            async for future in futures:
                index = by_key[future.key]
                result = await _collect(future, runs[index], workers.get(index), started)
                finish(index, result)
                if queue:
                    futures.add(submit())
        except BaseException:
            # Ctrl-C (cancellation) or a broken connection: nothing more runs; what
            # finished is written already.
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                await client.cancel([f for f in submitted if not f.done()], force=True)
                await client.run(cancel_batch, topic, on_error="return")
            raise
        finally:
            client.unsubscribe_topic(topic)
    return [r for r in results if r is not None]


async def _collect(
    future: Future[Any], run: BatchRun, worker: str | None, started: float
) -> RunResult:
    from distributed import KilledWorker

    elapsed = anyio.current_time() - started
    where = f" on Dask worker {worker}" if worker else ""
    try:
        outcome: WorkerOutcome = await future
    except KilledWorker as exc:
        return _error(run, f"its worker died, also when retried{where}: {exc}", elapsed)
    except RuntimedError as exc:
        return _error(run, f"{exc}{where}", elapsed)
    except Exception as exc:  # the task's own exception, raised on the worker (retried once)
        hint = ""
        if isinstance(exc, ImportError) and "runtimed" in str(exc):
            hint = " (is runtimed installed on that worker?)"
        return _error(run, f"{type(exc).__name__}: {exc}{where}{hint}", elapsed)
    try:
        await anyio.to_thread.run_sync(_write_output, outcome)
    except RuntimedError as exc:
        return _error(run, f"the run finished but its output could not be written: {exc}", elapsed)
    return outcome.result


def _dashboard(client: Client) -> str | None:
    try:
        services = client.scheduler_info().get("services", {})
        return str(client.dashboard_link) if "dashboard" in services else None
    except (KeyError, AttributeError):
        return None
