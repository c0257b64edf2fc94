"""The blocking facade's comms against a daemon process: read a slider's state, move it,
see the kernel's observe callback run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtimed.client import Client
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook

pytestmark = [pytest.mark.integration]

SLIDER = (
    "import ipywidgets as widgets\n"
    "seen = []\n"
    "slider = widgets.IntSlider(value=1)\n"
    "slider.observe(lambda change: seen.append(change['new']), names='value')\n"
    "slider"
)


def test_the_blocking_client_reads_and_moves_a_slider(
    daemon_process: tuple[subprocess.Popen[bytes], RuntimedPaths], short_tmp: Path
) -> None:
    _proc, paths = daemon_process
    path = write_notebook(
        short_tmp / "w.ipynb",
        [{"cell_type": "code", "source": SLIDER}, {"cell_type": "code", "source": "print(seen)"}],
    )
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        assert nb.execute("cell0", timeout=60).status == "ok"
        comms = nb.wait_comms(
            lambda c: any(m.get("model_name") == "IntSliderModel" for m in c.values()), timeout=60
        )
        (slider,) = [cid for cid, m in comms.items() if m.get("model_name") == "IntSliderModel"]

        nb.send_comm(slider, {"method": "update", "state": {"value": 6}, "buffer_paths": []})
        printed = nb.execute("cell1", timeout=60).outputs

        assert nb.comms()[slider]["state"]["value"] == 6
    assert printed[0]["text"] == "[6]\n"
