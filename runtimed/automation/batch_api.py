"""Batches from Python: :func:`execute_notebooks`, on the local daemon or a Dask cluster.

A batch is a spec file (the format of ``runt run --batch``, :mod:`runtimed.automation.batch`)
or a list of runs; ``cluster=`` sends it to Dask (:mod:`runtimed.automation.cluster`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtimed.automation.batch import BatchRun, BatchSpecError, load_spec
from runtimed.automation.cluster import DEFAULT_CONNECT_TIMEOUT, ClusterAddress, run_cluster_batch
from runtimed.automation.report import RunResult

__all__ = ["execute_notebooks", "execute_notebooks_async"]


def _as_runs(
    notebooks: str | os.PathLike[str] | Sequence[BatchRun | tuple[str, str]],
    parameters: Mapping[str, object] | None,
) -> tuple[list[BatchRun], int | None]:
    if isinstance(notebooks, str | os.PathLike):
        return load_spec(notebooks, parameters=parameters)
    runs = []
    for item in notebooks:
        if isinstance(item, BatchRun):
            runs.append(item)
        elif isinstance(item, tuple) and len(item) == 2:
            runs.append(BatchRun(str(item[0]), str(item[1]), dict(parameters or {})))
        else:
            raise BatchSpecError(f"not a run: {item!r}; give (input, output) pairs or BatchRun")
    return runs, None


async def execute_notebooks_async(
    notebooks: str | os.PathLike[str] | Sequence[BatchRun | tuple[str, str]],
    *,
    cluster: str | ClusterAddress | None = None,
    parameters: Mapping[str, object] | None = None,
    jobs: int | None = None,
    on_done: Callable[[int, RunResult], None] | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    **options: Any,
) -> list[RunResult]:
    """Run a batch — a spec file (``runt run --batch``), or runs — on the local daemon
    (``cluster=None``, at most ``jobs`` at once) or on a Dask cluster.

    Args:
        notebooks: a batch spec path, or ``(input, output)`` pairs / :class:`BatchRun`.
        cluster: ``dask://HOST:PORT``, ``tcp://...``, ``local:N`` or a scheduler file.
        parameters: for every run, beneath the spec's own.
        options: :func:`~runtimed.automation.run.execute_notebook_async`'s keywords.

    Returns:
        One :class:`RunResult` per run, in order (status ``ok``, ``failed`` or ``error``).

    Raises:
        BatchSpecError: the spec is invalid. ClusterError: as :func:`connect_cluster`.
    """
    runs, spec_jobs = _as_runs(notebooks, parameters)
    if cluster is not None:
        return await run_cluster_batch(
            runs,
            cluster=cluster,
            jobs=jobs,
            on_done=on_done,
            connect_timeout=connect_timeout,
            **options,
        )
    from runtimed.automation.batch import run_batch
    from runtimed.client import AsyncClient

    socket, autostart = options.pop("socket", None), options.pop("autostart", True)
    async with await AsyncClient.connect(socket, autostart=autostart) as client:
        return await run_batch(
            runs, client=client, jobs=jobs or spec_jobs, on_done=on_done, **options
        )


def execute_notebooks(
    notebooks: str | os.PathLike[str] | Sequence[BatchRun | tuple[str, str]],
    *,
    cluster: str | ClusterAddress | None = None,
    **kwargs: Any,
) -> list[RunResult]:
    """:func:`execute_notebooks_async`, blocking (on a private event loop thread)."""
    from anyio.from_thread import start_blocking_portal

    async def call() -> list[RunResult]:
        return await execute_notebooks_async(notebooks, cluster=cluster, **kwargs)

    with start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        return portal.call(call)
