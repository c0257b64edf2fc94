"""The protocol's error vocabulary: one exception type for bad bytes, one enum of wire codes."""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "ProtocolError"]


class ErrorCode(enum.StrEnum):
    """Machine-readable codes carried by :class:`protocol.messages.ErrorReply`.

    Codes are part of the wire protocol: add new ones, never rename or reuse one.
    """

    PROTOCOL_ERROR = "protocol_error"
    VERSION_MISMATCH = "version_mismatch"
    UNKNOWN_MESSAGE = "unknown_message"
    NOTEBOOK_NOT_FOUND = "notebook_not_found"
    NOTEBOOK_INVALID = "notebook_invalid"
    NOTEBOOK_IO = "notebook_io"
    CELL_NOT_FOUND = "cell_not_found"
    CELL_NOT_CODE = "cell_not_code"
    CELL_EMPTY = "cell_empty"
    HEADS_TIMEOUT = "heads_timeout"
    KERNEL_NOT_FOUND = "kernel_not_found"
    KERNEL_START_FAILED = "kernel_start_failed"
    KERNEL_NOT_RUNNING = "kernel_not_running"
    KERNEL_DIED = "kernel_died"
    EXECUTION_NOT_FOUND = "execution_not_found"
    EXECUTION_TIMEOUT = "execution_timeout"
    BLOB_ERROR = "blob_error"
    INVALID_REQUEST = "invalid_request"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL_ERROR = "internal_error"
    RUNTIME_NOT_FOUND = "runtime_not_found"
    KERNEL_LIMIT = "kernel_limit"
    ENV_BUILD_FAILED = "env_build_failed"
    DOCUMENT_ERROR = "document_error"


class ProtocolError(Exception):
    """Bytes on the wire that do not form a valid handshake, frame or message.

    The only exception the pure protocol layer raises for bad input; anything else is a bug.
    A framing error (bad length, unknown frame kind, oversized frame) closes the connection
    after an error reply; an undecodable message inside a good frame gets an error reply and
    the connection stays open.
    """

    code = ErrorCode.PROTOCOL_ERROR
