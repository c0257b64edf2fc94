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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_LAZY = {
    "AsyncClient": "runtimed.client.async_client",
    "ConnectionState": "runtimed.client.async_client",
    "Client": "runtimed.client.blocking",
    "Notebook": "runtimed.client.blocking",
    "AsyncNotebook": "runtimed.client.notebook",
    "ExecutionResult": "runtimed.client.notebook",
}


def __getattr__(name: str) -> Any:
    # Lazy: a command that only asks the daemon something (runt ps) loads neither the
    # blocking facade nor the Automerge replica.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtimed.client' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
