"""One exception tree for the whole project, daemon and clients alike.

Every error raised on purpose derives from :class:`RuntimedError`. Its root lives in
``protocol.errors`` (so ``protocol`` and ``blobstore`` can derive from it without importing
``runtimed``) and is re-exported here. Each class declares the wire :class:`ErrorCode` it
travels as: the server turns any of them into an ``ErrorReply`` (with its structured
attributes in ``details``) and keeps the session open; the client turns an ``ErrorReply``
back into the same class with the same attributes (:func:`error_from_reply`).

The tree (module in brackets when it is not this one)::

    RuntimedError [protocol.errors]
    ├── ProtocolError [protocol.errors]
    │   ├── UnknownMessage [protocol.errors]
    │   └── VersionMismatch [protocol.errors]
    ├── BlobError [blobstore.errors]
    │   ├── InvalidBlobHash [blobstore.errors]
    │   ├── BlobNotFound [blobstore.errors]
    │   ├── BlobTooLarge [blobstore.errors]
    │   ├── BlobCorrupt [blobstore.errors]
    │   ├── BlobWriteFailed [blobstore.errors]
    │   ├── BlobReadFailed [blobstore.errors]
    │   ├── InvalidManifest [blobstore.errors]
    │   └── BlobUnavailable
    ├── InvalidRequest
    │   ├── BatchSpecError [runtimed.automation.batch]
    │   ├── ClusterError [runtimed.automation.cluster]
    │   └── ParameterError [runtimed.automation.parameters] (also a ValueError)
    ├── NotebookNotFound
    ├── NotebookInvalid
    ├── NotebookIOError
    ├── CellNotFound
    ├── CellNotCode
    ├── CellEmpty
    ├── HeadsTimeout
    ├── ExecutionNotFound
    ├── ShuttingDown
    ├── InternalError
    │   └── InvalidTransition [runtimed.daemon.queue]
    ├── DocumentError
    │   └── SyncRejected [runtimed.daemon.room]
    ├── ConfigError [runtimed.config]
    ├── ToolError [runtimed.mcp.results]
    ├── SessionError [runtimed.mcp.session]
    ├── UnsafeDirectory [runtimed.paths] (also a PermissionError)
    ├── DaemonAlreadyRunning
    ├── DaemonNotRunning
    ├── ConnectionClosed
    │   └── ConnectionLost
    ├── RemoteError
    ├── NotebookExecutionError [runtimed.automation.report]
    └── KernelError
        ├── KernelNotFound
        │   └── RuntimeNotFound
        ├── KernelStartFailed
        ├── KernelDied
        ├── KernelNotRunning
        ├── ExecutionTimeout
        ├── KernelRequestTimeout
        ├── CommNotFound
        ├── KernelLimitReached
        └── EnvBuildFailed

Not in the tree, on purpose: exceptions that never leave the module raising them
(``SlowClient`` in the daemon's connection, ``_Truncated`` in the sync wire helpers and the
change decoder, the CLI's ``_UsageError``, ``_BadInput`` in the web notebook's WebSocket
bridge) — control flow, not errors a caller sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Self

from blobstore.errors import (
    BlobCorrupt,
    BlobError,
    BlobNotFound,
    BlobReadFailed,
    BlobTooLarge,
    BlobWriteFailed,
    InvalidBlobHash,
    InvalidManifest,
)
from protocol.errors import (
    ErrorCode,
    ErrorDetails,
    ProtocolError,
    RuntimedError,
    UnknownMessage,
    VersionMismatch,
)

__all__ = [
    "WIRE_ERRORS",
    "BlobError",
    "BlobUnavailable",
    "CellEmpty",
    "CellNotCode",
    "CellNotFound",
    "CommNotFound",
    "ConnectionClosed",
    "ConnectionLost",
    "DaemonAlreadyRunning",
    "DaemonNotRunning",
    "DocumentError",
    "EnvBuildFailed",
    "ErrorCode",
    "ErrorDetails",
    "ExecutionNotFound",
    "ExecutionTimeout",
    "HeadsTimeout",
    "InternalError",
    "InvalidRequest",
    "KernelDied",
    "KernelError",
    "KernelLimitReached",
    "KernelNotFound",
    "KernelNotRunning",
    "KernelRequestTimeout",
    "KernelStartFailed",
    "NotebookIOError",
    "NotebookInvalid",
    "NotebookNotFound",
    "ProtocolError",
    "RemoteError",
    "RuntimeNotFound",
    "RuntimedError",
    "ShuttingDown",
    "UnknownMessage",
    "VersionMismatch",
    "error_from_reply",
]


class InvalidRequest(RuntimedError):
    """The request is well-formed but asks for something that cannot be done as asked."""

    code = ErrorCode.INVALID_REQUEST


class NotebookNotFound(RuntimedError):
    """No notebook with that id is open, or no file at that path."""

    code = ErrorCode.NOTEBOOK_NOT_FOUND


class NotebookInvalid(RuntimedError):
    """The file is not a valid notebook; it was not modified."""

    code = ErrorCode.NOTEBOOK_INVALID


class NotebookIOError(RuntimedError):
    """Reading or writing the notebook file failed (permissions, full disk, ...)."""

    code = ErrorCode.NOTEBOOK_IO


class CellNotFound(RuntimedError):
    """The notebook has no cell with that id."""

    code = ErrorCode.CELL_NOT_FOUND


class CellNotCode(RuntimedError):
    """The cell is not a code cell (only code cells can be executed)."""

    code = ErrorCode.CELL_NOT_CODE


class CellEmpty(RuntimedError):
    """The cell has no source to execute."""

    code = ErrorCode.CELL_EMPTY


class HeadsTimeout(RuntimedError):
    """The daemon did not receive the document changes the request referred to in time."""

    code = ErrorCode.HEADS_TIMEOUT


class ExecutionNotFound(RuntimedError):
    """No execution with that id is known (or it was forgotten)."""

    code = ErrorCode.EXECUTION_NOT_FOUND


class BlobUnavailable(BlobError):
    """An output's blob is missing, corrupt or unreadable (see the message for which)."""

    code = ErrorCode.BLOB_ERROR


class ShuttingDown(RuntimedError):
    """The daemon is stopping and takes no new work."""

    code = ErrorCode.SHUTTING_DOWN


class InternalError(RuntimedError):
    """A bug in the daemon (its log has the traceback); the session stays open."""

    code = ErrorCode.INTERNAL_ERROR


class DocumentError(RuntimedError):
    """The Automerge binding refused an operation or panicked (the message says on what).

    Raised by :func:`runtimed.documents.boundary.automerge_errors`, the one place the
    binding's exceptions are converted.
    """

    code = ErrorCode.DOCUMENT_ERROR


class DaemonAlreadyRunning(RuntimedError):
    """Another daemon already serves this socket."""


class DaemonNotRunning(RuntimedError):
    """No daemon answers on the socket."""


class ConnectionClosed(RuntimedError):
    """The daemon closed the connection (or it broke) while a request was outstanding."""

    code = ErrorCode.PROTOCOL_ERROR


class ConnectionLost(ConnectionClosed):
    """The connection to the daemon broke (it stopped or crashed): the request in flight,
    or one made while the client is reconnecting, did not reach the daemon or got no answer.

    A client that reconnects (the default) keeps its notebooks and their edits; retry once
    :attr:`AsyncClient.state <runtimed.client.AsyncClient.state>` is ``connected`` again."""


class RemoteError(RuntimedError):
    """An error reply whose code this client does not know (a newer daemon);
    ``remote_code`` holds the code as sent."""


# ---------------------------------------------------------------- kernel layer


class KernelError(RuntimedError):
    """Root of the kernel layer's errors (part of the runtimed error tree)."""

    code = ErrorCode.KERNEL_NOT_RUNNING


class KernelNotFound(KernelError):
    """No installed kernelspec has the requested name; the message lists the available ones.

    Attributes:
        name: the kernelspec asked for.
        available: the installed kernelspecs, sorted.
    """

    code = ErrorCode.KERNEL_NOT_FOUND

    def __init__(self, name: str, available: list[str]) -> None:
        listing = ", ".join(sorted(available)) or "none"
        super().__init__(f"no kernelspec named {name!r}; available kernelspecs: {listing}")
        self.name = name
        self.available = sorted(available)

    def wire_details(self) -> ErrorDetails:
        return ErrorDetails(name=self.name, available=list(self.available))

    @classmethod
    def _rebuild(cls, message: str, details: ErrorDetails) -> Self:
        return cls(details.name or "", list(details.available or []))


class KernelStartFailed(KernelError):
    """The kernel process could not be launched, exited, or never became ready.

    Attributes:
        reason: what went wrong, without the output tail.
        stderr_tail: the last lines the kernel wrote to stderr/stdout (also appended to the
            message).
    """

    code = ErrorCode.KERNEL_START_FAILED

    def __init__(self, reason: str, *, stderr_tail: str = "") -> None:
        message = reason
        if stderr_tail:
            message += "\n--- kernel stderr (tail) ---\n" + stderr_tail
        super().__init__(message)
        self.reason = reason
        self.stderr_tail = stderr_tail

    def wire_details(self) -> ErrorDetails:
        return ErrorDetails(reason=self.reason, stderr_tail=self.stderr_tail)

    @classmethod
    def _rebuild(cls, message: str, details: ErrorDetails) -> Self:
        reason = message if details.reason is None else details.reason
        return cls(reason, stderr_tail=details.stderr_tail or "")


class KernelDied(KernelError):
    """The kernel process exited unexpectedly (executions report this as status "died")."""

    code = ErrorCode.KERNEL_DIED


class KernelNotRunning(KernelError):
    """The operation needs a running kernel, but it is dead, shut down, or still starting."""

    code = ErrorCode.KERNEL_NOT_RUNNING


class ExecutionTimeout(KernelError):
    """An execution exceeded its timeout (executions report this as status "timeout")."""

    code = ErrorCode.EXECUTION_TIMEOUT


class KernelRequestTimeout(KernelError):
    """The kernel did not answer a request (completion, inspection, history) in time."""

    code = ErrorCode.KERNEL_REQUEST_TIMEOUT


class CommNotFound(KernelError):
    """A comm message names a comm the notebook's kernel does not have open."""

    code = ErrorCode.COMM_NOT_FOUND


class RuntimeNotFound(KernelNotFound):
    """The notebook selects a runtime the daemon does not have; the message lists them.

    Attributes:
        name: the runtime asked for.
        available: the runtimes the daemon has, in its order.
    """

    code = ErrorCode.RUNTIME_NOT_FOUND

    def __init__(self, name: str, available: list[str]) -> None:
        listing = ", ".join(available) or "none"
        KernelError.__init__(
            self,
            f"no runtime or kernelspec named {name!r}; available: {listing} "
            "(see `runt runtimes`; set metadata.kernelspec.name to one of them)",
        )
        self.name = name
        self.available = list(available)


class KernelLimitReached(KernelError):
    """Starting another kernel would exceed the configured limit on concurrent kernels."""

    code = ErrorCode.KERNEL_LIMIT


class EnvBuildFailed(KernelError):
    """An environment for a notebook's declared dependencies could not be built.

    Attributes:
        reason: what went wrong, without uv's output.
        package: the dependency at fault when it could be told (else None).
        output_tail: the tail of uv's output (also appended to the message).
    """

    code = ErrorCode.ENV_BUILD_FAILED

    def __init__(self, message: str, *, package: str | None = None, output_tail: str = "") -> None:
        full = message
        if output_tail:
            full += "\n--- uv output (tail) ---\n" + output_tail
        super().__init__(full)
        self.reason = message
        self.package = package
        self.output_tail = output_tail

    def wire_details(self) -> ErrorDetails:
        return ErrorDetails(reason=self.reason, package=self.package, output_tail=self.output_tail)

    @classmethod
    def _rebuild(cls, message: str, details: ErrorDetails) -> Self:
        reason = message if details.reason is None else details.reason
        return cls(reason, package=details.package, output_tail=details.output_tail or "")


# ---------------------------------------------------------------- the wire table

WIRE_ERRORS: Final[tuple[type[RuntimedError], ...]] = (
    ProtocolError,
    UnknownMessage,
    VersionMismatch,
    InvalidRequest,
    NotebookNotFound,
    NotebookInvalid,
    NotebookIOError,
    CellNotFound,
    CellNotCode,
    CellEmpty,
    HeadsTimeout,
    ExecutionNotFound,
    ShuttingDown,
    InternalError,
    DocumentError,
    BlobUnavailable,
    InvalidBlobHash,
    BlobNotFound,
    BlobTooLarge,
    BlobCorrupt,
    BlobWriteFailed,
    BlobReadFailed,
    InvalidManifest,
    KernelNotFound,
    RuntimeNotFound,
    KernelStartFailed,
    KernelDied,
    KernelNotRunning,
    ExecutionTimeout,
    KernelRequestTimeout,
    CommNotFound,
    KernelLimitReached,
    EnvBuildFailed,
)
"""The class a client raises for each :class:`ErrorCode`: exactly one per code."""

_BY_CODE: Final[Mapping[ErrorCode, type[RuntimedError]]] = MappingProxyType(
    {cls.code: cls for cls in WIRE_ERRORS}
)


def error_from_reply(
    code: ErrorCode | str, message: str, details: ErrorDetails | None = None
) -> RuntimedError:
    """The exception an ``ErrorReply`` describes: the class of its code (:class:`RemoteError`
    for a code this client does not know), with ``str(err) == message`` and the structured
    attributes ``details`` carries (defaults for any that are absent)."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except (ValueError, KeyError):
        cls = RemoteError
    err = cls.from_wire(message, details)
    err.remote_code = str(code)
    return err
