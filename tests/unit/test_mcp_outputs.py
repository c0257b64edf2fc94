"""Bounded outputs and argument validation of the agent tools (pure parts)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from blobstore.manifest import build_manifest, resolve_manifest
from runtimed.mcp.outputs import OutputLimits, render_outputs, strip_ansi, truncate
from runtimed.mcp.tools import TOOLS, ToolError, validate


def test_truncate_keeps_head_and_tail_and_says_how_much() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(10_000))
    cut, truncated = truncate(text, 1000)
    assert truncated
    assert cut.startswith(text[:750])
    assert cut.endswith(text[-250:])
    assert "[... truncated: 9000 of 10000 characters omitted ...]" in cut
    assert truncate("short", 1000) == ("short", False)


def test_strip_ansi_removes_colours_and_osc() -> None:
    coloured = "\x1b[0;31mZeroDivisionError\x1b[0m: \x1b]8;;http://x\x07link\x1b]8;;\x07 done"
    assert strip_ansi(coloured) == "ZeroDivisionError: link done"


def _stored(outputs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    blobs: dict[str, bytes] = {}
    manifests = []
    for output in outputs:
        manifest, pending = build_manifest(output)
        for blob in pending:
            blobs[blob.hash] = blob.data
        manifests.append(manifest)
    return manifests, blobs


def test_render_inlines_small_images_and_links_large_ones_without_reading_them() -> None:
    small = base64.b64encode(b"\x89PNG" + b"s" * 100).decode()
    large = base64.b64encode(b"\x89PNG" + b"L" * 50_000).decode()
    manifests, blobs = _stored(
        [
            {"output_type": "display_data", "data": {"image/png": small, "text/plain": "s"},
             "metadata": {}},
            {"output_type": "display_data", "data": {"image/png": large, "text/plain": "L"},
             "metadata": {}},
            {"output_type": "error", "ename": "E", "evalue": "\x1b[1mv\x1b[0m",
             "traceback": ["\x1b[31mline 1\x1b[0m", "line 2"]},
        ]
    )  # fmt: skip
    read: list[str] = []

    def resolve(manifest: dict[str, Any]) -> dict[str, Any]:
        def blob(h: str) -> bytes:
            read.append(h)
            return blobs[h]

        return resolve_manifest(manifest, blob)

    rendered = render_outputs(
        manifests,
        resolve,
        limits=OutputLimits(image_bytes=10_000),
        blob_url=lambda h: f"http://127.0.0.1:1/blob/{h}",
    )
    assert [(i.mime_type, i.data) for i in rendered.images] == [("image/png", small)]
    first, second, error = rendered.outputs
    assert first["images"] == [{"mime_type": "image/png", "inline": True, "size": 104}]
    (link,) = second["images"]
    assert link["url"].startswith("http://127.0.0.1:1/blob/")
    assert link["size"] == 50_004
    assert link["url"].rsplit("/", 1)[1] not in read  # the large blob was never read
    assert error == {"type": "error", "ename": "E", "evalue": "v", "traceback": "line 1\nline 2"}


def test_no_web_endpoint_means_no_url_and_a_note() -> None:
    large = base64.b64encode(b"L" * 50_000).decode()
    manifests, _ = _stored(
        [{"output_type": "display_data", "data": {"image/png": large}, "metadata": {}}]
    )
    rendered = render_outputs(
        manifests,
        lambda m: resolve_manifest(m, lambda h: b""),
        limits=OutputLimits(image_bytes=10),
        blob_url=lambda h: None,
    )
    (image,) = rendered.outputs[0]["images"]
    assert image["url"] is None
    assert "disabled" in image["note"]


def test_total_budget_bounds_a_reply_with_many_outputs() -> None:
    outputs = [{"output_type": "stream", "name": "stdout", "text": "x" * 5000}] * 10
    rendered = render_outputs(
        outputs,
        dict,
        limits=OutputLimits(text_chars=5000, total_chars=12_000),
        blob_url=lambda h: None,
    )
    assert sum(len(o["text"]) for o in rendered.outputs) < 12_000 + 10 * 80


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("execute_cell", {"notebook": "n", "cell_id": "c", "timeout": 0}, "greater than 0"),
        ("execute_cell", {"notebook": "n", "cell_id": "c", "timeout": True}, "must be a number"),
        ("execute_cell", {"notebook": "n"}, "missing required argument(s) cell_id"),
        ("get_notebook", {"notebook": "n", "extra": 1}, "unknown argument(s) 'extra'"),
        ("get_notebook", {"notebook": None}, "must not be null"),
        ("insert_cell", {"notebook": "n", "position": "middle"}, "must be one of"),
        ("run_notebook", {"notebook": "n", "parameters": [1]}, "must be a object"),
    ],
)
def test_validate_rejects_bad_arguments(tool: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(TOOLS[tool], args)


def test_every_tool_has_a_closed_schema_and_a_description() -> None:
    assert len(TOOLS) == 25
    for tool in TOOLS.values():
        assert tool.schema["additionalProperties"] is False
        assert set(tool.schema["required"]) <= set(tool.schema["properties"])
        assert 20 < len(tool.description) < 160, tool.name
        props = tool.schema["properties"]
        validate(tool, {n: props[n].get("enum", ["x"])[0] for n in tool.schema["required"]})
