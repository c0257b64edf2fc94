"""The async client: one connection to the daemon and local replicas of its notebooks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from blobstore import BlobCorrupt, BlobNotFound, sha256_hex, shard_path, validate_hash
from protocol.messages import (
    CleanEnvs,
    ClientRequest,
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
    Ok,
    OpenNotebook,
    Ping,
    Pong,
    Reply,
    RuntimeList,
    RuntimeResync,
    Shutdown,
    StatusReply,
)
from protocol.runtimes import RuntimeInfo
from runtimed.client.connection import Connection
from runtimed.client.notebook import AsyncNotebook, Replica
from runtimed.documents.manifests import manifest_hashes, resolve_output
from runtimed.errors import ConnectionClosed

__all__ = ["AsyncClient"]

log = logging.getLogger(__name__)

EVENT_BUFFER = 1024
ReplyT = TypeVar("ReplyT", bound=Reply)


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
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._subscribers: list[MemoryObjectSendStream[DaemonEvent]] = []
        self._blob_root: Path | None = None
        self.socket: Path | None = None
        self.web: tuple[int, str] | None = None
        """(http_port, token) of the daemon's web notebook, read by :meth:`status`."""

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
        # Entered through an exit stack, never by hand; pop_all() keeps everything open past
        # this method and __aexit__ unwinds it (writer, then subscribers, then connection).
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._conn)
            stack.callback(self._close_subscribers)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self._writer)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        assert self._exit_stack is not None
        self._tg.cancel_scope.cancel()
        # Not handed the body's exception: an error raised inside ``async with`` comes out as
        # itself, not wrapped in an ExceptionGroup by the task groups unwound here.
        await self._exit_stack.aclose()

    def _close_subscribers(self) -> None:
        for stream in self._subscribers:
            stream.close()
        self._subscribers.clear()

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
        on disk (and verified against their hash), on the calling thread.

        From async code prefer :meth:`resolve_outputs`, which reads blobs in a worker thread.

        Raises:
            blobstore.BlobError: a referenced blob is missing or corrupt.
        """
        return resolve_output(manifest, self._read_blob)

    async def resolve_outputs(self, manifests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Output manifests as nbformat output dicts; blob files are read (and hashed) in a
        worker thread, never on the event loop.

        Raises:
            blobstore.BlobError: a referenced blob is missing or corrupt.
        """
        if not any(manifest_hashes(m) for m in manifests):
            # Inline outputs only: nothing to read from disk.
            return [resolve_output(m, self._read_blob) for m in manifests]
        return await anyio.to_thread.run_sync(
            lambda: [resolve_output(m, self._read_blob) for m in manifests]
        )

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
        self,
        make: Callable[[int], ClientRequest],
        reply_type: type[ReplyT],
        *,
        timeout: float | None = None,
    ) -> ReplyT:
        """Send ``make(id)`` and return its reply (see :meth:`Connection.request`)."""
        return await self.connection.request(make, reply_type, timeout=timeout)

    # ------------------------------------------------------------ API

    async def ping(self) -> None:
        await self.request(lambda i: Ping(id=i), Pong)

    async def status(self) -> StatusReply:
        reply = await self.request(lambda i: DaemonStatus(id=i), StatusReply)
        self._blob_root = Path(reply.blob_dir)
        self.web = None
        if reply.http_port:
            try:  # the token file is 0600 in the daemon's home: ours if the daemon is
                token = await anyio.Path(reply.home, "web-token").read_text(encoding="ascii")
            except OSError:
                log.debug("no readable web token in %s: no notebook URLs", reply.home)
            else:
                self.web = (reply.http_port, token.strip())
        return reply

    async def list_notebooks(self) -> list[NotebookInfo]:
        reply = await self.request(lambda i: ListNotebooks(id=i), NotebookList)
        return reply.notebooks

    async def shutdown_daemon(self) -> None:
        """Ask the daemon to stop (it checkpoints and stops kernels first)."""
        await self.request(lambda i: Shutdown(id=i), Ok)

    async def collect_garbage(self, *, grace_seconds: float | None = None) -> GarbageCollected:
        """Ask the daemon to delete unreferenced blobs older than the grace period."""
        return await self.request(
            lambda i: CollectGarbage(id=i, grace_seconds=grace_seconds), GarbageCollected
        )

    async def list_runtimes(self) -> list[RuntimeInfo]:
        """Runtimes the daemon can start: its own Python, kernelspecs, built environments."""
        reply = await self.request(lambda i: ListRuntimes(id=i), RuntimeList)
        return reply.runtimes

    async def list_envs(self) -> EnvList:
        """The cached environments built from declared dependencies, with sizes."""
        return await self.request(lambda i: ListEnvs(id=i), EnvList)

    async def clean_envs(
        self, *, remove_all: bool = False, older_than_days: float | None = None
    ) -> EnvsCleaned:
        """Remove cached environments no kernel uses (default: those over the configured
        limits; ``older_than_days``: unused that long; ``remove_all``: every one)."""
        return await self.request(
            lambda i: CleanEnvs(id=i, remove_all=remove_all, older_than_days=older_than_days),
            EnvsCleaned,
            timeout=300,
        )

    async def get_config(self) -> ConfigReply:
        """The daemon's effective configuration and where each value came from."""
        return await self.request(lambda i: GetConfig(id=i), ConfigReply)

    async def open(
        self,
        path: str | Path,
        *,
        timeout: float = 60,
        kernel_env: dict[str, str] | None = None,
        kernel_cwd: str | Path | None = None,
    ) -> AsyncNotebook:
        """Open an ``.ipynb`` (joining the document if another client has it open).

        ``kernel_env``, ``kernel_cwd``: kernels started for it from now on get these
        variables (over the daemon's environment) and this working directory."""
        resolved = str(await (await anyio.Path(path).expanduser()).resolve())
        cwd = str(await anyio.Path(kernel_cwd).resolve()) if kernel_cwd is not None else None
        reply = await self.request(
            lambda i: OpenNotebook(id=i, path=resolved, kernel_env=kernel_env, kernel_cwd=cwd),
            NotebookOpened,
        )
        return await self._attach(reply, timeout)

    async def create(
        self, path: str | Path | None = None, *, kernel_name: str | None = None, timeout: float = 60
    ) -> AsyncNotebook:
        """Create a new, empty notebook (written to ``path`` at once when given)."""
        resolved = str(await (await anyio.Path(path).expanduser()).resolve()) if path else None
        reply = await self.request(
            lambda i: CreateNotebook(id=i, path=resolved, kernel_name=kernel_name),
            NotebookOpened,
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
