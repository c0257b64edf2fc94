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

from blobstore.manifest import (
    PREVIEW_CHARS,
    is_manifest,
    manifest_blob_hashes,
    resolve_manifest,
)

__all__ = [
    "is_partial",
    "manifest_hashes",
    "partial_stream",
    "resolve_output",
]


def is_partial(manifest: dict[str, Any]) -> bool:
    text = manifest.get("text")
    return isinstance(text, dict) and bool(text.get("partial"))


def partial_stream(output: dict[str, Any], text: str) -> dict[str, Any]:
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
