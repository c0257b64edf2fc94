"""runtimed.kernels.zmqread: every message is read, in order, even when a zmq wake-up is
missed (zeromq/pyzmq#2173) — over real zmq sockets."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import cast

import anyio
import pytest
import zmq
import zmq.asyncio

from runtimed.kernels import zmqread
from runtimed.kernels.zmqread import read_frames

pytestmark = pytest.mark.anyio


@pytest.fixture
def pair() -> Iterator[tuple[zmq.asyncio.Socket, zmq.Socket[bytes]]]:
    """An asyncio PULL socket (the reader's) and a plain PUSH socket feeding it."""
    ctx = zmq.asyncio.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://zmqread")
    push: zmq.Socket[bytes] = zmq.Context.shadow(ctx.underlying).socket(zmq.PUSH)
    push.connect("inproc://zmqread")
    try:
        yield pull, push
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


async def _collect(
    pull: zmq.asyncio.Socket, got: list[list[bytes]], want: int, seconds: float
) -> None:
    done = anyio.Event()

    def on_frames(frames: list[bytes]) -> None:
        got.append(frames)
        if len(got) >= want:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(read_frames, pull, on_frames, what="test"))
        with anyio.fail_after(seconds):
            await done.wait()
        tg.cancel_scope.cancel()


async def test_messages_arrive_in_order_singly_and_in_bursts(
    pair: tuple[zmq.asyncio.Socket, zmq.Socket[bytes]],
) -> None:
    pull, push = pair
    for i in range(50):  # queued before the reader starts: drained without waiting
        push.send_multipart([b"early", str(i).encode()])
    got: list[list[bytes]] = []

    async def feed() -> None:
        for i in range(50):
            await anyio.sleep(0.001 if i % 10 else 0.05)  # trickles and pauses
            push.send_multipart([b"late", str(i).encode()])

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        await _collect(pull, got, 100, 30)
    assert got == [[b"early", str(i).encode()] for i in range(50)] + [
        [b"late", str(i).encode()] for i in range(50)
    ]


async def test_a_message_whose_wake_up_was_consumed_is_still_read(
    pair: tuple[zmq.asyncio.Socket, zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    pull, push = pair
    other_view: zmq.Socket[bytes] = zmq.Socket.shadow(pull.underlying)
    got: list[list[bytes]] = []

    async def consume_the_edge() -> None:
        await anyio.sleep(0.2)  # the reader waits on pyzmq's future by now
        push.send_multipart([b"lost?"])
        # Reading EVENTS processes the socket's mailbox and drains its file descriptor: the
        # event loop never sees it readable, so pyzmq's future alone would wait forever.
        assert cast(int, other_view.get(zmq.EVENTS)) & zmq.POLLIN

    with caplog.at_level(logging.INFO, logger=zmqread.__name__):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume_the_edge)
            await _collect(pull, got, 1, 10 * zmqread.RECHECK)
    assert got == [[b"lost?"]]
    assert "a zmq wake-up was missed" in caplog.text
