"""Errors raised by the kernel layer (:mod:`runtimed.kernel`).

Every error carries a machine-readable ``code`` (a class attribute) matching the wire error
codes; jupyter_client / pyzmq exceptions are converted to these at one boundary and chained
with ``from exc``.
"""

from __future__ import annotations

from protocol.errors import ErrorCode
from runtimed.errors import RuntimedError

__all__ = [
    "ExecutionTimeout",
    "KernelDied",
    "KernelError",
    "KernelNotFound",
    "KernelNotRunning",
    "KernelStartFailed",
]


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
