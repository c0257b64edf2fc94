"""Per-cell ``metadata.execution`` times are the kernel's (issue 13, point 4): the IOPub
``execute_input`` and ``execute_reply`` header dates, as nbclient records them."""

from __future__ import annotations

import datetime
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon

from .conftest import write_notebook
from .test_papermill_parity import code, load, runt

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60  # seconds: generous bound for anything that involves starting a kernel
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
# The cell prints the kernel's clock while it runs: between its execute_input and its reply.
PRINT_NOW = "import datetime\nprint(datetime.datetime.now(datetime.UTC).isoformat())"


def _parse(value: object) -> datetime.datetime:
    assert isinstance(value, str), value
    return datetime.datetime.fromisoformat(value)


async def test_the_execution_record_keeps_the_kernels_message_dates(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "nb.ipynb",
        [{"cell_type": "code", "source": PRINT_NOW, "metadata": {}}],
        metadata={"kernelspec": KERNELSPEC},
    )
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert result.status == "ok", result
    record = nb.runtime.execution(result.execution_id) or {}
    timing = record.get("kernel_timing")
    assert isinstance(timing, dict), record
    printed = _parse(result.outputs[0]["text"].strip())
    assert _parse(timing["iopub.execute_input"]) <= printed <= _parse(timing["shell.execute_reply"])


async def test_runt_run_records_the_kernels_times_in_metadata_execution(
    daemon: Daemon, short_tmp: Path
) -> None:
    src = write_notebook(short_tmp / "in.ipynb", [code(PRINT_NOW)])
    out = short_tmp / "out.ipynb"
    with anyio.fail_after(DEADLINE):
        status, _, err = await runt(daemon.paths.socket, "run", src, out, "--no-autostart")
    assert status == 0, err
    cell = load(out)["cells"][0]
    timing = cell["metadata"]["execution"]
    printed = _parse("".join(o["text"] for o in cell["outputs"]).strip())
    assert _parse(timing["iopub.execute_input"]) <= printed <= _parse(timing["shell.execute_reply"])
    # Not the run's own clock (papermill's start/end of the cell): the kernel's messages.
    papermill_record = cell["metadata"]["papermill"]
    assert timing["iopub.execute_input"] != papermill_record["start_time"]
    assert timing["shell.execute_reply"] != papermill_record["end_time"]
    # All four are the kernel's, in the order its messages go out (busy, input, reply, idle).
    assert timing["iopub.status.busy"] != papermill_record["start_time"]
    assert timing["iopub.status.idle"] != papermill_record["end_time"]
    order = [
        _parse(timing[key])
        for key in (
            "iopub.status.busy",
            "iopub.execute_input",
            "shell.execute_reply",
            "iopub.status.idle",
        )
    ]
    assert order == sorted(order)
    assert set(timing) == {
        "iopub.status.busy",
        "iopub.execute_input",
        "shell.execute_reply",
        "iopub.status.idle",
    }
