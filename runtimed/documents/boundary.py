"""The one boundary between our code and the Automerge binding.

Everything the binding raises becomes a :class:`DocumentError` here, chained ``from`` the
original. That includes ``pyo3_runtime.PanicException``: the Rust core panics on some inputs
(a Counter, a crafted sync message) and pyo3 raises the panic as a ``BaseException`` subclass,
which passes every ``except Exception``. Cancellation, ``KeyboardInterrupt`` and ``SystemExit``
pass through untouched.
"""

from __future__ import annotations

from types import TracebackType

# DocumentError lives in runtimed.errors (the client rebuilds it from an ErrorReply).
from runtimed.errors import DocumentError, RuntimedError

__all__ = ["DocumentError", "automerge_errors", "is_panic", "raise_converted"]


def is_panic(exc: BaseException) -> bool:
    """True for pyo3's ``PanicException`` (not importable by name: it lives in pyo3_runtime)."""
    cls = type(exc)
    return cls.__name__ == "PanicException" and cls.__module__ == "pyo3_runtime"


class automerge_errors:  # used like a function: ``with automerge_errors(...)``
    """Convert what the binding raises inside the block into :class:`DocumentError`.

    A class, not a ``@contextmanager`` generator: every call into the binding goes through
    it (hundreds per executed cell, in the daemon and the client), and a generator-based
    context manager costs four times as much to enter and leave.

    Args:
        what: what was being done, for the message ("applying a sync message from c3").
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            raise_converted(self.what, exc)


def raise_converted(what: str, exc: BaseException) -> None:
    """Raise ``exc`` as the boundary does: our own errors, cancellation, ``KeyboardInterrupt``
    and ``SystemExit`` as they are; anything else from the binding as :class:`DocumentError`
    (chained from it). Returns only for an exception that should pass through untouched, so
    a caller in an ``except`` block re-raises it with a bare ``raise``."""
    if isinstance(exc, RuntimedError):
        return
    if isinstance(exc, Exception):
        raise DocumentError(f"{what}: {exc}") from exc
    if is_panic(exc):
        raise DocumentError(f"{what}: the Automerge library panicked ({exc})") from exc
