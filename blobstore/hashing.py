"""Content hashes: computing, validating and sharding SHA-256 hex digests (pure)."""

from __future__ import annotations

import hashlib
import re

from blobstore.errors import InvalidBlobHash

__all__ = ["HASH_HEX_LENGTH", "sha256_hex", "shard_path", "validate_hash"]

HASH_HEX_LENGTH = 64

# fullmatch with an explicit class: `$` would accept a trailing newline, and \d/\w would
# accept non-ASCII digits. Only these 16 characters can ever reach the filesystem.
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def validate_hash(s: str) -> str:
    """Check that ``s`` is a blob hash (exactly 64 lowercase hex characters) and return it.

    This is the only gate between client-supplied strings and filesystem paths, so it is
    deliberately strict: no uppercase, no whitespace, no separators.

    Raises:
        InvalidBlobHash: ``s`` is not a str of 64 lowercase hex characters.
    """
    if not isinstance(s, str) or _HASH_RE.fullmatch(s) is None:
        shown = repr(s) if len(repr(s)) <= 80 else repr(s)[:77] + "..."
        raise InvalidBlobHash(
            f"invalid blob hash {shown}: expected exactly {HASH_HEX_LENGTH} lowercase hex "
            "characters (a SHA-256 digest); check the reference you were given"
        )
    return s


def shard_path(hash: str) -> tuple[str, str, str]:
    """Split a validated hash into two-level shard directories and a file name.

    ``"abcd…"`` becomes ``("ab", "cd", "abcd…")``; the store lays blobs out as
    ``root/ab/cd/abcd…`` so no directory holds more than 256 entries per level.

    Raises:
        InvalidBlobHash: ``hash`` is not a valid blob hash.
    """
    h = validate_hash(hash)
    return h[0:2], h[2:4], h
