"""Output manifests in the runtime document: what is stored instead of each output.

Every output in the runtime document is a manifest (``blobstore.manifest``): small text
inline, larger text and every binary payload as a content-addressed blob reference. While a
cell runs, a stream that has outgrown the inline threshold is published as a *partial*
manifest — size plus a head/tail preview, no blob — so a flood of output never writes a new
multi-megabyte blob at every flush; the final manifest (with its blob) replaces it when the
execution ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blobstore import (
    BlobStore,
    PinSet,
    build_manifest,
    is_manifest,
    manifest_blob_hashes,
    resolve_manifest,
)
from blobstore.manifest import DEFAULT_INLINE_THRESHOLD, PREVIEW_CHARS

__all__ = [
    "ManifestWriter",
    "is_partial",
    "manifest_hashes",
    "resolve_output",
    "resolve_output_async",
]


def is_partial(manifest: dict[str, Any]) -> bool:
    text = manifest.get("text")
    return isinstance(text, dict) and bool(text.get("partial"))


def _partial_stream(output: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "manifest_version": 1,
        "output_type": "stream",
        "name": output.get("name", "stdout"),
        "text": {
            "partial": True,
            "size": len(text),
            "preview": {"head": text[:PREVIEW_CHARS], "tail": text[-PREVIEW_CHARS:]},
        },
    }


def _partial_output(manifest: dict[str, Any]) -> dict[str, Any]:
    text = manifest["text"]
    preview = text.get("preview", {})
    return {
        "output_type": "stream",
        "name": manifest.get("name", "stdout"),
        "text": f"{preview.get('head', '')}\n[... {text.get('size', 0)} characters so far; "
        f"the full text is stored when the cell finishes ...]\n{preview.get('tail', '')}",
    }


def manifest_hashes(manifest: dict[str, Any]) -> set[str]:
    """Blob hashes a stored output references (none for partial or legacy outputs)."""
    if not is_manifest(manifest) or is_partial(manifest):
        return set()
    return manifest_blob_hashes(manifest)


def resolve_output(manifest: dict[str, Any], read_blob: Callable[[str], bytes]) -> dict[str, Any]:
    """The nbformat output a stored manifest stands for (blobs read with ``read_blob``)."""
    if is_partial(manifest):
        return _partial_output(manifest)
    if not is_manifest(manifest):
        return dict(manifest)
    return resolve_manifest(manifest, read_blob)


async def resolve_output_async(manifest: dict[str, Any], store: BlobStore) -> dict[str, Any]:
    """As :func:`resolve_output`, reading (and verifying) blobs through the store."""
    if is_partial(manifest) or not is_manifest(manifest):
        return resolve_output(manifest, lambda h: b"")
    return await store.resolve(manifest)


_INLINE_BUILD_LIMIT = 64 * 1024


def _payload_size(output: dict[str, Any]) -> int:
    size = 0
    for value in (output.get("text"), *(output.get("data") or {}).values()):
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += sum(len(v) for v in value if isinstance(v, str))
        elif value is not None:
            size += _INLINE_BUILD_LIMIT  # JSON values: let the thread serialise them
    return size


class ManifestWriter:
    """Turns nbformat outputs into manifests, writing their blobs first."""

    def __init__(
        self, store: BlobStore, *, inline_threshold: int = DEFAULT_INLINE_THRESHOLD
    ) -> None:
        self.store = store
        self.inline_threshold = inline_threshold
        # Non-stream outputs do not change once emitted (display updates make new dicts):
        # remember their manifests so re-flushing a running cell does not re-hash images.
        self._cache: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    def forget(self) -> None:
        self._cache.clear()

    async def build(
        self, output: dict[str, Any], *, final: bool = True, pins: PinSet | None = None
    ) -> dict[str, Any]:
        if output.get("output_type") == "stream":
            text = output.get("text", "")
            text = text if isinstance(text, str) else "".join(text)
            if not final and len(text) > self.inline_threshold:
                return _partial_stream(output, text)
            return await self._store(output, pins)
        cached = self._cache.get(id(output))
        if cached is not None and cached[0] is output:
            return cached[1]
        manifest = await self._store(output, pins)
        self._cache[id(output)] = (output, manifest)
        return manifest

    async def _store(self, output: dict[str, Any], pins: PinSet | None) -> dict[str, Any]:
        if _payload_size(output) > _INLINE_BUILD_LIMIT:
            # Hashing megabytes belongs in a worker thread.
            return await self.store.store_output(
                output, inline_threshold=self.inline_threshold, pins=pins
            )
        # Small outputs (the common case): building the manifest costs microseconds, less
        # than a thread hop, so do it here and only write blobs (if any) through the store.
        manifest, pending = build_manifest(output, inline_threshold=self.inline_threshold)
        for blob in pending:
            if pins is not None:
                pins.add(blob.hash)
            await self.store.put_pending(blob)
        return manifest

    async def build_all(
        self, outputs: list[dict[str, Any]], *, final: bool = True, pins: PinSet | None = None
    ) -> list[dict[str, Any]]:
        return [await self.build(o, final=final, pins=pins) for o in outputs]
