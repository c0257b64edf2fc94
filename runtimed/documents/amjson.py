"""JSON values in and out of Automerge, and the per-character Text splice.

Automerge 1.0.0rc1's ``tx.insert(text, i, Str, "abc")`` stores "abc" as ONE element of the
Text (see ``shared/notes/automerge-python.md``): indexes then stop matching characters and
merges treat the string as a unit. Every Text write here goes one code point at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from automerge.core import Document, ObjType, ScalarType, Transaction

__all__ = [
    "JsonValue",
    "decode_key",
    "encode_key",
    "insert_json",
    "put_json",
    "read_json",
    "scalar",
    "splice_text",
]

JsonValue = (
    Any  # JSON-shaped: dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None
)

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def splice_text(tx: Transaction, text: bytes, index: int, delete: int, insert: str) -> None:
    """Delete ``delete`` code points at ``index`` of ``text``, then insert ``insert`` there.

    Indexes count Unicode code points, as Automerge Text does.
    """
    for _ in range(delete):
        tx.delete(text, index)
    for offset, char in enumerate(insert):
        tx.insert(text, index + offset, ScalarType.Str, char)


def _scalar(value: JsonValue) -> tuple[ScalarType, JsonValue]:
    # bool before int: bool is an int subclass.
    if value is None:
        return ScalarType.Null, None
    if isinstance(value, bool):
        return ScalarType.Boolean, value
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return ScalarType.Int, value
        return ScalarType.F64, float(value)  # JSON allows it; Automerge ints are 64-bit.
    if isinstance(value, float):
        return ScalarType.F64, value
    if isinstance(value, str):
        return ScalarType.Str, value
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def put_json(tx: Transaction, obj: bytes, key: str, value: JsonValue) -> None:
    """Store a JSON value under ``key`` of map ``obj`` (objects as Maps, arrays as Lists)."""
    if isinstance(value, Mapping):
        child = tx.put_object(obj, key, ObjType.Map)
        _fill_map(tx, child, value)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        child = tx.put_object(obj, key, ObjType.List)
        _fill_list(tx, child, value)
    else:
        tx.put(obj, key, *_scalar(value))


def insert_json(tx: Transaction, seq: bytes, index: int, value: JsonValue) -> None:
    """Insert a JSON value at ``index`` of list ``seq``."""
    if isinstance(value, Mapping):
        child = tx.insert_object(seq, index, ObjType.Map)
        _fill_map(tx, child, value)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        child = tx.insert_object(seq, index, ObjType.List)
        _fill_list(tx, child, value)
    else:
        tx.insert(seq, index, *_scalar(value))


def encode_key(key: str) -> str:
    """JSON allows "" as an object key; Automerge does not. "" is stored as "\x00" and a key
    that itself starts with NUL gets one more NUL in front, so every key round-trips."""
    return "\x00" + key if key == "" or key.startswith("\x00") else key


def decode_key(key: str) -> str:
    return key[1:] if key.startswith("\x00") else key


def _fill_map(tx: Transaction, obj: bytes, value: Mapping[str, JsonValue]) -> None:
    for key, item in value.items():
        put_json(tx, obj, encode_key(str(key)), item)


def _fill_list(tx: Transaction, obj: bytes, value: Sequence[JsonValue]) -> None:
    for index, item in enumerate(value):
        insert_json(tx, obj, index, item)


def scalar(got: tuple[Any, bytes] | None) -> Any:
    """The Python value of a scalar read (``doc.get``/``doc.values`` item); None for a missing
    key or an object."""
    if got is None or isinstance(got[0], ObjType):
        return None
    return got[0][1]


def read_json(doc: Document, obj: bytes, *, heads: list[bytes] | None = None) -> JsonValue:
    """Read a Map/List/Text object back as plain JSON (Text becomes a str)."""
    kind = doc.object_type(obj)
    if kind == ObjType.Map:
        result: dict[str, JsonValue] = {}
        for key in doc.keys(obj, heads=heads):
            got = doc.get(obj, key, heads=heads)
            if got is not None:
                result[decode_key(key)] = _value(doc, got, heads)
        return result
    if kind == ObjType.List:
        return [_value(doc, got, heads) for got in doc.values(obj, heads=heads)]
    return doc.text(obj, heads=heads)


def _value(doc: Document, got: tuple[Any, bytes], heads: list[bytes] | None) -> JsonValue:
    value, obj_id = got
    if isinstance(value, ObjType):
        return read_json(doc, obj_id, heads=heads)
    return value[1]
