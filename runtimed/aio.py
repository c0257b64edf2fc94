"""A fix for a race between anyio's raw-socket streams and uvloop (applied on import).

anyio's asyncio backend serves UNIX socket streams from the raw socket: a read that would
block waits on a future that a reader callback on the loop (``loop.add_reader(sock,
future.set_result, None)``) resolves, and a done-callback on that future removes the reader.
Under uvloop, I/O callbacks of an iteration run before the callbacks scheduled by the one
before, so when a waiting read is cancelled in the same iteration as the socket becomes
readable, the reader still fires and ``set_result`` raises ``InvalidStateError`` on the
cancelled future ("Exception in callback"; anyio's test runner re-raises it in the test
that happened to be running). Reproduced 200 times in 200 with uvloop, never with the stock
loop (``tests/integration/test_socket_race.py``). The fix keeps anyio's logic and only swaps
the callback for one that resolves the future if it is still pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["install_socket_race_fix"]


def _resolve_if_pending(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


def _guarded(
    original: Callable[[Any, asyncio.AbstractEventLoop], asyncio.Future[Any]], *, reader: bool
) -> Callable[[Any, asyncio.AbstractEventLoop], asyncio.Future[Any]]:
    def wait(self: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        future = original(self, loop)
        # Registering again for the same socket replaces the callback anyio registered.
        if reader:
            loop.add_reader(self._raw_socket, _resolve_if_pending, future)
        else:
            loop.add_writer(self._raw_socket, _resolve_if_pending, future)
        return future

    wait.__wrapped__ = original  # type: ignore[attr-defined]
    return wait


def install_socket_race_fix() -> None:
    """Patch anyio's raw-socket mixin once (a no-op if anyio changed shape)."""
    from anyio._backends import _asyncio as backend

    mixin: Any = getattr(backend, "_RawSocketMixin", None)
    if mixin is None or getattr(mixin, "_runtimed_race_fix", False):
        return
    readable = getattr(mixin, "_wait_until_readable", None)
    writable = getattr(mixin, "_wait_until_writable", None)
    if readable is None or writable is None:
        return
    mixin._wait_until_readable = _guarded(readable, reader=True)
    mixin._wait_until_writable = _guarded(writable, reader=False)
    mixin._runtimed_race_fix = True


install_socket_race_fix()
