from __future__ import annotations

from pathlib import Path

import pytest

from runtimed.client import AsyncClient

from .conftest import write_notebook


@pytest.mark.anyio
async def test_execute_cell_outputs_reach_client(client: AsyncClient, short_tmp: Path) -> None:
    path = write_notebook(
        short_tmp / "a.ipynb", [{"cell_type": "code", "source": "print('hi')\n40+2"}]
    )
    nb = await client.open(path)
    result = await nb.execute("cell0", timeout=60)
    assert result.status == "ok"
    assert result.outputs[0] == {"output_type": "stream", "name": "stdout", "text": "hi\n"}
    assert result.outputs[1]["data"] == {"text/plain": "42"}
