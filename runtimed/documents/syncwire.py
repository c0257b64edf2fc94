"""A peek into Automerge sync messages: does one carry changes? (Pure; no I/O.)

The binding's ``Message`` is opaque, and the daemon must refuse changes to the
daemon-authoritative runtime document. Trying a message on a fork of the document costs a copy
of it per message; nearly every message a client sends for that document is a bare
acknowledgement, which this parser recognises from the bytes alone.

Layout (Automerge's sync protocol, message types 0x42 and 0x43): type byte; heads (ULEB128
count, 32-byte hashes); need (same); have (ULEB128 count, each: last_sync hashes, then a
length-prefixed bloom filter); changes (ULEB128 count, each length-prefixed); optional trailing
fields. Anything unexpected answers "maybe" (True), so callers fall back to the safe path.
"""

from __future__ import annotations

__all__ = ["heads_count", "may_carry_changes"]

_SYNC_TYPES = (0x42, 0x43)
_HASH = 32


class _Truncated(Exception):
    pass


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Truncated
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _skip_hashes(data: bytes, pos: int) -> int:
    count, pos = _uleb(data, pos)
    pos += count * _HASH
    if pos > len(data):
        raise _Truncated
    return pos


def heads_count(data: bytes) -> int | None:
    """How many heads the sender's document has (0: it is empty), from a sync message's
    first field; None when ``data`` is not a well-formed start of a sync message."""
    if not data or data[0] not in _SYNC_TYPES:
        return None
    try:
        count, pos = _uleb(data, 1)
    except _Truncated:
        return None
    if pos + count * _HASH > len(data):
        return None
    return count


def may_carry_changes(data: bytes) -> bool:
    """False only when ``data`` is a well-formed sync message with no changes in it."""
    if not data or data[0] not in _SYNC_TYPES:
        return True
    try:
        pos = _skip_hashes(data, 1)  # heads
        pos = _skip_hashes(data, pos)  # need
        haves, pos = _uleb(data, pos)
        for _ in range(haves):
            pos = _skip_hashes(data, pos)  # last_sync
            bloom, pos = _uleb(data, pos)
            pos += bloom
            if pos > len(data):
                return True
        changes, _ = _uleb(data, pos)
    except _Truncated:
        return True
    return changes != 0
