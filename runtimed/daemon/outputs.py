"""The running cell's outputs into the runtime document, as manifests.

Owned by one :class:`~runtimed.daemon.executor.NotebookExecutor`. The kernel's IOPub reader
calls :meth:`OutputRecorder.on_change` (never blocking); :meth:`OutputRecorder.run`, the
flusher, writes the running cell's outputs at a bounded rate so a flood of output costs a
bounded number of document writes; :meth:`OutputRecorder.record_outcome` writes a finished
cell's final outputs. ``update_display_data`` for a display id shown by other cells rewrites
those outputs (the Jupyter messaging spec's display_id semantics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from blobstore import BlobError, BlobStore, PinSet
from runtimed.daemon.manifests import ManifestWriter
from runtimed.daemon.queue import Entry, RecordOutcome
from runtimed.daemon.room import NotebookRoom
from runtimed.kernels.outputs import DisplayUpdate, OutputChange

__all__ = ["OutputRecorder"]

log = logging.getLogger(__name__)

_MIN_FLUSH_INTERVAL = 0.02
_FLUSH_BYTES_PER_SECOND = 50e6  # adapt the interval so re-serialising a growing output stays cheap


class OutputRecorder:
    """Outputs of one notebook's executions, into its runtime document."""

    def __init__(
        self, room: NotebookRoom, blobs: BlobStore, *, running: Callable[[], Entry | None]
    ) -> None:
        self._room = room
        self._running = running
        self.manifests = ManifestWriter(blobs)
        self.pins: PinSet | None = None
        """Blobs written for the running execution are pinned until the document names them."""
        self.pending: OutputChange | None = None
        """The latest output change the kernel reported, not yet written."""
        self._wake = anyio.Event()
        self._display_updates: list[DisplayUpdate] = []
        self._displays: dict[str, dict[str, tuple[int, ...]]] = {}

    def wake(self) -> None:
        """Write :attr:`pending` now (it arrived before its execution became the running one)."""
        self._wake.set()

    def end_execution(self) -> None:
        self.pins = None
        self.manifests.forget()

    async def record_outcome(self, effect: RecordOutcome) -> None:
        room, runtime = self._room, self._room.runtime
        try:
            manifests = await self.manifests.build_all(
                list(effect.outputs), final=True, pins=self.pins
            )
        except BlobError as exc:
            # e.g. a full disk: the output is lost, not the execution record; say so.
            manifests = [
                await self.manifests.build(
                    {
                        "output_type": "error",
                        "ename": "OutputNotStored",
                        "evalue": f"the cell's outputs could not be stored: {exc}",
                        "traceback": [],
                    }
                )
            ]
        if room.runtime is runtime:
            runtime.set_outputs(effect.cell_id, manifests)
            runtime.set_execution_count(effect.cell_id, effect.execution_count)
            runtime.update_execution(
                effect.execution_id,
                status=effect.status,
                execution_count=effect.execution_count,
                ename=effect.ename,
                evalue=effect.evalue,
            )
            room.runtime_changed()
        # After this cell's outputs are in place: a display update the next cell (already
        # sent ahead) made to one of them must not be overwritten by them.
        self.record_displays(effect.cell_id, dict(effect.display_ids))
        if self._display_updates:
            await self.apply_display_updates()

    def on_change(self, change: OutputChange) -> None:
        # Called from the kernel's IOPub reader: never block, just note and wake the flusher.
        self.pending = change
        if change.display_update is not None:
            self._display_updates.append(change.display_update)
        self._wake.set()

    async def apply_display_updates(self) -> None:
        """``update_display_data`` for a display id shown by other cells: rewrite those
        outputs' data and metadata (the Jupyter messaging spec's display_id semantics)."""
        updates, self._display_updates = self._display_updates, []
        running = self._running()
        running_cell = running.cell_id if running is not None else None
        changed = False
        for update in updates:
            for cell_id, indices in self._displays.get(update.display_id, {}).items():
                if cell_id == running_cell:
                    continue
                _, manifests = self._room.runtime.cell_state(cell_id)
                for index in indices:
                    if index < len(manifests):
                        old = manifests[index]
                        output: dict[str, Any] = {
                            "output_type": old.get("output_type", "display_data"),
                            "data": update.data,
                            "metadata": update.metadata,
                        }
                        if "execution_count" in old:
                            output["execution_count"] = old["execution_count"]
                        manifests[index] = await self.manifests.build(output, pins=self.pins)
                        changed = True
                self._room.runtime.set_outputs(cell_id, manifests)
        if changed:
            self._room.runtime_changed()

    def record_displays(self, cell_id: str, display_ids: dict[str, tuple[int, ...]]) -> None:
        for cells in self._displays.values():
            cells.pop(cell_id, None)
        for display_id, indices in display_ids.items():
            self._displays.setdefault(display_id, {})[cell_id] = indices

    async def run(self) -> None:
        """Write the running cell's outputs to the runtime document, at a bounded rate."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self._display_updates:
                try:
                    await self.apply_display_updates()
                except BlobError as exc:
                    log.warning("could not store a display update: %s", exc)
            change, job = self.pending, self._running()
            if change is None or job is None:
                continue
            outputs = change.outputs
            try:
                manifests = await self.manifests.build_all(outputs, final=False, pins=self.pins)
            except BlobError as exc:
                log.warning("could not store outputs of %s: %s", job.cell_id, exc)
                continue
            if self._running() is job and self._room.runtime.ready:
                self._room.runtime.set_outputs(job.cell_id, manifests)
                count = change.accumulator.execution_count
                if count is not None:
                    self._room.runtime.set_execution_count(job.cell_id, count)
                self._room.runtime_changed()
            size = sum(len(str(o.get("text", ""))) for o in outputs)
            await anyio.sleep(max(_MIN_FLUSH_INTERVAL, size / _FLUSH_BYTES_PER_SECOND))
