"""anyio's raw UNIX socket streams under uvloop: a read cancelled in the same loop iteration
as its socket becomes readable must not raise InvalidStateError in a loop callback (the
race `runtimed.aio` fixes; without the fix this test fails on every iteration)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import anyio
import pytest
from anyio._backends._asyncio import UNIXSocketStream

import runtimed.aio  # noqa: F401  (the fix under test)

pytestmark = pytest.mark.anyio

ROUNDS = 50


async def test_a_read_cancelled_as_data_arrives_leaves_no_loop_error() -> None:
    loop = asyncio.get_running_loop()
    assert type(loop).__module__.startswith("uvloop"), "the race needs uvloop (as the daemon)"
    errors: list[object] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    try:
        for _ in range(ROUNDS):
            ours, theirs = socket.socketpair(socket.AF_UNIX)
            ours.setblocking(False)
            stream = UNIXSocketStream(ours)
            scope = anyio.CancelScope()

            async def read(scope: anyio.CancelScope = scope, stream: Any = stream) -> None:
                with scope:
                    await stream.receive()

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await anyio.sleep(0.001)  # the read is waiting for the socket
                scope.cancel()  # cancelled in this iteration ...
                theirs.send(b"x")  # ... as the socket becomes readable
            await anyio.sleep(0.001)  # let the loop run the reader callback, if any
            await stream.aclose()
            theirs.close()
    finally:
        loop.set_exception_handler(previous)
    assert errors == []
