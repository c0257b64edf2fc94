"""Frame decoding, without I/O: fed whole, byte by byte, and fuzzed (the handshake:
test_handshake.py)."""

from __future__ import annotations

import contextlib
import itertools
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_frame,
)
from protocol.messages import (
    OpenNotebook,
    Ping,
    Pong,
    SyncEnvelope,
    decode_client_message,
    decode_daemon_message,
    decode_sync,
    encode,
)

SAMPLE_FRAMES = [
    Frame(FrameKind.CONTROL, encode(Ping(id=1))),
    Frame(FrameKind.SYNC, encode(SyncEnvelope(notebook_id="nb", doc="notebook", data=b"\x00\x01"))),
    Frame(FrameKind.CONTROL, b""),  # an empty payload is a valid frame (length 1: the kind byte)
    Frame(FrameKind.SYNC, bytes(range(256)) * 40),  # bigger than one read
    Frame(FrameKind.CONTROL, encode(OpenNotebook(id=2, path="/tmp/é 😀.ipynb"))),
]


def wire(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.kind, f.payload) for f in frames)


def header(length: int, kind: int) -> bytes:
    return struct.pack(">IB", length, kind)


# ---------------------------------------------------------------- frames


def test_frame_layout_is_length_kind_payload() -> None:
    assert encode_frame(FrameKind.SYNC, b"abc") == b"\x00\x00\x00\x04\x02abc"
    assert encode_frame(FrameKind.CONTROL, b"") == b"\x00\x00\x00\x01\x01"


def test_many_frames_in_one_feed_come_out_in_order() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(wire(SAMPLE_FRAMES)) == SAMPLE_FRAMES
    assert decoder.buffered == 0


def test_byte_by_byte_gives_the_same_frames_as_whole() -> None:
    data = wire(SAMPLE_FRAMES)
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for i in range(len(data)):
        frames += decoder.feed(data[i : i + 1])
    assert frames == FrameDecoder().feed(data) == SAMPLE_FRAMES
    assert decoder.buffered == 0


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(wire(SAMPLE_FRAMES))), max_size=30))
@settings(max_examples=200, deadline=None)
def test_any_split_gives_the_same_frames(cuts: list[int]) -> None:
    data = wire(SAMPLE_FRAMES)
    bounds = [0, *sorted(cuts), len(data)]
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for start, end in itertools.pairwise(bounds):
        frames += decoder.feed(data[start:end])
    assert frames == SAMPLE_FRAMES


def test_partial_frame_is_buffered_until_complete() -> None:
    data = encode_frame(FrameKind.CONTROL, b"hello")
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [Frame(FrameKind.CONTROL, b"hello")]
    assert decoder.buffered == 0


def test_frame_exactly_at_max_size_is_accepted() -> None:
    limit = 64
    payload = b"x" * (limit - 1)  # length counts the kind byte
    data = encode_frame(FrameKind.CONTROL, payload, max_frame_size=limit)
    assert FrameDecoder(max_frame_size=limit).feed(data) == [Frame(FrameKind.CONTROL, payload)]


def test_frame_one_over_max_size_raises_from_its_header_alone() -> None:
    limit = 64
    decoder = FrameDecoder(max_frame_size=limit)
    # Refused as soon as the length prefix is in: no need to buffer the oversized payload.
    with pytest.raises(ProtocolError, match="exceeds the maximum frame size of 64"):
        decoder.feed(struct.pack(">I", limit + 1))


def test_encoding_a_frame_over_max_size_raises() -> None:
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        encode_frame(FrameKind.CONTROL, b"x" * 64, max_frame_size=64)
    assert len(encode_frame(FrameKind.CONTROL, b"x" * 63, max_frame_size=64)) == 4 + 64


def test_default_max_frame_size_applies() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", DEFAULT_MAX_FRAME_SIZE + 1))


def test_zero_length_frame_raises() -> None:
    with pytest.raises(ProtocolError, match="length 0"):
        FrameDecoder().feed(struct.pack(">I", 0))


@pytest.mark.parametrize("kind", [0, 3, 255])
def test_unknown_frame_kind_raises(kind: int) -> None:
    with pytest.raises(ProtocolError, match=f"unknown frame kind {kind}"):
        FrameDecoder().feed(header(3, kind) + b"ab")


def test_a_bad_frame_after_good_ones_fails_the_whole_feed() -> None:
    # Framing is lost at the bad frame: the caller answers once and closes the connection.
    with pytest.raises(ProtocolError, match="unknown frame kind 9"):
        FrameDecoder().feed(wire(SAMPLE_FRAMES[:1]) + header(1, 9))


# ---------------------------------------------------------------- fuzz: only ProtocolError

VALID_PREFIX = wire(SAMPLE_FRAMES[:2])


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert isinstance(frame.kind, FrameKind)
                assert isinstance(frame.payload, bytes)
    except ProtocolError:
        pass


@given(chunks=st.lists(st.binary(max_size=64), max_size=8), limit=st.integers(1, 1 << 20))
@settings(max_examples=500, deadline=None)
def test_decoder_fed_arbitrary_bytes_only_raises_protocol_error(
    chunks: list[bytes], limit: int
) -> None:
    feed_all(FrameDecoder(max_frame_size=limit), chunks)


@given(tail=st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_decoder_fed_garbage_after_valid_frames_only_raises_protocol_error(tail: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(VALID_PREFIX) == SAMPLE_FRAMES[:2]
    feed_all(decoder, [tail])


VALID_MESSAGES = [
    encode(Ping(id=3)),
    encode(OpenNotebook(id=4, path="/tmp/a.ipynb")),
    encode(Pong(id=3)),
    encode(SyncEnvelope(notebook_id="n", doc="runtime", data=b"x")),
]
DECODERS = [decode_client_message, decode_daemon_message, decode_sync]


def decode_everywhere(payload: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(payload)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes overwritten, inserted or cut off."""
    data = bytearray(draw(st.sampled_from(VALID_MESSAGES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        byte = draw(st.integers(0, 255))
        match draw(st.sampled_from(["set", "insert", "truncate"])):
            case "set":
                data[at] = byte
            case "insert":
                data.insert(at, byte)
            case "truncate":
                del data[max(at, 1) :]
    return bytes(data)


@st.composite
def message_shaped_maps(draw: st.DrawFn) -> bytes:
    """msgpack maps with message-like keys and tags but random (often wrong) values."""
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=8),
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
    )
    keys = st.sampled_from(
        [
            "type",
            "id",
            "notebook_id",
            "cell_id",
            "path",
            "code",
            "message",
            "heads",
            "doc",
            "data",
            "notebooks",
            "status",
            "timeout",
        ]
    )
    fields = draw(st.dictionaries(keys, leaf, max_size=5))
    if draw(st.booleans()):
        fields["type"] = draw(
            st.sampled_from(
                [
                    "ping",
                    "open_notebook",
                    "execute_cell",
                    "error_reply",
                    "status_reply",
                    "pong",
                    "execution_done",
                    "notebook_list",
                    "nope",
                    "",
                ]
            )
        )
    return msgspec.msgpack.encode(fields)


@given(payload=st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_message_decoders_on_arbitrary_bytes_only_raise_protocol_error(payload: bytes) -> None:
    decode_everywhere(payload)


@given(payload=mutated_messages())
@settings(max_examples=1000, deadline=None)
def test_message_decoders_on_mutated_messages_only_raise_protocol_error(payload: bytes) -> None:
    decode_everywhere(payload)


@given(payload=message_shaped_maps())
@settings(max_examples=300, deadline=None)
def test_message_decoders_on_wrongly_typed_fields_only_raise_protocol_error(
    payload: bytes,
) -> None:
    decode_everywhere(payload)


@given(tail=st.binary(max_size=50))
@settings(max_examples=300, deadline=None)
def test_message_decoders_on_garbage_after_a_valid_message_only_raise_protocol_error(
    tail: bytes,
) -> None:
    for prefix in VALID_MESSAGES:
        decode_everywhere(prefix + tail)
        decode_everywhere(prefix[: len(prefix) // 2] + tail)


# A msgpack str whose bytes are not UTF-8 (0xa4: fixstr of 4 bytes).
NOT_UTF8 = [
    b"\x81\xa4type\xa2\xff\xfe",  # {"type": <bad str>}
    b"\x82\xa4type\xa4ping\xa2id\xa1\x80",  # {"type": "ping", "id": <bad str>}
    b"\x81\xa2\xc3\x28\x01",  # {<bad key>: 1}
    b"\x83\xa4type\xadopen_notebook\xa2id\x01\xa4path\xa1\xff",  # path: <bad str>
]


@pytest.mark.parametrize("payload", NOT_UTF8)
def test_message_decoders_on_invalid_utf8_strings_raise_protocol_error(payload: bytes) -> None:
    for decode in DECODERS:
        with pytest.raises(ProtocolError):
            decode(payload)
