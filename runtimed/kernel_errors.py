"""Errors raised by the kernel layer (:mod:`runtimed.kernel`).

Every error carries a machine-readable ``code`` (a class attribute) matching the wire error
codes; jupyter_client / pyzmq exceptions are converted to these at one boundary and chained
with ``from exc``.
"""

from __future__ import annotations

from protocol.errors import ErrorCode
from runtimed.errors import RuntimedError

__all__ = [
    "EnvBuildFailed",
    "ExecutionTimeout",
    "KernelDied",
    "KernelError",
    "KernelLimitReached",
    "KernelNotFound",
    "KernelNotRunning",
    "KernelStartFailed",
    "RuntimeNotFound",
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
