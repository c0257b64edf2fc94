"""Answer to ``CollectGarbage``: sweep blobs nothing references."""

from __future__ import annotations

import logging

import anyio

from blobstore import BlobStore, GcReport
from protocol.messages import CollectGarbage, GarbageCollected
from runtimed.config import DaemonConfig
from runtimed.daemon.comms import comm_blob_hashes
from runtimed.daemon.rooms import RoomRegistry
from runtimed.documents.manifests import manifest_hashes
from runtimed.errors import InvalidRequest
from runtimed.storage.documents import DocumentStore

__all__ = ["BlobHandlers"]

log = logging.getLogger(__name__)


class BlobHandlers:
    """Garbage collection of the blob store."""

    def __init__(self, rooms: RoomRegistry, blobs: BlobStore, *, config: DaemonConfig) -> None:
        self._rooms = rooms
        self._blobs = blobs
        self._config = config

    async def collect_garbage(self, request: CollectGarbage) -> GarbageCollected:
        grace = request.grace_seconds
        report = await self.collect(
            grace_seconds=self._config.gc_grace_seconds if grace is None else grace
        )
        stale = await anyio.to_thread.run_sync(self._rooms.store.remove_stale)
        return GarbageCollected(
            id=request.id,
            blobs_removed=report.blobs_removed,
            bytes_freed=report.bytes_freed,
            blobs_kept=report.blobs_kept,
            stale_documents_removed=stale,
        )

    async def collect(self, *, grace_seconds: float) -> GcReport:
        """Sweep blobs referenced by no open notebook, persisted document or running
        execution (those pin theirs) and older than ``grace_seconds``.

        Raises:
            InvalidRequest: a negative ``grace_seconds``.
        """
        if grace_seconds < 0:
            raise InvalidRequest("grace_seconds must be >= 0")
        # Bring every pending snapshot up to date first: a snapshot on disk that still names
        # a blob the live document dropped would, after a crash, reload a missing blob.
        for entry in self._rooms.entries():
            await entry.persister.flush()
        store = self._rooms.store

        async def referenced() -> set[str]:
            hashes: set[str] = set()
            open_keys = set()
            for entry in self._rooms.entries():
                runtime = entry.room.runtime
                open_keys.add(DocumentStore.key_for(entry.room.path, entry.room.notebook_id))
                hashes |= comm_blob_hashes(runtime)  # widgets' binary buffers
                for cell_id in runtime.cell_ids():
                    for manifest in runtime.cell_state(cell_id)[1]:
                        hashes |= manifest_hashes(manifest)
            # Open notebooks are marked from their live documents (their snapshots may lag).
            skip = frozenset(open_keys)
            hashes |= await anyio.to_thread.run_sync(lambda: store.referenced_blobs(skip_keys=skip))
            return hashes

        report = await self._blobs.gc(referenced=referenced, grace_seconds=grace_seconds)
        log.info(
            "gc: removed %d blobs (%d bytes), kept %d",
            report.blobs_removed,
            report.bytes_freed,
            report.blobs_kept,
        )
        return report
