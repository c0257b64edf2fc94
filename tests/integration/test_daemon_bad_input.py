"""Misbehaving peers on the socket: each is refused or answered with an error, and a normal
client connected at the same time keeps working (the daemon never goes down for one)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import SocketStream
from anyio.from_thread import start_blocking_portal
from automerge.core import ROOT, Message, ScalarType, SyncState

from protocol.errors import ErrorCode
from protocol.framing import Frame, FrameDecoder, FrameKind, encode_frame
from protocol.handshake import (
    PROTOCOL_VERSION,
    DaemonHello,
    decode_daemon_hello,
    encode_client_hello,
)
from protocol.messages import (
    CellQueued,
    CloseNotebook,
    DaemonEvent,
    ErrorReply,
    ExecuteCell,
    NotebookOpened,
    OpenNotebook,
    Ping,
    Pong,
    SaveNotebook,
    SyncEnvelope,
    decode_daemon_message,
    decode_sync,
    encode,
)
from runtimed.client import AsyncClient, AsyncNotebook
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.documents.notebook import NotebookDoc
from runtimed.documents.runtime import RuntimeDoc
from runtimed.documents.syncwire import may_carry_changes
from runtimed.errors import CellNotFound, InvalidRequest, NotebookNotFound
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook

pytestmark = pytest.mark.anyio

MAX_FRAME = 4096
TIMEOUT = 10


@pytest.fixture
def daemon_config() -> DaemonConfig:
    # A small frame limit, so "over the maximum" is cheap to send.
    # No kernel pool (as tests/integration/conftest.py): only a test that runs code starts one.
    return DaemonConfig(
        heads_timeout=5.0,
        max_frame_size=MAX_FRAME,
        http_port=None,
        runtimes=RuntimesConfig(pool_size=0),
    )


@pytest.fixture
def daemon(paths: RuntimedPaths, daemon_config: DaemonConfig) -> Iterator[Daemon]:
    """The daemon on its own event-loop thread (uvloop, as in production): if bad input
    brings it down, this test fails with the daemon's own traceback at teardown, and the
    next test still gets a fresh daemon."""
    instance = Daemon(paths, config=daemon_config)
    with start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        running, _ = portal.start_task(instance.run)
        try:
            yield instance
        finally:
            portal.call(instance.request_stop)
            running.result(timeout=30)  # re-raises whatever stopped the daemon


# ---------------------------------------------------------------- a raw peer


class RawPeer:
    """A hand-driven connection: exactly the bytes a test wants, nothing else."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.skipped_sync: list[SyncEnvelope] = []
        self.buffer = b""

    async def hello(self, version: int = PROTOCOL_VERSION) -> DaemonHello:
        await self.stream.send(encode_client_hello(version))
        return await self.read_hello()

    async def read_hello(self) -> DaemonHello:
        with anyio.fail_after(TIMEOUT):
            while True:
                parsed = decode_daemon_hello(self.buffer)
                if parsed is not None:
                    reply, used = parsed
                    self.frames += self.decoder.feed(self.buffer[used:])
                    return reply
                self.buffer += await self.stream.receive()

    async def send_frame(self, kind: FrameKind, payload: bytes) -> None:
        await self.stream.send(encode_frame(kind, payload))

    async def send_control(self, message: msgspec.Struct | dict[str, Any]) -> None:
        payload = msgspec.msgpack.encode(message) if isinstance(message, dict) else encode(message)  # type: ignore[arg-type]
        await self.send_frame(FrameKind.CONTROL, payload)

    async def next_frame(self) -> Frame:
        with anyio.fail_after(TIMEOUT):
            while not self.frames:
                self.frames += self.decoder.feed(await self.stream.receive())
        return self.frames.pop(0)

    async def next_control(self) -> Any:
        """The next control message, skipping events (sync frames are kept for next_sync)."""
        while True:
            frame = await self.next_frame()
            if frame.kind is FrameKind.SYNC:
                self.skipped_sync.append(decode_sync(frame.payload))
                continue
            message = decode_daemon_message(frame.payload)
            if not isinstance(message, DaemonEvent):
                return message

    async def next_sync(self) -> SyncEnvelope:
        if self.skipped_sync:
            return self.skipped_sync.pop(0)
        while True:
            frame = await self.next_frame()
            if frame.kind is FrameKind.SYNC:
                return decode_sync(frame.payload)

    async def request(self, message: msgspec.Struct | dict[str, Any]) -> Any:
        await self.send_control(message)
        return await self.next_control()

    async def read_until_closed(self) -> bytes:
        """Everything the daemon still sends, until it closes the connection."""
        data = b""
        with anyio.fail_after(TIMEOUT):
            while True:
                try:
                    data += await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return data


@pytest.fixture
async def raw(daemon: Daemon) -> AsyncIterator[RawPeer]:
    async with await anyio.connect_unix(daemon.paths.socket) as stream:
        yield RawPeer(stream)


# ---------------------------------------------------------------- the witness


@dataclass
class Witness:
    client: AsyncClient
    nb: AsyncNotebook
    path: Path


@pytest.fixture
async def witness(client: AsyncClient, short_tmp: Path) -> Witness:
    """A normal client with a notebook open before the bad input arrives."""
    path = write_notebook(
        short_tmp / "w.ipynb",
        [
            {"cell_type": "code", "source": "1 + 1"},
            {"cell_type": "markdown", "source": "witness"},
        ],
    )
    return Witness(client, await client.open(path), path)


async def still_works(daemon: Daemon, witness: Witness, tag: str) -> None:
    """The witness can ping, edit, and a second client sees its edit (and vice versa)."""
    await witness.client.ping()
    async with await AsyncClient.connect(daemon.paths.socket) as other:
        nb = await other.open(witness.path)
        await witness.nb.splice_source("cell1", 0, 0, f"{tag} ")
        await other.wait_until(lambda: f"{tag} witness" in nb.doc.source("cell1"), timeout=TIMEOUT)
        await nb.add_cell("code", f"# reply to {tag}", cell_id=f"r-{tag}")
        await witness.client.wait_until(
            lambda: f"r-{tag}" in witness.nb.cell_ids(), timeout=TIMEOUT
        )
        await other.ping()


# ---------------------------------------------------------------- handshake


async def test_garbage_bytes_instead_of_a_handshake_are_refused(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    await raw.stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff" * 3)
    reply = await raw.read_hello()
    assert not reply.accepted
    assert "bad magic" in reply.message
    await raw.read_until_closed()
    await still_works(daemon, witness, "garbage")


async def test_wrong_magic_is_refused(daemon: Daemon, raw: RawPeer, witness: Witness) -> None:
    await raw.stream.send(struct.pack(">8sH", b"RUNTIMEX", PROTOCOL_VERSION))
    reply = await raw.read_hello()
    assert not reply.accepted
    assert "magic" in reply.message
    assert "runtimed" in reply.message
    await raw.read_until_closed()
    await still_works(daemon, witness, "magic")


async def test_wrong_protocol_version_is_refused_with_a_clear_message(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    reply = await raw.hello(version=PROTOCOL_VERSION + 41)
    assert not reply.accepted
    assert reply.version == PROTOCOL_VERSION
    assert f"protocol version {PROTOCOL_VERSION + 41} is not supported" in reply.message
    assert f"speaks version {PROTOCOL_VERSION}" in reply.message
    assert await raw.read_until_closed() == b""  # nothing after the refusal
    await still_works(daemon, witness, "version")


async def test_a_handshake_cut_short_is_dropped(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    await raw.stream.send(encode_client_hello()[:5])
    await raw.stream.send_eof()
    reply = await raw.read_hello()
    assert not reply.accepted
    assert "expected 10 bytes, got 5" in reply.message
    await still_works(daemon, witness, "short-hello")


# ---------------------------------------------------------------- frames


async def test_a_truncated_frame_then_close_is_dropped(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    assert (await raw.hello()).accepted
    await raw.stream.send(struct.pack(">IB", 100, FrameKind.CONTROL) + b"\x81\xa4ty")
    await raw.stream.aclose()
    await still_works(daemon, witness, "truncated")
    # The daemon forgets the dropped connection (nothing announces it: ask until it has).
    with anyio.fail_after(TIMEOUT):
        while (await witness.client.status()).clients != 1:
            await anyio.sleep(0.01)


async def test_a_frame_over_the_maximum_gets_an_error_and_the_connection_closes(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    assert (await raw.hello()).accepted
    await raw.stream.send(struct.pack(">IB", MAX_FRAME + 1, FrameKind.CONTROL) + b"x" * 100)
    rest = await raw.read_until_closed()
    frames = FrameDecoder().feed(rest)
    replies = [decode_daemon_message(f.payload) for f in frames if f.kind is FrameKind.CONTROL]
    assert replies == [
        ErrorReply(
            id=0,
            code=ErrorCode.PROTOCOL_ERROR,
            message=f"frame of {MAX_FRAME + 1} bytes exceeds the maximum frame size of "
            f"{MAX_FRAME} bytes",
        )
    ]
    await still_works(daemon, witness, "oversized")


async def test_a_frame_exactly_at_the_maximum_is_served(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    assert (await raw.hello()).accepted
    # Unknown fields are ignored (new fields get defaults): pad a ping to the limit.
    base = len(msgspec.msgpack.encode({"type": "ping", "id": 5, "pad": ""}))
    pad = "x" * (MAX_FRAME - 1 - base - 2)  # str8 header grows by 2 bytes
    payload = msgspec.msgpack.encode({"type": "ping", "id": 5, "pad": pad})
    assert len(payload) + 1 == MAX_FRAME
    await raw.send_frame(FrameKind.CONTROL, payload)
    assert await raw.next_control() == Pong(id=5)
    await still_works(daemon, witness, "at-limit")


async def test_an_unknown_frame_kind_gets_an_error_and_the_connection_closes(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    assert (await raw.hello()).accepted
    await raw.stream.send(struct.pack(">IB", 3, 7) + b"ab")
    frames = FrameDecoder().feed(await raw.read_until_closed())
    [reply] = [decode_daemon_message(f.payload) for f in frames]
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.PROTOCOL_ERROR
    assert "unknown frame kind 7" in reply.message
    await still_works(daemon, witness, "kind")


# ---------------------------------------------------------------- messages


async def test_an_unknown_message_tag_gets_unknown_message_and_the_connection_stays(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    assert (await raw.hello()).accepted
    reply = await raw.request({"type": "nope", "id": 7})
    assert isinstance(reply, ErrorReply)
    assert reply.id == 7
    assert reply.code == ErrorCode.UNKNOWN_MESSAGE
    assert "nope" in reply.message
    assert await raw.request(Ping(id=8)) == Pong(id=8)
    await still_works(daemon, witness, "tag")


@pytest.mark.parametrize(
    "message",
    [
        {"type": "ping", "id": "seven"},
        {"type": "open_notebook", "id": 9, "path": 42},
        {"type": "execute_cell", "id": 9, "notebook_id": "n"},
        [1, 2, 3],
    ],
    ids=["id-str", "path-int", "missing-field", "not-a-map"],
)
async def test_a_malformed_message_gets_an_error_and_the_connection_stays(
    daemon: Daemon, raw: RawPeer, witness: Witness, message: Any
) -> None:
    assert (await raw.hello()).accepted
    await raw.send_frame(FrameKind.CONTROL, msgspec.msgpack.encode(message))
    reply = await raw.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.UNKNOWN_MESSAGE
    assert reply.id == (9 if isinstance(message, dict) and message["id"] == 9 else 0)
    assert await raw.request(Ping(id=10)) == Pong(id=10)
    await still_works(daemon, witness, "malformed")


async def test_a_control_frame_that_is_not_msgpack_gets_an_error(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    assert (await raw.hello()).accepted
    await raw.send_frame(FrameKind.CONTROL, b"\xc1 definitely not msgpack")
    reply = await raw.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.id == 0
    assert await raw.request(Ping(id=11)) == Pong(id=11)
    await still_works(daemon, witness, "not-msgpack")


@pytest.mark.parametrize(
    "payload",
    [
        b"\x82\xa4type\xa2\xff\xfe\xa2id\x07",  # {"type": <not UTF-8>, "id": 7}
        b"\x83\xa4type\xadopen_notebook\xa2id\x07\xa4path\xa2\xc3\x28",  # path not UTF-8
    ],
    ids=["tag", "path"],
)
async def test_a_message_with_invalid_utf8_gets_an_error_and_the_connection_stays(
    daemon: Daemon, raw: RawPeer, witness: Witness, payload: bytes
) -> None:
    assert (await raw.hello()).accepted
    await raw.send_frame(FrameKind.CONTROL, payload)
    reply = await raw.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.code in (ErrorCode.UNKNOWN_MESSAGE, ErrorCode.PROTOCOL_ERROR)
    assert await raw.request(Ping(id=12)) == Pong(id=12)
    await still_works(daemon, witness, "utf8")


async def test_a_sync_frame_with_invalid_utf8_gets_an_error_and_the_connection_stays(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    assert (await raw.hello()).accepted
    # {"notebook_id": <not UTF-8>, "doc": "notebook", "data": b""}
    payload = b"\x83\xabnotebook_id\xa2\xff\xfe\xa3doc\xa8notebook\xa4data\xc4\x00"
    await raw.send_frame(FrameKind.SYNC, payload)
    reply = await raw.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.PROTOCOL_ERROR
    assert await raw.request(Ping(id=13)) == Pong(id=13)
    await still_works(daemon, witness, "sync-utf8")


async def test_an_unknown_notebook_id_gets_notebook_not_found(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    with pytest.raises(NotebookNotFound, match="no open notebook with id 'no-such-id'"):
        await witness.client.request(
            lambda i: ExecuteCell(id=i, notebook_id="no-such-id", cell_id="cell0"), CellQueued
        )
    assert (await raw.hello()).accepted
    for request in (
        SaveNotebook(id=21, notebook_id="no-such-id"),
        CloseNotebook(id=22, notebook_id="no-such-id"),
    ):
        reply = await raw.request(request)
        assert reply == ErrorReply(
            id=request.id, code=ErrorCode.NOTEBOOK_NOT_FOUND, message=reply.message
        )
    # A notebook open on another connection is not this connection's to use.
    reply = await raw.request(ExecuteCell(id=23, notebook_id=witness.nb.id, cell_id="cell0"))
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.INVALID_REQUEST
    assert "not open on this connection" in reply.message
    await still_works(daemon, witness, "nb-id")


async def test_a_sync_frame_for_a_notebook_not_open_here_gets_an_error(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    assert (await raw.hello()).accepted
    for notebook_id in ("no-such-id", witness.nb.id):
        envelope = SyncEnvelope(notebook_id=notebook_id, doc="notebook", data=b"\x42")
        await raw.send_frame(FrameKind.SYNC, encode(envelope))
        reply = await raw.next_control()
        assert isinstance(reply, ErrorReply)
        assert reply.code == ErrorCode.PROTOCOL_ERROR
        assert "not open on this connection" in reply.message
    assert await raw.request(Ping(id=14)) == Pong(id=14)
    await still_works(daemon, witness, "sync-id")


async def test_an_unknown_cell_id_gets_cell_not_found(daemon: Daemon, witness: Witness) -> None:
    with pytest.raises(CellNotFound, match="'no-such-cell'"):
        await witness.nb.queue("no-such-cell")
    with pytest.raises(CellNotFound):
        await witness.client.request(
            lambda i: ExecuteCell(id=i, notebook_id=witness.nb.id, cell_id=""), CellQueued
        )
    await still_works(daemon, witness, "cell-id")


async def test_malformed_heads_get_invalid_request(daemon: Daemon, witness: Witness) -> None:
    with pytest.raises(InvalidRequest, match="hex"):
        await witness.client.request(
            lambda i: ExecuteCell(
                id=i, notebook_id=witness.nb.id, cell_id="cell0", heads=["zz-not-hex"]
            ),
            CellQueued,
        )
    await still_works(daemon, witness, "heads")


# ---------------------------------------------------------------- sync payloads


async def open_raw(raw: RawPeer, path: Path) -> str:
    assert (await raw.hello()).accepted
    await raw.send_control(OpenNotebook(id=1, path=str(path)))
    reply = await raw.next_control()
    assert isinstance(reply, NotebookOpened), reply
    return reply.notebook_id


async def test_garbage_automerge_bytes_get_an_error_and_the_connection_stays(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    notebook_id = await open_raw(raw, witness.path)
    for doc in ("notebook", "runtime"):
        envelope = SyncEnvelope(
            notebook_id=notebook_id,
            doc=doc,
            data=b"\x42\x00garbage automerge \xff" * 3,
        )
        await raw.send_frame(FrameKind.SYNC, encode(envelope))
        reply = await raw.next_control()
        assert isinstance(reply, ErrorReply)
        assert reply.code == ErrorCode.PROTOCOL_ERROR
        assert "invalid Automerge sync message" in reply.message
    assert await raw.request(Ping(id=30)) == Pong(id=30)
    await still_works(daemon, witness, "automerge")


async def test_a_client_writing_the_runtime_document_is_refused(
    daemon: Daemon, raw: RawPeer, witness: Witness
) -> None:
    notebook_id = await open_raw(raw, witness.path)
    # Become a well-behaved runtime replica first: sync until the daemon has nothing to send.
    replica, state = RuntimeDoc.empty(), SyncState()
    with anyio.fail_after(TIMEOUT):
        while not replica.ready:
            envelope = await raw.next_sync()
            if envelope.doc != "runtime":
                continue
            replica.doc.receive_sync_message(state, Message.decode(envelope.data))
            answer = replica.doc.generate_sync_message(state)
            if answer is not None:
                await raw.send_frame(
                    FrameKind.SYNC,
                    encode(
                        SyncEnvelope(
                            notebook_id=notebook_id, doc="runtime", data=bytes(answer.encode())
                        )
                    ),
                )
    # Now write to it, as only the daemon may.
    with replica.doc.transaction() as tx:
        tx.put(ROOT, "running", ScalarType.Str, "rogue-execution")

    async def send(data: bytes) -> None:
        envelope = SyncEnvelope(notebook_id=notebook_id, doc="runtime", data=data)
        await raw.send_frame(FrameKind.SYNC, encode(envelope))

    # The sync protocol does not always put a new change in the very next message (this
    # replica's sync state may not know yet what the daemon has: 42 of 3,000 random
    # interleavings of the exchange above, simulated in-process): keep syncing until a
    # message carries it, then expect the refusal.
    with anyio.fail_after(TIMEOUT):
        while True:
            message = replica.doc.generate_sync_message(state)
            data = bytes(message.encode()) if message is not None else None
            if data is not None and may_carry_changes(data):
                break
            if data is not None:
                await send(data)
            envelope = await raw.next_sync()
            if envelope.doc == "runtime":
                replica.doc.receive_sync_message(state, Message.decode(envelope.data))
    assert data is not None
    await send(data)
    reply = await raw.next_control()
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.INVALID_REQUEST
    assert "written only by the daemon" in reply.message
    assert await raw.request(Ping(id=31)) == Pong(id=31)

    # The daemon's runtime document did not take the change: a fresh replica does not see it.
    async with await AsyncClient.connect(daemon.paths.socket) as fresh:
        nb = await fresh.open(witness.path)
        assert nb.runtime.ready
        assert nb.runtime.running() is None
    assert witness.nb.runtime.running() is None
    await still_works(daemon, witness, "runtime")


async def test_a_library_client_writing_the_runtime_document_does_not_loop(
    daemon: Daemon, witness: Witness
) -> None:
    """A client library replica that wrote the runtime document is refused; when the daemon
    next changes that document (a cell runs) the exchange with the offender must settle
    rather than bounce the refused change back and forth forever."""
    async with await AsyncClient.connect(daemon.paths.socket) as rogue:
        nb = await rogue.open(witness.path)
        with nb.runtime.doc.transaction() as tx:
            tx.put(ROOT, "running", ScalarType.Str, "rogue-execution")
        await rogue.push(nb.id, "runtime")

        result = await witness.nb.execute("cell0", timeout=60)  # the daemon writes runtime
        assert result.status == "ok"
        assert result.outputs[0]["data"]["text/plain"] == "2"
        await rogue.wait_until(
            lambda: nb.runtime.execution(result.execution_id) is not None, timeout=TIMEOUT
        )

        frames = 0
        original = rogue.connection._on_sync

        def counting(notebook_id: str, doc: Any, data: bytes) -> None:
            nonlocal frames
            frames += 1
            original(notebook_id, doc, data)

        rogue.connection._on_sync = counting
        # Nothing changes any more: a settled exchange sends the rogue a few frames at most.
        with anyio.move_on_after(1.0):
            await rogue.wait_until(lambda: frames > 50)
        assert frames <= 50, f"{frames} sync frames in 1 s: the refusal loops"
    await still_works(daemon, witness, "rogue-lib")


# ---------------------------------------------------------------- a slow reader


async def test_an_oversized_frame_while_the_daemon_is_blocked_writing_to_the_same_client(
    daemon: Daemon, raw: RawPeer, witness: Witness, short_tmp: Path
) -> None:
    """The peer stops reading (the daemon's send to it blocks), then sends a bad frame: the
    daemon's error path must not collide with its own pending write."""
    big = write_notebook(
        short_tmp / "big.ipynb",
        [
            {
                "cell_type": "code",
                "source": "".join(chr(0x4E00 + (i * 7919 + j * 31) % 20000) for j in range(3000)),
            }
            for i in range(120)
        ],
    )
    notebook_id = await open_raw(raw, big)
    # Answer the daemon's first sync message as an empty replica: it then sends the whole
    # document (~1 MB, several times what the socket buffer holds).
    empty, state = NotebookDoc.empty(), SyncState()
    with anyio.fail_after(TIMEOUT):
        while True:
            envelope = await raw.next_sync()
            if envelope.doc == "notebook":
                break
    empty.doc.receive_sync_message(state, Message.decode(envelope.data))
    request = empty.doc.generate_sync_message(state)
    assert request is not None
    await raw.send_frame(
        FrameKind.SYNC,
        encode(SyncEnvelope(notebook_id=notebook_id, doc="notebook", data=bytes(request.encode()))),
    )
    # Read until we are inside the document's frame (other small frames may come first);
    # then read no more, so the rest of the daemon's write blocks on the full socket buffer.
    with anyio.fail_after(TIMEOUT):
        while raw.decoder.buffered < 64 * 1024:
            raw.frames += raw.decoder.feed(await raw.stream.receive(16 * 1024))
    await raw.stream.send(struct.pack(">IB", MAX_FRAME + 1, FrameKind.CONTROL))
    await still_works(daemon, witness, "blocked-writer")
    await raw.read_until_closed()
