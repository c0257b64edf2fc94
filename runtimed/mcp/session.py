"""An agent's session with the daemon: its connection, the notebooks it has open, and
reconnect-and-reopen across a daemon restart.

The client library does not reconnect by itself; this layer does. Before each tool call it
checks the connection; if the daemon went away it connects again (starting the daemon if
none answers), reopens every notebook the agent had open by path, and queues one notice for
the agent saying which notebooks were reopened and that their kernels were restarted (a new
daemon means new kernels: variables are gone). A call whose connection drops *during* the
call is not retried — an insert that may have landed must not be repeated — it fails with an
error that says so, and the next call reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup, TaskStatus

from protocol.messages import InputRequested, StatusReply
from runtimed.client import AsyncClient, AsyncNotebook
from runtimed.errors import ConnectionClosed, RuntimedError
from runtimed.mcp.outputs import OutputLimits

__all__ = ["AgentSession", "SessionError"]

log = logging.getLogger(__name__)


class _Held:
    """A connection held open by :meth:`AgentSession._hold` until ``scope`` is cancelled."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()


class SessionError(RuntimedError):
    """A tool call cannot go on (the message says what to do)."""


class AgentSession:
    """Use as an async context manager; connect lazily with :meth:`client`.

    Args:
        socket: the daemon's socket (default ``$RUNTIMED_SOCKET`` or the user's).
        autostart: start a daemon when none answers (also on reconnect).
        auto_open: a ``notebook`` argument naming a file (or a notebook another client has
            open) that this session has not opened is opened on the fly (``runt nb call``,
            where every call is a new session); otherwise it is an error.
    """

    def __init__(
        self,
        socket: str | Path | None = None,
        *,
        autostart: bool = True,
        auto_open: bool = False,
        limits: OutputLimits | None = None,
        home: str | Path | None = None,
    ) -> None:
        self.socket = socket
        self.autostart = autostart
        self.auto_open = auto_open
        self.limits = limits or OutputLimits()
        self.home = home
        self._client: AsyncClient | None = None
        self._held: _Held | None = None
        self._lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._stack = AsyncExitStack()
        self.notebooks: dict[str, AsyncNotebook] = {}
        self.executions: dict[str, str] = {}
        """execution id -> notebook id, for get_execution and answer_input."""
        self.pending_inputs: dict[str, InputRequested] = {}
        self._input_arrived = anyio.Event()
        self.notices: list[str] = []
        self.status: StatusReply | None = None
        self.generation = 0
        """Incremented on every (re)connect."""
        self._connected = anyio.Event()

    async def __aenter__(self) -> Self:
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await self._drop_client()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._stack.__aexit__(et, e, tb)

    # ------------------------------------------------------------ connection

    async def client(self) -> AsyncClient:
        """The live client, connecting (and reopening notebooks) first when needed."""
        async with self._lock:
            if self._client is not None and not self._client.connection.closed:
                return self._client
            reconnecting = self._client is not None
            had = {nb.id: nb for nb in self.notebooks.values()}
            old_pid = self.status.pid if self.status is not None else None
            await self._drop_client()
            await self._connect()
            if reconnecting:
                assert self.status is not None
                await self._reopen(had, restarted=self.status.pid != old_pid)
            assert self._client is not None
            return self._client

    @property
    def connected_client(self) -> AsyncClient | None:
        """The client of the current connection, if any (it may have died)."""
        return self._client

    @property
    def current_client(self) -> AsyncClient:
        """The client of the current connection (after :meth:`client`)."""
        assert self._client is not None, "call client() first"
        return self._client

    async def _connect(self) -> None:
        # reconnect=False: this session reconnects itself (on the next tool call).
        client = await AsyncClient.connect(
            self.socket, autostart=self.autostart, home=self.home or _env_home(), reconnect=False
        )
        assert self._tg is not None
        # The client owns a task group: it is entered and left in one long-lived task (not
        # in the tool call that happened to connect it).
        self._held = _Held()
        await self._tg.start(self._hold, client, self._held)
        self._client = client
        self.generation += 1
        self._connected.set()
        self._connected = anyio.Event()

    async def _hold(
        self, client: AsyncClient, held: _Held, *, task_status: TaskStatus[None]
    ) -> None:
        started = False
        try:
            with held.scope:
                async with client, anyio.create_task_group() as tg:
                    self.status = await client.status()
                    tg.start_soon(self._follow_events, client)
                    task_status.started()
                    started = True
                    await anyio.sleep_forever()
        except Exception:
            if not started:
                raise  # the connect fails: the tool call says so
            # The connection died under us: the next call reconnects; closing it must not
            # take the session down.
            log.debug("closing a dead daemon connection failed", exc_info=True)
        finally:
            held.done.set()

    async def _drop_client(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.scope.cancel()
            await held.done.wait()

    async def _reopen(self, had: dict[str, AsyncNotebook], *, restarted: bool) -> None:
        self.notebooks.clear()
        if restarted:  # the same daemon still knows its executions and input prompts
            self.executions.clear()
            self.pending_inputs.clear()
        reopened, lost = [], []
        for old_id, nb in had.items():
            if nb.path is None:
                lost.append(old_id)
                continue
            try:
                fresh = await self._open_path(nb.path)
            except RuntimedError as exc:
                lost.append(f"{nb.path} ({exc})")
                continue
            reopened.append(f"{fresh.path} (id {fresh.id})")
        if not restarted:
            # The same daemon (it dropped this connection): its kernels kept running.
            notice = "The connection to the daemon was lost and re-established."
            if reopened:
                notice += " Reopened: " + "; ".join(reopened) + "; their kernels kept running."
        else:
            notice = "The daemon restarted, so this session reconnected."
            if reopened:
                notice += (
                    " Reopened: " + "; ".join(reopened) + ". Their kernels were restarted: "
                    "variables, imports and running cells are gone; execution ids from before "
                    "are no longer known. Re-run the cells you need."
                )
        if lost:
            notice += " Could not reopen: " + "; ".join(lost) + " (untitled notebooks are lost)."
        self.notices.append(notice)

    async def _follow_events(self, client: AsyncClient) -> None:
        async for event in client.events():
            if isinstance(event, InputRequested):
                self.pending_inputs[event.execution_id] = event
                self._input_arrived.set()
                self._input_arrived = anyio.Event()

    async def wait_connected(self, generation: int) -> None:
        """Wait until a connection newer than ``generation`` exists."""
        while self.generation <= generation:
            await self._connected.wait()

    def take_notices(self) -> list[str]:
        notices, self.notices = self.notices, []
        return notices

    # ------------------------------------------------------------ notebooks

    async def _open_path(self, path: Path) -> AsyncNotebook:
        client = self._client
        assert client is not None
        nb = await client.open(path)
        self.notebooks[nb.id] = nb
        return nb

    async def open(self, path: str) -> AsyncNotebook:
        client = await self.client()
        target = await _resolve(path)
        for nb in self.notebooks.values():
            if nb.path is not None and nb.path == target:
                return nb
        if not await anyio.Path(target).exists():
            raise SessionError(f"notebook {path!r} does not exist (create it with create_notebook)")
        nb = await client.open(target)
        self.notebooks[nb.id] = nb
        return nb

    async def create(self, path: str | None, kernel_name: str | None) -> AsyncNotebook:
        client = await self.client()
        target = await _resolve(path) if path else None
        nb = await client.create(target, kernel_name=kernel_name)
        self.notebooks[nb.id] = nb
        return nb

    async def close(self, nb: AsyncNotebook) -> None:
        self.notebooks.pop(nb.id, None)
        for execution_id in [e for e, n in self.executions.items() if n == nb.id]:
            del self.executions[execution_id]
        await nb.close()

    async def notebook(self, ref: str) -> AsyncNotebook:
        """The open notebook named by ``ref``: its id or its path.

        Raises:
            SessionError: not open in this session (and not opened on the fly).
        """
        await self.client()
        if ref in self.notebooks:
            return self.notebooks[ref]
        for nb in self.notebooks.values():
            if nb.path is not None and str(nb.path) == ref:
                return nb  # the common case: the path as open_notebook returned it, no I/O
        resolved = await _resolve(ref)
        for nb in self.notebooks.values():
            if nb.path is not None and nb.path == resolved:
                return nb
        if self.auto_open:
            if await anyio.Path(resolved).exists():
                return await self.open(str(resolved))
            client = await self.client()
            for info in await client.list_notebooks():
                if info.notebook_id == ref and info.path:
                    return await self.open(info.path)
        raise SessionError(
            f"notebook {ref!r} is not open in this session; open it with open_notebook "
            "(list_notebooks shows what is open)"
        )

    # ------------------------------------------------------------ waiting

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait up to ``timeout`` s until ``predicate()`` holds; re-checked whenever the
        replica changes or an input request arrives. Returns whether it holds."""
        client = await self.client()
        with anyio.move_on_after(timeout):
            while not predicate():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_then_cancel, tg, client.wait_until(predicate))
                    tg.start_soon(_then_cancel, tg, self._input_arrived.wait())
                if client.connection.closed:
                    raise SessionError(
                        "the connection to the daemon was lost while waiting; the next call "
                        "reconnects (check with get_notebook / get_execution what happened)"
                    )
        return predicate()

    def blob_url(self, blob_hash: str) -> str | None:
        """The blob's link on the daemon's web endpoint, token included (None: no endpoint)."""
        web = self._client.web if self._client is not None else None
        if web is None:
            return None
        port, token = web
        return f"http://127.0.0.1:{port}/blob/{blob_hash}?token={token}"


async def _then_cancel(tg: TaskGroup, waiting: Awaitable[object]) -> None:
    with contextlib.suppress(ConnectionClosed):
        await waiting
    tg.cancel_scope.cancel()


async def _resolve(path: str | Path) -> Path:
    """``path`` absolute, with ``~`` and symlinks resolved (in a worker thread)."""
    return await anyio.to_thread.run_sync(lambda: Path(path).expanduser().resolve())


def _env_home() -> Path | None:
    home = os.environ.get("RUNTIMED_HOME")
    return Path(home) if home else None
