"""Comms and Jupyter widgets through a real daemon and a real ipykernel with the real
ipywidgets package (issue 15 points 1 and 2): comm state in the runtime document, client
updates reaching the kernel, widget state saved into the .ipynb and rendered by nbconvert,
Output widgets capturing outputs in the daemon, and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.client.notebook import AsyncNotebook
from runtimed.daemon.app import Daemon
from runtimed.errors import CommNotFound, InvalidRequest
from runtimed.storage.ipynb import WIDGET_STATE_MIME

from .conftest import write_notebook
from .runtime_helpers import DEADLINE, code

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

Comms = dict[str, dict[str, Any]]

SLIDER = """\
import ipywidgets as widgets
seen = []
log = widgets.Output()
slider = widgets.IntSlider(value=3, min=0, max=10, description="n")
def on_value(change):
    seen.append(change["new"])
    with log:
        print("observed", change["new"])
slider.observe(on_value, names="value")
display(slider, log)
"""


def model_ids(comms: Comms, name: str) -> list[str]:
    return [cid for cid, c in comms.items() if c.get("model_name") == name]


def has_model(name: str, **state: object) -> Any:
    def check(comms: Comms) -> bool:
        return any(
            c.get("model_name") == name
            and all(c.get("state", {}).get(k) == v for k, v in state.items())
            for c in comms.values()
        )

    return check


async def run(nb: AsyncNotebook, cell_id: str) -> list[dict[str, Any]]:
    result = await nb.execute(cell_id, timeout=DEADLINE)
    assert result.status == "ok", (result.ename, result.evalue, result.traceback)
    return result.outputs


def stdout(outputs: list[dict[str, Any]]) -> str:
    return "".join(o["text"] for o in outputs if o.get("output_type") == "stream")


async def slider_notebook(client: AsyncClient, path: Path) -> tuple[AsyncNotebook, str, str]:
    nb = await client.open(write_notebook(path, [code(SLIDER), code("print(seen)")]))
    await run(nb, "cell0")
    comms = await nb.wait_comms(has_model("IntSliderModel", value=3), timeout=DEADLINE)
    (slider,) = model_ids(comms, "IntSliderModel")
    (log,) = model_ids(comms, "OutputModel")
    return nb, slider, log


async def test_comm_state_is_in_the_runtime_document(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb, slider, _ = await slider_notebook(client, short_tmp / "s.ipynb")

    comm = (await nb.comms())[slider]

    assert comm["target_name"] == "jupyter.widget"
    assert comm["model_module"] == "@jupyter-widgets/controls"
    assert comm["state"]["description"] == "n"
    assert (comm["state"]["min"], comm["state"]["max"]) == (0, 10)


async def test_a_slider_moved_by_a_client_reaches_the_kernels_observe_callback(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb, slider, log = await slider_notebook(client, short_tmp / "s.ipynb")

    await nb.send_comm(slider, {"method": "update", "state": {"value": 7}, "buffer_paths": []})

    # The callback printed inside the Output widget: the daemon routed it there.
    comms = await nb.wait_comms(
        lambda c: "observed 7" in stdout(c[log]["state"].get("outputs") or []), timeout=DEADLINE
    )
    assert comms[slider]["state"]["value"] == 7
    assert stdout(await run(nb, "cell1")) == "[7]\n"


async def test_a_late_client_sees_the_current_widget_state(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb, slider, _ = await slider_notebook(client, short_tmp / "s.ipynb")
    await nb.send_comm(slider, {"method": "update", "state": {"value": 9}, "buffer_paths": []})
    await run(nb, "cell1")  # the kernel has handled the update

    async with await AsyncClient.connect(daemon.paths.socket) as late:
        other = await late.open(short_tmp / "s.ipynb")  # joins the open notebook
        comms = await other.wait_comms(has_model("IntSliderModel", value=9), timeout=DEADLINE)

    assert comms[slider]["state"]["description"] == "n"


async def test_saved_notebook_has_the_widget_state_and_nbconvert_renders_it(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    path = short_tmp / "s.ipynb"
    stale = {WIDGET_STATE_MIME: {"version_major": 2, "version_minor": 0, "state": {"old": {}}}}
    write_notebook(
        path,
        [code(SLIDER), code("print(seen)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}, "widgets": stale},
    )
    nb = await client.open(path)
    await run(nb, "cell0")
    comms = await nb.wait_comms(has_model("IntSliderModel", value=3), timeout=DEADLINE)
    (slider,) = model_ids(comms, "IntSliderModel")
    await nb.send_comm(slider, {"method": "update", "state": {"value": 5}, "buffer_paths": []})
    await run(nb, "cell1")

    await nb.save()

    saved = json.loads(await anyio.Path(path).read_text())
    widgets = saved["metadata"]["widgets"][WIDGET_STATE_MIME]
    assert (widgets["version_major"], widgets["version_minor"]) == (2, 0)
    assert "old" not in widgets["state"]  # the input file's stale state is replaced
    model = widgets["state"][slider]
    assert model["model_name"] == "IntSliderModel"
    assert model["model_module"] == "@jupyter-widgets/controls"
    assert model["state"]["value"] == 5
    views = [
        o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for o in saved["cells"][0]["outputs"]
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert slider in views
    assert all(view in widgets["state"] for view in views)

    result = await anyio.run_process(
        [sys.executable, "-m", "nbconvert", "--to", "html", "--stdout", str(path)], check=False
    )
    html = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert 'type="application/vnd.jupyter.widget-state+json"' in html
    assert 'type="application/vnd.jupyter.widget-view+json"' in html
    assert slider in html


# -- Output widgets -------------------------------------------------------------------


async def test_clear_output_inside_an_output_widget_clears_only_the_widget(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    source = (
        "import ipywidgets as widgets\n"
        "from IPython.display import clear_output\n"
        "print('keep me')\n"
        "out = widgets.Output()\n"
        "display(out)\n"
        "with out:\n"
        "    print('gone')\n"
        "    clear_output()\n"
        "    print('inside')\n"
    )
    nb = await client.open(write_notebook(short_tmp / "o.ipynb", [code(source)]))

    outputs = await run(nb, "cell0")

    assert stdout(outputs) == "keep me\n"
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    comms = await nb.wait_comms(
        lambda c: any(
            stdout(m["state"].get("outputs") or []) == "inside\n"
            for m in c.values()
            if m.get("model_name") == "OutputModel"
        ),
        timeout=DEADLINE,
    )
    assert len(model_ids(comms, "OutputModel")) == 1


# nbclient's own test notebook tests/files/Output.ipynb (jupyter/nbclient@0811ff4, the same
# bytes as tests/fixtures/papermill/Output.ipynb): the cell outputs nbclient expects there, and
# each Output widget's expected outputs (its metadata.widgets state).
OUTPUT_NOTEBOOK = Path(__file__).parents[1] / "fixtures" / "papermill" / "Output.ipynb"
CELL_STDOUT = {1: "hi\n", 2: "", 4: "hi2\n", 6: "hi3\n", 8: "hi4\n", 10: "", 13: ""}
WIDGET_OUTPUTS = {  # widget variable -> its outputs, (output_type, text or text/plain)
    "output1": [("stream", "in output\n"), ("error", "trigger msg_type=error")],
    "output2": [("stream", "in output2\n")],
    "output3": [("stream", "world\n")],
    "output4": [],
    "output5": [("display_data", "'hello world'")],
    "output_inner": [("stream", "in inner\nalso in inner\n")],
    "output_outer": [("stream", "in outer\n")],
}


def summary(outputs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    result = []
    for o in outputs:
        kind = o["output_type"]
        if kind == "stream":
            result.append((kind, o["text"]))
        elif kind == "error":
            result.append((kind, o["evalue"]))
        else:
            result.append((kind, o["data"]["text/plain"]))
    return result


async def test_nbclients_output_notebook_keeps_every_output(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    path = short_tmp / "Output.ipynb"
    notebook = json.loads(await anyio.Path(OUTPUT_NOTEBOOK).read_text())
    # The file lacks the kernelspec's required name and display_name (papermill warns).
    notebook["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    await anyio.Path(path).write_text(json.dumps(notebook))
    nb = await client.open(path)
    views: dict[str, str] = {}
    for index, cell_id in enumerate(nb.cell_ids()):
        outputs = await run(nb, cell_id)
        last = nb.cell(cell_id).source.rsplit("\n", 1)[-1]
        if last.startswith("output"):  # the cell shows a widget: remember its model id
            (view,) = [o["data"]["application/vnd.jupyter.widget-view+json"] for o in outputs]
            views[last] = view["model_id"]
        else:
            assert stdout(outputs) == CELL_STDOUT[index], index
            assert all(o["output_type"] == "stream" for o in outputs), index

    def widgets_done(comms: Comms) -> bool:
        return all(
            summary(comms[views[name]]["state"].get("outputs") or []) == expected
            for name, expected in WIDGET_OUTPUTS.items()
        )

    try:
        await nb.wait_comms(widgets_done, timeout=DEADLINE)
    except TimeoutError:
        comms = await nb.comms()
        got = {n: summary(comms[views[n]]["state"].get("outputs") or []) for n in views}
        pytest.fail(f"widget outputs: {got}")


# -- bad input ------------------------------------------------------------------------


async def test_a_comm_message_to_an_unknown_comm_is_a_clear_error(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb, slider, _ = await slider_notebook(client, short_tmp / "s.ipynb")

    with pytest.raises(CommNotFound, match="no open comm 'nope'"):
        await nb.send_comm("nope", {"method": "update", "state": {"value": 1}})
    with pytest.raises(InvalidRequest, match="buffer"):
        await nb.send_comm(slider, {"method": "update", "state": {}, "buffer_paths": [["x"]]})

    await nb.send_comm(slider, {"method": "update", "state": {"value": 4}, "buffer_paths": []})
    assert stdout(await run(nb, "cell1")) == "[4]\n"


BAD_KERNEL_MESSAGES = """\
import ipywidgets as widgets
k = get_ipython().kernel
parent = k.get_parent()
for content in ({"data": 5}, {"comm_id": 12, "data": {}}, {"comm_id": "zzz", "data": []},
                {"comm_id": "unknown", "data": {"method": "update", "state": {"a": 1}}}):
    k.session.send(k.iopub_socket, "comm_msg", content, parent=parent)
big = widgets.Textarea()
big.value = "x" * 50_000_000
image = widgets.Image(value=b"\\x89PNG" + bytes(50_000_000))
small = widgets.IntText(value=11)
display(big, image, small)
print("still here")
"""


async def test_malformed_and_huge_comm_messages_are_dropped_and_the_notebook_works(
    daemon: Daemon, client: AsyncClient, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nb = await client.open(
        write_notebook(short_tmp / "b.ipynb", [code(BAD_KERNEL_MESSAGES), code("1 + 1")])
    )

    assert stdout(await run(nb, "cell0")) == "still here\n"

    comms = await nb.wait_comms(has_model("IntTextModel", value=11), timeout=DEADLINE)
    (text,) = model_ids(comms, "TextareaModel")
    assert len(comms[text]["state"].get("value", "")) < 1000  # 50 MB refused, not stored
    (image,) = model_ids(comms, "ImageModel")
    (buffer,) = comms[image]["buffers"].values()
    assert buffer["path"] == ["value"]
    assert buffer["size"] == 50_000_004  # the 50 MB image went to the blob store
    assert (await nb.execute("cell1", timeout=DEADLINE)).ok
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "exceeds the limit" in messages
    assert "unknown comm unknown" in messages


async def test_a_kernel_restart_empties_the_comms_and_a_stale_id_is_refused(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb, slider, _ = await slider_notebook(client, short_tmp / "s.ipynb")

    await nb.restart()

    await nb.wait_comms(lambda comms: comms == {}, timeout=DEADLINE)
    with pytest.raises(CommNotFound):
        await nb.send_comm(slider, {"method": "update", "state": {"value": 1}})
    await run(nb, "cell0")  # a new slider in the new kernel
    await nb.wait_comms(has_model("IntSliderModel", value=3), timeout=DEADLINE)
