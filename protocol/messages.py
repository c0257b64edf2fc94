"""Every control message on the wire, as typed msgspec Structs (msgpack-encoded).

Three named unions, one decoder each:

* :data:`ClientRequest` — client to daemon; each carries an ``id`` the reply echoes.
* :data:`DaemonReply` — daemon to client, answering one request (``id`` echoed).
* :data:`DaemonEvent` — daemon to client, unsolicited.

Sync frames carry a :class:`SyncEnvelope`. Evolution rules: new fields get defaults; tags
and field types never change.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from protocol.errors import ErrorDetails, ProtocolError
from protocol.runtimes import ConfigEntry, EnvInfo, KernelHealth, PoolInfo, RuntimeInfo
from protocol.states import ExecutionStatus

__all__ = [
    "CellQueued",
    "CleanEnvs",
    "ClearOutputs",
    "ClientRequest",
    "CloseNotebook",
    "CollectGarbage",
    "CommSent",
    "Complete",
    "CompletionItem",
    "Completions",
    "ConfigReply",
    "CreateNotebook",
    "DaemonEvent",
    "DaemonMessage",
    "DaemonReply",
    "DaemonShuttingDown",
    "DaemonStatus",
    "DocKind",
    "EnvList",
    "EnvsCleaned",
    "ErrorDetails",
    "ErrorReply",
    "ExecuteCell",
    "ExecutionDone",
    "ExecutionStarted",
    "ExecutionStatus",
    "Flush",
    "Flushed",
    "GarbageCollected",
    "GetConfig",
    "History",
    "HistoryEntries",
    "HistoryEntry",
    "InputReply",
    "InputRequested",
    "Inspect",
    "Inspection",
    "InterruptKernel",
    "JoinNotebook",
    "JsonObject",
    "KernelInfo",
    "KernelStatusChanged",
    "ListEnvs",
    "ListNotebooks",
    "ListRuntimes",
    "NotebookClosed",
    "NotebookFailed",
    "NotebookInfo",
    "NotebookList",
    "NotebookOpened",
    "NotebookSaved",
    "Ok",
    "OpenNotebook",
    "Ping",
    "Pong",
    "RestartKernel",
    "RunAll",
    "RunAllQueued",
    "RuntimeList",
    "RuntimeResync",
    "SaveNotebook",
    "SendComm",
    "Shutdown",
    "StatusReply",
    "SyncEnvelope",
    "decode_client_message",
    "decode_daemon_message",
    "decode_sync",
    "encode",
]

DocKind = Literal["notebook", "runtime"]


def _tag(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


# msgspec derives each subclass's tag by calling ``tag`` with the class name.
class Request(msgspec.Struct, tag_field="type", tag=_tag, frozen=True, kw_only=True):
    """A client request; ``id`` is chosen by the client and echoed by the reply."""

    id: int


class Reply(msgspec.Struct, tag_field="type", tag=_tag, frozen=True, kw_only=True):
    """A daemon reply; ``id`` echoes the request's."""

    id: int


class Event(msgspec.Struct, tag_field="type", tag=_tag, frozen=True, kw_only=True):
    """An unsolicited daemon event."""


# ---------------------------------------------------------------- requests


class Ping(Request, frozen=True, kw_only=True):
    pass


class OpenNotebook(Request, frozen=True, kw_only=True):
    """Open an ``.ipynb`` by path; two opens of one path join the same document.

    ``kernel_env`` / ``kernel_cwd`` (a run's context, e.g. ``runt run``): kernels started
    for this notebook from now on get these variables set over the daemon's environment
    and run in this folder (instead of ``metadata.runtimed.cwd`` / the notebook's folder).
    None: unchanged."""

    path: str
    kernel_env: dict[str, str] | None = None
    kernel_cwd: str | None = None


class JoinNotebook(Request, frozen=True, kw_only=True):
    """Join a notebook already loaded in the daemon, by its id (an untitled notebook has no
    path to open it by; the web notebook's pages join by id). Reply: ``notebook_opened``."""

    notebook_id: str


class CreateNotebook(Request, frozen=True, kw_only=True):
    """Create a new notebook, to be saved at ``path`` (None: untitled until saved with a path)."""

    path: str | None = None
    kernel_name: str | None = None


class CloseNotebook(Request, frozen=True, kw_only=True):
    """Leave the notebook. ``heads``: wait (bounded) until the daemon has these changes.
    ``unload``: if no other client has it open, close it now and stop its kernel (otherwise
    the daemon keeps it, kernel and all, until it has been idle for its idle timeout)."""

    notebook_id: str
    heads: list[str] | None = None
    unload: bool = False


class SaveNotebook(Request, frozen=True, kw_only=True):
    """Checkpoint to ``path`` (None: the notebook's own path), after the daemon's document
    contains ``heads`` (the client's edits)."""

    notebook_id: str
    path: str | None = None
    heads: list[str] | None = None


class Flush(Request, frozen=True, kw_only=True):
    """Make the client's edits durable: answered (:class:`Flushed`) once the daemon's
    document contains ``heads`` and a persisted state containing them is fsynced, so that
    they survive a crash of the daemon (docs/protocol.md, "Durability")."""

    notebook_id: str
    heads: list[str] | None = None


class ListNotebooks(Request, frozen=True, kw_only=True):
    pass


class DaemonStatus(Request, frozen=True, kw_only=True):
    pass


class Shutdown(Request, frozen=True, kw_only=True):
    """Stop the daemon cleanly (checkpoint, stop kernels, remove the socket)."""


class ExecuteCell(Request, frozen=True, kw_only=True):
    """Run the cell's source as the document holds it. Never carries code.

    ``heads``: hex change hashes of the notebook document the client has seen; the daemon
    waits (bounded) until its document contains them before reading the source.
    """

    notebook_id: str
    cell_id: str
    heads: list[str] | None = None
    allow_stdin: bool = False
    """Opt in to answering ``input()`` (InputRequested events); otherwise input() fails."""
    timeout: float | None = None
    """Per-execution timeout in seconds: the kernel is interrupted and the status is timeout."""


class RunAll(Request, frozen=True, kw_only=True):
    """Queue every non-empty code cell not tagged ``skip-execution``, in order."""

    notebook_id: str
    heads: list[str] | None = None
    allow_stdin: bool = False
    timeout: float | None = None


class InterruptKernel(Request, frozen=True, kw_only=True):
    notebook_id: str


class RestartKernel(Request, frozen=True, kw_only=True):
    notebook_id: str


class ClearOutputs(Request, frozen=True, kw_only=True):
    """Clear outputs of ``cell_ids`` (None: every cell)."""

    notebook_id: str
    cell_ids: list[str] | None = None


class InputReply(Request, frozen=True, kw_only=True):
    """Answer an :class:`InputRequested` event."""

    notebook_id: str
    execution_id: str
    value: str


class CollectGarbage(Request, frozen=True, kw_only=True):
    """Delete blobs no open notebook, persisted document or running execution references
    and that are older than ``grace_seconds`` (None: the daemon's default, one hour)."""

    grace_seconds: float | None = None


class ListRuntimes(Request, frozen=True, kw_only=True):
    """Every runtime the daemon can start (built-in Python, kernelspecs, built envs)."""


class ListEnvs(Request, frozen=True, kw_only=True):
    """The cached environments built from notebooks' declared dependencies."""


class CleanEnvs(Request, frozen=True, kw_only=True):
    """Remove cached environments no kernel uses: those over the configured age and size
    limits, or older than ``older_than_days`` when given, or all of them (``remove_all``)."""

    remove_all: bool = False
    older_than_days: float | None = None


class GetConfig(Request, frozen=True, kw_only=True):
    """The daemon's effective configuration and where each value came from."""


class Complete(Request, frozen=True, kw_only=True):
    """The kernel's completions at ``cursor`` in the cell's source as the document holds it.

    ``cursor`` counts Unicode code points from the start of the source (None: its end);
    ``heads`` as for :class:`ExecuteCell`. ``timeout``: seconds to wait for the kernel
    (None: the daemon's default, 10 s).
    """

    notebook_id: str
    cell_id: str
    cursor: int | None = None
    heads: list[str] | None = None
    timeout: float | None = None


class Inspect(Request, frozen=True, kw_only=True):
    """The kernel's help on the name at ``cursor`` (Jupyter ``inspect_request``); fields as
    :class:`Complete`. ``detail_level`` 0 is the docstring, 1 adds the source (IPython's
    ``?`` and ``??``)."""

    notebook_id: str
    cell_id: str
    cursor: int | None = None
    detail_level: int = 0
    heads: list[str] | None = None
    timeout: float | None = None


class History(Request, frozen=True, kw_only=True):
    """The kernel's input history (Jupyter ``history_request``): the last ``n`` entries, or
    with ``pattern`` (a glob, e.g. ``"import*"``) the last ``n`` that match; ``unique``
    drops repeats."""

    notebook_id: str
    pattern: str | None = None
    n: int = 10
    unique: bool = False
    timeout: float | None = None


class SendComm(Request, frozen=True, kw_only=True):
    """Send a ``comm_msg`` to an open comm of the notebook's kernel (Jupyter messaging spec,
    "Custom messages"): how a widget frontend changes a model, e.g. ``data = {"method":
    "update", "state": {"value": 7}, "buffer_paths": []}``. An ``update`` also changes the
    comm's state in the runtime document. ``buffers``: binary buffers, one per path in
    ``data["buffer_paths"]``."""

    notebook_id: str
    comm_id: str
    data: dict[str, object]
    buffers: list[bytes] = msgspec.field(default_factory=list)


ClientRequest = (
    Ping
    | OpenNotebook
    | CreateNotebook
    | JoinNotebook
    | CloseNotebook
    | SaveNotebook
    | Flush
    | ListNotebooks
    | DaemonStatus
    | Shutdown
    | ExecuteCell
    | RunAll
    | InterruptKernel
    | RestartKernel
    | ClearOutputs
    | InputReply
    | CollectGarbage
    | ListRuntimes
    | ListEnvs
    | CleanEnvs
    | GetConfig
    | Complete
    | Inspect
    | History
    | SendComm
)

# ---------------------------------------------------------------- replies


class Pong(Reply, frozen=True, kw_only=True):
    pass


class Ok(Reply, frozen=True, kw_only=True):
    pass


class ErrorReply(Reply, frozen=True, kw_only=True):
    """A request failed; the connection stays open. ``id`` is 0 when the request was unreadable."""

    code: str
    """One of :class:`protocol.errors.ErrorCode`'s values (a string on the wire so that a
    client can read codes added after it was built)."""
    message: str
    details: ErrorDetails | None = None
    """The error's structured attributes (a kernel's stderr tail, the runtimes available, ...),
    so the client rebuilds the error whole; None when the message says it all."""


class NotebookOpened(Reply, frozen=True, kw_only=True):
    """The notebook is open for this connection; sync frames for it follow."""

    notebook_id: str
    path: str | None


class NotebookClosed(Reply, frozen=True, kw_only=True):
    notebook_id: str


class NotebookSaved(Reply, frozen=True, kw_only=True):
    notebook_id: str
    path: str


class Flushed(Reply, frozen=True, kw_only=True):
    """Every edit up to the :class:`Flush` request's heads is durable."""

    notebook_id: str


class KernelInfo(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    """A :class:`~protocol.states.KernelState` value (``str``: forward compatible)."""
    name: str
    pid: int | None = None
    runtime: str = ""
    """The runtime the kernel runs (e.g. ``python3``, a kernelspec, ``env-<key>``)."""
    rss_bytes: int | None = None
    """Resident memory of the kernel process."""
    last_activity: float | None = None
    """Unix time an execution last started or finished."""
    started_at: float | None = None
    from_pool: bool = False
    """The kernel was pre-warmed in the pool before this notebook took it."""


class NotebookInfo(msgspec.Struct, frozen=True, kw_only=True):
    notebook_id: str
    path: str | None
    cells: int
    clients: int
    kernel: KernelInfo | None = None
    queue: list[str] = msgspec.field(default_factory=list)
    running: str | None = None


class NotebookList(Reply, frozen=True, kw_only=True):
    notebooks: list[NotebookInfo]


class StatusReply(Reply, frozen=True, kw_only=True):
    pid: int
    version: str
    protocol_version: int
    socket: str
    home: str
    uptime_seconds: float
    notebooks: list[NotebookInfo]
    clients: int
    blob_dir: str = ""
    """Where blobs live on disk (clients on this machine read them directly)."""
    http_port: int | None = None
    """127.0.0.1 port of the HTTP endpoint (``GET /blob/{sha256}``), None if disabled."""
    kernels: list[KernelHealth] = msgspec.field(default_factory=list)
    """Every kernel process the daemon manages (notebooks' and pooled)."""
    max_kernels: int = 0
    """Limit on concurrent kernels (0: none)."""
    pool: PoolInfo | None = None


class CellQueued(Reply, frozen=True, kw_only=True):
    notebook_id: str
    cell_id: str
    execution_id: str


class RunAllQueued(Reply, frozen=True, kw_only=True):
    notebook_id: str
    executions: list[CellQueued]


class GarbageCollected(Reply, frozen=True, kw_only=True):
    blobs_removed: int
    bytes_freed: int
    blobs_kept: int
    stale_documents_removed: int = 0
    """Set-aside documents (``*.stale.automerge``) older than a week that were deleted."""


class RuntimeList(Reply, frozen=True, kw_only=True):
    runtimes: list[RuntimeInfo]


class EnvList(Reply, frozen=True, kw_only=True):
    envs: list[EnvInfo]
    root: str = ""
    total_bytes: int = 0
    max_bytes: int = 0
    """Size limit of the cache (0: none)."""
    max_age_days: float = 0.0
    """Environments unused this long are removed (0: never)."""


class EnvsCleaned(Reply, frozen=True, kw_only=True):
    removed: list[str]
    """Keys of the removed environments."""
    bytes_freed: int = 0


class ConfigReply(Reply, frozen=True, kw_only=True):
    path: str
    """The configuration file the daemon read (or would read)."""
    exists: bool
    entries: list[ConfigEntry] = msgspec.field(default_factory=list)


JsonObject = dict[str, object]
"""A JSON object as the kernel sent it (a mime bundle, its metadata)."""


class CompletionItem(msgspec.Struct, frozen=True, kw_only=True):
    """One completion with its range and, when the kernel says, its kind and signature
    (IPython's ``_jupyter_types_experimental`` reply metadata)."""

    text: str
    start: int
    end: int
    type: str | None = None
    signature: str | None = None


class Completions(Reply, frozen=True, kw_only=True):
    """The kernel's ``complete_reply``: replace ``cursor_start:cursor_end`` of the source
    (code points) with one of ``matches``."""

    notebook_id: str
    cell_id: str
    matches: list[str]
    cursor_start: int
    cursor_end: int
    items: list[CompletionItem] = msgspec.field(default_factory=list)


class Inspection(Reply, frozen=True, kw_only=True):
    """The kernel's ``inspect_reply``: ``found`` False when there is nothing to show;
    ``data`` a mime bundle (``text/plain``, often ``text/html``)."""

    notebook_id: str
    cell_id: str
    found: bool
    data: JsonObject = msgspec.field(default_factory=dict)
    metadata: JsonObject = msgspec.field(default_factory=dict)


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    session: int
    """The kernel's history session number."""
    line: int
    """The input's number in that session (its execution count)."""
    source: str


class HistoryEntries(Reply, frozen=True, kw_only=True):
    """The kernel's ``history_reply``, oldest first."""

    notebook_id: str
    entries: list[HistoryEntry]


class CommSent(Reply, frozen=True, kw_only=True):
    """The ``comm_msg`` went to the kernel (the spec gives comm messages no reply)."""

    notebook_id: str
    comm_id: str


DaemonReply = (
    Pong
    | Ok
    | ErrorReply
    | NotebookOpened
    | NotebookClosed
    | NotebookSaved
    | Flushed
    | NotebookList
    | StatusReply
    | CellQueued
    | RunAllQueued
    | GarbageCollected
    | RuntimeList
    | EnvList
    | EnvsCleaned
    | ConfigReply
    | Completions
    | Inspection
    | HistoryEntries
    | CommSent
)

# ---------------------------------------------------------------- events


class ExecutionStarted(Event, frozen=True, kw_only=True):
    notebook_id: str
    cell_id: str
    execution_id: str


class ExecutionDone(Event, frozen=True, kw_only=True):
    """An execution ended. The daemon's runtime document holds its outputs before this event
    is sent, and the sync messages carrying them are sent to this client first; a client whose
    replica is still catching up waits for the execution's status in its replica."""

    notebook_id: str
    cell_id: str
    execution_id: str
    status: ExecutionStatus
    execution_count: int | None = None
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] = msgspec.field(default_factory=list)


class KernelStatusChanged(Event, frozen=True, kw_only=True):
    notebook_id: str
    state: str
    """A :class:`~protocol.states.KernelState` value; ``str`` so that a state a newer daemon
    adds decodes here too."""
    message: str = ""


class InputRequested(Event, frozen=True, kw_only=True):
    """The running cell called ``input()``; answer with :class:`InputReply`."""

    notebook_id: str
    execution_id: str
    prompt: str
    password: bool = False


class RuntimeResync(Event, frozen=True, kw_only=True):
    """Drop this connection's replica of the runtime document and sync it again from empty:
    the replica diverged (it carried changes the daemon refused), or the daemon replaced the
    document with a copy of its state without history (``docs/schema.md``)."""

    notebook_id: str


class NotebookFailed(Event, frozen=True, kw_only=True):
    """The daemon closed this notebook because its background work failed (a bug, or a
    document the daemon cannot process): its kernel was stopped, its last good state
    persisted, and it is no longer open on any connection. Open it again to continue;
    other notebooks are unaffected."""

    notebook_id: str
    path: str | None = None
    reason: str = ""
    """What failed, in words (the traceback is in the daemon log)."""


class DaemonShuttingDown(Event, frozen=True, kw_only=True):
    pass


DaemonEvent = (
    ExecutionStarted
    | ExecutionDone
    | KernelStatusChanged
    | InputRequested
    | RuntimeResync
    | NotebookFailed
    | DaemonShuttingDown
)

DaemonMessage = DaemonReply | DaemonEvent

# ---------------------------------------------------------------- sync frames


class SyncEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """Payload of a SYNC frame: one Automerge sync message for one document of one notebook."""

    notebook_id: str
    doc: DocKind
    data: bytes


# ---------------------------------------------------------------- codecs

_encoder = msgspec.msgpack.Encoder()
_client_decoder = msgspec.msgpack.Decoder(ClientRequest)
_daemon_decoder = msgspec.msgpack.Decoder(DaemonMessage)
_sync_decoder = msgspec.msgpack.Decoder(SyncEnvelope)


def encode(message: Request | Reply | Event | SyncEnvelope) -> bytes:
    return _encoder.encode(message)


def decode_client_message(payload: bytes) -> ClientRequest:
    """Decode a CONTROL frame sent by a client.

    Raises:
        ProtocolError: not msgpack, an unknown ``type`` tag, fields of the wrong shape, or
            nesting deeper than msgspec decodes.
    """
    try:
        request: ClientRequest = _client_decoder.decode(payload)
        return request
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"invalid client message: {_why(exc)}") from exc


def decode_daemon_message(payload: bytes) -> DaemonMessage:
    """Decode a CONTROL frame sent by the daemon.

    Raises:
        ProtocolError: as :func:`decode_client_message`.
    """
    try:
        message: DaemonMessage = _daemon_decoder.decode(payload)
        return message
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"invalid daemon message: {_why(exc)}") from exc


def decode_sync(payload: bytes) -> SyncEnvelope:
    """Decode a SYNC frame payload.

    Raises:
        ProtocolError: the payload is not a sync envelope.
    """
    try:
        return _sync_decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"invalid sync frame: {_why(exc)}") from exc


def _why(exc: Exception) -> str:
    # msgspec raises RecursionError for input nested deeper than it decodes (about 1,000
    # levels, even inside a field it would ignore): that is bad input, not a daemon fault.
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)
