"""Cell outputs made small enough for an agent's context.

Text is truncated (head and tail kept) with a marker that says how much was left out of how
much; errors become ``ename``/``evalue`` and a traceback with ANSI escapes stripped; images
come back as MCP image content when their blob is at most ``image_limit`` bytes, otherwise as
a URL of the daemon's web endpoint (``GET /blob/{sha256}`` on ``StatusReply.http_port``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMAGE_MIMES",
    "Image",
    "OutputLimits",
    "RenderedOutputs",
    "render_outputs",
    "strip_ansi",
    "truncate",
]

IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")
TEXT_PREFERENCE = ("text/plain", "text/markdown", "text/latex", "application/json", "text/html")

# CSI sequences (colours, cursor moves) and OSC sequences (titles, hyperlinks).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """How much of a cell's outputs a tool result carries."""

    text_chars: int = 8000
    """Per output text (streams, results, tracebacks), in characters."""
    total_chars: int = 32000
    """All text of one reply's outputs together."""
    image_bytes: int = 256 * 1024
    """Images up to this size are inlined as image content; larger ones become a URL."""
    max_source_chars: int = 200_000
    """Longest cell source a tool accepts."""


@dataclass(frozen=True, slots=True)
class Image:
    mime_type: str
    data: str
    """base64, as nbformat stores it."""


@dataclass(slots=True)
class RenderedOutputs:
    outputs: list[dict[str, Any]] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to about ``limit`` characters (3/4 head, 1/4 tail) with a marker."""
    if len(text) <= limit:
        return text, False
    head = max(limit * 3 // 4, 0)
    tail = max(limit - head, 0)
    omitted = len(text) - head - tail
    marker = f"\n[... truncated: {omitted} of {len(text)} characters omitted ...]\n"
    return text[:head] + marker + (text[-tail:] if tail else ""), True


def _join(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return "" if value is None else str(value)


def _blob_ref(manifest: dict[str, Any], mime: str) -> tuple[str | None, int | None]:
    data = manifest.get("data")
    content = data.get(mime) if isinstance(data, dict) else None
    if isinstance(content, dict) and isinstance(content.get("blob"), str):
        size = content.get("size")
        return content["blob"], size if isinstance(size, int) else None
    return None, None


def render_outputs(
    manifests: list[dict[str, Any]],
    resolve: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    limits: OutputLimits,
    blob_url: Callable[[str], str | None],
) -> RenderedOutputs:
    """Bounded views of a cell's stored outputs (the runtime document's manifests).

    ``resolve`` turns a manifest into its nbformat output (reading blobs); images over the
    limit are dropped from the manifest before it is resolved, so they are never read.
    ``blob_url(hash)`` is the web URL of a blob (None: no web endpoint).
    """
    rendered = RenderedOutputs()
    budget = limits.total_chars
    for manifest in manifests:
        large: dict[str, dict[str, Any]] = {}
        small = dict(manifest)
        if isinstance(manifest.get("data"), dict):
            data = dict(manifest["data"])
            for mime in IMAGE_MIMES:
                blob, size = _blob_ref(manifest, mime)
                if mime in data and blob is not None and (size or 0) > limits.image_bytes:
                    large[mime] = {"mime_type": mime, "size": size, "url": blob_url(blob)}
                    if blob_url(blob) is None:
                        large[mime]["note"] = "the daemon's web endpoint is disabled: no URL"
                    del data[mime]
            small["data"] = data
        output = resolve(small)
        view, budget = _view(output, large, limits, budget, rendered)
        rendered.outputs.append(view)
    return rendered


def _text(text: str, limits: OutputLimits, budget: int) -> tuple[dict[str, Any], int]:
    cut, truncated = truncate(text, max(0, min(limits.text_chars, budget)))
    view: dict[str, Any] = {"text": cut}
    if truncated:
        view["truncated"] = True
        view["size"] = len(text)
    return view, budget - len(cut)


def _view(
    output: dict[str, Any],
    large: dict[str, dict[str, Any]],
    limits: OutputLimits,
    budget: int,
    rendered: RenderedOutputs,
) -> tuple[dict[str, Any], int]:
    kind = output.get("output_type")
    if kind == "stream":
        text, budget = _text(_join(output.get("text")), limits, budget)
        return {"type": "stream", "name": output.get("name", "stdout"), **text}, budget
    if kind == "error":
        traceback = strip_ansi("\n".join(str(t) for t in output.get("traceback", [])))
        text, budget = _text(traceback, limits, budget)
        return {
            "type": "error",
            "ename": output.get("ename", ""),
            "evalue": strip_ansi(str(output.get("evalue", ""))),
            "traceback": text["text"],
            **({"truncated": True, "size": text["size"]} if text.get("truncated") else {}),
        }, budget
    data = output.get("data") if isinstance(output.get("data"), dict) else {}
    assert isinstance(data, dict)
    view: dict[str, Any] = {
        "type": "result" if kind == "execute_result" else "display",
        "mime_types": sorted(set(data) | set(large)),
    }
    if kind == "execute_result" and output.get("execution_count") is not None:
        view["execution_count"] = output["execution_count"]
    for mime in TEXT_PREFERENCE:
        if mime in data:
            value = data[mime]
            raw = value if isinstance(value, str | list) else _json_text(value)
            text, budget = _text(strip_ansi(_join(raw)), limits, budget)
            view.update(text)
            view["text_mime"] = mime
            break
    images = []
    for mime in IMAGE_MIMES:
        if mime in data and isinstance(data[mime], str | list):
            encoded = _join(data[mime]).replace("\n", "")
            rendered.images.append(Image(mime_type=mime, data=encoded))
            size = len(encoded) * 3 // 4 - encoded[-2:].count("=")
            images.append({"mime_type": mime, "inline": True, "size": size})
        elif mime in large:
            images.append(large[mime])
    if images:
        view["images"] = images
    return view, budget


def _json_text(value: object) -> str:
    import json

    return json.dumps(value, indent=1, sort_keys=True, default=str)
