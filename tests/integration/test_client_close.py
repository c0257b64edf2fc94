"""Closing a notebook right after editing it: the daemon has every edit first (issue 10 §2,
"close implies durability"), through a real daemon on a real socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon

from .conftest import write_notebook
from .runtime_helpers import code

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_edits_made_just_before_close_reach_the_daemon(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "quick.ipynb", [code("x = 0")])
    async with await AsyncClient.connect(daemon.paths.socket) as writer:
        for i in range(1, 21):
            nb = await writer.open(path)
            cell = nb.cell_ids()[0]
            # Back to back: the first edit's sync message is still in flight when the second
            # is made, so the second can only go with the daemon's answer to the first.
            await nb.set_source(cell, f"x = {i}")
            await nb.set_source(cell, f"x = {i} + 1")
            await nb.close()  # raised HeadsTimeout when the answer came after closing began
            async with await AsyncClient.connect(daemon.paths.socket) as reader:
                seen = await reader.open(path)
                assert seen.cell(cell).source == f"x = {i} + 1"
                await seen.close()
