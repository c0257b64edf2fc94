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
    "EnvBuildFailed",
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
    "KernelStartFailed",
    "NotebookIOError",
    "NotebookInvalid",
    "NotebookNotFound",
    "RemoteError",
    "RuntimeNotFound",
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


# ---------------------------------------------------------------- kernel layer


class KernelError(RuntimedError):
    """Root of the kernel layer's errors (part of the runtimed error tree)."""

    code = ErrorCode.KERNEL_NOT_RUNNING


class KernelNotFound(KernelError):
    """No installed kernelspec has the requested name; the message lists the available ones."""

    code = ErrorCode.KERNEL_NOT_FOUND

    def __init__(self, name: str, available: list[str]) -> None:
        listing = ", ".join(sorted(available)) or "none"
        super().__init__(f"no kernelspec named {name!r}; available kernelspecs: {listing}")
        self.name = name
        self.available = sorted(available)


class KernelStartFailed(KernelError):
    """The kernel process could not be launched, exited, or never became ready.

    ``stderr_tail`` holds the last lines the kernel wrote to stderr/stdout (also appended to
    the message).
    """

    code = ErrorCode.KERNEL_START_FAILED

    def __init__(self, reason: str, *, stderr_tail: str = "") -> None:
        message = reason
        if stderr_tail:
            message += "\n--- kernel stderr (tail) ---\n" + stderr_tail
        super().__init__(message)
        self.reason = reason
        self.stderr_tail = stderr_tail


class KernelDied(KernelError):
    """The kernel process exited unexpectedly (executions report this as status "died")."""

    code = ErrorCode.KERNEL_DIED


class KernelNotRunning(KernelError):
    """The operation needs a running kernel, but it is dead, shut down, or still starting."""

    code = ErrorCode.KERNEL_NOT_RUNNING


class ExecutionTimeout(KernelError):
    """An execution exceeded its timeout (executions report this as status "timeout")."""

    code = ErrorCode.EXECUTION_TIMEOUT


class RuntimeNotFound(KernelNotFound):
    """The notebook selects a runtime the daemon does not have; the message lists them."""

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

    ``package`` names the dependency at fault when it could be told (else None); the message
    ends with the tail of uv's output.
    """

    code = ErrorCode.ENV_BUILD_FAILED

    def __init__(self, message: str, *, package: str | None = None, output_tail: str = "") -> None:
        full = message
        if output_tail:
            full += "\n--- uv output (tail) ---\n" + output_tail
        super().__init__(full)
        self.package = package
        self.output_tail = output_tail


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
