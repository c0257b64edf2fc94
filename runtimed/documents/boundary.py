"""The one boundary between our code and the Automerge binding.

Everything the binding raises becomes a :class:`DocumentError` here, chained ``from`` the
original. That includes ``pyo3_runtime.PanicException``: the Rust core panics on some inputs
(a Counter, a crafted sync message) and pyo3 raises the panic as a ``BaseException`` subclass,
which passes every ``except Exception``. Cancellation, ``KeyboardInterrupt`` and ``SystemExit``
pass through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# DocumentError lives in runtimed.errors (the client rebuilds it from an ErrorReply).
from runtimed.errors import DocumentError, RuntimedError

__all__ = ["DocumentError", "automerge_errors", "is_panic"]


def is_panic(exc: BaseException) -> bool:
    """True for pyo3's ``PanicException`` (not importable by name: it lives in pyo3_runtime)."""
    cls = type(exc)
    return cls.__name__ == "PanicException" and cls.__module__ == "pyo3_runtime"


@contextmanager
def automerge_errors(what: str) -> Iterator[None]:
    """Convert what the binding raises inside the block into :class:`DocumentError`.

    Args:
        what: what was being done, for the message ("applying a sync message from c3").
    """
    try:
        yield
    except RuntimedError:
        raise
    except Exception as exc:
        raise DocumentError(f"{what}: {exc}") from exc
    except BaseException as exc:
        if not is_panic(exc):
            raise
        raise DocumentError(f"{what}: the Automerge library panicked ({exc})") from exc
