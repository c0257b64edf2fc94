"""The root of the project's exception tree, the wire's error codes, and the protocol's errors.

Every error runtimed raises on purpose derives from :class:`RuntimedError`, defined here
because this is the one package every other one may import (``blobstore`` and ``runtimed``
both build on ``protocol``). ``runtimed.errors`` re-exports it and draws the whole tree.

Each class declares the :class:`ErrorCode` it travels as. An error that has structured
attributes says them in :meth:`RuntimedError.wire_details` and rebuilds itself from them in
:meth:`RuntimedError.from_wire`, so the error a client raises from an ``ErrorReply`` has the
same attributes (and the same message) as the one the daemon raised.
"""

from __future__ import annotations

import enum
from typing import Self

import msgspec

__all__ = [
    "ErrorCode",
    "ErrorDetails",
    "ProtocolError",
    "RuntimedError",
    "UnknownMessage",
    "VersionMismatch",
]


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
    # The blobstore's own errors (they had these string codes before they joined the tree).
    INVALID_BLOB_HASH = "invalid_blob_hash"
    BLOB_NOT_FOUND = "blob_not_found"
    BLOB_TOO_LARGE = "blob_too_large"
    BLOB_CORRUPT = "blob_corrupt"
    BLOB_WRITE_FAILED = "blob_write_failed"
    BLOB_READ_FAILED = "blob_read_failed"
    INVALID_MANIFEST = "invalid_manifest"
    KERNEL_REQUEST_TIMEOUT = "kernel_request_timeout"
    COMM_NOT_FOUND = "comm_not_found"


class ErrorDetails(msgspec.Struct, frozen=True, kw_only=True):
    """The structured attributes of an error, carried by ``ErrorReply.details``.

    One flat Struct of optional fields rather than a union per class: a client decodes the
    details of any error, including those of classes added after it was built (it ignores
    fields it does not know). Each class fills the fields it has.
    """

    name: str | None = None
    """The kernelspec or runtime asked for (``KernelNotFound``, ``RuntimeNotFound``)."""
    available: list[str] | None = None
    """What could have been asked for instead (``KernelNotFound``, ``RuntimeNotFound``)."""
    reason: str | None = None
    """The message without any appended output tail (``KernelStartFailed``, ``EnvBuildFailed``)."""
    stderr_tail: str | None = None
    """The last lines a kernel wrote before failing to start (``KernelStartFailed``)."""
    package: str | None = None
    """The dependency at fault, when it could be told (``EnvBuildFailed``)."""
    output_tail: str | None = None
    """The tail of uv's output (``EnvBuildFailed``)."""


_NO_DETAILS = ErrorDetails()


class RuntimedError(Exception):
    """Root of every error the project raises on purpose (``runtimed.errors.RuntimedError``).

    ``code`` is the :class:`ErrorCode` the error travels as in an ``ErrorReply``.
    """

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    remote_code: str | None = None
    """For errors rebuilt from an ErrorReply: the code exactly as the daemon sent it."""

    def wire_details(self) -> ErrorDetails | None:
        """The structured attributes to send with this error (None: the message says it all)."""
        return None

    @classmethod
    def from_wire(cls, message: str, details: ErrorDetails | None = None) -> Self:
        """Rebuild the error a peer described: its attributes from ``details`` (defaults for
        the fields that are absent), and ``str(err)`` exactly the peer's ``message``."""
        err = cls._rebuild(message, details or _NO_DETAILS)
        err.args = (message,)
        return err

    @classmethod
    def _rebuild(cls, message: str, details: ErrorDetails) -> Self:
        # Classes whose __init__ takes more than a message override this.
        return cls(message)


class ProtocolError(RuntimedError):
    """Bytes on the wire that do not form a valid handshake, frame or message.

    The only exception the pure protocol layer raises for bad input; anything else is a bug.
    A framing error (bad length, unknown frame kind, oversized frame) closes the connection
    after an error reply; an undecodable message inside a good frame gets an error reply and
    the connection stays open.
    """

    code = ErrorCode.PROTOCOL_ERROR


class UnknownMessage(ProtocolError):
    """The daemon could not decode a request (unknown ``type`` or fields of the wrong shape)."""

    code = ErrorCode.UNKNOWN_MESSAGE


class VersionMismatch(ProtocolError):
    """The two ends speak different protocol versions; the message says which and what to do."""

    code = ErrorCode.VERSION_MISMATCH
