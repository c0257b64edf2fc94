"""The blobstore exception tree.

Every error raised on purpose by this package derives from :class:`BlobError`, so callers
(the daemon's request handlers) can catch one type and report ``exc.code`` to clients.
"""

from __future__ import annotations

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


class BlobError(Exception):
    """Root of all blobstore errors; ``code`` is a stable machine-readable identifier."""

    code: str = "blob_error"


class InvalidBlobHash(BlobError):
    """A string offered as a blob hash is not 64 lowercase hex characters."""

    code = "invalid_blob_hash"


class BlobNotFound(BlobError):
    """No blob with the requested hash exists in the store."""

    code = "blob_not_found"


class BlobTooLarge(BlobError):
    """A blob exceeds the store's ``max_blob_size``."""

    code = "blob_too_large"


class BlobCorrupt(BlobError):
    """Stored bytes no longer match their hash (or a blob's content cannot be decoded)."""

    code = "blob_corrupt"


class BlobWriteFailed(BlobError):
    """Writing a blob failed at the OS level (disk full, permissions, ...); nothing was left."""

    code = "blob_write_failed"


class BlobReadFailed(BlobError):
    """Reading a blob failed at the OS level for a reason other than it being absent."""

    code = "blob_read_failed"


class InvalidManifest(BlobError):
    """An output cannot be turned into a manifest, or a manifest is malformed."""

    code = "invalid_manifest"
