"""Output manifests written by the daemon: blobs first, then the manifest that names them.

The pure rules (what a manifest is, partial streams, resolving) live in
:mod:`runtimed.documents.manifests`; this module does the blob store I/O.
"""

from __future__ import annotations

from typing import Any

from blobstore import BlobStore, PinSet, build_manifest, is_manifest
from blobstore.manifest import DEFAULT_INLINE_THRESHOLD
from runtimed.documents.manifests import is_partial, partial_stream, resolve_output

__all__ = ["ManifestWriter", "resolve_output_async"]


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
                return partial_stream(output, text)
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
