"""The MCP server end to end: the SDK's stdio client -> ``runt mcp`` -> a real daemon and
a real ipykernel. Every scenario of issue 12's Tests section."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import mcp.types as types
import pytest
from mcp import MCPDeprecationWarning

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.mcp.tools import TOOLS

from .conftest import write_notebook
from .test_mcp_support import Agent, code, mcp_agent

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
async def agent(daemon: Daemon, short_tmp: Path) -> AsyncIterator[Agent]:
    async with mcp_agent(daemon.paths, short_tmp) as connected:
        yield connected


ISSUE_NAMES = [
    *("list_notebooks", "open_notebook", "create_notebook", "save_notebook", "close_notebook"),
    *("get_notebook", "get_cell", "insert_cell", "replace_source", "edit_cell", "delete_cell"),
    *("move_cell", "set_cell_type", "execute_cell", "get_execution", "run_all"),
    *("interrupt_kernel", "restart_kernel", "answer_input", "run_notebook"),
    *("inspect_parameters", "read_scraps", "changes_since", "complete", "inspect"),
]


async def test_tools_are_listed_with_the_issue_names_and_schemas(agent: Agent) -> None:
    listed = (await agent.session.list_tools()).tools
    assert [t.name for t in listed] == ISSUE_NAMES == list(TOOLS)
    for tool in listed:
        assert tool.description
        assert tool.input_schema["type"] == "object"
        assert tool.input_schema["additionalProperties"] is False


async def test_create_insert_and_edit_by_id_while_a_person_edits_other_cells(
    agent: Agent, daemon: Daemon, short_tmp: Path
) -> None:
    path = short_tmp / "made.ipynb"
    created = await agent.call("create_notebook", path=str(path), kernel="python3")
    notebook = created["notebook_id"]
    assert created["path"] == str(path.resolve())
    assert created["version"].startswith("v1:")
    first = (await agent.call("insert_cell", notebook=notebook, source="a = 1"))["cell_id"]
    second = (await agent.call("insert_cell", notebook=str(path), source="b = 2"))["cell_id"]
    async with await AsyncClient.connect(daemon.paths.socket) as person:
        nb = await person.open(path)
        await person.wait_until(lambda: {first, second} <= set(nb.cell_ids()), timeout=10)
        # The person inserts cells at the top (every index shifts) and edits their own cell
        # while the agent edits its cells by id.
        mine = await nb.add_cell("code", "person = 0", index=0)
        await nb.add_cell("markdown", "# notes", index=0)
        await agent.call("edit_cell", notebook=notebook, cell_id=first, find="1", replace="10")
        await nb.set_source(mine, "person = 1")
        await agent.call("replace_source", notebook=notebook, cell_id=second, source="b = 20")
        after = (
            await agent.call(
                "insert_cell", notebook=notebook, source="c = a + b", after_cell_id=first
            )
        )["cell_id"]
        await agent.call("move_cell", notebook=notebook, cell_id=second, position="end")
        await agent.call("set_cell_type", notebook=notebook, cell_id=after, cell_type="raw")
        await person.wait_until(
            lambda: after in nb.cell_ids() and nb.cell(after).cell_type == "raw", timeout=10
        )
        outline = await agent.call("get_notebook", notebook=notebook)
        by_id = {c["cell_id"]: c for c in outline["cells"]}
        assert by_id[first]["first_line"] == "a = 10"
        assert by_id[second]["first_line"] == "b = 20"
        assert by_id[mine]["first_line"] == "person = 1"
        assert by_id[after]["cell_type"] == "raw"
        order = [c["cell_id"] for c in outline["cells"]]
        assert order.index(after) == order.index(first) + 1
        assert order[-1] == second
        # The person's replica agrees, cell by cell.
        assert nb.cell(first).source == "a = 10"
        assert nb.cell(second).source == "b = 20"
        assert nb.cell(mine).source == "person = 1"
        await nb.close()
    await agent.call("delete_cell", notebook=notebook, cell_id=after)
    saved = await agent.call("save_notebook", notebook=notebook)
    on_disk = json.loads(Path(saved["path"]).read_text())
    assert [c["id"] for c in on_disk["cells"]] == [
        c["cell_id"] for c in (await agent.call("get_notebook", notebook=notebook))["cells"]
    ]
    assert after not in [c["id"] for c in on_disk["cells"]]
    listed = await agent.call("list_notebooks")
    assert any(n["notebook_id"] == notebook and n["open_in_this_session"] for n in listed["open"])
    await agent.call("close_notebook", notebook=notebook)


async def test_a_long_cell_returns_at_the_deadline_and_is_collected_later(
    agent: Agent, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "slow.ipynb",
        [code("import time\ntime.sleep(5)\nprint('done')", "slow")],
    )
    await agent.call("open_notebook", notebook=str(path))
    # The kernel starts on the first execution: warm it so the deadline measures the cell.
    warm = await agent.call("insert_cell", notebook=str(path), source="1", position="start")
    assert (await agent.call("execute_cell", notebook=str(path), cell_id=warm["cell_id"],
                             timeout=60))["status"] == "ok"  # fmt: skip
    started = await agent.call("execute_cell", notebook=str(path), cell_id="slow", timeout=1)
    assert started["finished"] is False
    assert started["status"] in ("queued", "running")
    assert "get_execution" in started["hint"]
    execution_id = started["execution_id"]
    now = await agent.call("get_execution", execution_id=execution_id)
    assert now["finished"] is False
    done = await agent.call(
        "get_execution", notebook=str(path), execution_id=execution_id, timeout=60
    )
    assert done["status"] == "ok"
    assert done["outputs"] == [{"type": "stream", "name": "stdout", "text": "done\n"}]


async def test_run_a_parameterized_notebook_and_read_its_scraps(
    agent: Agent, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "params.ipynb",
        [
            code("alpha = 1  # the input\nlabel: str = 'x'", "p", tags=["parameters"]),
            code("from runtimed.glue import glue\nglue('double', alpha * 2)\nglue('label', label)",
                 "g"),
        ],
    )  # fmt: skip
    params = await agent.call("inspect_parameters", notebook=str(path))
    assert [(p["name"], p["default"]) for p in params["parameters"]] == [
        ("alpha", "1"),
        ("label", "'x'"),
    ]
    out = short_tmp / "out" / "params-run.ipynb"
    ran = await agent.call(
        "run_notebook", notebook=str(path), parameters={"alpha": 21, "label": "y"},
        output_path=str(out),
    )  # fmt: skip
    assert ran["status"] == "ok", ran
    assert ran["failed_cell"] is None
    assert ran["scraps"] == {"double": 42, "label": "y"}
    assert ran["output_path"] == str(out.resolve())
    read = await agent.call("read_scraps", notebook=str(out))
    assert read["scraps"] == {"double": 42, "label": "y"}
    failing = write_notebook(short_tmp / "fails.ipynb", [code("1/0", "boom")])
    failed = await agent.call("run_notebook", notebook=str(failing))
    assert failed["status"] == "failed"
    assert failed["failed_cell"]["cell_id"] == "boom"
    assert failed["failed_cell"]["ename"] == "ZeroDivisionError"
    assert "\x1b[" not in failed["failed_cell"]["traceback"]


# A 1x1 PNG; the large "image" is a PNG header plus 40 kB (never decoded by anyone here).
PNG_1x1 = "".join(
    [
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw",
        "AAAABJRU5ErkJggg==",
    ]
)
IMAGES = f"""
import base64, os
from IPython.display import display
display({{'image/png': '{PNG_1x1}', 'text/plain': '<small>'}}, raw=True)
big = base64.b64encode(base64.b64decode('{PNG_1x1}') + os.urandom(40000)).decode()
display({{'image/png': big, 'text/plain': '<big>'}}, raw=True)
"""


async def test_small_image_is_image_content_and_a_large_one_a_url(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "img.ipynb", [code(IMAGES, "img"), code("1/0", "err")])
    async with mcp_agent(daemon.paths, short_tmp, "--image-limit", "10000") as agent:
        await agent.call("open_notebook", notebook=str(path))
        result = await agent.raw("execute_cell", notebook=str(path), cell_id="img", timeout=60)
        assert not result.is_error
        images = [c for c in result.content if isinstance(c, types.ImageContent)]
        assert [(i.mime_type, i.data) for i in images] == [("image/png", PNG_1x1)]
        text = result.content[0]
        assert isinstance(text, types.TextContent)
        small, big = json.loads(text.text)["outputs"]
        assert small["images"][0]["inline"] is True
        assert small["text"] == "<small>"
        url = big["images"][0]["url"]
        assert big["images"][0]["size"] > 40000
        port = daemon.http_port
        assert url.startswith(f"http://127.0.0.1:{port}/blob/")
        blob_hash = url.rsplit("/", 1)[1].split("?", 1)[0]
        assert len(blob_hash) == 64
        # The link works as it is, without cookies (the token is in it): the image's bytes.
        async with httpx.AsyncClient() as http:
            fetched = await http.get(url)
        assert fetched.status_code == 200
        assert hashlib.sha256(fetched.content).hexdigest() == blob_hash
        assert big["text"] == "<big>"
        error = await agent.call("execute_cell", notebook=str(path), cell_id="err", timeout=60)
        assert error["status"] == "error"
        assert error["ename"] == "ZeroDivisionError"
        (out,) = error["outputs"]
        assert out["type"] == "error"
        assert "ZeroDivisionError" in out["traceback"]
        assert "\x1b[" not in out["traceback"]


async def test_large_text_output_is_truncated_with_its_size(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "txt.ipynb", [code("print('x' * 50000)", "big")])
    async with mcp_agent(daemon.paths, short_tmp, "--text-limit", "1000") as agent:
        await agent.call("open_notebook", notebook=str(path))
        result = await agent.call("execute_cell", notebook=str(path), cell_id="big", timeout=60)
        (out,) = result["outputs"]
        assert out["truncated"] is True
        assert out["size"] == 50001
        assert "truncated: " in out["text"]
        assert "of 50001 characters omitted" in out["text"]
        assert len(out["text"]) < 1200


async def test_changes_since_after_a_person_edited_two_cells(
    agent: Agent, daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "review.ipynb",
        [code("x = 1", "one"), code("y = 2", "two"), code("z = 3", "three")],
    )
    opened = await agent.call("open_notebook", notebook=str(path))
    looked = opened["version"]
    async with await AsyncClient.connect(daemon.paths.socket) as person:
        nb = await person.open(path)
        await nb.set_source("one", "x = 100")
        await nb.set_source("three", "z = 3\nprint(z)")
        result = await nb.execute("three", timeout=60)
        assert result.ok
        person_actor = nb.doc.doc.get_actor().hex()
        # The version the person is at: the tool waits (bounded) until the agent's replica
        # has it, so no polling here.
        person_version = nb.version
        await nb.close()
    diff = await agent.call("changes_since", notebook=str(path), version=looked, to=person_version)
    modified = {m["cell_id"]: m for m in diff["modified"]}
    assert set(modified) == {"one", "three"}
    assert "-x = 1" in modified["one"]["source_diff"]
    assert "+x = 100" in modified["one"]["source_diff"]
    assert "+print(z)" in modified["three"]["source_diff"]
    assert modified["one"]["actors"] == [person_actor]
    assert diff["added"] == diff["deleted"] == diff["moved"] == []
    assert [(e["cell_id"], e["status"]) for e in diff["executions"]] == [("three", "ok")]
    assert person_actor in diff["actors"]
    assert diff["version"] == person_version
    # From that version to now: nothing more happened.
    again = await agent.call("changes_since", notebook=str(path), version=person_version)
    assert again["modified"] == []
    assert again["executions"] == []
    # And from the agent's look to now: the same two cells.
    now = await agent.call("changes_since", notebook=str(path), version=looked)
    assert {m["cell_id"] for m in now["modified"]} == {"one", "three"}


async def test_a_subscribed_cell_notifies_when_a_person_edits_it(
    agent: Agent, daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "sub.ipynb", [code("a", "watched"), code("b", "other")])
    opened = await agent.call("open_notebook", notebook=str(path))
    uri = f"notebook://{opened['notebook_id']}/cells/watched"
    resources = (await agent.session.list_resources()).resources
    assert uri in [str(r.uri) for r in resources]
    read = await agent.session.read_resource(uri)
    content = read.contents[0]
    assert isinstance(content, types.TextResourceContents)
    assert json.loads(content.text)["source"] == "a"
    with pytest.warns(MCPDeprecationWarning, match="resources/subscribe"):
        await agent.session.subscribe_resource(uri)
    async with await AsyncClient.connect(daemon.paths.socket) as person:
        nb = await person.open(path)
        await nb.set_source("other", "b2")
        await nb.set_source("watched", "a2")
        await agent.wait_updated(uri)
        await nb.close()
    read = await agent.session.read_resource(uri)
    content = read.contents[0]
    assert isinstance(content, types.TextResourceContents)
    assert json.loads(content.text)["source"] == "a2"


async def test_input_run_all_interrupt_and_restart(agent: Agent, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "kernel.ipynb",
        [
            code("name = input('who? ')\nprint('hi', name)", "ask"),
            code("import time\nfor _ in range(600):\n    time.sleep(0.1)", "loop"),
            code("v = 5", "set"),
            code("v * 2", "use"),
        ],
    )
    nb = str(path)
    await agent.call("open_notebook", notebook=nb)
    asked = await agent.call("execute_cell", notebook=nb, cell_id="ask", timeout=60)
    assert asked["finished"] is False
    assert asked["input_requested"]["prompt"] == "who? "
    answered = await agent.call(
        "answer_input", notebook=nb, execution_id=asked["execution_id"], value="bob", timeout=60
    )
    assert answered["status"] == "ok"
    assert answered["outputs"][-1]["text"] == "hi bob\n"

    looping = await agent.call("execute_cell", notebook=nb, cell_id="loop", timeout=1)
    assert looping["finished"] is False
    await agent.call("interrupt_kernel", notebook=nb)
    stopped = await agent.call(
        "get_execution", notebook=nb, execution_id=looping["execution_id"], timeout=60
    )
    assert stopped["status"] == "error"
    assert stopped["ename"] == "KeyboardInterrupt"

    await agent.call("execute_cell", notebook=nb, cell_id="set", timeout=60)
    await agent.call("restart_kernel", notebook=nb)
    lost = await agent.call("execute_cell", notebook=nb, cell_id="use", timeout=60)
    assert lost["ename"] == "NameError"

    await agent.call("delete_cell", notebook=nb, cell_id="ask")
    await agent.call("delete_cell", notebook=nb, cell_id="loop")
    ran = await agent.call("run_all", notebook=nb, timeout=60)
    assert ran["finished"] is True
    assert [(e["cell_id"], e["status"]) for e in ran["executions"]] == [
        ("set", "ok"),
        ("use", "ok"),
    ]
    outline = await agent.call("get_notebook", notebook=nb)
    use = next(c for c in outline["cells"] if c["cell_id"] == "use")
    assert use["outputs"] == "1 execute_result"
    assert use["state"] == "ok"
