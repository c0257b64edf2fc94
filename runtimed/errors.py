"""One exception tree for the daemon and its clients.

Each class declares the wire :class:`protocol.ErrorCode` it maps to. The server turns any
:class:`RuntimedError` into an ``ErrorReply`` and keeps the session open; the client turns an
``ErrorReply`` back into the matching class (:func:`error_from_reply`).
"""

from __future__ import annotations

from protocol.errors import ErrorCode

__all__ = [
    "BlobUnavailable",
    "CellEmpty",
    "CellNotCode",
    "CellNotFound",
    "ConnectionClosed",
    "DaemonAlreadyRunning",
    "DaemonNotRunning",
    "ExecutionNotFound",
    "HeadsTimeout",
    "InternalError",
    "InvalidRequest",
    "NotebookIOError",
    "NotebookInvalid",
    "NotebookNotFound",
    "RemoteError",
    "RuntimedError",
    "ShuttingDown",
    "VersionMismatch",
    "error_from_reply",
]


class RuntimedError(Exception):
    """Root of every error runtimed raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    remote_code: str | None = None
    """For errors rebuilt from an ErrorReply: the code exactly as the daemon sent it."""


class InvalidRequest(RuntimedError):
    code = ErrorCode.INVALID_REQUEST


class NotebookNotFound(RuntimedError):
    code = ErrorCode.NOTEBOOK_NOT_FOUND


class NotebookInvalid(RuntimedError):
    """The file is not a valid notebook; it was not modified."""

    code = ErrorCode.NOTEBOOK_INVALID


class NotebookIOError(RuntimedError):
    """Reading or writing the notebook file failed (permissions, full disk, ...)."""

    code = ErrorCode.NOTEBOOK_IO


class CellNotFound(RuntimedError):
    code = ErrorCode.CELL_NOT_FOUND


class CellNotCode(RuntimedError):
    code = ErrorCode.CELL_NOT_CODE


class CellEmpty(RuntimedError):
    code = ErrorCode.CELL_EMPTY


class HeadsTimeout(RuntimedError):
    """The daemon did not receive the document changes the request referred to in time."""

    code = ErrorCode.HEADS_TIMEOUT


class ExecutionNotFound(RuntimedError):
    code = ErrorCode.EXECUTION_NOT_FOUND


class BlobUnavailable(RuntimedError):
    """An output's blob is missing, corrupt or unreadable (see the message for which)."""

    code = ErrorCode.BLOB_ERROR


class ShuttingDown(RuntimedError):
    code = ErrorCode.SHUTTING_DOWN


class VersionMismatch(RuntimedError):
    code = ErrorCode.VERSION_MISMATCH


class InternalError(RuntimedError):
    code = ErrorCode.INTERNAL_ERROR


class DaemonAlreadyRunning(RuntimedError):
    """Another daemon already serves this socket."""


class DaemonNotRunning(RuntimedError):
    """No daemon answers on the socket."""


class ConnectionClosed(RuntimedError):
    """The daemon closed the connection (or it broke) while a request was outstanding."""

    code = ErrorCode.PROTOCOL_ERROR


class RemoteError(RuntimedError):
    """An error reply whose code this client does not know (a newer daemon)."""


_BY_CODE: dict[ErrorCode, type[RuntimedError]] = {}


def _register() -> None:
    stack: list[type[RuntimedError]] = [RuntimedError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls not in (RuntimedError, ConnectionClosed, RemoteError):
            _BY_CODE[cls.code] = cls  # subclasses come later, so the most specific wins


def error_from_reply(code: ErrorCode | str, message: str) -> RuntimedError:
    """The exception matching an ``ErrorReply``'s code."""
    import runtimed.kernel_errors  # noqa: F401  (registers the kernel layer's classes)

    _register()
    try:
        cls = _BY_CODE.get(ErrorCode(code), RemoteError)
    except ValueError:
        cls = RemoteError
    # Build without the subclass's __init__ (some take structured arguments): the message is
    # what crossed the wire.
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    if cls is RemoteError:
        err.code = ErrorCode.INTERNAL_ERROR
    err.remote_code = str(code)
    return err
