"""A client-side notebook: local Automerge replicas synced with the daemon."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
from automerge.core import Document, Message, SyncState

from protocol.messages import (
    CellQueued,
    ClearOutputs,
    ClientRequest,
    CloseNotebook,
    CommSent,
    Complete,
    Completions,
    DaemonEvent,
    DocKind,
    ExecuteCell,
    Flush,
    Flushed,
    History,
    HistoryEntries,
    InputReply,
    Inspect,
    Inspection,
    InterruptKernel,
    ListNotebooks,
    NotebookClosed,
    NotebookList,
    NotebookSaved,
    Ok,
    Reply,
    RestartKernel,
    RunAll,
    RunAllQueued,
    SaveNotebook,
    SendComm,
)
from protocol.states import ExecutionStatus
from runtimed.documents.amjson import JsonValue
from runtimed.documents.boundary import DocumentError, automerge_errors, is_panic
from runtimed.documents.manifests import manifest_hashes
from runtimed.documents.notebook import Cell, NotebookDoc
from runtimed.documents.runtime import FINISHED, RuntimeDoc
from runtimed.errors import ConnectionClosed, RuntimedError

if TYPE_CHECKING:
    from runtimed.documents.history import NotebookDiff

__all__ = ["AsyncNotebook", "ExecutionResult", "NotebookHost", "Replica"]

log = logging.getLogger(__name__)

# Documents a panic poisoned: never freed (freeing one crashes the process).
_POISONED: list[Document] = []

ReplyT = TypeVar("ReplyT", bound=Reply)


class NotebookHost(Protocol):
    """What a notebook needs of the client that opened it (``AsyncClient`` is one); named
    here so that this module does not import the client's."""

    async def request(
        self,
        make: Callable[[int], ClientRequest],
        reply_type: type[ReplyT],
        *,
        timeout: float | None = None,
    ) -> ReplyT: ...

    async def push(self, notebook_id: str, doc: DocKind) -> None: ...

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float | None = None
    ) -> None: ...

    def resolve_output(self, manifest: dict[str, Any]) -> dict[str, Any]: ...

    async def resolve_outputs(
        self, manifests: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]: ...

    def closing(self, notebook_id: str) -> None: ...

    def forget(self, notebook_id: str) -> None: ...

    def note_path(self, notebook_id: str, path: str) -> None: ...

    def events(self, *, buffer: int = ...) -> AsyncIterator[DaemonEvent]: ...


class Replica:
    """One notebook's two local documents and their sync states with the daemon.

    Every call into the Automerge binding goes through :func:`automerge_errors`. A sync
    message from the daemon that the binding refuses (an error, or a panic such as the one a
    zero-bit bloom filter causes in the next ``generate_sync_message``) is not raised into the
    client's reader: that document's sync state starts again from fresh (the next exchange finds
    out what each side lacks), the error is kept in :attr:`failure` for the notebook
    (``AsyncNotebook.sync_error``), and the client's other notebooks are not affected.
    """

    def __init__(self, notebook_id: str) -> None:
        self.notebook_id = notebook_id
        self.notebook = NotebookDoc.empty()
        self.runtime = RuntimeDoc.empty()
        self.incoming: RuntimeDoc | None = None
        """After ``RuntimeResync``: the runtime document being synced again from empty.
        Reads keep using :attr:`runtime` until this one holds the state, then it replaces
        it (so a replica never looks empty for a moment)."""
        self.states: dict[DocKind, SyncState] = {"notebook": SyncState(), "runtime": SyncState()}
        self.failure: DocumentError | None = None
        """The last sync failure with the daemon (None: none)."""

    def _synced(self, doc: DocKind) -> Document:
        """The document that sync messages for ``doc`` go into and come from."""
        if doc == "notebook":
            return self.notebook.doc
        return (self.incoming or self.runtime).doc

    def _refused(self, doc: DocKind, exc: DocumentError) -> None:
        log.warning("notebook %s: %s; its %s sync starts again", self.notebook_id, exc, doc)
        self.failure = exc
        self.states[doc] = SyncState()
        target = self._synced(doc)
        try:
            target.get_heads()
        except BaseException as health:
            if not (isinstance(health, Exception) or is_panic(health)):
                raise
            # Poisoned by the panic: freeing it would crash the process, so it is kept.
            _POISONED.append(target)
            if doc == "notebook":
                self.notebook = NotebookDoc.empty()
            elif self.incoming is not None:
                self.incoming = RuntimeDoc.empty()
            else:
                self.runtime = RuntimeDoc.empty()

    def receive(self, doc: DocKind, data: bytes) -> bool:
        """Apply a sync message from the daemon; False if the binding refused it (see
        :attr:`failure`)."""
        target = self._synced(doc)
        try:
            with automerge_errors(
                f"applying a {doc} sync message from the daemon for notebook {self.notebook_id}"
            ):
                target.receive_sync_message(self.states[doc], Message.decode(data))
                if doc == "runtime" and self.incoming is not None and self.incoming.ready:
                    self.runtime, self.incoming = self.incoming, None
        except DocumentError as exc:
            self._refused(doc, exc)
            return False
        return True

    def generate(self, doc: DocKind) -> bytes | None:
        """The next sync message for ``doc`` (None: nothing to send, or the binding failed
        generating it — then :attr:`failure` says why and the sync state is fresh)."""
        target = self._synced(doc)
        try:
            with automerge_errors(
                f"generating a {doc} sync message for notebook {self.notebook_id}"
            ):
                message = target.generate_sync_message(self.states[doc])
                return None if message is None else bytes(message.encode())
        except DocumentError as exc:
            self._refused(doc, exc)
            return None

    def fresh_sync(self) -> None:
        """Start syncing with a new daemon (after a reconnect): fresh sync states, so the
        first exchange finds out what each side lacks; the runtime replica starts empty (it
        is the daemon's, and a new daemon has a new one)."""
        self.states = {"notebook": SyncState(), "runtime": SyncState()}
        self.runtime = RuntimeDoc.empty()
        self.incoming = None

    def replace(self, notebook_id: str) -> None:
        """Become an empty replica of another document (the daemon's, after a reconnect)."""
        self.notebook_id = notebook_id
        self.notebook = NotebookDoc.empty()
        self.runtime = RuntimeDoc.empty()
        self.incoming = None
        self.states = {"notebook": SyncState(), "runtime": SyncState()}

    def reset_runtime(self) -> None:
        """Sync the runtime document again from empty (``RuntimeResync``: the daemon refused
        this replica, or replaced its document by a copy without history). The replica in
        :attr:`runtime` is read until the new one holds the state (:attr:`incoming`)."""
        self.incoming = RuntimeDoc.empty()
        self.states["runtime"] = SyncState()


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """How one execution ended, with the cell's outputs as nbformat dicts."""

    execution_id: str
    cell_id: str
    status: str
    execution_count: int | None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == ExecutionStatus.OK


class AsyncNotebook:
    """An open notebook. Edits apply to the local replica at once and sync in the background;
    executions run what the daemon's document holds (after it has this replica's changes)."""

    def __init__(self, client: NotebookHost, replica: Replica, path: str | None) -> None:
        self._client = client
        self._replica = replica
        self.path = Path(path) if path else None

    @property
    def id(self) -> str:
        return self._replica.notebook_id

    @property
    def doc(self) -> NotebookDoc:
        """The local notebook replica (read it freely; edit through this class)."""
        return self._replica.notebook

    @property
    def runtime(self) -> RuntimeDoc:
        return self._replica.runtime

    @property
    def sync_error(self) -> DocumentError | None:
        """The last sync message from the daemon that the Automerge binding refused for this
        notebook (None: none). The notebook keeps syncing: its sync state started again."""
        return self._replica.failure

    # ------------------------------------------------------------ reads

    async def wait_ready(self, *, timeout: float = 30) -> None:
        """Wait until the first sync delivered the document (open() does this for you)."""
        await self._client.wait_until(
            lambda: self.doc.ready and self.runtime.ready, timeout=timeout
        )

    def cells(self) -> list[Cell]:
        return self.doc.cells()

    def cell(self, cell_id: str) -> Cell:
        return self.doc.cell(cell_id)

    def cell_ids(self) -> list[str]:
        return self.doc.cell_ids()

    def metadata(self) -> dict[str, JsonValue]:
        return self.doc.metadata()

    def outputs(self, cell_id: str) -> list[dict[str, Any]]:
        """The cell's current outputs as nbformat dicts (blob references resolved).

        Blob files are read on the calling thread; from async code that must not block, use
        :meth:`read_outputs`.
        """
        _, manifests = self.runtime.cell_state(cell_id)
        return [self._client.resolve_output(m) for m in manifests]

    async def read_outputs(self, cell_id: str) -> list[dict[str, Any]]:
        """:meth:`outputs`, with blob files read in a worker thread."""
        _, manifests = self.runtime.cell_state(cell_id)
        return await self._client.resolve_outputs(manifests)

    def execution_count(self, cell_id: str) -> int | None:
        return self.runtime.cell_state(cell_id)[0]

    def heads(self) -> list[str]:
        return self.doc.heads_hex()

    @property
    def url(self) -> str | None:
        """This notebook's page in the daemon's web notebook, token included (None when the
        daemon serves no web UI). Treat it as a password: it grants access to the daemon."""
        web = getattr(self._client, "web", None)
        if web is None:
            return None
        port, token = web
        return f"http://127.0.0.1:{port}/notebooks/{self.id}?token={token}"

    @property
    def version(self) -> str:
        """The current version, an opaque string for :meth:`changes_since`."""
        from runtimed.client.history import notebook_version

        return notebook_version(self)

    def changes_since(self, version: str, to: str | None = None) -> NotebookDiff:
        """What changed between ``version`` and ``to`` (default: now); see docs/agents.md."""
        from runtimed.client.history import changes_since

        return changes_since(self, version, to)

    # ------------------------------------------------------------ edits

    async def _edited(self) -> None:
        await self._client.push(self.id, "notebook")

    async def add_cell(
        self,
        cell_type: str = "code",
        source: str = "",
        *,
        index: int | None = None,
        cell_id: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
    ) -> str:
        """Insert a cell (at the end unless ``index``); returns its id."""
        new_id = self.doc.add_cell(
            cell_type, source, index=index, cell_id=cell_id, metadata=metadata
        )
        await self._edited()
        return new_id

    async def delete_cell(self, cell_id: str) -> None:
        self.doc.delete_cell(cell_id)
        await self._edited()

    async def move_cell(self, cell_id: str, index: int) -> None:
        self.doc.move_cell(cell_id, index)
        await self._edited()

    async def set_source(self, cell_id: str, source: str) -> None:
        self.doc.set_source(cell_id, source)
        await self._edited()

    async def splice_source(self, cell_id: str, index: int, delete: int, insert: str) -> None:
        self.doc.splice_source(cell_id, index, delete, insert)
        await self._edited()

    async def set_cell_metadata(self, cell_id: str, key: str, value: JsonValue) -> None:
        self.doc.set_cell_metadata(cell_id, key, value)
        await self._edited()

    async def set_metadata(self, key: str, value: JsonValue) -> None:
        self.doc.set_metadata(key, value)
        await self._edited()

    # ------------------------------------------------------------ daemon requests

    async def save(self, path: str | Path | None = None) -> Path:
        """Checkpoint to ``path`` (default: the notebook's own); the daemon first waits until
        it has every edit this replica made."""
        await self._client.push(self.id, "notebook")
        heads = self.heads()
        reply = await self._client.request(
            lambda i: SaveNotebook(
                id=i, notebook_id=self.id, path=str(path) if path else None, heads=heads
            ),
            NotebookSaved,
        )
        self.path = Path(reply.path)
        self._client.note_path(self.id, reply.path)  # where a reconnect reopens it
        return self.path

    async def flush(self) -> None:
        """Return once every edit this replica made is durable: the daemon has it and has
        fsynced a persisted state containing it, so a crash of the daemon cannot lose it.
        (``save``, ``execute``, ``run_all`` and ``close`` imply it.)"""
        await self._client.push(self.id, "notebook")
        heads = self.heads()
        await self._client.request(lambda i: Flush(id=i, notebook_id=self.id, heads=heads), Flushed)

    async def queue(
        self, cell_id: str, *, allow_stdin: bool = False, cell_timeout: float | None = None
    ) -> str:
        """Queue the cell for execution (as the document holds it, once the daemon has this
        replica's edits); returns the execution id.

        Args:
            allow_stdin: answer ``input()`` through :meth:`answer_input` (InputRequested
                events); without it ``input()`` raises StdinNotImplementedError in the cell.
            cell_timeout: interrupt the cell after this many seconds (status ``timeout``).
        """
        await self._client.push(self.id, "notebook")
        heads = self.heads()
        reply = await self._client.request(
            lambda i: ExecuteCell(
                id=i,
                notebook_id=self.id,
                cell_id=cell_id,
                heads=heads,
                allow_stdin=allow_stdin,
                timeout=cell_timeout,
            ),
            CellQueued,
        )
        return reply.execution_id

    async def execute(
        self, cell_id: str, *, timeout: float | None = None, allow_stdin: bool = False
    ) -> ExecutionResult:
        """Run one cell and wait for it to finish (``timeout``: give up waiting; the cell goes
        on running — use ``queue(cell_timeout=...)`` to interrupt it instead)."""
        execution_id = await self.queue(cell_id, allow_stdin=allow_stdin)
        return await self.wait_execution(execution_id, timeout=timeout)

    async def _unfinished(self, execution_id: str, timeout: float | None) -> str:
        """Why a wait for ``execution_id`` timed out, as far as this replica and the daemon
        can tell: the status this replica shows, and the daemon's queue and kernel."""
        mine = self.runtime.execution_status(execution_id) if self.runtime.ready else None
        daemon = "did not answer"
        with anyio.move_on_after(5):
            try:
                listed = await self._client.request(lambda i: ListNotebooks(id=i), NotebookList)
                infos = listed.notebooks
            except RuntimedError as exc:
                daemon = f"could not be asked ({exc})"
            else:
                info = next((i for i in infos if i.notebook_id == self.id), None)
                if info is None:
                    daemon = "has no such notebook open"
                else:
                    state = info.kernel.state if info.kernel is not None else "none"
                    where = (
                        "running it" if info.running == execution_id
                        else "queueing it" if execution_id in info.queue
                        else "neither running nor queueing it"
                    )  # fmt: skip
                    daemon = f"is {where} (running {info.running}, kernel {state})"
        return (
            f"execution {execution_id} did not finish within {timeout:g} s: this client's "
            f"replica shows it {mine or 'unknown'}; the daemon {daemon}"
        )

    async def queue_all(self, *, cell_timeout: float | None = None) -> list[CellQueued]:
        """Queue every non-empty code cell (not tagged ``skip-execution``) in order."""
        await self._client.push(self.id, "notebook")
        heads = self.heads()
        reply = await self._client.request(
            lambda i: RunAll(id=i, notebook_id=self.id, heads=heads, timeout=cell_timeout),
            RunAllQueued,
        )
        return list(reply.executions)

    async def run_all(self, *, timeout: float | None = None) -> list[ExecutionResult]:
        """Queue every code cell in order and wait for all of them to finish (or be skipped)."""
        queued = await self.queue_all()
        results = []
        with anyio.fail_after(timeout):
            for item in queued:
                results.append(await self.wait_execution(item.execution_id))
        return results

    async def wait_execution(
        self, execution_id: str, *, timeout: float | None = None
    ) -> ExecutionResult:
        """Wait until the runtime document shows ``execution_id`` finished."""

        def finished() -> bool:
            if not self.runtime.ready:
                return False
            return self.runtime.execution_status(execution_id) in FINISHED

        try:
            await self._client.wait_until(finished, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(await self._unfinished(execution_id, timeout)) from None
        record = self.runtime.execution(execution_id) or {}
        cell_id = str(record.get("cell_id", ""))
        _, manifests = self.runtime.cell_state(cell_id)
        same_run = self._current_execution(cell_id) == execution_id
        outputs = await self._client.resolve_outputs(manifests) if same_run else []
        errors = [o for o in outputs if o.get("output_type") == "error"]
        return ExecutionResult(
            execution_id=execution_id,
            cell_id=cell_id,
            status=str(record.get("status")),
            execution_count=record.get("execution_count")
            if isinstance(record.get("execution_count"), int)
            else None,
            outputs=outputs,
            ename=record.get("ename") if isinstance(record.get("ename"), str) else None,
            evalue=record.get("evalue") if isinstance(record.get("evalue"), str) else None,
            traceback=list(errors[-1].get("traceback", [])) if errors else [],
        )

    async def _resolved(self, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resolve = self._client.resolve_output
        if any(manifest_hashes(m) for m in manifests):  # blob files to read: a worker thread
            return await anyio.to_thread.run_sync(lambda: [resolve(m) for m in manifests])
        return [resolve(m) for m in manifests]

    def _current_execution(self, cell_id: str) -> str | None:
        return self.runtime.cell_execution_id(cell_id)

    async def complete(
        self, cell_id: str, cursor: int | None = None, *, timeout: float | None = None
    ) -> Completions:
        """The kernel's completions at ``cursor`` (code points into the cell's source; None:
        its end) in the cell as this replica holds it (its edits are sent first).

        Answered while a cell runs if the kernel has subshells (ipykernel 7), else after it.
        ``timeout``: seconds the daemon waits for the kernel (default 10).

        Raises:
            CellNotFound, CellNotCode, InvalidRequest (cursor outside the source),
            KernelNotRunning (no kernel yet: run a cell), KernelRequestTimeout.
        """
        await self._client.push(self.id, "notebook")
        heads = self.heads()
        return await self._client.request(
            lambda i: Complete(
                id=i,
                notebook_id=self.id,
                cell_id=cell_id,
                cursor=cursor,
                heads=heads,
                timeout=timeout,
            ),
            Completions,
        )

    async def inspect(
        self,
        cell_id: str,
        cursor: int | None = None,
        *,
        detail_level: int = 0,
        timeout: float | None = None,
    ) -> Inspection:
        """The kernel's help (a mime bundle in ``data``) on the name at ``cursor``;
        ``detail_level`` 1 asks for more (IPython: the source).  As :meth:`complete`."""
        await self._client.push(self.id, "notebook")
        heads = self.heads()
        return await self._client.request(
            lambda i: Inspect(
                id=i,
                notebook_id=self.id,
                cell_id=cell_id,
                cursor=cursor,
                detail_level=detail_level,
                heads=heads,
                timeout=timeout,
            ),
            Inspection,
        )

    async def history(
        self,
        *,
        pattern: str | None = None,
        n: int = 10,
        unique: bool = False,
        timeout: float | None = None,
    ) -> HistoryEntries:
        """The kernel's input history: the last ``n`` inputs, or the last ``n`` matching the
        glob ``pattern``; ``unique`` drops repeats.

        Raises:
            KernelNotRunning, KernelRequestTimeout.
        """
        return await self._client.request(
            lambda i: History(
                id=i, notebook_id=self.id, pattern=pattern, n=n, unique=unique, timeout=timeout
            ),
            HistoryEntries,
        )

    # ------------------------------------------------------------ comms (widgets)

    async def comms(self) -> dict[str, dict[str, Any]]:
        """The kernel's open comms as this replica holds them, by comm id: ``target_name``,
        ``model_module``, ``model_name``, ``model_module_version``, ``state`` (a widget's
        model state) and ``buffers`` (``{json path: {path, blob, size}}``, bytes in the blob
        store).  Empty when the kernel has none (or no kernel runs)."""
        return self.runtime.comms()

    async def wait_comms(
        self,
        predicate: Callable[[dict[str, dict[str, Any]]], bool],
        *,
        timeout: float | None = 30,
    ) -> dict[str, dict[str, Any]]:
        """Wait until ``predicate(comms)`` holds for the replica's comms; returns them.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        await self._client.wait_until(lambda: predicate(self.runtime.comms()), timeout=timeout)
        return self.runtime.comms()

    async def send_comm(
        self, comm_id: str, data: dict[str, Any], *, buffers: Sequence[bytes] = ()
    ) -> None:
        """Send a ``comm_msg`` to the kernel: a widget's state change is ``{"method":
        "update", "state": {...}, "buffer_paths": [...]}`` (one path per buffer).  It also
        changes the comm's state in the runtime document at once.

        Raises:
            CommNotFound, KernelNotRunning, InvalidRequest (state over 1 MiB, buffers not
            matching ``buffer_paths``).
        """
        await self._client.request(
            lambda i: SendComm(
                id=i, notebook_id=self.id, comm_id=comm_id, data=data, buffers=list(buffers)
            ),
            CommSent,
        )

    async def interrupt(self) -> None:
        await self._client.request(lambda i: InterruptKernel(id=i, notebook_id=self.id), Ok)

    async def restart(self) -> None:
        await self._client.request(lambda i: RestartKernel(id=i, notebook_id=self.id), Ok)

    async def clear_outputs(self, cell_ids: list[str] | None = None) -> None:
        await self._client.request(
            lambda i: ClearOutputs(id=i, notebook_id=self.id, cell_ids=cell_ids), Ok
        )

    async def answer_input(self, execution_id: str, value: str) -> None:
        await self._client.request(
            lambda i: InputReply(id=i, notebook_id=self.id, execution_id=execution_id, value=value),
            Ok,
        )

    async def close(self, *, unload: bool = False) -> None:
        """Leave the notebook (after the daemon has this replica's edits).

        The daemon keeps it, and its kernel, for other clients and later opens until it has
        been idle for its idle timeout; ``unload=True`` closes it (stopping the kernel) at once
        when no other client has it open.
        """
        # The daemon must have this replica's edits before it stops syncing: a push can
        # send nothing while a sync message is in flight (the edit then goes with the answer
        # to it), and once closing, answers are not read. So wait for the daemon to have
        # (and persist) the heads, then stop syncing, then close.
        with contextlib.suppress(ConnectionClosed):
            await self.flush()
        heads = self.heads()
        self._client.closing(self.id)
        try:
            with contextlib.suppress(ConnectionClosed):
                await self._client.request(
                    lambda i: CloseNotebook(id=i, notebook_id=self.id, heads=heads, unload=unload),
                    NotebookClosed,
                )
        finally:
            self._client.forget(self.id)

    def __repr__(self) -> str:
        return f"<AsyncNotebook {self.id} {self.path}>"
