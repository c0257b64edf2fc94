"""Outputs from a real ipykernel survive build_manifest -> BlobStore -> resolve exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blobstore import BlobStore, is_manifest, manifest_blob_hashes, sha256_hex

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PNG_HEX = (
    "89504e470d0a1a0a0000000d49484452000000010000000108020000009077533de00000000c49444154"
    "78da63f8cfc000000301010018dd8db00000000049454e44ae426082"
)
CELLS = [
    "print('x' * 5000)",
    "print('é' * 600)",
    "from IPython.display import Image, display\n"
    f"display(Image(data=bytes.fromhex({PNG_HEX!r})), display_id='fig')",
    "display({'application/json': {'b': [1, 2.5, None], 'a': 'é'}}, raw=True)",
    "display({'text/html': '<b>' + 'y' * 3000 + '</b>', 'text/plain': 'html'}, raw=True)",
    "import base64\n"
    f"display({{'image/png': base64.encodebytes(bytes.fromhex({PNG_HEX!r}) * 20).decode()}},"
    " raw=True)",
    "40 + 2",
    "1 / 0",
]


@pytest.fixture(scope="module")
def kernel_outputs() -> Iterator[list[dict[str, Any]]]:
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    outputs: list[dict[str, Any]] = []
    try:
        for code in CELLS:
            msg_id = kc.execute(code)
            while True:
                msg = kc.get_iopub_msg(timeout=30)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if kind in {"stream", "display_data", "execute_result", "error"}:
                    outputs.append({"output_type": kind, **msg["content"]})
                if kind == "status" and msg["content"]["execution_state"] == "idle":
                    break
        yield outputs
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


async def test_kernel_outputs_round_trip_exactly(
    kernel_outputs: list[dict[str, Any]], tmp_path: Path
) -> None:
    kinds = {o["output_type"] for o in kernel_outputs}
    assert kinds == {"stream", "display_data", "execute_result", "error"}
    store = BlobStore(tmp_path / "blobs")
    manifests = [await store.store_output(o) for o in kernel_outputs]
    for output, manifest in zip(kernel_outputs, manifests, strict=True):
        assert is_manifest(manifest)
        assert await store.resolve(manifest) == output
    # The kernel sent the PNG base64-encoded; the blob holds the real bytes.
    png = bytes.fromhex(PNG_HEX)
    assert await store.get(sha256_hex(png)) == png
    pngs = [m["data"]["image/png"] for m in manifests if "image/png" in m.get("data", {})]
    layouts = {(p.get("b64_line_length", 0), p.get("b64_final_newline", False)) for p in pngs}
    assert layouts == {(0, False), (76, True)}  # IPython's one line; encodebytes' MIME lines
    spilled = set().union(*(manifest_blob_hashes(m) for m in manifests))
    assert len(spilled) >= 4  # big stream, non-ASCII stream, PNG, HTML, wrapped PNG
    report = await store.gc(referenced=spilled, grace_seconds=0)
    assert report.blobs_removed == 0
