"""Every wire message round-trips; bad messages raise ProtocolError and nothing else.

Messages are enumerated from the named unions, so a message added to a union is covered
here without editing this file, and a message class left out of its union fails a test.
"""

from __future__ import annotations

import enum
import re
import typing
from typing import Any

import msgspec
import pytest

from protocol import messages
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    ClientRequest,
    DaemonEvent,
    DaemonReply,
    ErrorReply,
    ExecuteCell,
    Ping,
    Pong,
    SyncEnvelope,
    decode_client_message,
    decode_daemon_message,
    decode_sync,
    encode,
)

REQUESTS: tuple[type[msgspec.Struct], ...] = typing.get_args(ClientRequest)
REPLIES: tuple[type[msgspec.Struct], ...] = typing.get_args(DaemonReply)
EVENTS: tuple[type[msgspec.Struct], ...] = typing.get_args(DaemonEvent)


def sample(t: msgspec.inspect.Type, depth: int = 0) -> Any:
    """A non-default value of a field type, built from msgspec's type info."""
    match t:
        case msgspec.inspect.IntType():
            return 41 + depth
        case msgspec.inspect.FloatType():
            return 2.5
        case msgspec.inspect.BoolType():
            return True
        case msgspec.inspect.StrType():
            return f"s-é😀-{depth}"
        case msgspec.inspect.BytesType():
            return b"\x00\xffbytes"
        case msgspec.inspect.NoneType():
            return None
        case msgspec.inspect.LiteralType(values=values):
            return values[-1]
        case msgspec.inspect.EnumType(cls=cls):
            return list(cls)[-1]
        case msgspec.inspect.ListType(item_type=item):
            return [sample(item, depth + 1), sample(item, depth + 2)]
        case msgspec.inspect.DictType(key_type=key, value_type=value):
            return {sample(key, depth + 1): sample(value, depth + 2)}
        case msgspec.inspect.UnionType(types=types):
            # Prefer a non-None member so optional fields carry a value.
            concrete = [m for m in types if not isinstance(m, msgspec.inspect.NoneType)]
            return sample(concrete[0] if concrete else types[0], depth)
        case msgspec.inspect.StructType(cls=cls):
            return build(cls, depth + 1)
        case msgspec.inspect.CustomType(cls=c) if c is object:  # JSON (an inspect mime bundle)
            return {"text/plain": f"doc-{depth}", "nested": [1, 2.5, None, True]}
        case _:
            raise AssertionError(f"no sample for field type {t!r}; extend sample()")


def build(cls: type[msgspec.Struct], depth: int = 0) -> msgspec.Struct:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return cls(**{f.name: sample(f.type, depth) for f in info.fields})


def tag_of(cls: type[msgspec.Struct]) -> str:
    return str(cls.__struct_config__.tag)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_unions_are_not_empty() -> None:
    assert len(REQUESTS) >= 10
    assert len(REPLIES) >= 5
    assert len(EVENTS) >= 3


@pytest.mark.parametrize("cls", REQUESTS, ids=lambda c: c.__name__)
def test_request_round_trips(cls: type[msgspec.Struct]) -> None:
    message = build(cls)
    assert decode_client_message(encode(message)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", REPLIES + EVENTS, ids=lambda c: c.__name__)
def test_daemon_message_round_trips(cls: type[msgspec.Struct]) -> None:
    message = build(cls)
    assert decode_daemon_message(encode(message)) == message  # type: ignore[arg-type]


def test_sync_envelope_round_trips() -> None:
    for doc in typing.get_args(messages.DocKind):
        envelope = SyncEnvelope(notebook_id="abc", doc=doc, data=bytes(range(256)))
        assert decode_sync(encode(envelope)) == envelope


@pytest.mark.parametrize("cls", REQUESTS + REPLIES + EVENTS, ids=lambda c: c.__name__)
def test_optional_fields_take_their_defaults_when_absent(cls: type[msgspec.Struct]) -> None:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    required = {f.name: sample(f.type) for f in info.fields if f.required}
    wire = msgspec.msgpack.encode({"type": tag_of(cls), **required})
    decode = decode_client_message if cls in REQUESTS else decode_daemon_message
    assert decode(wire) == cls(**required)


@pytest.mark.parametrize("cls", REQUESTS + REPLIES + EVENTS, ids=lambda c: c.__name__)
def test_tag_is_the_snake_case_class_name(cls: type[msgspec.Struct]) -> None:
    assert tag_of(cls) == snake(cls.__name__)
    assert msgspec.msgpack.decode(encode(build(cls)))["type"] == tag_of(cls)  # type: ignore[arg-type]


def test_tags_are_unique_across_unions() -> None:
    tags = [tag_of(c) for c in REQUESTS + REPLIES + EVENTS]
    assert len(tags) == len(set(tags))


def test_every_message_class_is_in_its_union() -> None:
    # A message defined but left out of its union could never be decoded.
    for base, union in (
        (messages.Request, REQUESTS),
        (messages.Reply, REPLIES),
        (messages.Event, EVENTS),
    ):
        defined = {
            c
            for c in vars(messages).values()
            if isinstance(c, type) and issubclass(c, base) and c is not base
        }
        assert defined == set(union), base.__name__


def test_requests_and_replies_carry_ids_and_events_do_not() -> None:
    # The client routes a daemon message to a waiting request by its ``id`` and treats a
    # message without one as an event, so an event must never grow an ``id`` field.
    def fields(cls: type[msgspec.Struct]) -> set[str]:
        return set(cls.__struct_fields__)

    assert all("id" in fields(c) for c in REQUESTS + REPLIES)
    assert not any("id" in fields(c) for c in EVENTS)


def test_all_structs_are_frozen() -> None:
    for cls in REQUESTS + REPLIES + EVENTS + (SyncEnvelope,):
        assert cls.__struct_config__.frozen, cls.__name__
        message = build(cls)
        for name in cls.__struct_fields__[:1]:
            with pytest.raises(AttributeError):
                setattr(message, name, None)


# ---------------------------------------------------------------- bad messages


def test_unknown_tag_raises_protocol_error() -> None:
    wire = msgspec.msgpack.encode({"type": "nope", "id": 7})
    for decode in (decode_client_message, decode_daemon_message):
        with pytest.raises(ProtocolError, match="nope"):
            decode(wire)


def test_missing_tag_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_client_message(msgspec.msgpack.encode({"id": 7}))


def test_a_daemon_message_is_not_a_client_request() -> None:
    with pytest.raises(ProtocolError):
        decode_client_message(encode(Pong(id=1)))
    with pytest.raises(ProtocolError):
        decode_daemon_message(encode(Ping(id=1)))


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "ping", "id": "7"},
        {"type": "ping"},  # id is required
        {"type": "ping", "id": 1.5},
        {"type": "open_notebook", "id": 1, "path": 3},
        {"type": "open_notebook", "id": 1},
        {"type": "execute_cell", "id": 1, "notebook_id": "n"},
        {"type": "execute_cell", "id": 1, "notebook_id": "n", "cell_id": "c", "heads": "abc"},
        {"type": "execute_cell", "id": 1, "notebook_id": "n", "cell_id": "c", "timeout": "1"},
        {"type": "close_notebook", "id": 1, "notebook_id": ["n"]},
        {"type": "input_reply", "id": 1, "notebook_id": "n", "execution_id": "e", "value": None},
    ],
)
def test_wrong_field_types_in_requests_raise_protocol_error(fields: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_client_message(msgspec.msgpack.encode(fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "error_reply", "id": 1, "code": 5, "message": "m"},
        {"type": "error_reply", "id": 1, "code": "cell_not_found"},
        {
            "type": "execution_done",
            "notebook_id": "n",
            "cell_id": "c",
            "execution_id": "e",
            "status": "exploded",
        },
        {"type": "notebook_list", "id": 1, "notebooks": [{"notebook_id": 3}]},
    ],
)
def test_wrong_field_types_in_daemon_messages_raise_protocol_error(
    fields: dict[str, Any],
) -> None:
    with pytest.raises(ProtocolError):
        decode_daemon_message(msgspec.msgpack.encode(fields))


@pytest.mark.parametrize(
    "payload",
    [
        msgspec.msgpack.encode({"notebook_id": "n", "doc": "other", "data": b""}),
        msgspec.msgpack.encode({"notebook_id": "n", "doc": "notebook", "data": "text"}),
        msgspec.msgpack.encode({"notebook_id": "n", "doc": "notebook"}),
        msgspec.msgpack.encode([1, 2, 3]),
        b"\xc1",  # never used in msgpack
        b"",
    ],
)
def test_bad_sync_envelopes_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_sync(payload)


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x92\x01", b"not msgpack at all"])
def test_non_msgpack_raises_protocol_error(payload: bytes) -> None:
    for decode in (decode_client_message, decode_daemon_message):
        with pytest.raises(ProtocolError):
            decode(payload)


def test_an_error_code_newer_than_the_client_still_decodes() -> None:
    # Codes travel as strings so that an older client can read codes added after it.
    wire = msgspec.msgpack.encode(
        {"type": "error_reply", "id": 4, "code": "added_in_a_later_version", "message": "m"}
    )
    reply = decode_daemon_message(wire)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "added_in_a_later_version"


def test_error_codes_on_the_wire_are_their_string_values() -> None:
    reply = ErrorReply(id=3, code=ErrorCode.CELL_NOT_FOUND, message="cell 'x' is missing")
    assert msgspec.msgpack.decode(encode(reply))["code"] == "cell_not_found"
    assert all(isinstance(c, enum.StrEnum) for c in ErrorCode)
    assert len({c.value for c in ErrorCode}) == len(ErrorCode)


def test_request_fields_do_not_carry_code() -> None:
    # ExecuteCell names a cell; the daemon reads its source from the document.
    assert set(ExecuteCell.__struct_fields__) >= {"notebook_id", "cell_id", "heads"}
    for cls in REQUESTS:
        assert not {"code", "source"} & set(cls.__struct_fields__), cls.__name__


def test_an_error_code_this_client_does_not_know_decodes_and_maps_to_remote_error() -> None:
    """Error codes are strings on the wire so a newer daemon's codes do not break old clients."""
    from runtimed.errors import RemoteError, error_from_reply

    reply = decode_daemon_message(
        msgspec.msgpack.encode(
            {"type": "error_reply", "id": 1, "code": "no_such_code", "message": "m"}
        )
    )
    assert isinstance(reply, ErrorReply)
    error = error_from_reply(reply.code, reply.message)
    assert isinstance(error, RemoteError)
    assert str(error) == "m"
