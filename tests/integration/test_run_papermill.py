"""``runt run`` side by side with papermill on the same notebooks (real daemon, real kernels)."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import nbformat
import papermill
import papermill.cli
import pytest
from click.testing import CliRunner

from runtimed.automation.report import ERROR_MARKER_TAG
from runtimed.automation.run import execute_notebook_async
from runtimed.daemon.app import Daemon
from runtimed.kernels.outputs import coalesce_streams

from .conftest import write_notebook

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

FAILING_CELLS: list[dict[str, Any]] = [
    {"cell_type": "markdown", "source": "# A report"},
    {
        "cell_type": "code",
        "source": "alpha = 0.1\nname = 'x'",
        "metadata": {"tags": ["parameters"]},
    },
    {
        "cell_type": "code",
        # flush=True: ipykernel flushes stdout and stderr on separate timers, so their
        # relative order is not otherwise guaranteed (for papermill's kernel either).
        "source": "print('alpha is', alpha, flush=True)\nimport sys; print('err', file=sys.stderr)",
    },
    {
        "cell_type": "code",
        "source": "from IPython.display import HTML, display\n"
        "display(HTML('<b>%s</b>' % name))\n{'n': alpha * 2}",
    },
    {"cell_type": "code", "source": "raise ValueError(f'bad alpha {alpha}')"},
    {"cell_type": "markdown", "source": "never reached"},
    {"cell_type": "code", "source": "print('after')"},
]


def _papermill_run(src: Path, out: Path, parameters: dict[str, Any], **kw: Any) -> None:
    with contextlib.suppress(papermill.PapermillExecutionError):
        papermill.execute_notebook(
            str(src),
            str(out),
            parameters=parameters,
            kernel_name="python3",
            progress_bar=False,
            **kw,
        )


def _strip(nb: dict[str, Any]) -> dict[str, Any]:
    """Drop what legitimately differs: ids, timestamps, durations, papermill's version; and
    coalesce stream chunks (nbclient keeps one output per IOPub message, and how ipykernel
    chunks a print depends on its flush timer)."""
    nb = copy.deepcopy(nb)
    meta = nb["metadata"]
    meta.pop("runtimed", None)
    meta.pop("language_info", None)
    for key in ("version", "start_time", "end_time", "duration", "output_path"):
        meta.get("papermill", {}).pop(key, None)
    for cell in nb["cells"]:
        cell.pop("id", None)
        cell["metadata"].pop("execution", None)
        record = cell["metadata"].get("papermill")
        if isinstance(record, dict):
            for key in ("start_time", "end_time", "duration"):
                record.pop(key, None)
        if "outputs" in cell:
            cell["outputs"] = coalesce_streams(cell["outputs"])
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                assert output["traceback"], "an error output must carry a traceback"
                output["traceback"] = "<traceback>"
    return nb


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


@pytest.mark.anyio
async def test_prepare_only_equals_papermill(short_tmp: Path) -> None:
    src = write_notebook(short_tmp / "in.ipynb", FAILING_CELLS)
    ours, theirs = short_tmp / "ours.ipynb", short_tmp / "theirs.ipynb"
    params = {"alpha": 0.5, "name": 'déjà "vu"', "items": [1, {"k": None}]}
    result = await execute_notebook_async(src, ours, params, prepare_only=True)
    await anyio.to_thread.run_sync(
        lambda: papermill.execute_notebook(
            str(src), str(theirs), parameters=params, prepare_only=True, kernel_name="python3"
        )
    )
    assert result.status == "ok"
    assert result.notebook_id is None
    a, b = _load(ours), _load(theirs)
    assert _strip(a) == _strip(b)
    injected = [c for c in a["cells"] if "injected-parameters" in c["metadata"]["tags"]]
    assert len(injected) == 1
    assert a["cells"].index(injected[0]) == 2
    assert a["metadata"]["papermill"]["parameters"] == params
    assert a["metadata"]["papermill"]["output_path"] == str(ours)


@pytest.mark.anyio
async def test_failing_notebook_matches_papermill(daemon: Daemon, short_tmp: Path) -> None:
    src = write_notebook(short_tmp / "in.ipynb", FAILING_CELLS)
    ours, theirs = short_tmp / "out" / "ours.ipynb", short_tmp / "theirs.ipynb"
    params: dict[str, Any] = {"alpha": 0.25}

    async def papermill_in_a_thread() -> None:
        await anyio.to_thread.run_sync(_papermill_run, src, theirs, params)

    async with anyio.create_task_group() as tg:
        tg.start_soon(papermill_in_a_thread)
        result = await execute_notebook_async(
            src, ours, params, socket=daemon.paths.socket, progress_bar=False
        )
    assert result.status == "failed"
    failed = result.failed_cell
    assert failed is not None
    assert (failed.index, failed.ename, failed.evalue) == (5, "ValueError", "bad alpha 0.25")
    assert failed.cell_id == "cell4"
    assert failed.source.startswith("raise ValueError")
    assert failed.traceback
    assert failed.execution_count == 5
    assert result.cells_executed == 5
    a, b = _load(ours), _load(theirs)
    # Same cells, same order (error marker cells included), same outputs and records.
    assert _strip(a) == _strip(b)
    assert a["cells"][0]["metadata"]["tags"] == [ERROR_MARKER_TAG]
    assert a["cells"][0]["source"] == b["cells"][0]["source"]
    assert "In [5]" in "".join(a["cells"][0]["source"])
    statuses = [c["metadata"].get("papermill", {}).get("status") for c in a["cells"]]
    assert statuses == [
        None,
        "completed",
        "completed",
        "completed",
        "completed",
        "completed",
        None,
        "failed",
        "pending",
        "pending",
    ]
    assert a["cells"][-1]["outputs"] == []
    assert a["cells"][-1]["execution_count"] is None
    assert a["metadata"]["papermill"]["exception"] is True


@pytest.mark.anyio
async def test_inspect_equals_papermill_help_notebook(short_tmp: Path) -> None:
    cells: list[dict[str, object]] = [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": "a = 1  # the a\nb: str = 'x'\nlong_parameter_name = {'k': [1, 2]}  # help\n",
        }
    ]
    src = write_notebook(short_tmp / "in.ipynb", cells)
    ours = await anyio.run_process(
        [sys.executable, "-m", "runtimed.cli", "inspect", str(src)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    theirs = CliRunner().invoke(papermill.cli.papermill, [str(src), "--help-notebook"])
    assert theirs.exit_code == 0
    # Everything after the usage line is papermill's text.
    assert ours.stdout.decode().split("\n", 1)[1] == theirs.output.split("\n", 1)[1]


def test_cli_prepare_only_runs_without_a_daemon(short_tmp: Path) -> None:
    src = write_notebook(short_tmp / "in.ipynb", FAILING_CELLS)
    out = short_tmp / "out.ipynb"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtimed.cli",
            "--socket",
            str(short_tmp / "none.sock"),
            "run",
            str(src),
            str(out),
            "-p",
            "alpha",
            "2",
            "-y",
            "name: y",
            "--prepare-only",
            "--no-autostart",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    nb = nbformat.read(out, as_version=4)
    injected = nb.cells[2]
    assert injected.metadata.tags == ["injected-parameters"]
    assert injected.source == '# Parameters\nname = "y"\nalpha = 2\n'
