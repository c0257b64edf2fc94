"""Big outputs end to end: kernel → blob store → runtime document (manifests only) → HTTP →
client → saved .ipynb, plus garbage collection, loading big outputs from a file, and what a
corrupt blob on disk does. Real daemon, real ipykernel, real files.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest

from blobstore import BlobCorrupt
from protocol.errors import ErrorCode
from protocol.messages import StatusReply
from runtimed.client import AsyncClient, AsyncNotebook, ExecutionResult
from runtimed.config import DaemonConfig
from runtimed.daemon.app import Daemon
from runtimed.documents.manifests import manifest_hashes
from runtimed.errors import RuntimedError

from .conftest import write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DEADLINE = 60
MAX_DOC_GROWTH = 64 * 1024


def make_png(width: int = 1024, height: int = 1024, *, seed: int = 7) -> bytes:
    """A valid RGB PNG of random (incompressible) pixels: about ``3 * width * height`` bytes."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def big_text() -> str:
    """What the 8 MB cell prints: 100 000 distinct lines of 80 bytes."""
    return "".join(f"{n:07d}" + "y" * 72 + "\n" for n in range(100_000))


BIG_CELLS: list[dict[str, object]] = [
    {
        "cell_type": "code",
        "metadata": {},
        "source": "import sys\nfor i in range(100):\n"
        "    sys.stdout.write(''.join(f'{i * 1000 + j:07d}' + 'y' * 72 + '\\n' "
        "for j in range(1000)))",
    },
    {
        "cell_type": "code",
        "metadata": {},
        "source": "from IPython.display import Image, display\n"
        "with open('img.png', 'rb') as f:\n    display(Image(data=f.read()))",
    },
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_file(blob_dir: str, blob_hash: str) -> Path:
    return Path(blob_dir) / blob_hash[:2] / blob_hash[2:4] / blob_hash


async def http_get(status: StatusReply, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET from the daemon's web server, with its token (docs/web.md)."""
    assert status.http_port is not None
    token = (Path(status.home) / "web-token").read_text().strip()

    def get() -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", status.http_port, timeout=30)
        try:
            conn.request("GET", target, headers={"Authorization": f"token {token}"})
            response = conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, response.read()
        finally:
            conn.close()

    return await anyio.to_thread.run_sync(get)


async def run_big_cells(
    client: AsyncClient, short_tmp: Path
) -> tuple[AsyncNotebook, bytes, list[ExecutionResult], int]:
    """Open a notebook, run the 8 MB cell and the 3 MB PNG cell; returns the notebook, the
    PNG, the results and the runtime document's size before running."""
    png = make_png()
    assert len(png) > 3_000_000
    (short_tmp / "img.png").write_bytes(png)
    path = write_notebook(short_tmp / "big.ipynb", BIG_CELLS)
    nb = await client.open(path)
    before = len(nb.runtime.save())
    results = [await nb.execute(cell_id, timeout=DEADLINE) for cell_id in ("cell0", "cell1")]
    assert [r.status for r in results] == ["ok", "ok"], results
    return nb, png, results, before


def image_manifest(nb: AsyncNotebook) -> dict[str, Any]:
    [manifest] = nb.runtime.cell_state("cell1")[1]
    return manifest


# ------------------------------------------------------------------ document, HTTP


async def test_big_outputs_stay_out_of_the_runtime_document_and_are_served_over_http(
    client: AsyncClient, short_tmp: Path
) -> None:
    nb, png, results, before = await run_big_cells(client, short_tmp)
    text = big_text()

    # The document (whole history included) grew by manifests, not megabytes.
    growth = len(nb.runtime.save()) - before
    assert growth < MAX_DOC_GROWTH, f"runtime document grew by {growth} bytes"

    # The client resolves the blobs to exactly what the kernel produced.
    assert results[0].outputs == [{"output_type": "stream", "name": "stdout", "text": text}]
    [image] = results[1].outputs
    assert image["output_type"] == "display_data"
    assert base64.b64decode(image["data"]["image/png"]) == png

    status = await client.status()
    assert status.http_port is not None
    text_hash, png_hash = sha256(text.encode()), sha256(png)
    [stream_manifest] = nb.runtime.cell_state("cell0")[1]
    assert manifest_hashes(stream_manifest) == {text_hash}
    assert png_hash in manifest_hashes(image_manifest(nb))
    assert blob_file(status.blob_dir, png_hash).read_bytes() == png

    code, headers, body = await http_get(status, f"/blob/{png_hash}")
    assert code == 200
    assert body == png
    assert headers["content-type"] == "image/png"
    assert "immutable" in headers["cache-control"]
    code, headers, body = await http_get(status, f"/blob/{text_hash}")
    assert (code, body.decode()) == (200, text)
    assert headers["content-type"].startswith("text/plain")

    assert (await http_get(status, "/blob/" + "0" * 64))[0] == 404
    for malformed in ("nothex", png_hash.upper(), png_hash[:-1], "..%2F..%2Fetc%2Fpasswd"):
        assert (await http_get(status, f"/blob/{malformed}"))[0] == 400, malformed


async def test_save_reinlines_blobs_exactly(client: AsyncClient, short_tmp: Path) -> None:
    nb, png, results, _ = await run_big_cells(client, short_tmp)
    saved_path = await nb.save()
    saved = nbformat.read(saved_path, as_version=4)
    nbformat.validate(saved)
    outputs = {c["id"]: json.loads(json.dumps(c["outputs"])) for c in saved.cells}
    assert outputs["cell0"] == results[0].outputs
    assert outputs["cell0"][0]["text"] == big_text()
    assert outputs["cell1"] == results[1].outputs
    png_b64 = outputs["cell1"][0]["data"]["image/png"]
    assert base64.b64decode(png_b64) == png
    assert png_b64.replace("\n", "") == base64.b64encode(png).decode()


# ------------------------------------------------------------------ garbage collection


class TestGcOnItsOwn:
    """GC's marking and sweeping, with the daemon's background persistence out of the picture
    (a debounce longer than the test: no runtime snapshot is written while it runs)."""

    @pytest.fixture
    def daemon_config(self) -> DaemonConfig:
        return DaemonConfig(heads_timeout=5.0, persist_debounce=600.0)

    async def test_gc_removes_orphaned_blobs_and_keeps_referenced_ones(
        self, client: AsyncClient, daemon: Daemon, short_tmp: Path
    ) -> None:
        nb, png, _, _ = await run_big_cells(client, short_tmp)
        # The only snapshot is the one written when the notebook was opened (a document built
        # from a file is persisted before the open is answered): it names none of the outputs.
        snapshots = [p.read_text() for p in daemon.paths.documents.glob("*.runtime.json")]
        assert not any(sha256(big_text().encode()) in text for text in snapshots)
        status = await client.status()
        text_blob = blob_file(status.blob_dir, sha256(big_text().encode()))
        png_blob = blob_file(status.blob_dir, sha256(png))
        assert text_blob.is_file()
        assert png_blob.is_file()

        await nb.clear_outputs(["cell0"])
        await client.wait_until(lambda: nb.runtime.cell_state("cell0") == (None, []), timeout=10)
        report = await client.collect_garbage(grace_seconds=0)
        assert not text_blob.exists()
        assert png_blob.read_bytes() == png
        assert report.blobs_removed >= 1
        assert report.bytes_freed >= len(big_text())
        # What is still referenced still resolves.
        assert base64.b64decode(nb.outputs("cell1")[0]["data"]["image/png"]) == png


async def test_gc_right_after_clear_removes_cleared_blobs_the_daemon_had_persisted(
    client: AsyncClient, daemon: Daemon, short_tmp: Path
) -> None:
    """The daemon persists each open notebook's runtime state in the background (debounced).
    A snapshot written before a clear must not keep the cleared outputs' blobs alive when gc
    runs right after the clear: for an open notebook the live runtime document is the truth
    (or pending persists are flushed before marking)."""
    nb, png, _, _ = await run_big_cells(client, short_tmp)
    await nb.save()
    status = await client.status()
    text_hash = sha256(big_text().encode())
    text_blob = blob_file(status.blob_dir, text_hash)
    assert text_blob.is_file()
    # Let the daemon persist its state (debounced): the persisted snapshot then references
    # the output that is cleared next. (A file, so: check it until a deadline.)
    snapshots = daemon.paths.documents
    with anyio.fail_after(10):
        while not any(text_hash in p.read_text() for p in snapshots.glob("*.runtime.json")):
            await anyio.sleep(0.05)

    await nb.clear_outputs(["cell0"])
    await client.wait_until(lambda: nb.runtime.cell_state("cell0") == (None, []), timeout=10)
    await client.collect_garbage(grace_seconds=0)
    assert not text_blob.exists(), "the cleared 8 MB output's blob survived gc"
    assert blob_file(status.blob_dir, sha256(png)).read_bytes() == png


# ------------------------------------------------------------------ loading big outputs


async def test_opening_a_notebook_with_big_outputs_moves_them_into_the_store(
    client: AsyncClient, short_tmp: Path
) -> None:
    png = make_png(seed=11)
    text = "".join(f"line {n}\n" for n in range(250_000))  # ~2.9 MB
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": text},
        {
            "output_type": "display_data",
            "metadata": {},
            "data": {"image/png": base64.b64encode(png).decode(), "text/plain": "<Image>"},
        },
    ]
    path = write_notebook(
        short_tmp / "loaded.ipynb",
        [
            {
                "cell_type": "code",
                "source": "# ran elsewhere",
                "outputs": outputs,
                "execution_count": 4,
            },
        ],
    )
    assert path.stat().st_size > 6_000_000

    nb = await client.open(path)
    assert len(nb.runtime.save()) < MAX_DOC_GROWTH
    status = await client.status()
    for data in (text.encode(), png):
        assert blob_file(status.blob_dir, sha256(data)).read_bytes() == data
    assert nb.outputs("cell0") == outputs
    assert nb.execution_count("cell0") == 4

    await nb.save()
    saved = nbformat.read(path, as_version=4)
    nbformat.validate(saved)
    assert json.loads(json.dumps(saved.cells[0]["outputs"])) == outputs
    assert saved.cells[0]["execution_count"] == 4


# ------------------------------------------------------------------ corruption


def corrupt(path: Path, size: int) -> None:
    """Put other bytes of the same size where a blob should be (a read that finds it corrupt
    moves it aside, so it may have to be recreated)."""
    if path.exists():
        path.chmod(0o600)
    path.write_bytes(b"\x00" * size)


async def test_a_corrupt_blob_is_not_served_and_not_saved(
    client: AsyncClient, short_tmp: Path
) -> None:
    nb, png, _, _ = await run_big_cells(client, short_tmp)
    saved_path = await nb.save()
    good = saved_path.read_bytes()
    status = await client.status()
    assert status.http_port is not None
    png_hash = sha256(png)
    png_blob = blob_file(status.blob_dir, png_hash)

    corrupt(png_blob, len(png))
    code, _, body = await http_get(status, f"/blob/{png_hash}")
    assert code == 500
    assert png not in body
    assert len(body) < 1000
    # The client library verifies what it reads from disk, too.
    corrupt(png_blob, len(png))
    with pytest.raises(BlobCorrupt):
        nb.outputs("cell1")

    # Saving must not write the corrupt bytes (or drop the output silently).
    corrupt(png_blob, len(png))
    await nb.set_source("cell0", "# edited, so the checkpoint would change")
    with pytest.raises(RuntimedError):
        await nb.save()
    assert saved_path.read_bytes() == good
    # The daemon keeps serving.
    await client.ping()


async def test_saving_with_a_corrupt_blob_names_the_problem(
    client: AsyncClient, short_tmp: Path
) -> None:
    """The error reply says what happened (a blob error code, the word corrupt), not a bare
    "internal error ... see the daemon log" (STYLE 4: expected failures get specific errors;
    protocol.errors.ErrorCode has BLOB_ERROR)."""
    nb, png, _, _ = await run_big_cells(client, short_tmp)
    status = await client.status()
    corrupt(blob_file(status.blob_dir, sha256(png)), len(png))
    with pytest.raises(RuntimedError) as caught:
        await nb.save()
    assert caught.value.code == ErrorCode.BLOB_ERROR, (caught.value.code, str(caught.value))
    assert "corrupt" in str(caught.value)
