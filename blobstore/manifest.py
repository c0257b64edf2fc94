"""Output manifests: nbformat v4 outputs with large or binary payloads moved to blobs (pure).

The runtime document stores a *manifest* instead of each output. A manifest is the output
dict with every payload (stream ``text`` and each ``data[mime]`` value) replaced by a
*content* object, plus ``"manifest_version": 1``. All other keys (``name``, ``metadata``,
``execution_count``, ``transient``, ``ename``/``evalue``/``traceback``, unknown keys) are
copied verbatim. A content object is either

* inline: ``{"inline": str, "encoding": "text" | "json"}``, or
* a blob reference: ``{"blob": hash, "size": n, "media_type": mime, "encoding":
  "text" | "json" | "base64"}`` plus, only when needed, ``"b64_line_length": int``,
  ``"b64_final_newline": bool`` and, for spilled streams, ``"preview": {"head", "tail"}``.

Encodings say how to turn the stored text/bytes back into the nbformat value:
``text`` is the string itself (UTF-8 in a blob), ``json`` is deterministic JSON text
(sorted keys, compact) of any JSON value, ``base64`` means the blob holds the decoded
bytes and the value is re-encoded with standard base64 in the recorded line layout.

Normalizations (the only ways ``resolve_manifest(build_manifest(o)) != o``):

* a payload given as a list of strings (nbformat's on-disk multiline form) is joined into
  one str, exactly as ``nbformat.v4.rwbase.rejoin_lines`` does. Lists under JSON mime types
  are JSON values and are kept as lists.
* JSON values come back as the equal value from ``json.loads`` (dict key order and int/float
  identity as JSON gives them; tuples would become lists, but Jupyter messages never hold
  tuples).

Sizes and the inline threshold are measured in UTF-8 bytes of the stored form (lone
surrogates, which JSON can carry, are kept via ``surrogatepass``). Binary values always go
to a blob whatever their size, so the document never holds base64.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any, Literal, TypeGuard

import msgspec

from blobstore.content import (
    BlobContent,
    BlobRef,
    Content,
    Encoding,
    InlineContent,
    PendingBlob,
    Preview,
    b64_encode,
    b64_layout,
    is_binary_mime,
    is_json_mime,
    json_dumps,
    utf8,
    utf8_decode,
)
from blobstore.errors import BlobCorrupt, BlobError, InvalidManifest
from blobstore.hashing import sha256_hex, validate_hash

__all__ = [
    "DEFAULT_INLINE_THRESHOLD",
    "MANIFEST_VERSION",
    "PREVIEW_CHARS",
    "BlobContent",
    "BlobRef",
    "InlineContent",
    "PendingBlob",
    "Preview",
    "build_manifest",
    "is_binary_mime",
    "is_json_mime",
    "is_manifest",
    "manifest_blob_hashes",
    "resolve_manifest",
]

MANIFEST_VERSION = 1
DEFAULT_INLINE_THRESHOLD = 1024
PREVIEW_CHARS = 512
_VERSION_KEY = "manifest_version"
_STREAM_MEDIA_TYPE = "text/plain"


def is_manifest(x: object) -> TypeGuard[dict[str, Any]]:
    """True if ``x`` is a manifest dict produced by :func:`build_manifest`."""
    return (
        isinstance(x, dict)
        and x.get(_VERSION_KEY) == MANIFEST_VERSION
        and isinstance(x.get("output_type"), str)
    )


# --- building -------------------------------------------------------------------------


class _Builder:
    def __init__(self, inline_threshold: int) -> None:
        self.threshold = inline_threshold
        self.pending: dict[str, PendingBlob] = {}

    def _spill(self, data: bytes, media_type: str) -> str:
        h = sha256_hex(data)
        # First media type wins when identical bytes appear twice in one output.
        self.pending.setdefault(h, PendingBlob(hash=h, data=data, media_type=media_type))
        return h

    def _text(
        self, text: str, media_type: str, encoding: Literal["text", "json"], *, preview: bool
    ) -> Content:
        data = utf8(text)
        if len(data) <= self.threshold:
            return InlineContent(inline=text, encoding=encoding)
        pv = None
        if preview:
            tail_start = max(PREVIEW_CHARS, len(text) - PREVIEW_CHARS)
            pv = Preview(head=text[:PREVIEW_CHARS], tail=text[tail_start:])
        h = self._spill(data, media_type)
        return BlobContent(
            blob=h, size=len(data), media_type=media_type, encoding=encoding, preview=pv
        )

    def value(self, mime: str, value: Any, *, preview: bool = False) -> Content:
        json_mime = is_json_mime(mime)
        if not json_mime and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = "".join(value)  # nbformat multiline form; see module docstring
        if json_mime or not isinstance(value, str):
            return self._text(json_dumps(value), mime, "json", preview=False)
        if is_binary_mime(mime):
            layout = b64_layout(value)
            if layout is not None:
                raw, line_length, final_newline = layout
                h = self._spill(raw, mime)
                return BlobContent(
                    blob=h,
                    size=len(raw),
                    media_type=mime,
                    encoding="base64",
                    b64_line_length=line_length,
                    b64_final_newline=final_newline,
                )
            # Not reproducible base64 (e.g. an unknown script type): keep it as text.
        return self._text(value, mime, "text", preview=preview)


def _to_builtins(c: Content) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(c)
    return out


def build_manifest(
    output: dict[str, Any], *, inline_threshold: int = DEFAULT_INLINE_THRESHOLD
) -> tuple[dict[str, Any], list[PendingBlob]]:
    """Turn an nbformat v4 output into a manifest and the blobs it needs.

    Text payloads (stream text, ``text/*``, JSON serialized deterministically) of at most
    ``inline_threshold`` UTF-8 bytes stay inline; larger ones and every binary payload
    (base64-decoded first) become blob references. Spilled streams keep a head/tail preview.

    Args:
        output: an nbformat v4 output dict (JSON data, as decoded from a Jupyter message).
        inline_threshold: largest payload, in UTF-8 bytes, kept in the document.

    Returns:
        ``(manifest, pending)``: write every ``pending`` blob to the store *before*
        publishing ``manifest``, or readers may find dangling references.

    Raises:
        InvalidManifest: ``output`` is not a dict with a str ``output_type``, is already a
            manifest, or holds non-JSON values.
        ValueError: ``inline_threshold`` is negative.
    """
    if inline_threshold < 0:
        raise ValueError(f"inline_threshold must be >= 0, got {inline_threshold}")
    if not isinstance(output, dict) or not isinstance(output.get("output_type"), str):
        raise InvalidManifest(
            "cannot build a manifest: expected an nbformat output dict with a str 'output_type'"
        )
    if _VERSION_KEY in output:
        raise InvalidManifest(
            f"output already has a {_VERSION_KEY!r} key; it is a manifest already "
            "(resolve it first) or uses a reserved key"
        )
    b = _Builder(inline_threshold)
    manifest: dict[str, Any] = {_VERSION_KEY: MANIFEST_VERSION}
    output_type = output["output_type"]
    for key, value in output.items():
        if output_type == "stream" and key == "text":
            manifest[key] = _to_builtins(b.value(_STREAM_MEDIA_TYPE, value, preview=True))
        elif key == "data" and output_type != "error":
            if not isinstance(value, dict):
                raise InvalidManifest(
                    f"{output_type} output has a 'data' of type {type(value).__name__}; "
                    "expected a mimebundle dict"
                )
            manifest[key] = {mime: _to_builtins(b.value(mime, v)) for mime, v in value.items()}
        else:
            manifest[key] = copy.deepcopy(value)
    return manifest, list(b.pending.values())


# --- resolving ------------------------------------------------------------------------


def _content(raw: object, where: str) -> Content:
    if not isinstance(raw, dict):
        raise InvalidManifest(f"manifest {where} is not a content object: {raw!r:.80}")
    kind: type[Content] = BlobContent if "blob" in raw else InlineContent
    try:
        content = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise InvalidManifest(f"manifest {where} is malformed: {exc}") from exc
    if isinstance(content, BlobContent):
        try:
            validate_hash(content.blob)
        except BlobError as exc:
            raise InvalidManifest(f"manifest {where} has a bad blob hash: {exc}") from exc
    return content


def _payloads(manifest: dict[str, Any]) -> list[tuple[str, str, object]]:
    """(key, mime, raw content) for every payload slot; mime is '' for stream text."""
    if not is_manifest(manifest):
        raise InvalidManifest(
            f"not a manifest (no {_VERSION_KEY}={MANIFEST_VERSION} and str output_type); "
            "it may be a raw output or from a newer runtimed"
        )
    slots: list[tuple[str, str, object]] = []
    output_type = manifest["output_type"]
    if output_type == "stream" and "text" in manifest:
        slots.append(("text", "", manifest["text"]))
    if output_type != "error" and "data" in manifest:
        data = manifest["data"]
        if not isinstance(data, dict):
            raise InvalidManifest("manifest 'data' is not a dict of content objects")
        slots.extend(("data", mime, raw) for mime, raw in data.items())
    return slots


def manifest_blob_hashes(manifest: dict[str, Any]) -> set[str]:
    """Return the hashes of every blob ``manifest`` references (for GC marking).

    A non-manifest (e.g. a legacy raw output) references nothing and yields an empty set.

    Raises:
        InvalidManifest: ``manifest`` claims to be a manifest but is malformed; GC must
            then not sweep, since its references are unknown.
    """
    if not is_manifest(manifest):
        return set()
    hashes: set[str] = set()
    for key, mime, raw in _payloads(manifest):
        content = _content(raw, f"{key}[{mime!r}]" if mime else key)
        if isinstance(content, BlobContent):
            hashes.add(content.blob)
    return hashes


def _resolve_value(content: Content, where: str, read_blob: Callable[[str], bytes]) -> Any:
    if isinstance(content, InlineContent):
        text = content.inline
        encoding: Encoding = content.encoding
    else:
        data = read_blob(content.blob)
        if len(data) != content.size:
            raise BlobCorrupt(
                f"blob {content.blob} for {where} has {len(data)} bytes, manifest says "
                f"{content.size}; the store is damaged, re-run the cell"
            )
        if content.encoding == "base64":
            return b64_encode(data, content.b64_line_length, content.b64_final_newline)
        text = utf8_decode(data, where)
        encoding = content.encoding
    if encoding == "text":
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BlobCorrupt(
            f"JSON payload for {where} does not parse ({exc}); "
            "the manifest or store is damaged, re-run the cell"
        ) from exc


def resolve_manifest(manifest: dict[str, Any], read_blob: Callable[[str], bytes]) -> dict[str, Any]:
    """Rebuild the nbformat output a manifest stands for.

    ``read_blob`` is synchronous; with an async store, fetch ``manifest_blob_hashes`` first
    and pass ``blobs.__getitem__``, or use ``BlobStore.resolve``.

    Args:
        manifest: a dict produced by :func:`build_manifest`.
        read_blob: returns the bytes of a blob given its hash.

    Raises:
        InvalidManifest: ``manifest`` is not a (well-formed) manifest.
        BlobCorrupt: a blob's size or content does not match what the manifest says.
        BlobError: whatever ``read_blob`` raises (e.g. BlobNotFound) propagates.
    """
    _payloads(manifest)  # validates the manifest's shape
    output_type = manifest["output_type"]

    def resolve(where: str, raw: object) -> Any:
        return _resolve_value(_content(raw, where), where, read_blob)

    output: dict[str, Any] = {}
    for key, value in manifest.items():
        if key == _VERSION_KEY:
            continue
        if output_type == "stream" and key == "text":
            output[key] = resolve(key, value)
        elif key == "data" and output_type != "error":
            output[key] = {mime: resolve(f"data[{mime!r}]", v) for mime, v in value.items()}
        else:
            output[key] = copy.deepcopy(value)
    return output
