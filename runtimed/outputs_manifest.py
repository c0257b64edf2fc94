"""Output manifests: how an nbformat output is stored in the runtime document.

Placeholder until the blob store lands: a manifest is the nbformat output itself, inline.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ManifestWriter", "manifest_from_output", "output_from_manifest"]


class ManifestWriter:
    """Turns nbformat outputs into manifests, writing blobs where needed."""

    async def build_all(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [manifest_from_output(o) for o in outputs]


def manifest_from_output(output: dict[str, Any]) -> dict[str, Any]:
    return dict(output)


def output_from_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(manifest)
