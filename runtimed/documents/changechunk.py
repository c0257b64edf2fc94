"""Which objects an Automerge change wrote into, read from its bytes. (Pure; no I/O.)

The daemon checks a client's sync message by reading, on a fork, what the message changed
(``runtimed/daemon/synccheck.py``). The binding's ``Document.diff`` would name it, but it walks
the whole document (about 2 ms for 300 cells, 7 ms for 1,000 here) on every message; the new
changes themselves (``get_changes(before)``, microseconds) hold the answer: every operation names
the object it writes into. This module decodes just that from a change chunk (Automerge's binary
format: chunk header, then the change's ops as columns, each run-length encoded):

- the chunk: magic ``85 6f 4a 83``, 4-byte checksum, type (1 = change), ULEB128 length, body;
- the body: dependencies (count, 32-byte hashes), actor (length-prefixed), seq, start op, time,
  message (length-prefixed), other actors (count, each length-prefixed), then the column
  metadata (count; each: column spec, byte length) and the columns' data;
- the columns read here: object actor (spec ``0x01``: RLE of actor indexes, null = the root),
  object counter (``0x02``: RLE of ULEB128), key string (``0x15``: RLE of length-prefixed UTF-8)
  and action (``0x42``: RLE of ULEB128, present for every op, so it gives the op count; 3 is a
  deletion).

Anything this module does not recognise (a compressed chunk, a DEFLATE-compressed column, a
truncated or inconsistent encoding, an unreasonable run) gives ``None``: callers then fall back
to the safe, slower path. Object ids are returned in the binding's ``ExId`` byte form (``0x10``,
actor length, actor, actor index, counter; the binding finds the actor by its bytes, so the index
written is 0) and compared by :func:`object_key`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from runtimed.documents.syncwire import _Truncated, _uleb

__all__ = ["ROOT_KEY", "Written", "complete_prefix", "object_key", "written_objects"]

_MAGIC = b"\x85\x6f\x4a\x83"
_CHUNK_CHANGE = 1
_HASH = 32
_OBJ_ACTOR, _OBJ_CTR, _KEY_STR, _ACTION = 0x01, 0x02, 0x15, 0x42
_DELETE = 3  # the action code of a deletion
_DEFLATE = 0x08  # column spec bit: the column's data is DEFLATE-compressed
_EXID_TAG = 0x10
_MAX_OPS = 50_000  # more ops than this in one change: give up (the diff costs as much then)

ROOT_KEY: tuple[bytes, int] = (b"", 0)
""":func:`object_key` of the document's root."""


_Reader = Callable[[bytes, int], tuple[int | str, int]]


# The bytes are not what this decoder understands: the sync wire helpers' own "cannot read
# this" (its LEB128 reader is shared too).
_Bad = _Truncated


@dataclass
class Written:
    """The objects one or more changes wrote into: ``object id -> keys written`` (a key is
    None for list and text positions; a deletion adds no key, so an object only deleted
    from maps has an empty set)."""

    objects: dict[tuple[bytes, int], set[str | None]]
    exids: dict[tuple[bytes, int], bytes]


def object_key(exid: bytes) -> tuple[bytes, int]:
    """``(actor, counter)`` of a binding object id (``ROOT_KEY`` for the root).

    Raises:
        ValueError: not an object id this module understands.
    """
    if exid == b"\x00":
        return ROOT_KEY
    try:
        if exid[0] != _EXID_TAG:
            raise _Bad
        length, pos = _uleb(exid, 1)
        actor = exid[pos : pos + length]
        if len(actor) != length:
            raise _Bad
        _, pos = _uleb(exid, pos + length)  # actor index: not part of the identity
        counter, pos = _uleb(exid, pos)
        if pos != len(exid):
            raise _Bad
    except (_Bad, IndexError) as exc:
        raise ValueError(f"not an object id: {exid.hex()}") from exc
    return actor, counter


def complete_prefix(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole chunks (a saved document, changes): a
    file that changes are appended to may end in a torn chunk after a crash."""
    pos = 0
    while pos < len(data):
        try:
            if data[pos : pos + 4] != _MAGIC:
                break
            length, body = _uleb(data, pos + 9)
        except _Bad:
            break
        if body + length > len(data):
            break
        pos = body + length
    return pos


def written_objects(chunks: list[bytes]) -> Written | None:
    """The objects the change chunks ``chunks`` wrote into (None: not decodable here)."""
    result = Written({}, {})
    try:
        for chunk in chunks:
            _decode_change(chunk, result)
    except (_Bad, IndexError, UnicodeDecodeError):
        return None
    return result


def _decode_change(chunk: bytes, into: Written) -> None:
    if chunk[:4] != _MAGIC or chunk[8] != _CHUNK_CHANGE:
        raise _Bad  # compressed chunks (type 2) and anything else
    length, pos = _uleb(chunk, 9)
    end = pos + length
    if end > len(chunk):
        raise _Bad
    deps, pos = _uleb(chunk, pos)
    pos += deps * _HASH
    actor, pos = _bytes(chunk, pos)
    _, pos = _uleb(chunk, pos)  # seq
    _, pos = _uleb(chunk, pos)  # start op
    _, pos = _uleb(chunk, pos)  # time
    _, pos = _bytes(chunk, pos)  # message
    actors = [actor]
    others, pos = _uleb(chunk, pos)
    for _ in range(others):
        other, pos = _bytes(chunk, pos)
        actors.append(other)
    ncols, pos = _uleb(chunk, pos)
    specs: list[tuple[int, int]] = []
    for _ in range(ncols):
        spec, pos = _uleb(chunk, pos)
        size, pos = _uleb(chunk, pos)
        specs.append((spec, size))
    columns: dict[int, tuple[int, int]] = {}
    for spec, size in specs:
        if pos + size > end:
            raise _Bad
        if spec & ~_DEFLATE in (_OBJ_ACTOR, _OBJ_CTR, _KEY_STR, _ACTION):
            if spec & _DEFLATE:
                raise _Bad
            columns[spec] = (pos, pos + size)
        pos += size
    if _ACTION not in columns:
        if columns:
            raise _Bad
        return  # a change without ops
    actions = _rle(chunk, columns[_ACTION], _uleb_value)
    ops = len(actions)
    obj_actor = _column(chunk, columns.get(_OBJ_ACTOR), _uleb_value, ops)
    obj_ctr = _column(chunk, columns.get(_OBJ_CTR), _uleb_value, ops)
    keys = _column(chunk, columns.get(_KEY_STR), _str_value, ops)
    for index in range(ops):
        actor_index, counter = obj_actor[index], obj_ctr[index]
        if actor_index is None or counter is None:
            if actor_index is not None or counter is not None:
                raise _Bad
            obj = ROOT_KEY
        else:
            if not isinstance(actor_index, int) or actor_index >= len(actors):
                raise _Bad
            obj = (actors[actor_index], int(counter))
            if obj not in into.exids:
                into.exids[obj] = _exid(*obj)
        written = into.objects.setdefault(obj, set())
        if actions[index] != _DELETE:
            key = keys[index]
            written.add(key if isinstance(key, str) else None)


def _exid(actor: bytes, counter: int) -> bytes:
    return bytes([_EXID_TAG]) + _uleb_bytes(len(actor)) + actor + b"\x00" + _uleb_bytes(counter)


def _column(
    data: bytes, span: tuple[int, int] | None, read: _Reader, ops: int
) -> list[int | str | None]:
    values = [] if span is None else _rle(data, span, read)
    if len(values) > ops:
        raise _Bad
    return values + [None] * (ops - len(values))  # a column may stop before the last ops


def _rle(data: bytes, span: tuple[int, int], read: _Reader) -> list[int | str | None]:
    """Automerge's run-length encoding: signed count n > 0: one value repeated n times;
    n < 0: -n literal values; 0: a ULEB128 count of nulls."""
    pos, end = span
    out: list[int | str | None] = []
    while pos < end:
        count, pos = _sleb(data, pos)
        if count > 0:
            value, pos = read(data, pos)
            out.extend([value] * min(count, _MAX_OPS + 1))
        elif count < 0:
            for _ in range(-count):
                if pos >= end or len(out) > _MAX_OPS:
                    raise _Bad
                value, pos = read(data, pos)
                out.append(value)
        else:
            nulls, pos = _uleb(data, pos)
            out.extend([None] * min(nulls, _MAX_OPS + 1))
        if len(out) > _MAX_OPS or pos > end:
            raise _Bad
    return out


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Bad
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, pos


def _uleb_value(data: bytes, pos: int) -> tuple[int | str, int]:
    return _uleb(data, pos)


def _str_value(data: bytes, pos: int) -> tuple[int | str, int]:
    raw, pos = _bytes(data, pos)
    return raw.decode("utf-8"), pos


def _bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _uleb(data, pos)
    if pos + length > len(data):
        raise _Bad
    return data[pos : pos + length], pos + length


def _uleb_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
