"""A room's supervised scope: one open notebook and the task group its background work runs in.

:class:`OpenRoom` is entered by the room's supervisor (:mod:`runtimed.daemon.rooms`); what
escapes it and :func:`is_fault` accepts closes that notebook, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from runtimed.daemon.executor import NotebookExecutor
from runtimed.daemon.persister import RoomPersister
from runtimed.daemon.room import NotebookRoom
from runtimed.documents.boundary import is_panic
from runtimed.errors import NotebookNotFound

__all__ = ["OpenRoom", "first_leaf", "is_fault"]


class OpenRoom:
    """One open notebook and the task group its background work runs in.

    An async context manager: entering opens the task group (through an ``AsyncExitStack``,
    as pycrdt-websocket's ``YRoom`` does) and starts the persister; leaving cancels what still
    runs there and re-raises what failed in it.
    """

    def __init__(self, room: NotebookRoom, persister: RoomPersister) -> None:
        self.room = room
        self.persister = persister
        self.executor: NotebookExecutor | None = None
        self.closing = False
        self._closed = anyio.Event()
        self._cull_scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None
        self._exit_stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"<OpenRoom {self.room.path or self.room.notebook_id}>"

    async def __aenter__(self) -> OpenRoom:
        async with AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self.persister.run, name=f"persist {self.room.notebook_id}")
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        assert self._exit_stack is not None
        self.closing = True
        self._tg.cancel_scope.cancel()
        self._tg = None
        return await self._exit_stack.__aexit__(exc_type, exc, tb)

    def start_soon(self, func: Callable[[], Coroutine[Any, Any, object]], *, name: str) -> None:
        """Run ``func`` in this room's scope.

        Raises:
            NotebookNotFound: the room is closing.
        """
        if self._tg is None or self.closing:
            raise NotebookNotFound(f"notebook {self.room.notebook_id!r} is being closed")
        self._tg.start_soon(func, name=name)

    def cancel_cull(self) -> None:
        if self._cull_scope is not None:
            self._cull_scope.cancel()
            self._cull_scope = None

    def schedule_cull(self, cull: Callable[[anyio.CancelScope], Coroutine[Any, Any, None]]) -> None:
        """Run ``cull`` (in this room's scope) with a fresh scope that :meth:`cancel_cull`
        cancels; a cull already waiting is cancelled first."""
        self.cancel_cull()
        scope = self._cull_scope = anyio.CancelScope()
        self.start_soon(lambda: cull(scope), name=f"cull {self.room.notebook_id}")

    def mark_closed(self) -> None:
        """The room is closed: its supervisor leaves its scope."""
        self.closing = True
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


def is_fault(exc: BaseException) -> bool:
    """Whether what escaped a room's scope is a fault to contain there (errors and panics),
    not cancellation, KeyboardInterrupt or SystemExit, which must go on up."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_fault(e) for e in exc.exceptions)
    return isinstance(exc, Exception) or is_panic(exc)


def first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
