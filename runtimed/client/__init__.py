"""The Python client library: an async API and a blocking facade.

Async::

    async with await AsyncClient.connect(autostart=True) as client:
        nb = await client.open("analysis.ipynb")
        cell = await nb.add_cell("code", "1 + 1")
        result = await nb.execute(cell)
        print(result.outputs)

Blocking::

    with Client.connect(autostart=True) as client:
        nb = client.open("analysis.ipynb")
        print(nb.execute(nb.cell_ids()[0]).outputs)

The package only re-exports: ``async_client`` (AsyncClient), ``notebook`` (AsyncNotebook,
ExecutionResult), ``blocking`` (Client, Notebook, built on ``async_client``) and
``connection`` (the wire), so no module of it imports the package itself.
"""

from __future__ import annotations

from runtimed.client.async_client import AsyncClient, ConnectionState
from runtimed.client.blocking import Client, Notebook
from runtimed.client.notebook import AsyncNotebook, ExecutionResult

__all__ = [
    "AsyncClient",
    "AsyncNotebook",
    "Client",
    "ConnectionState",
    "ExecutionResult",
    "Notebook",
]
