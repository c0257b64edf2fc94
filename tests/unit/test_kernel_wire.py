"""Decoding kernel messages: equal to jupyter_client's reading (dates left as strings),
and every malformed or forged message is one ValueError."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jupyter_client.session import Session

from runtimed.kernels.wire import decode_message

KEY = uuid.uuid4().hex.encode()


def wire(session: Session, msg_type: str = "stream", **content: object) -> list[bytes]:
    parent = session.msg("execute_request", {"code": "1"})
    msg = session.msg(msg_type, content or {"name": "stdout", "text": "é\n"}, parent=parent)
    return [b"ident", *session.serialize(msg)]


def test_a_signed_message_decodes_as_jupyter_client_reads_it() -> None:
    session = Session(key=KEY)
    frames = wire(session, buffers_like="x")
    ours = decode_message(session, frames)
    _, parts = session.feed_identities(frames)
    theirs = session.deserialize(parts)
    for part in ("content", "metadata"):
        assert ours[part] == theirs[part]
    assert (ours["msg_id"], ours["msg_type"]) == (theirs["msg_id"], theirs["msg_type"])
    assert ours["parent_header"]["msg_id"] == theirs["parent_header"]["msg_id"]
    assert ours["header"]["session"] == theirs["header"]["session"]
    # Dates stay strings: nothing in the daemon reads them, parsing them cost time.
    assert isinstance(ours["header"]["date"], str)
    assert ours["buffers"] == []


def test_buffers_after_the_content_are_kept() -> None:
    session = Session(key=KEY)
    msg = session.msg("comm_msg", {"data": {}})
    frames = session.serialize(msg)
    decoded = decode_message(session, [*frames, b"\x00\x01"])
    # serialize() signs only the four JSON parts; buffers ride after them.
    assert [bytes(b) for b in decoded["buffers"]] == [b"\x00\x01"]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda f: [p for p in f if p != b"<IDS|MSG>"], "no <IDS|MSG> delimiter"),
        (lambda f: f[:5], "parts after the delimiter"),
        (lambda f: [*f[:2], b"", *f[3:]], "unsigned message"),
        (lambda f: [*f[:2], b"0" * 64, *f[3:]], "invalid message signature"),
        (lambda f: [*f[:3], f[3][:-1], *f[4:]], "invalid message signature"),
    ],
)
def test_malformed_or_forged_messages_are_a_value_error(mangle: object, message: str) -> None:
    session = Session(key=KEY)
    frames = wire(session)
    with pytest.raises(ValueError, match=message):
        decode_message(session, mangle(frames))  # type: ignore[operator]


def test_without_a_key_bad_json_is_still_a_value_error() -> None:
    session = Session(key=b"")
    frames = wire(session)
    start = frames.index(b"<IDS|MSG>") + 1
    broken = [*frames[: start + 1], b"{not json", *frames[start + 2 :]]
    with pytest.raises(ValueError, match="malformed message"):
        decode_message(session, broken)
    no_id = [*frames[: start + 1], b'{"msg_type": "x"}', *frames[start + 2 :]]
    with pytest.raises(ValueError, match="header without 'msg_id'"):
        decode_message(session, no_id)


@given(st.lists(st.binary(max_size=40), max_size=9))
def test_arbitrary_frames_only_ever_raise_value_error(frames: list[bytes]) -> None:
    for key in (KEY, b""):
        with contextlib.suppress(ValueError):  # any other exception fails the test
            decode_message(Session(key=key), [b"id", b"<IDS|MSG>", *frames])
