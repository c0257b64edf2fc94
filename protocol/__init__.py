"""The runtimed wire protocol: handshake, frames, messages. Pure: no sockets, no files."""

from __future__ import annotations

from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder, FrameKind
from protocol.handshake import MAGIC, PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAGIC",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "ProtocolError",
]
