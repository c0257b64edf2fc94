"""A content-addressed blob store on the local filesystem.

Layout: ``root/ab/cd/<hash>`` holds the bytes whose SHA-256 hex digest is ``<hash>``, and
``root/ab/cd/<hash>.meta`` is a JSON sidecar ``{"media_type", "size", "created"}``. Writes
go to ``.tmp-<hash>-*`` files in the same directory, are fsynced and then ``os.replace``d,
so a blob path either does not exist or holds complete bytes.

All blocking work (hashing, file I/O) runs in worker threads. The store assumes it is the
only writer of ``root`` (one daemon process); coordination between ``put``/``get``/``gc``
within that process uses one short-held ``threading.Lock`` around check-then-act steps.

GC safety. ``gc`` sweeps blobs that are neither referenced nor protected. A blob is
protected while (a) a ``put`` of it is in flight, (b) it is pinned via :meth:`BlobStore.pin`,
(c) it was ``put`` (written or re-put) after the current ``gc`` started, or (d) its mtime is
within ``grace_seconds`` of the sweep time; ``put`` of an existing blob touches its mtime.
(c) closes the mark/sweep race independently of clocks; (d) covers blobs written shortly
before the GC whose manifests are not yet published.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from blobstore._fs import CORRUPT_SUFFIX, META_SUFFIX, READ_FLAGS, atomic_write, fsync_dir
from blobstore.errors import (
    BlobCorrupt,
    BlobNotFound,
    BlobReadFailed,
    BlobTooLarge,
    BlobWriteFailed,
)
from blobstore.gc import GcReport, sweep
from blobstore.hashing import sha256_hex, shard_path, validate_hash
from blobstore.manifest import (
    DEFAULT_INLINE_THRESHOLD,
    BlobRef,
    PendingBlob,
    build_manifest,
    manifest_blob_hashes,
    resolve_manifest,
)

__all__ = ["DEFAULT_MAX_BLOB_SIZE", "BlobStore", "GcReport", "PinSet"]

DEFAULT_MAX_BLOB_SIZE = 512 * 1024 * 1024
FALLBACK_MEDIA_TYPE = "application/octet-stream"


class PinSet:
    """Hashes an in-progress run holds pinned; obtained from :meth:`BlobStore.pin`."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._hashes: set[str] = set()
        self._open = True

    def add(self, hash: str) -> None:
        """Pin ``hash`` until the enclosing ``pin()`` block exits (adding twice is a no-op).

        Raises:
            InvalidBlobHash: ``hash`` is malformed.
            RuntimeError: the ``pin()`` block has already exited.
        """
        validate_hash(hash)
        if not self._open:
            raise RuntimeError("cannot pin into a PinSet whose pin() block has exited")
        if hash not in self._hashes:
            self._hashes.add(hash)
            self._store._adjust_pins(hash, +1)

    def __contains__(self, hash: object) -> bool:
        return hash in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def _release(self) -> None:
        self._open = False
        for h in self._hashes:
            self._store._adjust_pins(h, -1)
        self._hashes.clear()


class BlobStore:
    """Content-addressed blobs under ``root``; see the module docstring for layout and GC.

    Args:
        root: directory holding the store (created on first write).
        max_blob_size: largest blob accepted by ``put``, in bytes.
    """

    def __init__(self, root: Path, *, max_blob_size: int = DEFAULT_MAX_BLOB_SIZE) -> None:
        self.root = Path(root)
        self.max_blob_size = max_blob_size
        # Guards _pins/_gc_protect and the check-then-act steps of put/gc/get-quarantine.
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()  # pin() holders and in-flight puts
        self._gc_protect: list[set[str]] = []  # one set per running gc: hashes put since
        self._gc_lock = anyio.Lock()

    # --- paths & pins ------------------------------------------------------------------

    def path_for(self, hash: str) -> Path:
        """Return the path of blob ``hash`` (which may not exist).

        Raises:
            InvalidBlobHash: ``hash`` is malformed (this is what prevents path traversal).
        """
        a, b, name = shard_path(hash)
        return self.root / a / b / name

    def _adjust_pins(self, hash: str, delta: int) -> None:
        with self._lock:
            self._pins[hash] += delta
            if self._pins[hash] <= 0:
                del self._pins[hash]

    @contextlib.asynccontextmanager
    async def pin(self, *hashes: str) -> AsyncIterator[PinSet]:
        """Protect blobs from ``gc`` for the duration of an ``async with`` block.

        Yields a :class:`PinSet`; ``pins.add(hash)`` pins more hashes as a run produces
        them (add *before* writing so no gc can slip in between). Pins are counted, so
        overlapping pins of one hash are fine.

        Raises:
            InvalidBlobHash: one of ``hashes`` is malformed.
        """
        pins = PinSet(self)
        try:
            for h in hashes:
                pins.add(h)
            yield pins
        finally:
            pins._release()

    # --- writing -----------------------------------------------------------------------

    async def put(self, data: bytes, *, media_type: str) -> BlobRef:
        """Store ``data`` and return its reference; idempotent and atomic.

        Storing bytes that already exist rewrites nothing but refreshes the blob's mtime
        (restarting its GC grace period). The sidecar's media type is first-writer-wins;
        the returned ref carries the ``media_type`` given here.

        Raises:
            BlobTooLarge: ``len(data)`` exceeds ``max_blob_size``.
            BlobWriteFailed: the OS refused the write (e.g. disk full); no file is left.
        """
        if len(data) > self.max_blob_size:
            raise BlobTooLarge(
                f"blob of {len(data)} bytes ({media_type}) exceeds the store limit of "
                f"{self.max_blob_size} bytes; produce a smaller output or raise max_blob_size"
            )
        return await anyio.to_thread.run_sync(self._put_sync, data, media_type, None)

    async def put_pending(self, p: PendingBlob) -> BlobRef:
        """Store a blob produced by ``build_manifest``.

        Raises:
            BlobCorrupt: ``p.hash`` is not the SHA-256 of ``p.data``.
            BlobTooLarge, BlobWriteFailed: as for :meth:`put`.
        """
        if len(p.data) > self.max_blob_size:
            raise BlobTooLarge(
                f"blob {p.hash} of {len(p.data)} bytes ({p.media_type}) exceeds the store "
                f"limit of {self.max_blob_size} bytes; produce a smaller output or raise "
                "max_blob_size"
            )
        validate_hash(p.hash)
        return await anyio.to_thread.run_sync(self._put_sync, p.data, p.media_type, p.hash)

    def _put_sync(self, data: bytes, media_type: str, expected: str | None) -> BlobRef:
        h = sha256_hex(data)
        if expected is not None and h != expected:
            raise BlobCorrupt(
                f"pending blob claims hash {expected} but its data hashes to {h}; "
                "rebuild the manifest instead of editing PendingBlob"
            )
        ref = BlobRef(hash=h, size=len(data), media_type=media_type)
        path = self.path_for(h)
        meta = path.with_name(h + META_SUFFIX)
        with self._lock:
            self._pins[h] += 1  # in flight: gc must not touch this hash or its temp files
            for protect in self._gc_protect:
                protect.add(h)
        try:
            with self._lock:
                try:  # lstat: a symlink planted here is not the blob (it gets replaced)
                    st = os.lstat(path)
                    present = stat.S_ISREG(st.st_mode) and st.st_size == len(data)
                except FileNotFoundError:
                    present = False
                if present:
                    os.utime(path)  # restart the GC grace period
            if present:
                if not meta.exists():  # repair after a crash; the blob itself is fine
                    with contextlib.suppress(OSError):
                        atomic_write(meta, self._meta_bytes(ref), tag=h)
                return ref
            self._write_new(path, meta, data, ref)
            return ref
        except OSError as exc:
            raise BlobWriteFailed(
                f"could not write blob {h} ({len(data)} bytes, {media_type}) under "
                f"{self.root}: {exc.strerror or exc}; free disk space or check permissions, "
                "then retry"
            ) from exc
        finally:
            self._adjust_pins(h, -1)

    @staticmethod
    def _meta_bytes(ref: BlobRef) -> bytes:
        meta = {"media_type": ref.media_type, "size": ref.size, "created": time.time()}
        return json.dumps(meta, sort_keys=True).encode()

    @staticmethod
    def _write_new(path: Path, meta: Path, data: bytes, ref: BlobRef) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Sidecar first: a crash then leaves an orphan sidecar (swept by gc), never a blob
        # whose media type is unknown.
        had_meta = meta.exists()
        atomic_write(meta, BlobStore._meta_bytes(ref), tag=ref.hash)
        try:
            atomic_write(path, data, tag=ref.hash)
        except BaseException:
            if not had_meta:
                with contextlib.suppress(OSError):
                    os.unlink(meta)
            raise
        fsync_dir(path.parent)

    async def store_output(
        self,
        output: dict[str, Any],
        *,
        inline_threshold: int = DEFAULT_INLINE_THRESHOLD,
        pins: PinSet | None = None,
    ) -> dict[str, Any]:
        """Build an output's manifest and write its blobs; publish the result afterwards.

        Args:
            output: an nbformat v4 output dict.
            inline_threshold: see ``build_manifest``.
            pins: if given, every blob is pinned there before it is written.

        Raises:
            InvalidManifest, BlobTooLarge, BlobWriteFailed: see ``build_manifest``/``put``.
        """
        build = partial(build_manifest, output, inline_threshold=inline_threshold)
        manifest, pending = await anyio.to_thread.run_sync(build)
        for p in pending:
            if pins is not None:
                pins.add(p.hash)
            await self.put_pending(p)
        return manifest

    # --- reading -----------------------------------------------------------------------

    async def get(self, hash: str) -> bytes:
        """Return the bytes of blob ``hash``, verified against the hash.

        A blob whose bytes do not match is moved aside to ``<hash>.corrupt`` (so a later
        ``put`` can heal it, and gc removes it) and never returned.

        Raises:
            InvalidBlobHash: ``hash`` is malformed.
            BlobNotFound: no such blob.
            BlobCorrupt: the stored bytes do not hash to ``hash``.
            BlobReadFailed: the OS refused the read.
        """
        path = self.path_for(hash)
        return await anyio.to_thread.run_sync(self._get_sync, hash, path)

    def _get_sync(self, h: str, path: Path) -> bytes:
        try:
            with os.fdopen(os.open(path, READ_FLAGS), "rb") as f:  # never through a symlink
                inode = os.fstat(f.fileno()).st_ino
                data = f.read()
        except FileNotFoundError:
            raise BlobNotFound(
                f"blob {h} is not in the store at {self.root}; it was never written or "
                "was garbage-collected; re-run the cell that produced it"
            ) from None
        except OSError as exc:
            raise BlobReadFailed(
                f"could not read blob {h} at {path}: {exc.strerror or exc}; "
                "check the file's permissions and the disk"
            ) from exc
        if sha256_hex(data) == h:
            return data
        with self._lock, contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # not already replaced by a healing put
                os.replace(path, path.with_name(h + CORRUPT_SUFFIX))
        raise BlobCorrupt(
            f"blob {h} is corrupt on disk (its {len(data)} bytes hash differently); it was "
            "moved aside; re-run the cell that produced it"
        )

    async def exists(self, hash: str) -> bool:
        """True if blob ``hash`` is present (not verified). Raises InvalidBlobHash."""
        path = self.path_for(hash)
        return await anyio.to_thread.run_sync(path.is_file)

    async def media_type(self, hash: str) -> str:
        """Return the media type recorded for blob ``hash``.

        Falls back to ``application/octet-stream`` if the sidecar is missing or unreadable.

        Raises:
            InvalidBlobHash: ``hash`` is malformed.
            BlobNotFound: no such blob.
        """
        path = self.path_for(hash)
        return await anyio.to_thread.run_sync(self._media_type_sync, hash, path)

    def _media_type_sync(self, h: str, path: Path) -> str:
        if not path.is_file():
            raise BlobNotFound(
                f"blob {h} is not in the store at {self.root}; re-run the cell that produced it"
            )
        try:
            with os.fdopen(os.open(path.with_name(h + META_SUFFIX), READ_FLAGS), "rb") as f:
                meta = json.loads(f.read())
        except (OSError, ValueError):
            return FALLBACK_MEDIA_TYPE
        mt = meta.get("media_type") if isinstance(meta, dict) else None
        return mt if isinstance(mt, str) and mt else FALLBACK_MEDIA_TYPE

    async def resolve(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Fetch a manifest's blobs and return the original nbformat output.

        Raises:
            InvalidManifest, BlobNotFound, BlobCorrupt, BlobReadFailed: see
            ``resolve_manifest`` and :meth:`get`.
        """
        blobs = {h: await self.get(h) for h in manifest_blob_hashes(manifest)}
        return resolve_manifest(manifest, blobs.__getitem__)

    # --- garbage collection ------------------------------------------------------------

    async def gc(
        self,
        *,
        referenced: Iterable[str] | Callable[[], Awaitable[set[str]]],
        grace_seconds: float,
        now: float | None = None,
    ) -> GcReport:
        """Delete unreferenced blobs older than ``grace_seconds``; one gc runs at a time.

        Args:
            referenced: hashes still in use, or an async callable computing them (called
                after the gc registers itself, so puts during marking are protected).
            grace_seconds: only files whose mtime is older than ``now - grace_seconds``
                are removed (blobs, stale temp files, orphan sidecars, quarantined blobs).
            now: the sweep time (default: the current time); tests use it to age files.

        Raises:
            ValueError: ``grace_seconds`` is negative.
        """
        if grace_seconds < 0:
            raise ValueError(f"grace_seconds must be >= 0, got {grace_seconds}")
        async with self._gc_lock:
            protect: set[str] = set()
            with self._lock:
                self._gc_protect.append(protect)
            try:
                cutoff = (time.time() if now is None else now) - grace_seconds
                live = set(await referenced()) if callable(referenced) else set(referenced)

                def is_protected(h: str) -> bool:
                    return h in self._pins or h in protect

                run = partial(
                    sweep,
                    self.root,
                    live=live,
                    cutoff=cutoff,
                    lock=self._lock,
                    is_protected=is_protected,
                )
                return await anyio.to_thread.run_sync(run)
            finally:
                with self._lock:
                    self._gc_protect = [p for p in self._gc_protect if p is not protect]
