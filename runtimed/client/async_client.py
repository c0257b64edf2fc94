"""The async client: one connection to the daemon and local replicas of its notebooks."""

from __future__ import annotations

import contextlib
import enum
import importlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

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
    JoinNotebook,
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
from runtimed.errors import ConnectionClosed, ConnectionLost, DaemonNotRunning, RuntimedError

if TYPE_CHECKING:
    from runtimed.client.notebook import AsyncNotebook, Replica

# The notebook replica (Automerge), output manifests and the blob store are imported where
# they are first used: 'runt ps' or 'runt daemon status' need none of them.

__all__ = ["AsyncClient", "ConnectionState"]

log = logging.getLogger(__name__)


async def _load_replica() -> None:
    """Import the notebook replica (Automerge) the first time one is opened, in a worker
    thread: an import reads files, which must not block the event loop."""
    if "runtimed.client.notebook" not in sys.modules:
        await anyio.to_thread.run_sync(importlib.import_module, "runtimed.client.notebook")


EVENT_BUFFER = 1024
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 2.0


class ConnectionState(enum.StrEnum):
    """Where a client stands with its daemon (:attr:`AsyncClient.state`)."""

    CONNECTED = "connected"
    """Handshaken, every open notebook joined: requests and edits reach the daemon."""
    RECONNECTING = "reconnecting"
    """The connection broke; the client is connecting again (with backoff). Edits are kept
    in the local replicas and merged once reconnected; requests fail with ConnectionLost."""
    GONE = "gone"
    """No daemon and no more tries: closed by this client, reconnect off, daemon shut down
    by this client, or the reconnect deadline passed. Requests and edits raise."""


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
        # Reconnection: how to connect again, the notebooks to reopen (id -> path) and the
        # notebooks joined on the current connection (sync goes out only for those).
        self._reconnect = True
        self._reconnect_for: float | None = None
        self._autostart = False
        self._home: Path | None = None
        self._timeout = 30.0
        self._paths: dict[str, str] = {}
        self._open_options: dict[str, tuple[dict[str, str] | None, str | None]] = {}
        self._joined: set[str] = set()
        self._state = ConnectionState.CONNECTED
        self._state_changed = anyio.Event()
        self._no_more_tries = False
        self.reconnects = 0
        """How many times this client reconnected (and reopened its notebooks)."""

    @classmethod
    async def connect(
        cls,
        socket: str | Path | None = None,
        *,
        autostart: bool = False,
        home: str | Path | None = None,
        timeout: float = 30.0,
        reconnect: bool = True,
        reconnect_for: float | None = None,
    ) -> AsyncClient:
        """Connect to the daemon on ``socket`` (default: ``$RUNTIMED_SOCKET`` or the user's).

        Args:
            autostart: start a daemon in the background if none answers (also when
                reconnecting).
            home: state directory for an autostarted daemon (default ``$RUNTIMED_HOME``).
            reconnect: when the connection breaks, connect again on its own (backoff up to
                2 s), reopen the notebooks and resync them so that edits made meanwhile are
                merged. False: the client stays closed (state ``gone``) and edits raise.
            reconnect_for: give up (state ``gone``) after this many seconds without a
                daemon; None: keep trying while the client is open.

        Raises:
            DaemonNotRunning, VersionMismatch, ConnectionClosed.
        """
        self = cls()
        self._reconnect = reconnect
        self._reconnect_for = reconnect_for
        self._autostart = autostart
        self._home = Path(home) if home else None
        self._timeout = timeout
        self.socket = Path(socket) if socket else None
        self._conn = await self._open_connection()
        return self

    async def _open_connection(self) -> Connection:
        return await Connection.open(
            self.socket,
            on_sync=self._on_sync,
            on_event=self._on_event,
            on_closed=self._on_closed,
            autostart=self._autostart,
            home=self._home,
            connect_timeout=self._timeout,
        )

    async def __aenter__(self) -> Self:
        assert self._conn is not None, "use AsyncClient.connect()"
        # Entered through an exit stack, never by hand; pop_all() keeps everything open past
        # this method and __aexit__ unwinds it (writer, then subscribers, then connection).
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._gone)
            stack.callback(self._close_subscribers)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            # The supervisor holds the current connection (entered in its task) and replaces
            # it when it breaks; the first one is entered before this method returns.
            await self._tg.start(self._supervise)
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
        """The current connection (replaced by a new one after a reconnect)."""
        assert self._conn is not None
        return self._conn

    # ------------------------------------------------------------ connection state

    @property
    def state(self) -> ConnectionState:
        """``connected``, ``reconnecting`` or ``gone`` (see :class:`ConnectionState`)."""
        return self._state

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        log.info("client connection: %s -> %s", self._state, state)
        self._state = state
        self._state_changed.set()
        self._state_changed = anyio.Event()
        self._notify()

    def _gone(self) -> None:
        self._no_more_tries = True
        self._set_state(ConnectionState.GONE)

    async def wait_state(self, *states: ConnectionState, timeout: float | None = None) -> None:
        """Wait until :attr:`state` is one of ``states``.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            ConnectionClosed: the state became ``gone`` (and ``gone`` was not asked for).
        """
        with anyio.fail_after(timeout):
            while self._state not in states:
                if self._state is ConnectionState.GONE:
                    raise ConnectionClosed("the client is no longer connected to a daemon")
                await self._state_changed.wait()

    async def states(self) -> AsyncIterator[ConnectionState]:
        """The current state, then every change of it; ends after ``gone``.

        A slow consumer sees the latest state, not necessarily every intermediate one."""
        seen: ConnectionState | None = None
        while True:
            changed = self._state_changed
            if self._state is not seen:
                seen = self._state
                yield seen
                if seen is ConnectionState.GONE:
                    return
                continue
            await changed.wait()

    async def _supervise(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        conn = self._conn
        assert conn is not None
        started = False
        while True:
            async with conn:
                if not started:
                    started = True
                    task_status.started()
                else:
                    try:
                        await self._resume(conn)
                    except ConnectionClosed:
                        pass  # broke again while reopening: the next round tries again
                    else:
                        self.reconnects += 1
                        self._set_state(ConnectionState.CONNECTED)
                await conn.wait_closed()
            self._joined.clear()
            if not self._reconnect or self._no_more_tries:
                self._set_state(ConnectionState.GONE)
                return
            self._set_state(ConnectionState.RECONNECTING)
            next_conn = await self._connect_again()
            if next_conn is None:
                self._set_state(ConnectionState.GONE)
                return
            conn = self._conn = next_conn

    async def _connect_again(self) -> Connection | None:
        """A new connection, trying with backoff; None once the deadline has passed."""
        delay = RECONNECT_FIRST_DELAY
        with anyio.move_on_after(self._reconnect_for):
            while not self._no_more_tries:
                await anyio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                try:
                    return await self._open_connection()
                except (DaemonNotRunning, ConnectionClosed, OSError, TimeoutError) as exc:
                    log.debug("reconnect failed: %s", exc)
                except RuntimedError as exc:  # e.g. VersionMismatch: another daemon now
                    log.warning("reconnect refused: %s", exc)
                    return None
        return None

    async def _resume(self, conn: Connection) -> None:
        """Reopen every notebook on a new connection and resync it from fresh sync states:
        the daemon gets whatever the replica has that it lacks (edits made while down)."""
        self._blob_root = None
        for notebook_id, path in list(self._paths.items()):
            replica = self._replicas.get(notebook_id)
            if replica is None or notebook_id in self._closing:
                continue
            replica.fresh_sync()
            env, cwd = self._open_options.get(notebook_id, (None, None))
            try:
                reply = await conn.request(_reopen(notebook_id, path, env, cwd), NotebookOpened)
            except ConnectionClosed:
                raise
            except RuntimedError as exc:
                what = path or f"untitled notebook {notebook_id}"
                log.warning("could not reopen %s after reconnecting: %s", what, exc)
                continue
            if reply.notebook_id != notebook_id:
                # Another document (the daemon lost ours): its history is not ours, so a merge
                # would duplicate every cell. Take the daemon's; say what is lost.
                log.warning(
                    "%s came back as another document (%s, was %s): edits made while "
                    "disconnected are not merged",
                    path,
                    reply.notebook_id,
                    notebook_id,
                )
                del self._replicas[notebook_id]
                del self._paths[notebook_id]
                replica.replace(reply.notebook_id)
                self._replicas[reply.notebook_id] = replica
                self._paths[reply.notebook_id] = reply.path or path
                if notebook_id in self._open_options:
                    self._open_options[reply.notebook_id] = self._open_options.pop(notebook_id)
                notebook_id = reply.notebook_id
            self._joined.add(notebook_id)
            self.mark_dirty(notebook_id, "notebook")
            self.mark_dirty(notebook_id, "runtime")

    # ------------------------------------------------------------ plumbing

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _on_sync(self, notebook_id: str, doc: DocKind, data: bytes) -> None:
        if notebook_id in self._closing:
            return
        self._joined.add(notebook_id)
        replica = self._replicas.get(notebook_id)
        if replica is None:
            # Sync can precede the NotebookOpened reply: make the replica on first sight.
            from runtimed.client.notebook import Replica

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
        if notebook_id not in self._joined:
            # Not (yet) reopened on this connection: its resync after reopening carries it.
            return
        data = replica.generate(doc)
        if data is not None:
            try:
                await self.connection.send_sync(notebook_id, doc, data)
            except ConnectionClosed:
                # Kept in the replica: a reconnect resyncs from fresh sync states.
                self._notify()

    async def push(self, notebook_id: str, doc: DocKind) -> None:
        """Send a pending sync message for ``doc`` now (after a local edit).

        While reconnecting the edit stays in the local replica (merged after reconnecting).

        Raises:
            ConnectionClosed: the client is ``gone``: the daemon can never get the edit.
        """
        if self._state is ConnectionState.GONE:
            raise ConnectionClosed(
                "not connected to a daemon (and not reconnecting): the edit stays local only"
            )
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
        conn = self.connection
        with anyio.fail_after(timeout):
            while not predicate():
                if conn.closed or self._conn is not conn:
                    # What we waited for (an execution, a sync) belonged to that connection.
                    raise ConnectionLost("the connection to the daemon was lost while waiting")
                await self._changed.wait()

    def closing(self, notebook_id: str) -> None:
        """Stop syncing ``notebook_id``: its CloseNotebook request goes out next."""
        self._closing.add(notebook_id)

    def forget(self, notebook_id: str) -> None:
        self._replicas.pop(notebook_id, None)
        self._paths.pop(notebook_id, None)
        self._open_options.pop(notebook_id, None)
        self._joined.discard(notebook_id)
        self._closing.discard(notebook_id)

    def resolve_output(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """An output manifest as an nbformat output dict, blobs read from the daemon's store
        on disk (and verified against their hash), on the calling thread.

        From async code prefer :meth:`resolve_outputs`, which reads blobs in a worker thread.

        Raises:
            blobstore.BlobError: a referenced blob is missing or corrupt.
        """
        from runtimed.documents.manifests import resolve_output

        return resolve_output(manifest, self._read_blob)

    async def resolve_outputs(self, manifests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Output manifests as nbformat output dicts; blob files are read (and hashed) in a
        worker thread, never on the event loop.

        Raises:
            blobstore.BlobError: a referenced blob is missing or corrupt.
        """
        from runtimed.documents.manifests import manifest_hashes, resolve_output

        if not any(manifest_hashes(m) for m in manifests):
            # Inline outputs only: nothing to read from disk.
            return [resolve_output(m, self._read_blob) for m in manifests]
        return await anyio.to_thread.run_sync(
            lambda: [resolve_output(m, self._read_blob) for m in manifests]
        )

    def _read_blob(self, blob_hash: str) -> bytes:
        from blobstore import BlobCorrupt, BlobNotFound, sha256_hex, shard_path, validate_hash

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
        """Send ``make(id)`` and return its reply (see :meth:`Connection.request`).

        Raises:
            ConnectionLost: the connection broke before the reply, or the client is
                reconnecting (retry once :attr:`state` is ``connected``).
        """
        if self._state is ConnectionState.RECONNECTING:
            raise ConnectionLost("the connection to the daemon was lost; reconnecting")
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
        """Ask the daemon to stop (it checkpoints and stops kernels first); this client
        does not reconnect (nor autostart another daemon) afterwards."""
        self._no_more_tries = True
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
        await _load_replica()
        resolved = str(await (await anyio.Path(path).expanduser()).resolve())
        cwd = str(await anyio.Path(kernel_cwd).resolve()) if kernel_cwd is not None else None
        reply = await self.request(
            lambda i: OpenNotebook(id=i, path=resolved, kernel_env=kernel_env, kernel_cwd=cwd),
            NotebookOpened,
        )
        if kernel_env is not None or cwd is not None:
            self._open_options[reply.notebook_id] = (kernel_env, cwd)
        return await self._attach(reply, timeout)

    async def join(self, notebook_id: str, *, timeout: float = 60) -> AsyncNotebook:
        """Join a notebook by its id: one open in the daemon (e.g. an untitled one another
        client created), or an untitled one the daemon persisted before a restart.

        Raises:
            NotebookNotFound: the daemon has no notebook of that id.
        """
        await _load_replica()
        reply = await self.request(
            lambda i: JoinNotebook(id=i, notebook_id=notebook_id), NotebookOpened
        )
        return await self._attach(reply, timeout)

    async def create(
        self, path: str | Path | None = None, *, kernel_name: str | None = None, timeout: float = 60
    ) -> AsyncNotebook:
        """Create a new, empty notebook (written to ``path`` at once when given)."""
        await _load_replica()
        resolved = str(await (await anyio.Path(path).expanduser()).resolve()) if path else None
        reply = await self.request(
            lambda i: CreateNotebook(id=i, path=resolved, kernel_name=kernel_name),
            NotebookOpened,
        )
        return await self._attach(reply, timeout)

    async def _attach(self, reply: NotebookOpened, timeout: float) -> AsyncNotebook:
        from runtimed.client.notebook import AsyncNotebook, Replica  # see _load_replica

        if self._blob_root is None:
            await self.status()
        replica = self._replicas.get(reply.notebook_id)
        if replica is None:
            replica = self._replicas[reply.notebook_id] = Replica(reply.notebook_id)
        self._joined.add(reply.notebook_id)
        # Where a reconnect reopens it: its path, or "" for an untitled notebook (rejoined
        # by id: the daemon persisted it before it answered the create).
        self._paths[reply.notebook_id] = reply.path or ""
        notebook = AsyncNotebook(self, replica, reply.path)
        await notebook.wait_ready(timeout=timeout)
        return notebook

    def note_path(self, notebook_id: str, path: str) -> None:
        """``notebook_id`` is now saved at ``path`` (where a reconnect reopens it)."""
        if notebook_id in self._replicas:
            self._paths[notebook_id] = path

    async def events(self, *, buffer: int = EVENT_BUFFER) -> AsyncIterator[DaemonEvent]:
        """Daemon events from now on (executions, kernel status, input requests)."""
        send, receive = anyio.create_memory_object_stream[DaemonEvent](buffer)
        self._subscribers.append(send)
        async with receive:
            async for event in receive:
                yield event


def _reopen(
    notebook_id: str, path: str, env: dict[str, str] | None, cwd: str | None
) -> Callable[[int], ClientRequest]:
    def make(request_id: int) -> ClientRequest:
        if not path:  # untitled: the daemon finds it by id (persisted at its create)
            return JoinNotebook(id=request_id, notebook_id=notebook_id)
        return OpenNotebook(id=request_id, path=path, kernel_env=env, kernel_cwd=cwd)

    return make
