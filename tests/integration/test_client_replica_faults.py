"""A sync message from the daemon that makes the client's Automerge binding panic (issue 9
point 5): a typed error on that notebook; the client's reader keeps running, and the client
keeps its other notebooks (and that one) in sync with the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.documents.boundary import DocumentError

from .conftest import write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# Accepted by the binding, then the next generate_sync_message panics (issue 10).
ZERO_BLOOM = bytes.fromhex("42000001000301000700")


async def saved_sources(path: Path) -> list[str]:
    nb = json.loads(await anyio.Path(path).read_text())
    return ["".join(c["source"]) for c in nb["cells"]]


async def test_a_panicking_sync_message_is_an_error_on_that_notebook_only(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    cell: dict[str, object] = {"cell_type": "markdown", "source": "first"}
    a = await client.open(write_notebook(short_tmp / "a.ipynb", [cell]))
    b = await client.open(write_notebook(short_tmp / "b.ipynb", [cell]))

    # What a broken daemon would send: fed to the client exactly as its reader does.
    client._on_sync(a.id, "notebook", ZERO_BLOOM)
    await a.set_source("cell0", "edited after the bad message")  # generates: the panic
    await b.set_source("cell0", "b edited too")

    assert isinstance(a.sync_error, DocumentError)
    assert "panicked" in str(a.sync_error)
    assert b.sync_error is None
    assert not client.connection.closed
    # Both notebooks still reach the daemon: its saved files hold the edits.
    with anyio.fail_after(30):
        await a.save()
        await b.save()
    assert await saved_sources(short_tmp / "a.ipynb") == ["edited after the bad message"]
    assert await saved_sources(short_tmp / "b.ipynb") == ["b edited too"]
    await client.ping()  # the connection still answers
