"""Bad input through the MCP server: each a clear error in the tool result (no traceback)
and nothing changed in the notebook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtimed.daemon.app import Daemon

from .conftest import write_notebook
from .test_mcp_support import Agent, code, mcp_agent

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
async def agent(daemon: Daemon, short_tmp: Path) -> AsyncIterator[Agent]:
    async with mcp_agent(daemon.paths, short_tmp) as connected:
        yield connected


async def test_bad_calls_fail_clearly_and_change_nothing(agent: Agent, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "bad.ipynb",
        [code("x = 1\nx = 1\n", "c"), {"cell_type": "markdown", "source": "# m", "id": "m"}],
    )
    nb = str(path)
    before = await agent.call("open_notebook", notebook=nb)
    huge = "a" * 300_000
    cases: list[tuple[tuple[str, dict[str, Any]], str]] = [
        # unknown tool arguments
        (
            ("insert_cell", {"notebook": nb, "source": "1", "index": 3}),
            "unknown argument(s) 'index'",
        ),
        (("nope", {}), "unknown tool 'nope'"),
        # a missing cell id: not given, and not in the notebook
        (
            ("edit_cell", {"notebook": nb, "find": "x", "replace": "y"}),
            "missing required argument(s) cell_id",
        ),
        (("get_cell", {"notebook": nb, "cell_id": "gone"}), "cell 'gone' is not in"),
        (
            ("replace_source", {"notebook": nb, "cell_id": "gone", "source": "1"}),
            "cell 'gone' is not in",
        ),
        (("insert_cell", {"notebook": nb, "after_cell_id": "gone"}), "cell 'gone' is not in"),
        (("move_cell", {"notebook": nb, "cell_id": "c"}), "give after_cell_id or position"),
        # a search string found twice or not at all
        (
            ("edit_cell", {"notebook": nb, "cell_id": "c", "find": "x = 1", "replace": "y"}),
            "occurs 2 times in cell 'c'",
        ),
        (
            ("edit_cell", {"notebook": nb, "cell_id": "c", "find": "zzz", "replace": "y"}),
            "does not occur in cell 'c'",
        ),
        # a markdown cell executed
        (
            ("execute_cell", {"notebook": nb, "cell_id": "m"}),
            "cell 'm' is a markdown cell; only code cells can be executed",
        ),
        # a huge cell source
        (
            ("replace_source", {"notebook": nb, "cell_id": "c", "source": huge}),
            "the source is 300000 characters; the limit is 200000",
        ),
        (("insert_cell", {"notebook": nb, "source": huge}), "the limit is 200000"),
        (
            ("edit_cell", {"notebook": nb, "cell_id": "c", "find": "x = 1\nx", "replace": huge}),
            "the limit is 200000",
        ),
        # a deadline of 0, and wrong types
        (
            ("execute_cell", {"notebook": nb, "cell_id": "c", "timeout": 0}),
            "'timeout' must be greater than 0",
        ),
        (("run_all", {"notebook": nb, "timeout": -1}), "'timeout' must be greater than 0"),
        (
            ("execute_cell", {"notebook": nb, "cell_id": "c", "timeout": "soon"}),
            "'timeout' must be a number",
        ),
        (("set_cell_type", {"notebook": nb, "cell_id": "c", "cell_type": "sql"}), "must be one of"),
        # versions that are not versions
        (("changes_since", {"notebook": nb, "version": "yesterday"}), "is not a notebook version"),
        (
            ("get_execution", {"notebook": nb, "execution_id": "e-unknown"}),
            "execution 'e-unknown' is not known",
        ),
        (
            ("answer_input", {"notebook": nb, "execution_id": "e-unknown", "value": "1"}),
            "is not waiting for input",
        ),
        # files that are not there
        (("open_notebook", {"notebook": str(short_tmp / "missing.ipynb")}), "does not exist"),
        (("create_notebook", {"path": nb}), "already exists; open it with open_notebook"),
        (("inspect_parameters", {"notebook": str(short_tmp / "missing.ipynb")}), "does not exist"),
        (
            ("run_notebook", {"notebook": nb, "output_path": str(short_tmp / "{nope}.ipynb")}),
            "run_notebook (",
        ),
    ]
    for (tool, args), expected in cases:
        message = await agent.fails(tool, **args)
        assert expected in message, (tool, message)
    after = await agent.call("get_notebook", notebook=nb)
    assert after["version"] == before["version"]
    assert after["cells"] == before["cells"]
    cell = await agent.call("get_cell", notebook=nb, cell_id="c")
    assert cell["source"] == "x = 1\nx = 1\n"
    assert cell["execution_count"] is None


async def test_a_closed_notebook_is_an_error_naming_it(agent: Agent, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "closed.ipynb", [code("1", "c")])
    opened = await agent.call("open_notebook", notebook=str(path))
    await agent.call("close_notebook", notebook=opened["notebook_id"])
    for ref in (str(path), opened["notebook_id"]):
        message = await agent.fails("get_notebook", notebook=ref)
        assert f"notebook {ref!r} is not open in this session" in message
        assert "open_notebook" in message
    message = await agent.fails("insert_cell", notebook=str(path), source="2")
    assert "is not open in this session" in message
    reopened = await agent.call("open_notebook", notebook=str(path))
    assert [c["cell_id"] for c in reopened["cells"]] == ["c"]
