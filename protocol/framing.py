"""Length-prefixed framing, without I/O (in the manner of h11).

After the handshake (:mod:`protocol.handshake`), frames flow in both directions: length
(u32, big-endian, counts the kind byte and the payload) + kind (u8) + payload.

Limits: a frame may hold at most ``max_frame_size`` bytes (64 MiB by default; Automerge sync
messages of a big notebook need room), and a CONTROL frame at most ``max_control_frame_size``
(the daemon uses 64 KiB, as the Rust runtimed does: no request needs more). Both are checked
as soon as the 5-byte header is in, before the payload is buffered.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from protocol.errors import ProtocolError

# The version and magic belong to the handshake; re-exported for existing importers.
from protocol.handshake import MAGIC, PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_CONTROL_FRAME_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAGIC",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "encode_frame",
]

DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_CONTROL_FRAME_SIZE = 64 * 1024
"""What the daemon accepts in one CONTROL frame from a client."""

_LENGTH = struct.Struct(">I")


class FrameKind(enum.IntEnum):
    """What a frame's payload holds."""

    CONTROL = 1
    """A msgpack-encoded control message (request, reply or event)."""
    SYNC = 2
    """A msgpack-encoded :class:`protocol.messages.SyncEnvelope` (an Automerge sync message)."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    payload: bytes


def encode_frame(
    kind: FrameKind, payload: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """Frame ``payload``.

    Raises:
        ProtocolError: the frame would exceed ``max_frame_size`` (the peer would refuse it).
    """
    length = len(payload) + 1
    if length > max_frame_size:
        raise ProtocolError(
            f"frame of {length} bytes exceeds the maximum frame size of {max_frame_size} bytes"
        )
    return _LENGTH.pack(length) + bytes((kind,)) + payload


class FrameDecoder:
    """Incremental frame decoder: feed it bytes, take complete frames out.

    It never reads a socket; the caller feeds whatever arrived, in pieces of any size. It
    holds at most one partial frame, so what it buffers is bounded by the frame limits.

    Args:
        max_frame_size: the largest frame accepted (kind byte + payload).
        max_control_frame_size: the largest CONTROL frame (None: ``max_frame_size``).
    """

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_control_frame_size: int | None = None,
    ) -> None:
        self._buffer = bytearray()
        self._max = max_frame_size
        self._max_control = (
            max_frame_size
            if max_control_frame_size is None
            else min(max_control_frame_size, max_frame_size)
        )

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data`` and return every frame it completed, in order.

        Raises:
            ProtocolError: an empty or oversized length prefix or an unknown frame kind.
                The decoder is then unusable; close the connection.
        """
        self._buffer += data
        frames: list[Frame] = []
        view = self._buffer
        offset = 0
        while len(view) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(view, offset)
            if length == 0:
                raise ProtocolError("frame with length 0 (no kind byte)")
            if length > self._max:
                raise ProtocolError(
                    f"frame of {length} bytes exceeds the maximum frame size of {self._max} bytes"
                )
            if len(view) - offset <= _LENGTH.size:
                break  # the kind byte is not in yet
            kind_byte = view[offset + _LENGTH.size]
            try:
                kind = FrameKind(kind_byte)
            except ValueError:
                raise ProtocolError(f"unknown frame kind {kind_byte}") from None
            if kind is FrameKind.CONTROL and length > self._max_control:
                raise ProtocolError(
                    f"control frame of {length} bytes exceeds the maximum control frame size "
                    f"of {self._max_control} bytes"
                )
            end = offset + _LENGTH.size + length
            if len(view) < end:
                break
            frames.append(Frame(kind, bytes(view[offset + _LENGTH.size + 1 : end])))
            offset = end
        if offset:
            del self._buffer[:offset]
        return frames
