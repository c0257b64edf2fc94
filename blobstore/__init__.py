"""Content-addressed storage for notebook outputs.

``build_manifest`` turns an nbformat output into a small *manifest* plus the blobs it
references; :class:`BlobStore` stores blobs on disk (atomic, verified, garbage-collected);
``resolve_manifest`` / ``BlobStore.resolve`` give the original output back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blobstore.errors import (
    BlobCorrupt,
    BlobError,
    BlobNotFound,
    BlobReadFailed,
    BlobTooLarge,
    BlobWriteFailed,
    InvalidBlobHash,
    InvalidManifest,
)

if TYPE_CHECKING:
    from blobstore.hashing import sha256_hex, shard_path, validate_hash
    from blobstore.manifest import (
        DEFAULT_INLINE_THRESHOLD,
        MANIFEST_VERSION,
        BlobContent,
        BlobRef,
        InlineContent,
        PendingBlob,
        Preview,
        build_manifest,
        is_binary_mime,
        is_json_mime,
        is_manifest,
        manifest_blob_hashes,
        resolve_manifest,
    )
    from blobstore.store import DEFAULT_MAX_BLOB_SIZE, BlobStore, GcReport, PinSet

__all__ = [
    "DEFAULT_INLINE_THRESHOLD",
    "DEFAULT_MAX_BLOB_SIZE",
    "MANIFEST_VERSION",
    "BlobContent",
    "BlobCorrupt",
    "BlobError",
    "BlobNotFound",
    "BlobReadFailed",
    "BlobRef",
    "BlobStore",
    "BlobTooLarge",
    "BlobWriteFailed",
    "GcReport",
    "InlineContent",
    "InvalidBlobHash",
    "InvalidManifest",
    "PendingBlob",
    "PinSet",
    "Preview",
    "build_manifest",
    "is_binary_mime",
    "is_json_mime",
    "is_manifest",
    "manifest_blob_hashes",
    "resolve_manifest",
    "sha256_hex",
    "shard_path",
    "validate_hash",
]

_HASHING = frozenset({"sha256_hex", "shard_path", "validate_hash"})
_STORE = frozenset({"DEFAULT_MAX_BLOB_SIZE", "BlobStore", "GcReport", "PinSet"})


def __getattr__(name: str) -> Any:
    # Hashing, manifests and the store (hashlib, anyio, tempfile, shutil) load on first use:
    # every client imports this package for its error classes (runtimed.errors), and a
    # command such as 'runt ps' touches neither blobs nor a store.
    import importlib

    if name in _HASHING:
        module = "blobstore.hashing"
    elif name in _STORE:
        module = "blobstore.store"
    elif name in __all__:
        module = "blobstore.manifest"
    else:
        raise AttributeError(f"module 'blobstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
