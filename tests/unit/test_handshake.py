"""The sans-IO handshake (protocol/handshake.py), byte by byte: both hellos, the daemon's
verdict on every kind of client hello, and the client side fed in pieces of every size."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError, RuntimedError, VersionMismatch
from protocol.handshake import (
    CLIENT_HELLO_SIZE,
    MAGIC,
    MAX_HELLO_MESSAGE,
    PROTOCOL_VERSION,
    ClientHandshake,
    DaemonHello,
    answer_client_hello,
    decode_client_hello,
    decode_daemon_hello,
    encode_client_hello,
    encode_daemon_hello,
    version_mismatch_message,
)

# The bytes docs/protocol.md shows, exactly.
CLIENT_HELLO_V1 = bytes.fromhex("52554e54494d45440001")
DAEMON_ACCEPTS_V1 = bytes.fromhex("52554e54494d454400010000 00".replace(" ", ""))
REFUSAL_OF_V2 = (
    "protocol version 2 is not supported; this daemon speaks version 1 "
    "(upgrade the client or restart the daemon)"
)


# ---------------------------------------------------------------- client hello


def test_client_hello_is_magic_then_the_version_big_endian() -> None:
    assert MAGIC == b"RUNTIMED"
    assert PROTOCOL_VERSION == 1
    assert encode_client_hello() == CLIENT_HELLO_V1
    assert CLIENT_HELLO_SIZE == len(CLIENT_HELLO_V1) == 10
    assert encode_client_hello(0x0102) == b"RUNTIMED\x01\x02"
    assert ClientHandshake().hello == CLIENT_HELLO_V1


@pytest.mark.parametrize("version", [0, 1, 2, 7, 0xFFFF])
def test_client_hello_round_trip(version: int) -> None:
    assert decode_client_hello(encode_client_hello(version)) == version


def test_client_hello_bad_magic_raises() -> None:
    with pytest.raises(ProtocolError, match="bad magic"):
        decode_client_hello(b"GET / HT" + b"\x00\x01")


@pytest.mark.parametrize("size", [0, 1, CLIENT_HELLO_SIZE - 1, CLIENT_HELLO_SIZE + 1])
def test_client_hello_wrong_length_raises(size: int) -> None:
    with pytest.raises(ProtocolError, match=f"expected 10 bytes, got {size}"):
        decode_client_hello((encode_client_hello() * 2)[:size])


# ---------------------------------------------------------------- the daemon's verdict


def test_the_daemon_accepts_its_own_version_with_the_documented_bytes() -> None:
    verdict = answer_client_hello(CLIENT_HELLO_V1)
    assert verdict.accepted
    assert verdict.reply == DAEMON_ACCEPTS_V1
    assert verdict.client_version == 1
    assert verdict.message == ""


@pytest.mark.parametrize("version", [0, 2, 42, 0xFFFF])
def test_any_other_version_is_refused_naming_both_versions(version: int) -> None:
    verdict = answer_client_hello(encode_client_hello(version))
    assert not verdict.accepted
    assert verdict.client_version == version
    assert verdict.message == version_mismatch_message(version)
    assert f"protocol version {version} is not supported" in verdict.message
    assert "this daemon speaks version 1" in verdict.message
    text = verdict.message.encode()
    assert verdict.reply == b"RUNTIMED\x00\x01\x01" + struct.pack(">H", len(text)) + text


def test_the_refusal_of_version_2_is_the_documented_one() -> None:
    verdict = answer_client_hello(encode_client_hello(2))
    assert verdict.message == REFUSAL_OF_V2
    assert len(REFUSAL_OF_V2) == 0x6C
    assert verdict.reply[:13] == bytes.fromhex("52554e54494d454400010100 6c".replace(" ", ""))
    assert verdict.reply[13:] == REFUSAL_OF_V2.encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "expected 10 bytes, got 0"),
        (CLIENT_HELLO_V1[:5], "expected 10 bytes, got 5"),
        (b"RUNTIMEX\x00\x01", "bad magic"),
        (b"GET / HTTP", "bad magic"),
    ],
)
def test_an_unreadable_hello_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    verdict = answer_client_hello(data)
    assert not verdict.accepted
    assert verdict.client_version is None
    assert reason in verdict.message
    hello, used = decode_daemon_hello(verdict.reply) or (None, 0)
    assert hello == DaemonHello(version=1, accepted=False, message=verdict.message)
    assert used == len(verdict.reply)


@given(st.binary(max_size=2 * CLIENT_HELLO_SIZE))
def test_answer_never_raises_and_accepts_only_the_exact_hello(data: bytes) -> None:
    verdict = answer_client_hello(data)
    assert verdict.accepted == (data == CLIENT_HELLO_V1)
    assert decode_daemon_hello(verdict.reply) is not None


# ---------------------------------------------------------------- daemon hello


def test_daemon_hello_layout() -> None:
    assert encode_daemon_hello(accepted=True) == DAEMON_ACCEPTS_V1
    assert encode_daemon_hello(accepted=False, message="no", version=3) == (
        b"RUNTIMED" + b"\x00\x03" + b"\x01" + b"\x00\x02" + b"no"
    )


def test_daemon_hello_refusal_round_trips_with_trailing_bytes_left_alone() -> None:
    message = "protocol version 9 is not supported; this daemon speaks version 1 — é"
    data = encode_daemon_hello(accepted=False, message=message, version=1)
    hello, used = decode_daemon_hello(data + b"trailing frames") or (None, 0)
    assert hello == DaemonHello(version=1, accepted=False, message=message)
    assert used == len(data)


def test_a_long_message_is_cut_on_a_character_boundary() -> None:
    data = encode_daemon_hello(accepted=False, message="é" * MAX_HELLO_MESSAGE)
    (length,) = struct.unpack_from(">H", data, 11)
    assert length == MAX_HELLO_MESSAGE - 1  # 32767 two-byte characters fit, not 32767.5
    hello, used = decode_daemon_hello(data) or (None, 0)
    assert hello is not None
    assert hello.message == "é" * (MAX_HELLO_MESSAGE // 2)
    assert used == len(data)


def test_daemon_hello_truncated_needs_more_bytes() -> None:
    data = encode_daemon_hello(accepted=False, message="refused: because")
    for i in range(len(data)):
        assert decode_daemon_hello(data[:i]) is None, i
    assert decode_daemon_hello(data) is not None


@pytest.mark.parametrize("prefix", [b"X", b"RUNTIMEX", b"HTTP/1.1 200 OK"])
def test_daemon_hello_bad_magic_raises_early(prefix: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad magic"):
        decode_daemon_hello(prefix)


def test_daemon_hello_bad_status_raises() -> None:
    with pytest.raises(ProtocolError, match="status byte 2"):
        decode_daemon_hello(struct.pack(">8sHBH", MAGIC, 1, 2, 0))


def test_daemon_hello_non_utf8_message_raises() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode_daemon_hello(struct.pack(">8sHBH", MAGIC, 1, 1, 2) + b"\xff\xfe")


# ---------------------------------------------------------------- the client side


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 13, 100])
def test_client_handshake_fed_in_pieces_keeps_what_follows(piece: int) -> None:
    first_frame = b"\x00\x00\x00\x02\x01\x80"
    stream = DAEMON_ACCEPTS_V1 + first_frame
    shake = ClientHandshake()
    results = []
    for start in range(0, len(stream), piece):
        if shake.done:
            break
        results.append(shake.receive(stream[start : start + piece]))
    assert shake.done
    assert results[-1] == DaemonHello(version=1, accepted=True, message="")
    assert all(r is None for r in results[:-1])
    consumed = min(len(stream), len(results) * piece)
    assert shake.leftover == stream[len(DAEMON_ACCEPTS_V1) : consumed]
    assert shake.leftover + stream[consumed:] == first_frame


def test_client_handshake_refusal_of_its_version_is_a_version_mismatch() -> None:
    refusal = answer_client_hello(encode_client_hello(2)).reply
    shake = ClientHandshake(version=2)
    for byte in refusal[:-1]:
        assert shake.receive(bytes([byte])) is None
    with pytest.raises(VersionMismatch, match="protocol version 2 is not supported") as caught:
        shake.receive(refusal[-1:])
    # One tree: the mismatch is a protocol error and a runtimed error.
    assert isinstance(caught.value, ProtocolError)
    assert isinstance(caught.value, RuntimedError)
    assert str(caught.value) == REFUSAL_OF_V2


def test_a_daemon_accepting_another_version_is_a_version_mismatch() -> None:
    with pytest.raises(VersionMismatch, match="speaks version 3"):
        ClientHandshake().receive(encode_daemon_hello(accepted=True, version=3))


def test_a_refusal_for_another_reason_is_a_plain_protocol_error() -> None:
    data = encode_daemon_hello(accepted=False, message="too many connections")
    with pytest.raises(ProtocolError, match="refused the connection: too many") as caught:
        ClientHandshake().receive(data)
    assert not isinstance(caught.value, VersionMismatch)


def test_a_peer_that_is_not_a_daemon_fails_at_the_first_wrong_byte() -> None:
    shake = ClientHandshake()
    assert shake.receive(b"RUN") is None
    with pytest.raises(ProtocolError, match="not a runtimed daemon"):
        shake.receive(b"X")


def test_closed_early_says_how_far_the_hello_got() -> None:
    shake = ClientHandshake()
    shake.receive(DAEMON_ACCEPTS_V1[:4])
    assert "after 4 of its hello's bytes" in str(shake.closed_early())


def test_a_complete_handshake_takes_no_more_bytes() -> None:
    shake = ClientHandshake()
    shake.receive(DAEMON_ACCEPTS_V1)
    with pytest.raises(ProtocolError, match="already complete"):
        shake.receive(b"\x00")
