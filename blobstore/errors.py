"""The blobstore's branch of the exception tree.

Every error raised on purpose by this package derives from :class:`BlobError`, itself a
:class:`protocol.errors.RuntimedError` (the project's one root), so callers can catch one type
and a daemon handler reports ``exc.code`` (an :class:`~protocol.errors.ErrorCode`) to clients.
"""

from __future__ import annotations

from protocol.errors import ErrorCode, RuntimedError

__all__ = [
    "BlobCorrupt",
    "BlobError",
    "BlobNotFound",
    "BlobReadFailed",
    "BlobTooLarge",
    "BlobWriteFailed",
    "InvalidBlobHash",
    "InvalidManifest",
]


class BlobError(RuntimedError):
    """Root of all blobstore errors; ``code`` is a stable machine-readable identifier."""

    code = ErrorCode.BLOB_ERROR


class InvalidBlobHash(BlobError):
    """A string offered as a blob hash is not 64 lowercase hex characters."""

    code = ErrorCode.INVALID_BLOB_HASH


class BlobNotFound(BlobError):
    """No blob with the requested hash exists in the store."""

    code = ErrorCode.BLOB_NOT_FOUND


class BlobTooLarge(BlobError):
    """A blob exceeds the store's ``max_blob_size``."""

    code = ErrorCode.BLOB_TOO_LARGE


class BlobCorrupt(BlobError):
    """Stored bytes no longer match their hash (or a blob's content cannot be decoded)."""

    code = ErrorCode.BLOB_CORRUPT


class BlobWriteFailed(BlobError):
    """Writing a blob failed at the OS level (disk full, permissions, ...); nothing was left."""

    code = ErrorCode.BLOB_WRITE_FAILED


class BlobReadFailed(BlobError):
    """Reading a blob failed at the OS level for a reason other than it being absent."""

    code = ErrorCode.BLOB_READ_FAILED


class InvalidManifest(BlobError):
    """An output cannot be turned into a manifest, or a manifest is malformed."""

    code = ErrorCode.INVALID_MANIFEST
