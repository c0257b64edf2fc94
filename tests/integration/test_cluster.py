"""Batches on a real ``distributed.LocalCluster(processes=True)`` of 2 workers: each worker
runs its own runtimed daemon (started by the plugin on first use) and real kernels.

One cluster is shared by the module (its start costs seconds on 2 cores); its teardown
asserts that every daemon and kernel its workers started is gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import dask
import psutil
import pytest
from distributed import Client, LocalCluster

from runtimed.automation.batch import BatchRun
from runtimed.automation.batch_api import execute_notebooks
from runtimed.automation.cluster import (
    ClusterError,
    parse_cluster,
    run_cluster_batch,
)
from runtimed.automation.progress import RunObserver

from .conftest import wait_for_file_code, write_notebook

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DAEMON_MODULE = "runtimed.automation.cluster_daemon"


@dataclass
class Shared:
    cluster: LocalCluster
    client: Client  # a blocking client, for the tests' own questions (pids); never on the loop
    address: str
    folder: Path


def descendants(pids: list[int]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for pid in pids:
        try:
            found += psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
    return found


def worker_pids(client: Client) -> dict[str, int]:
    pids: dict[str, int] = client.run(os.getpid)
    return pids


def assert_all_gone(procs: list[psutil.Process], what: str) -> None:
    _, alive = psutil.wait_procs(procs, timeout=60)
    assert not alive, f"{what} left running: {[(p.pid, cmdline(p)) for p in alive]}"


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    folder = Path(tempfile.mkdtemp(prefix="rtdask-", dir="/tmp"))
    saved = {k: os.environ.get(k) for k in ("RUNTIMED_CONFIG",)}
    # Hermetic daemons: never the user's config.toml (the workers inherit this environment).
    os.environ["RUNTIMED_CONFIG"] = str(folder / "no-config.toml")
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
            local_directory=str(folder),
            silence_logs=40,
        )
    client = Client(cluster)
    try:
        yield Shared(cluster, client, cluster.scheduler_address, folder)
    finally:
        started = descendants(list(worker_pids(client).values()))
        client.close()
        cluster.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # Every daemon (and kernel) a worker started stops with its worker.
        assert_all_gone(started, "processes of the cluster's workers")


def code(source: str, *tags: str) -> dict[str, Any]:
    return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}}


class Events:
    """The per-run ``run_started`` calls the batch makes (worker named in ``link``)."""

    def __init__(self) -> None:
        self.started: list[tuple[int, str]] = []
        self.changed = anyio.Event()

    def observer(self, index: int, run: BatchRun) -> RunObserver:
        events = self

        class Seen(RunObserver):
            def run_started(
                self, *, input_path: str, output_path: str, notebook_id: str, link: str, total: int
            ) -> None:
                events.started.append((index, link.rsplit(" on worker ", 1)[-1]))
                events.changed.set()
                events.changed = anyio.Event()

        return Seen()


# ------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("text", "kind", "address"),
    [
        ("dask://10.0.0.5:8786", "address", "tcp://10.0.0.5:8786"),
        ("tcp://h:1", "address", "tcp://h:1"),
        ("tls://h:1", "address", "tls://h:1"),
        ("sched.example:8786", "address", "tcp://sched.example:8786"),
        ("local:3", "local", ""),
    ],
)
def test_cluster_addresses_are_read_as_dask_reads_them(text: str, kind: str, address: str) -> None:
    parsed = parse_cluster(text)
    assert (parsed.kind, parsed.address) == (kind, address)


def test_a_scheduler_file_is_an_existing_path_and_nonsense_is_refused(tmp_path: Path) -> None:
    sched = tmp_path / "scheduler.json"
    sched.write_text("{}")
    assert parse_cluster(str(sched)).kind == "scheduler_file"
    for bad in ("local:0", "local:x", str(tmp_path / "missing.json")):
        with pytest.raises(ClusterError, match="local:N"):
            parse_cluster(bad)


# ------------------------------------------------------------------------------ batches


@pytest.mark.anyio
async def test_grid_of_eight_on_the_cluster_one_failing_recorded_values_in_one_table(
    shared: Shared, short_tmp: Path
) -> None:
    write_notebook(
        short_tmp / "train.ipynb",
        [
            code("x = 0", "parameters"),
            code("from runtimed import glue\nglue('square', x * x)"),
            code("assert x != 3, 'x is three'\nprint('x', x)"),
        ],
    )
    (short_tmp / "grid.yaml").write_text(
        "grid:\n  input: train.ipynb\n  output: 'out/train-{x}.ipynb'\n"
        "  parameters:\n    x: [1, 2, 3, 4, 5, 6, 7, 8]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runt = [sys.executable, "-m", "runtimed.cli"]
    done = await anyio.run_process(
        [*runt, "run", "--batch", "grid.yaml", "--cluster", shared.address, "--json"],
        cwd=short_tmp,
        env=env,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr  # one run failed
    results = json.loads(done.stdout)
    assert [r["status"] for r in results] == ["ok", "ok", "failed", "ok", "ok", "ok", "ok", "ok"]
    assert results[2]["failed_cell"]["evalue"] == "x is three"
    assert [r["scraps"]["square"] for r in results] == [x * x for x in range(1, 9)]
    workers = set(worker_pids(shared.client))
    for line in (ln for ln in stderr.splitlines() if " started " in ln):
        assert line.rsplit(" on worker ", 1)[-1].rstrip(")") in workers, line
    assert "Dask dashboard: http" in stderr
    for x in range(1, 9):
        nb = json.loads((short_tmp / "out" / f"train-{x}.ipynb").read_text())
        papermill = nb["metadata"]["papermill"]
        assert papermill["parameters"] == {"x": x}
        # The names as the caller gave them (as a local batch), not the worker's staging.
        assert papermill["output_path"] == f"out/train-{x}.ipynb"
        assert papermill["input_path"] == "train.ipynb"
    # The recorded values of all eight, gathered into one table.
    outs = sorted((short_tmp / "out").glob("*.ipynb"))
    table = await anyio.run_process([*runt, "scraps", *map(str, outs)], env=env)
    rows = [ln.split() for ln in table.stdout.decode().splitlines()[1:]]
    assert sorted(int(r[2]) for r in rows if r[1] == "square") == [x * x for x in range(1, 9)]


@pytest.mark.anyio
async def test_a_run_whose_worker_is_killed_is_retried_and_finishes(
    shared: Shared, short_tmp: Path
) -> None:
    gate = short_tmp / "gate"
    write_notebook(short_tmp / "slow.ipynb", [code(wait_for_file_code(gate) + "done = 1")])
    write_notebook(short_tmp / "quick.ipynb", [code("1 + 1")])
    runs = [
        BatchRun(str(short_tmp / "slow.ipynb"), str(short_tmp / "out" / "slow.ipynb")),
        BatchRun(str(short_tmp / "quick.ipynb"), str(short_tmp / "out" / "quick.ipynb")),
    ]
    events = Events()
    results: list[Any] = []

    async def batch() -> None:
        results.extend(
            await run_cluster_batch(runs, cluster=shared.address, observer=events.observer)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch)
        with anyio.fail_after(120):
            while not any(index == 0 for index, _ in events.started):
                await events.changed.wait()
        killed = next(worker for index, worker in events.started if index == 0)
        pid = (await anyio.to_thread.run_sync(worker_pids, shared.client))[killed]
        its_daemon = await anyio.to_thread.run_sync(descendants, [pid])
        assert any(DAEMON_MODULE in cmdline(p) for p in its_daemon)
        os.kill(pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(lambda: psutil.wait_procs([psutil.Process(pid)], 30))
        gate.touch()  # the retried run may now finish
    assert [r.status for r in results] == ["ok", "ok"], results
    assert (short_tmp / "out" / "slow.ipynb").exists()
    again = [worker for index, worker in events.started if index == 0]
    assert len(again) == 2, events.started
    assert again[1] != killed
    # The dead worker's daemon and kernels went with it (its lifeline closed).
    await anyio.to_thread.run_sync(assert_all_gone, its_daemon, "the killed worker's daemon")


@pytest.mark.anyio
async def test_an_unreachable_scheduler_is_a_clear_error_naming_it(short_tmp: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_notebook(short_tmp / "a.ipynb", [code("1")])
    runs = [BatchRun(str(short_tmp / "a.ipynb"), str(short_tmp / "b.ipynb"))]
    with anyio.fail_after(30), pytest.raises(ClusterError) as caught:
        await run_cluster_batch(runs, cluster=f"dask://127.0.0.1:{port}", connect_timeout=2)
    assert f"tcp://127.0.0.1:{port}" in str(caught.value)
    assert "cannot reach the Dask scheduler" in str(caught.value)
    assert not (short_tmp / "b.ipynb").exists()


_HIDE_RUNTIMED = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "runtimed" or name.startswith("runtimed."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
sys.path[:] = [p for p in sys.path if p not in ("", %r)]
from distributed.cli.dask_worker import main
sys.argv = ["dask-worker", *sys.argv[1:]]
main()
"""


@pytest.mark.anyio
async def test_a_worker_without_runtimed_is_named(short_tmp: Path) -> None:
    with anyio.fail_after(60):
        scheduler = await anyio.to_thread.run_sync(
            lambda: LocalCluster(
                n_workers=0, processes=False, protocol="tcp", dashboard_address=None
            )
        )
        try:
            argv = [sys.executable, "-c", _HIDE_RUNTIMED % str(REPO), scheduler.scheduler_address]
            argv += ["--nthreads", "1", "--no-nanny", "--name", "bare"]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            async with await anyio.open_process(
                argv, env=env, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            ) as worker:
                write_notebook(short_tmp / "a.ipynb", [code("1")])
                runs = [BatchRun(str(short_tmp / "a.ipynb"), str(short_tmp / "b.ipynb"))]
                try:
                    with pytest.raises(ClusterError) as caught:
                        await run_cluster_batch(runs, cluster=scheduler.scheduler_address)
                finally:
                    worker.terminate()
                    await worker.wait()
        finally:
            await anyio.to_thread.run_sync(scheduler.close)
    message = str(caught.value)
    assert "runtimed is not installed on Dask worker tcp://" in message
    assert "No module named 'runtimed" in message


def cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def new_processes(before: set[int]) -> list[tuple[psutil.Process, str]]:
    """Children of this process not in ``before``, with all their descendants (a local
    cluster's nannies, workers, daemons and kernels), and their command lines."""
    fresh = [
        p
        for p in psutil.Process().children()
        if p.pid not in before and "resource_tracker" not in cmdline(p)
    ]
    return [(p, cmdline(p)) for p in fresh + descendants([p.pid for p in fresh])]


@pytest.mark.anyio
async def test_local_cluster_ctrl_c_keeps_what_finished_and_leaves_no_process(
    short_tmp: Path,
) -> None:
    gate = short_tmp / "never"
    write_notebook(short_tmp / "quick.ipynb", [code("1 + 1")])
    write_notebook(short_tmp / "stuck.ipynb", [code(wait_for_file_code(gate))])
    runs = [
        BatchRun(str(short_tmp / "quick.ipynb"), str(short_tmp / "out" / "quick.ipynb")),
        BatchRun(str(short_tmp / "stuck.ipynb"), str(short_tmp / "out" / "stuck.ipynb")),
    ]
    before = {p.pid for p in psutil.Process().children()}
    events = Events()
    finished = anyio.Event()
    done: list[int] = []

    def on_done(index: int, result: Any) -> None:
        done.append(index)
        finished.set()

    seen: list[tuple[psutil.Process, str]] = []
    with anyio.fail_after(180):
        async with anyio.create_task_group() as tg:

            async def batch() -> None:
                await run_cluster_batch(
                    runs, cluster="local:2", observer=events.observer, on_done=on_done
                )

            tg.start_soon(batch)
            while {index for index, _ in events.started} != {0, 1}:
                await events.changed.wait()
            await finished.wait()
            seen = await anyio.to_thread.run_sync(new_processes, before)
            tg.cancel_scope.cancel()  # what Ctrl-C does to runt run
    assert done == [0]
    assert (short_tmp / "out" / "quick.ipynb").exists()
    assert not (short_tmp / "out" / "stuck.ipynb").exists()
    cmdlines = [c for _, c in seen]
    assert sum(DAEMON_MODULE in c for c in cmdlines) == 2, cmdlines  # one daemon per worker
    procs = [p for p, _ in seen]
    await anyio.to_thread.run_sync(assert_all_gone, procs, "processes of the local cluster")


def test_execute_notebooks_python_api_on_the_cluster(shared: Shared, short_tmp: Path) -> None:
    source = write_notebook(
        short_tmp / "in.ipynb",
        [code("x = 1", "parameters"), code("from runtimed import glue\nglue('x', x)")],
    )
    out = short_tmp / "deep" / "out.ipynb"
    results = execute_notebooks(
        [(str(source), str(out))], cluster=shared.address, parameters={"x": 5}
    )
    assert [r.status for r in results] == ["ok"], results
    assert results[0].scraps == {"x": 5}
    assert results[0].output_path == str(out)
    assert json.loads(out.read_text())["metadata"]["papermill"]["parameters"] == {"x": 5}


def test_fsspec_urls_are_read_and_written_by_the_workers(shared: Shared, short_tmp: Path) -> None:
    """``file://`` URLs (any fsspec location the workers reach): the worker opens the input and
    writes the output itself; the caller sends neither notebook's bytes."""
    source = write_notebook(
        short_tmp / "url-in.ipynb",
        [code("x = 1", "parameters"), code("from runtimed import glue\nglue('x', x * 2)")],
    )
    out = short_tmp / "url-out" / "o.ipynb"
    in_url, out_url = source.as_uri(), out.as_uri()
    results = execute_notebooks([(in_url, out_url)], cluster=shared.address, parameters={"x": 4})
    assert [r.status for r in results] == ["ok"], results
    assert results[0].scraps == {"x": 8}
    assert results[0].output_path == out_url
    papermill = json.loads(out.read_text())["metadata"]["papermill"]
    assert papermill["input_path"] == in_url
    assert papermill["output_path"] == out_url
    assert papermill["parameters"] == {"x": 4}
