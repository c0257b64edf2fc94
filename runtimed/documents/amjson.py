"""JSON values in and out of Automerge, and the per-character Text splice.

Automerge 1.0.0rc1's ``tx.insert(text, i, Str, "abc")`` stores "abc" as ONE element of the
Text (see ``shared/notes/automerge-python.md``): indexes then stop matching characters and
merges treat the string as a unit. Every Text write here goes one code point at a time.

Reads are tolerant of what other Automerge libraries write. The binding cannot convert a
``Counter`` (the stock JS library writes one for ``new Counter()``) into Python: ``get`` and
``values`` panic on it. That panic happens while the value is converted, after the document's
lock is released, so it does not poison the document (checked: the document reads, saves and
syncs afterwards); :func:`get` turns it into :class:`DocumentError`, and :func:`read_json`
leaves such a value out and says where it was. A value cannot be typed before it is
materialised in this binding (``get`` is the only way in), so each read is tried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from automerge.core import Document, ObjType, ScalarType, Transaction

from runtimed.documents.boundary import DocumentError, automerge_errors, raise_converted

__all__ = [
    "JsonValue",
    "decode_key",
    "encode_key",
    "get",
    "insert_json",
    "put_json",
    "read_json",
    "scalar",
    "splice_text",
    "text_or_str",
    "unreadable_reason",
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


Got = tuple[Any, bytes]
"""What ``doc.get`` returns: ``(ObjType, obj_id)`` for an object, ``((ScalarType, value),
id)`` for a scalar."""


def get(
    doc: Document, obj: bytes, key: str | int, *, heads: list[bytes] | None = None
) -> Got | None:
    """``doc.get`` through the boundary.

    Raises:
        DocumentError: the binding cannot read the value (a Counter) or refused the read.
    """
    # The hottest read: the boundary without a context manager, the message built on failure.
    try:
        got: Got | None = doc.get(obj, key, heads=heads)
    except BaseException as exc:
        raise_converted(f"reading {key!r}", exc)
        raise
    return got


def text_or_str(doc: Document, got: Got | None, *, heads: list[bytes] | None = None) -> str | None:
    """The string a field holds, whether it was written as a scalar Str (as we write it) or as
    a Text object (as the JS library writes a plain string); None for anything else."""
    if got is None:
        return None
    value, obj_id = got
    if value == ObjType.Text:
        with automerge_errors("reading a text"):
            return str(doc.text(obj_id, heads=heads))
    if isinstance(value, ObjType):
        return None
    kind, inner = value
    return inner if isinstance(inner, str) and kind == ScalarType.Str else None


def scalar(got: tuple[Any, bytes] | None) -> Any:
    """The Python value of a scalar read (``doc.get``/``doc.values`` item); None for a missing
    key or an object."""
    if got is None or isinstance(got[0], ObjType):
        return None
    return got[0][1]


def read_json(
    doc: Document,
    obj: bytes,
    *,
    heads: list[bytes] | None = None,
    problems: list[str] | None = None,
    where: str = "",
) -> JsonValue:
    """Read a Map/List/Text object back as plain JSON (Text becomes a str).

    A value the binding cannot read (a Counter) is left out; its place (``where`` + the path
    inside) is appended to ``problems`` when given.
    """
    with automerge_errors(f"reading {where or 'an object'}"):
        kind = doc.object_type(obj)
    if kind == ObjType.Map:
        result: dict[str, JsonValue] = {}
        with automerge_errors(f"reading the keys of {where or 'a map'}"):
            keys = doc.keys(obj, heads=heads)
        for key in keys:
            path = f"{where}/{decode_key(key)}"
            try:
                got = get(doc, obj, key, heads=heads)
            except DocumentError as exc:
                _unreadable(problems, path, exc)
                continue
            if got is not None:
                result[decode_key(key)] = _value(doc, got, heads, problems, path)
        return result
    if kind == ObjType.List:
        try:
            with automerge_errors(f"reading {where or 'a list'}"):
                items = list(doc.values(obj, heads=heads))
        except DocumentError:
            items = None  # some item cannot be read: go one by one
        if items is not None:
            return [
                _value(doc, got, heads, problems, f"{where}/{index}")
                for index, got in enumerate(items)
            ]
        values: list[JsonValue] = []
        with automerge_errors(f"reading {where or 'a list'}"):
            length = doc.length(obj, heads=heads)
        for index in range(length):
            try:
                item = get(doc, obj, index, heads=heads)
            except DocumentError as exc:
                _unreadable(problems, f"{where}/{index}", exc)
                continue
            if item is not None:
                values.append(_value(doc, item, heads, problems, f"{where}/{index}"))
        return values
    with automerge_errors(f"reading {where or 'a text'}"):
        return doc.text(obj, heads=heads)


def _unreadable(problems: list[str] | None, path: str, exc: DocumentError) -> None:
    if problems is not None:
        problems.append(f"{path or '/'}: {unreadable_reason(exc)}; left out")


def unreadable_reason(exc: DocumentError) -> str:
    """Why a read failed, in words for a report."""
    if exc.__cause__ is not None and "not yet implemented" in str(exc.__cause__):
        # automerge 1.0.0rc1 converts every scalar type but Counter ("not yet implemented").
        return "a value the Python Automerge binding cannot read (a Counter?)"
    return f"unreadable ({exc})"


def _value(
    doc: Document,
    got: tuple[Any, bytes],
    heads: list[bytes] | None,
    problems: list[str] | None,
    where: str,
) -> JsonValue:
    value, obj_id = got
    if isinstance(value, ObjType):
        return read_json(doc, obj_id, heads=heads, problems=problems, where=where)
    return value[1]
