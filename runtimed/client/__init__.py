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
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from blobstore import BlobCorrupt, BlobNotFound, sha256_hex, shard_path, validate_hash
from protocol.messages import (
    CleanEnvs,
    CollectGarbage,
    ConfigReply,
    CreateNotebook,
    DaemonEvent,
    DaemonStatus,
    DocKind,
    EnvList,
    EnvsCleaned,
    GarbageCollected,
    GetConfig,
    ListEnvs,
    ListNotebooks,
    ListRuntimes,
    NotebookInfo,
    NotebookList,
    NotebookOpened,
    OpenNotebook,
    Ping,
    RuntimeList,
    RuntimeResync,
    Shutdown,
    StatusReply,
)
from protocol.runtimes import RuntimeInfo
from runtimed.client.blocking import Client, Notebook
from runtimed.client.connection import Connection
from runtimed.client.notebook import AsyncNotebook, ExecutionResult, Replica
from runtimed.documents.manifests import resolve_output
from runtimed.errors import ConnectionClosed

__all__ = ["AsyncClient", "AsyncNotebook", "Client", "ExecutionResult", "Notebook"]

log = logging.getLogger(__name__)

EVENT_BUFFER = 1024


class AsyncClient:
    """A connection to the daemon holding local replicas of the notebooks it opened.

    Create with :meth:`connect` and use as an async context manager.
    """

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._replicas: dict[str, Replica] = {}
        # Notebooks whose CloseNotebook is under way: no sync goes out for them any more (the
        # daemon refuses sync for a notebook the connection has left) and none is taken in.
        self._closing: set[str] = set()
        self._dirty: dict[tuple[str, DocKind], None] = {}
        self._wake = anyio.Event()
        self._changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._subscribers: list[MemoryObjectSendStream[DaemonEvent]] = []
        self._blob_root: Path | None = None
        self.web: tuple[int, Path] | None = None  # (http_port, home): nb.url
        self.socket: Path | None = None

    @classmethod
    async def connect(
        cls,
        socket: str | Path | None = None,
        *,
        autostart: bool = False,
        home: str | Path | None = None,
        timeout: float = 30.0,
    ) -> AsyncClient:
        """Connect to the daemon on ``socket`` (default: ``$RUNTIMED_SOCKET`` or the user's).

        Args:
            autostart: start a daemon in the background if none answers.
            home: state directory for an autostarted daemon (default ``$RUNTIMED_HOME``).

        Raises:
            DaemonNotRunning, VersionMismatch, ConnectionClosed.
        """
        self = cls()
        self._conn = await Connection.open(
            socket,
            on_sync=self._on_sync,
            on_event=self._on_event,
            on_closed=self._on_closed,
            autostart=autostart,
            home=Path(home) if home else None,
            connect_timeout=timeout,
        )
        return self

    async def __aenter__(self) -> Self:
        assert self._conn is not None, "use AsyncClient.connect()"
        await self._conn.__aenter__()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._writer)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        assert self._conn is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        for stream in self._subscribers:
            stream.close()
        return await self._conn.__aexit__(et, e, tb)

    @property
    def connection(self) -> Connection:
        assert self._conn is not None
        return self._conn

    # ------------------------------------------------------------ plumbing

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _on_sync(self, notebook_id: str, doc: DocKind, data: bytes) -> None:
        if notebook_id in self._closing:
            return
        replica = self._replicas.get(notebook_id)
        if replica is None:
            # Sync can precede the NotebookOpened reply: make the replica on first sight.
            replica = self._replicas[notebook_id] = Replica(notebook_id)
        replica.receive(doc, data)
        self.mark_dirty(notebook_id, doc)
        self._notify()

    def _on_event(self, event: DaemonEvent) -> None:
        if isinstance(event, RuntimeResync):
            replica = self._replicas.get(event.notebook_id)
            if replica is not None:
                replica.reset_runtime()
                self.mark_dirty(event.notebook_id, "runtime")
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                log.warning("event subscriber is not keeping up; dropped %s", type(event).__name__)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(stream)
        self._notify()

    def _on_closed(self) -> None:
        self._notify()

    def mark_dirty(self, notebook_id: str, doc: DocKind) -> None:
        self._dirty[(notebook_id, doc)] = None
        self._wake.set()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._dirty:
                key = next(iter(self._dirty))
                del self._dirty[key]
                await self._send_sync(*key)

    async def _send_sync(self, notebook_id: str, doc: DocKind) -> None:
        replica = self._replicas.get(notebook_id)
        if replica is None or notebook_id in self._closing:
            return
        data = replica.generate(doc)
        if data is not None:
            try:
                await self.connection.send_sync(notebook_id, doc, data)
            except ConnectionClosed:
                self._notify()

    async def push(self, notebook_id: str, doc: DocKind) -> None:
        """Send a pending sync message for ``doc`` now (after a local edit)."""
        self._dirty.pop((notebook_id, doc), None)
        await self._send_sync(notebook_id, doc)

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float | None = None
    ) -> None:
        """Wait until ``predicate()`` holds; it is re-checked whenever anything arrives.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            ConnectionClosed: the connection ended first.
        """
        with anyio.fail_after(timeout):
            while not predicate():
                if self.connection.closed:
                    raise ConnectionClosed("the daemon closed the connection")
                await self._changed.wait()

    def closing(self, notebook_id: str) -> None:
        """Stop syncing ``notebook_id``: its CloseNotebook request goes out next."""
        self._closing.add(notebook_id)

    def forget(self, notebook_id: str) -> None:
        self._replicas.pop(notebook_id, None)
        self._closing.discard(notebook_id)

    def resolve_output(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """An output manifest as an nbformat output dict, blobs read from the daemon's store
        on disk (and verified against their hash).

        Raises:
            blobstore.BlobError: a referenced blob is missing or corrupt.
        """
        return resolve_output(manifest, self._read_blob)

    def _read_blob(self, blob_hash: str) -> bytes:
        if self._blob_root is None:
            raise BlobNotFound(f"blob {blob_hash}: the daemon's blob store location is unknown")
        path = self._blob_root.joinpath(*shard_path(validate_hash(blob_hash)))
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(f"blob {blob_hash} is not in {self._blob_root}") from exc
        if sha256_hex(data) != blob_hash:
            raise BlobCorrupt(f"blob {blob_hash} on disk does not match its hash")
        return data

    async def request(
        self, make: Callable[[int], msgspec.Struct], *, timeout: float | None = None
    ) -> Any:
        return await self.connection.request(make, timeout=timeout)

    # ------------------------------------------------------------ API

    async def ping(self) -> None:
        await self.request(lambda i: Ping(id=i))

    async def status(self) -> StatusReply:
        reply: StatusReply = await self.request(lambda i: DaemonStatus(id=i))
        self._blob_root = Path(reply.blob_dir)
        self.web = (reply.http_port, Path(reply.home)) if reply.http_port else None
        return reply

    async def list_notebooks(self) -> list[NotebookInfo]:
        reply: NotebookList = await self.request(lambda i: ListNotebooks(id=i))
        return reply.notebooks

    async def shutdown_daemon(self) -> None:
        """Ask the daemon to stop (it checkpoints and stops kernels first)."""
        await self.request(lambda i: Shutdown(id=i))

    async def collect_garbage(self, *, grace_seconds: float | None = None) -> GarbageCollected:
        """Ask the daemon to delete unreferenced blobs older than the grace period."""
        reply: GarbageCollected = await self.request(
            lambda i: CollectGarbage(id=i, grace_seconds=grace_seconds)
        )
        return reply

    async def list_runtimes(self) -> list[RuntimeInfo]:
        """Runtimes the daemon can start: its own Python, kernelspecs, built environments."""
        reply: RuntimeList = await self.request(lambda i: ListRuntimes(id=i))
        return reply.runtimes

    async def list_envs(self) -> EnvList:
        """The cached environments built from declared dependencies, with sizes."""
        reply: EnvList = await self.request(lambda i: ListEnvs(id=i))
        return reply

    async def clean_envs(
        self, *, remove_all: bool = False, older_than_days: float | None = None
    ) -> EnvsCleaned:
        """Remove cached environments no kernel uses (default: those over the configured
        limits; ``older_than_days``: unused that long; ``remove_all``: every one)."""
        reply: EnvsCleaned = await self.request(
            lambda i: CleanEnvs(id=i, remove_all=remove_all, older_than_days=older_than_days),
            timeout=300,
        )
        return reply

    async def get_config(self) -> ConfigReply:
        """The daemon's effective configuration and where each value came from."""
        reply: ConfigReply = await self.request(lambda i: GetConfig(id=i))
        return reply

    async def open(self, path: str | Path, *, timeout: float = 60) -> AsyncNotebook:
        """Open an ``.ipynb`` (joining the document if another client has it open)."""
        reply: NotebookOpened = await self.request(
            lambda i: OpenNotebook(id=i, path=str(Path(path).expanduser().resolve()))
        )
        return await self._attach(reply, timeout)

    async def create(
        self, path: str | Path | None = None, *, kernel_name: str | None = None, timeout: float = 60
    ) -> AsyncNotebook:
        """Create a new, empty notebook (written to ``path`` at once when given)."""
        reply: NotebookOpened = await self.request(
            lambda i: CreateNotebook(
                id=i,
                path=str(Path(path).expanduser().resolve()) if path else None,
                kernel_name=kernel_name,
            )
        )
        return await self._attach(reply, timeout)

    async def _attach(self, reply: NotebookOpened, timeout: float) -> AsyncNotebook:
        if self._blob_root is None:
            await self.status()
        replica = self._replicas.get(reply.notebook_id)
        if replica is None:
            replica = self._replicas[reply.notebook_id] = Replica(reply.notebook_id)
        notebook = AsyncNotebook(self, replica, reply.path)
        await notebook.wait_ready(timeout=timeout)
        return notebook

    async def events(self, *, buffer: int = EVENT_BUFFER) -> AsyncIterator[DaemonEvent]:
        """Daemon events from now on (executions, kernel status, input requests)."""
        send, receive = anyio.create_memory_object_stream[DaemonEvent](buffer)
        self._subscribers.append(send)
        async with receive:
            async for event in receive:
                yield event
