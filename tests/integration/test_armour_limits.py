"""Resource exhaustion is per connection, never fatal: fd exhaustion at accept(), the
connection cap, the control-frame limit, the total receive budget and over-deep nesting each
cost the offending connection at most, and a normal client keeps working."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from protocol.errors import ErrorCode
from protocol.framing import FrameKind, encode_frame
from protocol.messages import ErrorReply, Ping, Pong
from runtimed.client import AsyncClient
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.errors import ConnectionClosed
from runtimed.paths import RuntimedPaths

from .conftest import spawn_test_daemon
from .test_daemon_bad_input import RawPeer

pytestmark = pytest.mark.anyio

TIMEOUT = 10
MAX_CONNECTIONS = 4
RECEIVE_BUDGET = 1 << 20


@pytest.fixture
def daemon_config() -> DaemonConfig:
    return DaemonConfig(
        heads_timeout=5.0,
        http_port=None,
        max_connections=MAX_CONNECTIONS,
        max_frame_size=4 << 20,
        max_receive_buffer_total=RECEIVE_BUDGET,
        runtimes=RuntimesConfig(pool_size=0),
    )


@pytest.fixture
async def peers(daemon: Daemon) -> AsyncIterator[list[RawPeer]]:
    """Raw connections the test opens; all closed afterwards."""
    opened: list[RawPeer] = []
    try:
        yield opened
    finally:
        for peer in opened:
            await peer.stream.aclose()


async def connect(daemon: Daemon, peers: list[RawPeer]) -> RawPeer:
    peer = RawPeer(await anyio.connect_unix(daemon.paths.socket))
    peers.append(peer)
    return peer


async def ping_within_deadline(socket_path: Path) -> None:
    """Readiness: a client connects and pings within the deadline (retrying while refused)."""
    with anyio.fail_after(TIMEOUT):
        while True:
            try:
                async with await AsyncClient.connect(socket_path) as client:
                    await client.ping()
                    return
            except (OSError, ConnectionClosed):
                await anyio.sleep(0.05)


async def test_connections_beyond_the_cap_are_refused_with_a_clear_message(
    daemon: Daemon, peers: list[RawPeer]
) -> None:
    for _ in range(MAX_CONNECTIONS):
        assert (await (await connect(daemon, peers)).hello()).accepted
    extra = await connect(daemon, peers)
    reply = await extra.hello()
    assert not reply.accepted
    assert "too many connections" in reply.message
    assert f"limit {MAX_CONNECTIONS}" in reply.message
    await extra.read_until_closed()
    with pytest.raises(ConnectionClosed, match="refused the connection: too many connections"):
        await AsyncClient.connect(daemon.paths.socket)
    # One leaves: a new client gets in.
    await peers.pop(0).stream.aclose()
    await ping_within_deadline(daemon.paths.socket)


async def test_a_control_frame_over_64_kib_closes_only_that_connection(
    daemon: Daemon, peers: list[RawPeer]
) -> None:
    bad = await connect(daemon, peers)
    assert (await bad.hello()).accepted
    # Only the header and a little of the payload: the limit is checked before buffering.
    frame = encode_frame(FrameKind.CONTROL, b"\x00" * (65 * 1024))
    await bad.stream.send(frame[:100])
    reply = await bad.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.PROTOCOL_ERROR
    assert "maximum control frame size of 65536" in reply.message
    await bad.read_until_closed()
    # A sync frame of the same size is within its own (larger) limit: answered, not closed.
    good = await connect(daemon, peers)
    assert (await good.hello()).accepted
    await good.send_frame(FrameKind.SYNC, b"\x00" * (65 * 1024))
    answer = await good.next_control()
    assert isinstance(answer, ErrorReply)
    assert "invalid sync frame" in answer.message
    assert isinstance(await good.request(Ping(id=7)), Pong)


async def test_a_message_nested_too_deep_is_a_protocol_error_not_an_internal_one(
    daemon: Daemon, peers: list[RawPeer]
) -> None:
    peer = await connect(daemon, peers)
    assert (await peer.hello()).accepted
    deep = b"\x91" * 5000 + b"\x01"  # [[[[...1...]]]], 5,000 levels
    payload = msgspec.msgpack.encode({"type": "ping", "id": 3})[:-1]  # drop the id's value
    payload = b"\x83" + payload[1:] + b"\x03\xa1x" + deep  # {type, id: 3, x: deep}
    await peer.send_frame(FrameKind.CONTROL, payload)
    reply = await peer.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.UNKNOWN_MESSAGE
    assert "nested too deeply" in reply.message
    await peer.send_frame(FrameKind.SYNC, b"\x81\xa1x" + deep)
    reply = await peer.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.code != ErrorCode.INTERNAL_ERROR
    assert isinstance(await peer.request(Ping(id=4)), Pong)  # the connection is still served


async def test_partial_frames_of_all_connections_share_one_budget(
    daemon: Daemon, peers: list[RawPeer]
) -> None:
    first, second = await connect(daemon, peers), await connect(daemon, peers)
    for peer in (first, second):
        assert (await peer.hello()).accepted
    big = encode_frame(FrameKind.SYNC, b"\x00" * (3 << 20))
    await first.stream.send(big[: RECEIVE_BUDGET * 3 // 4])

    async def send_half() -> None:
        # The daemon closes this connection as soon as it is over budget: the rest of the
        # send may then meet a closed socket.
        with contextlib.suppress(anyio.BrokenResourceError):
            await second.stream.send(big[: RECEIVE_BUDGET // 2])

    async with anyio.create_task_group() as tg:
        tg.start_soon(send_half)
        reply = await second.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.PROTOCOL_ERROR
    assert "partly received frames" in reply.message
    await second.read_until_closed()
    await ping_within_deadline(daemon.paths.socket)


# ---------------------------------------------------------------- fd exhaustion


@pytest.fixture
def low_fd_daemon(short_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], RuntimedPaths]]:
    """A daemon process whose descriptor limit is 64 (set on the running process)."""
    proc, paths = spawn_test_daemon(
        short_tmp,
        "f",
        env={"RUNTIMED_HTTP_PORT": "-1", "RUNTIMED_POOL_SIZE": "0"},
        stderr=subprocess.PIPE,
    )
    try:
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (64, 64))
        yield proc, paths
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


async def test_running_out_of_descriptors_backs_off_and_keeps_serving(
    low_fd_daemon: tuple[subprocess.Popen[bytes], RuntimedPaths],
) -> None:
    proc, paths = low_fd_daemon
    async with await AsyncClient.connect(paths.socket) as witness:
        held: list[socket.socket] = []
        try:
            for _ in range(150):  # far past the daemon's 64 descriptors
                sock = socket.socket(socket.AF_UNIX)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):  # backlog full: it is not accepting
                    sock.connect(str(paths.socket))
                held.append(sock)
            with anyio.fail_after(TIMEOUT):  # it really runs out: every descriptor in use
                while len(os.listdir(f"/proc/{proc.pid}/fd")) < 64:
                    await anyio.sleep(0.01)
            await witness.ping()  # the connection it had keeps being served
            assert proc.poll() is None
        finally:
            for sock in held:
                sock.close()
        await ping_within_deadline(paths.socket)  # and new ones get in once fds are back
        await witness.ping()
    assert proc.poll() is None
