"""BlobStore against real files in tmp_path: writes, reads, corruption, limits, GC."""

from __future__ import annotations

import base64
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import blobstore._fs
from blobstore import (
    BlobCorrupt,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    BlobWriteFailed,
    GcReport,
    InvalidBlobHash,
    PendingBlob,
    build_manifest,
    sha256_hex,
)

pytestmark = pytest.mark.anyio

PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108020000009077533de00000000c49444154"
    "78da63f8cfc000000301010018dd8db00000000049454e44ae426082"
)
OLD = time.time() - 10 * 24 * 3600  # an mtime well past any grace period used here


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def age(path: Path, when: float = OLD) -> None:
    os.utime(path, (when, when))


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


# --- put / get ---------------------------------------------------------------------------


async def test_put_get_roundtrip_and_layout(store: BlobStore) -> None:
    data = b"hello blob"
    ref = await store.put(data, media_type="text/plain")
    h = sha256_hex(data)
    assert (ref.hash, ref.size, ref.media_type) == (h, len(data), "text/plain")
    path = store.root / h[:2] / h[2:4] / h
    assert store.path_for(h) == path
    assert path.read_bytes() == data
    meta = json.loads(path.with_name(h + ".meta").read_text())
    assert meta["media_type"] == "text/plain"
    assert meta["size"] == len(data)
    assert abs(meta["created"] - time.time()) < 60
    assert await store.get(h) == data
    assert await store.exists(h)
    assert await store.media_type(h) == "text/plain"
    assert files_under(store.root) == [path, path.with_name(h + ".meta")]


async def test_empty_blob(store: BlobStore) -> None:
    ref = await store.put(b"", media_type="application/octet-stream")
    assert await store.get(ref.hash) == b""


async def test_put_is_idempotent_and_dedups(store: BlobStore) -> None:
    data = os.urandom(4096)
    ref1 = await store.put(data, media_type="image/png")
    path = store.path_for(ref1.hash)
    inode = path.stat().st_ino
    age(path)
    ref2 = await store.put(data, media_type="image/jpeg")
    assert ref2.hash == ref1.hash
    assert path.stat().st_ino == inode, "an existing blob must not be rewritten"
    assert path.stat().st_mtime > time.time() - 60, "re-put must refresh the mtime"
    assert await store.media_type(ref1.hash) == "image/png"  # first writer wins
    assert len(files_under(store.root)) == 2  # one blob + one sidecar


async def test_concurrent_puts_of_same_bytes(store: BlobStore) -> None:
    data = b"same" * 1000
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(lambda: store.put(data, media_type="text/plain"))
    assert await store.get(sha256_hex(data)) == data
    assert len(files_under(store.root)) == 2


async def test_missing_blob(store: BlobStore) -> None:
    h = sha256_hex(b"never written")
    with pytest.raises(BlobNotFound) as exc_info:
        await store.get(h)
    assert exc_info.value.code == "blob_not_found"
    assert h in str(exc_info.value)
    assert not await store.exists(h)
    with pytest.raises(BlobNotFound):
        await store.media_type(h)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "abc", "a" * 64 + "/"])
async def test_invalid_hashes_never_touch_the_filesystem(store: BlobStore, bad: str) -> None:
    with pytest.raises(InvalidBlobHash):
        await store.get(bad)
    with pytest.raises(InvalidBlobHash):
        await store.exists(bad)
    with pytest.raises(InvalidBlobHash):
        await store.media_type(bad)
    with pytest.raises(InvalidBlobHash):
        store.path_for(bad)
    with pytest.raises(InvalidBlobHash):
        async with store.pin(bad):
            pass


async def test_corrupt_blob_is_detected_and_healable(store: BlobStore) -> None:
    data = b"precious output bytes"
    ref = await store.put(data, media_type="text/plain")
    path = store.path_for(ref.hash)
    path.write_bytes(b"PRECIOUS output bytes")  # same size, different content
    with pytest.raises(BlobCorrupt) as exc_info:
        await store.get(ref.hash)
    assert exc_info.value.code == "blob_corrupt"
    # Moved aside, never served again; a put of the right bytes heals the store.
    assert not await store.exists(ref.hash)
    assert path.with_name(ref.hash + ".corrupt").exists()
    await store.put(data, media_type="text/plain")
    assert await store.get(ref.hash) == data


async def test_truncated_blob_is_rewritten_by_put(store: BlobStore) -> None:
    data = b"0123456789" * 10
    ref = await store.put(data, media_type="text/plain")
    store.path_for(ref.hash).write_bytes(data[:5])
    await store.put(data, media_type="text/plain")
    assert await store.get(ref.hash) == data


async def test_media_type_falls_back_without_sidecar(store: BlobStore) -> None:
    ref = await store.put(b"x", media_type="text/plain")
    store.path_for(ref.hash).with_name(ref.hash + ".meta").unlink()
    assert await store.media_type(ref.hash) == "application/octet-stream"
    await store.put(b"x", media_type="text/plain")  # re-put repairs the sidecar
    assert await store.media_type(ref.hash) == "text/plain"


async def test_size_cap(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_blob_size=10)
    await store.put(b"x" * 10, media_type="text/plain")
    with pytest.raises(BlobTooLarge) as exc_info:
        await store.put(b"x" * 11, media_type="text/plain")
    assert exc_info.value.code == "blob_too_large"
    assert "max_blob_size" in str(exc_info.value)
    big = b"y" * 11
    with pytest.raises(BlobTooLarge):
        await store.put_pending(PendingBlob(sha256_hex(big), big, "text/plain"))
    assert not await store.exists(sha256_hex(b"x" * 11))


@pytest.mark.parametrize("fail_on_call", [1, 2])
async def test_disk_full_leaves_nothing_behind(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch, fail_on_call: int
) -> None:
    """Call 1 is the sidecar write, call 2 the blob itself; either failing cleans up."""
    real = blobstore._fs.write_fully
    calls = 0

    def flaky_write(fd: int, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls >= fail_on_call:
            real(fd, data[: len(data) // 2])  # a partial write first, like a real ENOSPC
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(blobstore._fs, "write_fully", flaky_write)
    data = os.urandom(10_000)
    with pytest.raises(BlobWriteFailed) as exc_info:
        await store.put(data, media_type="image/png")
    assert exc_info.value.code == "blob_write_failed"
    assert isinstance(exc_info.value.__cause__, OSError)
    assert exc_info.value.__cause__.errno == errno.ENOSPC
    assert "free disk space" in str(exc_info.value)
    assert files_under(store.root) == []
    assert not await store.exists(sha256_hex(data))

    monkeypatch.setattr(blobstore._fs, "write_fully", real)
    ref = await store.put(data, media_type="image/png")  # space freed: works again
    assert await store.get(ref.hash) == data


async def test_put_pending_checks_the_hash(store: BlobStore) -> None:
    with pytest.raises(BlobCorrupt, match="rebuild the manifest"):
        await store.put_pending(PendingBlob(sha256_hex(b"a"), b"b", "text/plain"))
    ref = await store.put_pending(PendingBlob(sha256_hex(b"a"), b"a", "text/plain"))
    assert ref.hash == sha256_hex(b"a")


async def test_store_output_and_resolve(store: BlobStore) -> None:
    png = PNG_1X1
    out: dict[str, Any] = {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode(), "text/plain": "t" * 5000},
        "metadata": {"image/png": {"width": 8}},
    }
    async with store.pin() as pins:
        manifest = await store.store_output(out, pins=pins)
        assert sha256_hex(png) in pins
        assert len(pins) == 2
    assert await store.get(sha256_hex(png)) == png
    assert await store.media_type(sha256_hex(png)) == "image/png"
    assert await store.resolve(manifest) == out


# --- gc ----------------------------------------------------------------------------------


async def put_old(store: BlobStore, data: bytes) -> str:
    ref = await store.put(data, media_type="application/octet-stream")
    age(store.path_for(ref.hash))
    return ref.hash


async def test_gc_keeps_referenced_and_removes_old_orphans(store: BlobStore) -> None:
    live = await put_old(store, b"live")
    dead = await put_old(store, b"dead!")
    fresh = (await store.put(b"fresh", media_type="text/plain")).hash
    report = await store.gc(referenced={live}, grace_seconds=3600)
    assert report == GcReport(blobs_removed=1, bytes_freed=5, blobs_kept=2)
    assert await store.exists(live)
    assert await store.exists(fresh), "an orphan within the grace period is kept"
    assert not await store.exists(dead)
    assert not store.path_for(dead).with_name(dead + ".meta").exists()
    # Later, past the grace period, the fresh orphan goes too.
    report = await store.gc(referenced=[live], grace_seconds=3600, now=time.time() + 7200)
    assert report.blobs_removed == 1
    assert not await store.exists(fresh)
    assert await store.exists(live)


async def test_gc_with_async_referenced_and_empty_store(store: BlobStore) -> None:
    async def referenced() -> set[str]:
        return set()

    assert await store.gc(referenced=referenced, grace_seconds=0) == GcReport(0, 0, 0)
    h = await put_old(store, b"x")
    report = await store.gc(referenced=referenced, grace_seconds=60)
    assert report.blobs_removed == 1
    assert not await store.exists(h)


async def test_gc_removes_stale_temp_files_and_leaves_foreign_files(store: BlobStore) -> None:
    h = await put_old(store, b"keep me")
    shard = store.path_for(h).parent
    stale = shard / ".tmp-leftover-from-crash"
    stale.write_bytes(b"partial")
    age(stale)
    recent = shard / ".tmp-being-written"
    recent.write_bytes(b"partial")
    orphan_meta = shard / (sha256_hex(b"gone") + ".meta")
    orphan_meta.write_text("{}")
    age(orphan_meta)
    foreign = store.root / "README"
    foreign.write_text("not a blob")
    age(foreign)
    misplaced = shard / sha256_hex(b"wrong shard")
    misplaced.write_bytes(b"wrong shard")
    age(misplaced)

    report = await store.gc(referenced={h}, grace_seconds=60)
    assert report.temp_files_removed == 1
    assert not stale.exists()
    assert recent.exists()
    assert not orphan_meta.exists()
    assert foreign.exists()
    assert misplaced.exists()
    assert await store.exists(h)


async def test_gc_negative_grace(store: BlobStore) -> None:
    with pytest.raises(ValueError, match="grace_seconds"):
        await store.gc(referenced=set(), grace_seconds=-1)


async def test_pin_protects_until_released(store: BlobStore) -> None:
    a = await put_old(store, b"a")
    b = await put_old(store, b"b")
    async with store.pin(a) as pins:
        pins.add(b)
        pins.add(b)  # idempotent
        async with store.pin(a):  # nested pins of one hash are counted
            pass
        report = await store.gc(referenced=(), grace_seconds=0, now=time.time() + 1)
        assert report.blobs_removed == 0
        assert report.blobs_kept == 2
    with pytest.raises(RuntimeError):
        pins.add(a)
    report = await store.gc(referenced=(), grace_seconds=0, now=time.time() + 1)
    assert report.blobs_removed == 2


async def test_put_during_gc_survives(store: BlobStore) -> None:
    """The mark/sweep race: gc computes an empty referenced set; meanwhile a run puts a new
    blob and re-puts an old orphan (not yet published in any manifest). Both must survive
    even with no grace period and a sweep clock far in the future."""
    old = await put_old(store, b"old orphan that is re-put")
    doomed = await put_old(store, b"truly unreferenced")
    marking = anyio.Event()
    put_done = anyio.Event()
    new_hash = sha256_hex(b"new output")

    async def referenced() -> set[str]:
        marking.set()
        await put_done.wait()  # the document was scanned before the puts were published
        return set()

    async def run_cell() -> None:
        await marking.wait()
        await store.put(b"new output", media_type="text/plain")
        await store.put(b"old orphan that is re-put", media_type="text/plain")
        put_done.set()

    reports: list[GcReport] = []

    async def collect() -> None:
        reports.append(
            await store.gc(referenced=referenced, grace_seconds=0, now=time.time() + 3600)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        tg.start_soon(run_cell)

    assert reports[0].blobs_removed == 1
    assert await store.get(new_hash) == b"new output"
    assert await store.get(old) == b"old orphan that is re-put"
    assert not await store.exists(doomed)
    # Protection lasts for that gc only; the next gc judges by references and grace again.
    report = await store.gc(referenced={new_hash}, grace_seconds=0, now=time.time() + 3600)
    assert report.blobs_removed == 1
    assert not await store.exists(old)


async def test_put_racing_gc_sweep_threads(store: BlobStore) -> None:
    """Hammer put (re-put of old orphans) against concurrent sweeps: every put that returned
    must leave a readable blob behind."""
    payloads = [f"blob {i}".encode() * 50 for i in range(60)]
    for p in payloads:
        await put_old(store, p)

    async def putter() -> None:
        for p in payloads:
            await store.put(p, media_type="text/plain")

    # Sweeps remove anything older than an hour ago: the aged orphans, but not a blob
    # whose put touched it. Serialized gcs keep sweeping while the puts run.
    sweep_time = time.time() - 3600
    reports: list[GcReport] = []

    async def collector() -> None:
        reports.append(await store.gc(referenced=(), grace_seconds=0, now=sweep_time))

    async with anyio.create_task_group() as tg:
        tg.start_soon(putter)
        for _ in range(5):
            tg.start_soon(collector)
    assert sum(r.blobs_removed for r in reports) <= len(payloads)
    # Every blob was either touched before a sweep looked (kept) or swept before its put
    # looked (and rewritten by that put).
    for p in payloads:
        assert await store.get(sha256_hex(p)) == p


async def test_manifest_blobs_written_before_publish_survive_gc(store: BlobStore) -> None:
    out = {"output_type": "stream", "name": "stdout", "text": "x" * 10_000}
    manifest, pending = build_manifest(out)
    for p in pending:
        await store.put_pending(p)
    # Not yet published: the grace period protects the fresh blob.
    report = await store.gc(referenced=set(), grace_seconds=300)
    assert report.blobs_removed == 0
    assert await store.resolve(manifest) == out
