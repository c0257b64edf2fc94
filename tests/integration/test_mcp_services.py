"""The ``complete`` and ``inspect`` agent tools through the MCP server and a real ipykernel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtimed.daemon.app import Daemon

from .conftest import write_notebook
from .test_mcp_support import Agent, code, mcp_agent

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
async def agent(daemon: Daemon, short_tmp: Path) -> AsyncIterator[Agent]:
    async with mcp_agent(daemon.paths, short_tmp) as connected:
        yield connected


async def test_an_agent_completes_and_inspects_by_cell_id(agent: Agent, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "s.ipynb", [code("impo", "c"), code("len", "l")])
    nb = str(path)
    await agent.call("open_notebook", notebook=nb)
    failure = await agent.fails("complete", notebook=nb, cell_id="c")
    assert "no running kernel" in failure
    await agent.call("execute_cell", notebook=nb, cell_id="l", timeout=60)

    completed = await agent.call("complete", notebook=nb, cell_id="c", cursor=4)
    inspected = await agent.call("inspect", notebook=nb, cell_id="l")

    assert {"text": "import", "type": "keyword"} in completed["matches"]
    assert (completed["cursor_start"], completed["cursor_end"]) == (0, 4)
    assert inspected["found"] is True
    assert "Return the number of items in a container" in inspected["help"]
    assert "\x1b[" not in inspected["help"]  # ANSI colours stripped for the agent
    past = await agent.fails("complete", notebook=nb, cell_id="c", cursor=99)
    assert "cursor 99 is outside cell 'c'" in past
