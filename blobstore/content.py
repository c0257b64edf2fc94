"""Content objects and payload codecs for output manifests (pure).

A manifest replaces each output payload by an :class:`InlineContent` or a
:class:`BlobContent`; the helpers here classify mime types and convert payloads to and from
their stored form exactly (see :mod:`blobstore.manifest` for the rules).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

import msgspec

from blobstore.errors import BlobCorrupt, InvalidManifest

__all__ = [
    "BlobContent",
    "BlobRef",
    "Content",
    "Encoding",
    "InlineContent",
    "PendingBlob",
    "Preview",
    "b64_encode",
    "b64_layout",
    "is_binary_mime",
    "is_json_mime",
    "json_dumps",
    "utf8",
    "utf8_decode",
]

# Text formats outside text/* that nbformat stores as plain strings, not base64.
_TEXT_APPLICATION_MIMES = frozenset(
    {"application/javascript", "application/ecmascript", "application/x-javascript"}
)

Encoding = Literal["text", "json", "base64"]


class BlobRef(msgspec.Struct, frozen=True):
    """A stored blob: its SHA-256 hex ``hash``, ``size`` in bytes and ``media_type``."""

    hash: str
    size: int
    media_type: str


class PendingBlob(msgspec.Struct, frozen=True):
    """Bytes a manifest refers to; write them to the store before publishing the manifest."""

    hash: str
    data: bytes
    media_type: str


class Preview(msgspec.Struct, frozen=True):
    """First and last characters of a spilled stream, for display without fetching it."""

    head: str
    tail: str


class InlineContent(msgspec.Struct, frozen=True):
    """A payload kept in the document: ``inline`` text decoded per ``encoding``."""

    inline: str
    encoding: Literal["text", "json"]


class BlobContent(msgspec.Struct, frozen=True, omit_defaults=True):
    """A payload moved to a blob. ``b64_*`` record the original base64 line layout."""

    blob: str
    size: int
    media_type: str
    encoding: Encoding
    b64_line_length: int = 0
    b64_final_newline: bool = False
    preview: Preview | None = None

    @property
    def ref(self) -> BlobRef:
        """The :class:`BlobRef` this content points at."""
        return BlobRef(hash=self.blob, size=self.size, media_type=self.media_type)


Content = InlineContent | BlobContent


def _base_mime(mime: str) -> str:
    return mime.split(";", 1)[0].strip().lower()


def is_json_mime(mime: str) -> bool:
    """True for JSON mime types (``*/json``, ``*+json``), whose values are JSON data."""
    base = _base_mime(mime)
    return base.endswith("/json") or base.endswith("+json")


def is_binary_mime(mime: str) -> bool:
    """True for mime types whose nbformat values are base64 text of binary data.

    Anything not ``text/*``, not JSON, not ``*+xml`` (e.g. ``image/svg+xml``) and not a
    known script type is considered binary (``image/png``, ``application/pdf``, ...).
    """
    base = _base_mime(mime)
    return not (
        base.startswith("text/")
        or is_json_mime(base)
        or base.endswith("+xml")
        or base in _TEXT_APPLICATION_MIMES
    )


def utf8(text: str) -> bytes:
    """Encode ``text`` as UTF-8, keeping lone surrogates (see :func:`utf8_decode`)."""
    # surrogatepass: JSON-decoded strings may hold lone surrogates; keep them exactly.
    return text.encode("utf-8", "surrogatepass")


def json_dumps(value: Any) -> str:
    """Serialize a JSON value deterministically (sorted keys, compact, non-ASCII kept).

    Raises:
        InvalidManifest: ``value`` is not JSON data.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidManifest(
            f"output value of type {type(value).__name__} is not JSON data ({exc}); "
            "outputs must be JSON as decoded from a Jupyter message"
        ) from exc


def b64_layout(s: str) -> tuple[bytes, int, bool] | None:
    """Decode base64 text if re-encoding can reproduce ``s`` exactly, else None.

    Returns (raw bytes, line length or 0 for one line, trailing newline). Covers ipykernel's
    single line, the old ``b2a_base64`` trailing newline and ``encodebytes``' 76-col lines.
    """
    final_newline = s.endswith("\n")
    body = s[:-1] if final_newline else s
    lines = body.split("\n")
    line_length = len(lines[0]) if len(lines) > 1 else 0
    joined = "".join(lines)
    try:
        raw = base64.b64decode(joined, validate=True)
    except (binascii.Error, ValueError):
        return None
    if b64_encode(raw, line_length, final_newline) != s:
        return None
    return raw, line_length, final_newline


def b64_encode(raw: bytes, line_length: int, final_newline: bool) -> str:
    """Standard base64 of ``raw``, split into ``line_length`` lines (0: one line)."""
    flat = base64.b64encode(raw).decode("ascii")
    if line_length > 0:
        flat = "\n".join(flat[i : i + line_length] for i in range(0, len(flat), line_length))
    return flat + "\n" if final_newline else flat


def utf8_decode(data: bytes, where: str) -> str:
    """Decode a text blob stored by :func:`utf8`.

    Raises:
        BlobCorrupt: ``data`` is not UTF-8 (``where`` names the payload in the message).
    """
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise BlobCorrupt(
            f"blob for {where} is not valid UTF-8 text ({exc}); "
            "the store is damaged, re-run the cell"
        ) from exc
