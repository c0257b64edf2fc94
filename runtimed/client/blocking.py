"""The blocking facade: the async client driven from a private event loop thread."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal

from runtimed.client.async_client import AsyncClient, ConnectionState
from runtimed.documents.amjson import JsonValue
from runtimed.documents.notebook import Cell

if TYPE_CHECKING:
    from protocol.messages import (
        Completions,
        ConfigReply,
        EnvList,
        EnvsCleaned,
        HistoryEntries,
        Inspection,
        NotebookInfo,
        StatusReply,
    )
    from protocol.runtimes import RuntimeInfo
    from runtimed.client.notebook import AsyncNotebook, ExecutionResult

__all__ = ["Client", "Notebook"]


class Client:
    """Blocking client. ``with Client.connect() as client: ...``"""

    def __init__(
        self, portal: BlockingPortal, stack: contextlib.ExitStack, client: AsyncClient
    ) -> None:
        self._portal = portal
        self._stack = stack
        self._client = client

    @classmethod
    def connect(
        cls,
        socket: str | Path | None = None,
        *,
        autostart: bool = False,
        home: str | Path | None = None,
        timeout: float = 30.0,
        reconnect: bool = True,
        reconnect_for: float | None = None,
    ) -> Client:
        """See :meth:`runtimed.client.AsyncClient.connect` (reconnecting is the default)."""
        stack = contextlib.ExitStack()
        portal = stack.enter_context(
            start_blocking_portal("asyncio", backend_options={"use_uvloop": True})
        )
        try:
            client = portal.call(
                lambda: AsyncClient.connect(
                    socket,
                    autostart=autostart,
                    home=home,
                    timeout=timeout,
                    reconnect=reconnect,
                    reconnect_for=reconnect_for,
                )
            )
            stack.enter_context(portal.wrap_async_context_manager(client))
        except BaseException:
            stack.close()
            raise
        return cls(portal, stack, client)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def state(self) -> ConnectionState:
        """``connected``, ``reconnecting`` or ``gone`` (see :class:`ConnectionState`)."""
        return self._client.state

    def wait_state(self, *states: ConnectionState, timeout: float | None = None) -> None:
        """Block until :attr:`state` is one of ``states`` (see AsyncClient.wait_state)."""
        self._portal.call(lambda: self._client.wait_state(*states, timeout=timeout))

    def ping(self) -> None:
        self._portal.call(self._client.ping)

    def status(self) -> StatusReply:
        return self._portal.call(self._client.status)

    def list_notebooks(self) -> list[NotebookInfo]:
        return self._portal.call(self._client.list_notebooks)

    def shutdown_daemon(self) -> None:
        self._portal.call(self._client.shutdown_daemon)

    def list_runtimes(self) -> list[RuntimeInfo]:
        return self._portal.call(self._client.list_runtimes)

    def list_envs(self) -> EnvList:
        return self._portal.call(self._client.list_envs)

    def clean_envs(
        self, *, remove_all: bool = False, older_than_days: float | None = None
    ) -> EnvsCleaned:
        return self._portal.call(
            lambda: self._client.clean_envs(remove_all=remove_all, older_than_days=older_than_days)
        )

    def get_config(self) -> ConfigReply:
        return self._portal.call(self._client.get_config)

    def open(self, path: str | Path) -> Notebook:
        return Notebook(self._portal, self._portal.call(self._client.open, path))

    def create(self, path: str | Path | None = None, *, kernel_name: str | None = None) -> Notebook:
        nb = self._portal.call(lambda: self._client.create(path, kernel_name=kernel_name))
        return Notebook(self._portal, nb)


class Notebook:
    """Blocking view of an :class:`~runtimed.client.AsyncNotebook`."""

    def __init__(self, portal: BlockingPortal, notebook: AsyncNotebook) -> None:
        self._portal = portal
        self._nb = notebook

    @property
    def id(self) -> str:
        return self._nb.id

    @property
    def url(self) -> str | None:
        """The notebook's web page, token included (see AsyncNotebook.url)."""
        return self._nb.url

    @property
    def path(self) -> Path | None:
        return self._nb.path

    def _read(self, fn: Any, *args: Any) -> Any:
        # Replicas live on the portal's loop thread; read them there.
        return self._portal.call(lambda: _sync_call(fn, *args))

    def cells(self) -> list[Cell]:
        return self._read(self._nb.cells)  # type: ignore[no-any-return]

    def cell(self, cell_id: str) -> Cell:
        return self._read(self._nb.cell, cell_id)  # type: ignore[no-any-return]

    def cell_ids(self) -> list[str]:
        return self._read(self._nb.cell_ids)  # type: ignore[no-any-return]

    def metadata(self) -> dict[str, JsonValue]:
        return self._read(self._nb.metadata)  # type: ignore[no-any-return]

    def outputs(self, cell_id: str) -> list[dict[str, Any]]:
        return self._portal.call(self._nb.read_outputs, cell_id)

    def add_cell(
        self,
        cell_type: str = "code",
        source: str = "",
        *,
        index: int | None = None,
        cell_id: str | None = None,
    ) -> str:
        return self._portal.call(
            lambda: self._nb.add_cell(cell_type, source, index=index, cell_id=cell_id)
        )

    def delete_cell(self, cell_id: str) -> None:
        self._portal.call(self._nb.delete_cell, cell_id)

    def move_cell(self, cell_id: str, index: int) -> None:
        self._portal.call(self._nb.move_cell, cell_id, index)

    def set_source(self, cell_id: str, source: str) -> None:
        self._portal.call(self._nb.set_source, cell_id, source)

    def splice_source(self, cell_id: str, index: int, delete: int, insert: str) -> None:
        self._portal.call(self._nb.splice_source, cell_id, index, delete, insert)

    def set_cell_metadata(self, cell_id: str, key: str, value: JsonValue) -> None:
        self._portal.call(self._nb.set_cell_metadata, cell_id, key, value)

    def save(self, path: str | Path | None = None) -> Path:
        return self._portal.call(self._nb.save, path)

    def flush(self) -> None:
        """Return once this replica's edits are durable (see ``AsyncNotebook.flush``)."""
        self._portal.call(self._nb.flush)

    def execute(
        self,
        cell_id: str,
        *,
        timeout: float | None = None,
        allow_stdin: bool = False,
        on_input: Callable[[str, bool], str] | None = None,
    ) -> ExecutionResult:
        """Run one cell and wait for it. With ``allow_stdin``, an ``input()`` in the cell is
        answered by ``on_input(prompt, password)`` (called in a worker thread; default:
        this terminal's ``input``/``getpass``); without it ``input()`` fails in the cell."""
        if not allow_stdin:
            return self._portal.call(lambda: self._nb.execute(cell_id, timeout=timeout))
        answer = on_input or _ask_terminal
        return self._portal.call(lambda: _execute_answering(self._nb, cell_id, timeout, answer))

    def queue(
        self, cell_id: str, *, allow_stdin: bool = False, cell_timeout: float | None = None
    ) -> str:
        """Queue the cell; returns the execution id (see :meth:`wait_execution`)."""
        return self._portal.call(
            lambda: self._nb.queue(cell_id, allow_stdin=allow_stdin, cell_timeout=cell_timeout)
        )

    def wait_execution(self, execution_id: str, *, timeout: float | None = None) -> ExecutionResult:
        return self._portal.call(lambda: self._nb.wait_execution(execution_id, timeout=timeout))

    def answer_input(self, execution_id: str, value: str) -> None:
        """Answer the ``input()`` the execution is waiting in (an ``InputRequested`` event)."""
        self._portal.call(self._nb.answer_input, execution_id, value)

    def run_all(self, *, timeout: float | None = None) -> list[ExecutionResult]:
        return self._portal.call(lambda: self._nb.run_all(timeout=timeout))

    def complete(
        self, cell_id: str, cursor: int | None = None, *, timeout: float | None = None
    ) -> Completions:
        """See :meth:`AsyncNotebook.complete`."""
        return self._portal.call(lambda: self._nb.complete(cell_id, cursor, timeout=timeout))

    def inspect(
        self,
        cell_id: str,
        cursor: int | None = None,
        *,
        detail_level: int = 0,
        timeout: float | None = None,
    ) -> Inspection:
        """See :meth:`AsyncNotebook.inspect`."""
        return self._portal.call(
            lambda: self._nb.inspect(cell_id, cursor, detail_level=detail_level, timeout=timeout)
        )

    def comms(self) -> dict[str, dict[str, Any]]:
        """See :meth:`AsyncNotebook.comms`."""
        return self._portal.call(self._nb.comms)

    def wait_comms(
        self,
        predicate: Callable[[dict[str, dict[str, Any]]], bool],
        *,
        timeout: float | None = 30,
    ) -> dict[str, dict[str, Any]]:
        """See :meth:`AsyncNotebook.wait_comms`."""
        return self._portal.call(lambda: self._nb.wait_comms(predicate, timeout=timeout))

    def send_comm(
        self, comm_id: str, data: dict[str, Any], *, buffers: Sequence[bytes] = ()
    ) -> None:
        """See :meth:`AsyncNotebook.send_comm`."""
        self._portal.call(lambda: self._nb.send_comm(comm_id, data, buffers=buffers))

    def history(
        self,
        *,
        pattern: str | None = None,
        n: int = 10,
        unique: bool = False,
        timeout: float | None = None,
    ) -> HistoryEntries:
        """See :meth:`AsyncNotebook.history`."""
        return self._portal.call(
            lambda: self._nb.history(pattern=pattern, n=n, unique=unique, timeout=timeout)
        )

    def interrupt(self) -> None:
        self._portal.call(self._nb.interrupt)

    def restart(self) -> None:
        self._portal.call(self._nb.restart)

    def clear_outputs(self, cell_ids: list[str] | None = None) -> None:
        self._portal.call(self._nb.clear_outputs, cell_ids)

    def close(self) -> None:
        self._portal.call(self._nb.close)


async def _sync_call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _ask_terminal(prompt: str, password: bool) -> str:
    if password:
        import getpass

        return getpass.getpass(prompt)
    return input(prompt)


async def _execute_answering(
    nb: AsyncNotebook, cell_id: str, timeout: float | None, answer: Callable[[str, bool], str]
) -> ExecutionResult:
    """Queue with stdin allowed; answer its InputRequested events until it finishes."""
    import anyio

    from protocol.messages import InputRequested

    client = nb._client
    result: list[ExecutionResult] = []
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        ids: list[str] = []

        async def answering() -> None:
            events = client.events()
            started.set()
            async for event in events:
                if (
                    isinstance(event, InputRequested)
                    and event.notebook_id == nb.id
                    and ids
                    and event.execution_id == ids[0]
                ):
                    value = await anyio.to_thread.run_sync(answer, event.prompt, event.password)
                    await nb.answer_input(event.execution_id, value)

        tg.start_soon(answering)
        await started.wait()
        ids.append(await nb.queue(cell_id, allow_stdin=True))
        result.append(await nb.wait_execution(ids[0], timeout=timeout))
        tg.cancel_scope.cancel()
    return result[0]
