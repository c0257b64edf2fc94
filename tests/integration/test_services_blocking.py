"""The blocking facade's completion, inspection and history against a daemon process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtimed.client import Client
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook

pytestmark = [pytest.mark.integration]


def test_the_blocking_client_completes_inspects_and_reads_history(
    daemon_process: tuple[subprocess.Popen[bytes], RuntimedPaths], short_tmp: Path
) -> None:
    _proc, paths = daemon_process
    path = write_notebook(
        short_tmp / "b.ipynb",
        [{"cell_type": "code", "source": "import json"}, {"cell_type": "code", "source": ""}],
    )
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        assert nb.execute("cell0", timeout=60).status == "ok"
        nb.set_source("cell1", "json.dum")

        completed = nb.complete("cell1")
        inspected = nb.inspect("cell1", 4)
        history = nb.history(n=1)

    assert "dumps" in completed.matches or "json.dumps" in completed.matches
    assert completed.cursor_end == len("json.dum")
    assert inspected.found is True
    assert "JSON" in str(inspected.data["text/plain"])
    assert [entry.source for entry in history.entries] == ["import json"]
