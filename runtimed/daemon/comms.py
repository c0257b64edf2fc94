"""The notebook kernel's comms into the runtime document (``comms`` map), and back out.

One :class:`CommRecorder` per notebook, owned by its
:class:`~runtimed.daemon.executor.NotebookExecutor`.  The kernel's
:class:`~runtimed.kernels.comms.CommTracker` (fed by the IOPub reader) calls
:meth:`CommRecorder.on_change` synchronously; :meth:`CommRecorder.run` writes what changed
at a bounded rate, binary buffers to the blob store first (the document names their hashes,
never holds their bytes).  :func:`widget_state` builds what a save writes to
``metadata.widgets`` from the document, as nbclient's ``set_widgets_metadata`` does.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import anyio
import msgspec

from blobstore import BlobError, BlobStore
from runtimed.daemon.room import NotebookRoom
from runtimed.documents.amjson import JsonValue
from runtimed.documents.comms import plain
from runtimed.documents.runtime import RuntimeDoc
from runtimed.kernels.comms import MAX_STATE_BYTES, Comm, CommChange, CommTracker
from runtimed.kernels.session import KernelSession

__all__ = ["CommRecorder", "comm_blob_hashes", "widget_state"]

log = logging.getLogger(__name__)

_MIN_FLUSH_INTERVAL = 0.002
_BUFFER_MEDIA_TYPE = "application/octet-stream"
_ENCODER = msgspec.json.Encoder()


class CommRecorder:
    """Writes one notebook's comms into its runtime document."""

    def __init__(self, room: NotebookRoom, blobs: BlobStore) -> None:
        self._room = room
        self._blobs = blobs
        self._tracker: CommTracker | None = None
        self._dirty: dict[str, frozenset[str] | None] = {}  # comm id -> keys (None: all)
        self._closed: set[str] = set()
        self._reset = False
        self._buffers: dict[str, dict[str, JsonValue]] = {}  # comm id -> buffers map written
        self._stored: dict[str, tuple[bytes, JsonValue]] = {}  # comm id + path -> blob entry
        self._wake = anyio.Event()
        self._writing = anyio.Lock()  # the writer task and a save's flush, one at a time

    def attach(self, kernel: KernelSession) -> None:
        """Follow ``kernel``'s comms (a new kernel for the notebook): the document's comms
        become that kernel's."""
        if self._tracker is not None and self._tracker is not kernel.comms:
            self._tracker.listener = None
        self._tracker = kernel.comms
        self._tracker.listener = self.on_change
        self.on_change(CommChange(None))
        for comm_id in self._tracker.comms:
            self._dirty[comm_id] = None

    def detach(self) -> None:
        """The notebook has no kernel any more: no comms."""
        if self._tracker is not None:
            self._tracker.listener = None
        self._tracker = None
        self.on_change(CommChange(None))

    def on_change(self, change: CommChange) -> None:
        # Called from the kernel's IOPub reader: never block, note and wake the writer.
        comm_id = change.comm_id
        if comm_id is None:
            self._reset, self._dirty, self._closed = True, {}, set()
        elif change.closed:
            self._dirty.pop(comm_id, None)
            self._closed.add(comm_id)
        else:
            self._closed.discard(comm_id)
            old = self._dirty.get(comm_id, frozenset())
            keys = change.keys
            self._dirty[comm_id] = None if old is None or keys is None else old | keys
        self._wake.set()

    async def run(self) -> None:
        """Write comm changes to the runtime document until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            started = anyio.current_time()
            await self.flush()
            # Bounded rate: at most one write per interval, and the writer busy at most a
            # third of the time (a widget streaming updates costs bounded document writes).
            spent = anyio.current_time() - started
            await anyio.sleep(max(_MIN_FLUSH_INTERVAL, 2 * spent))

    async def flush(self) -> None:
        """Write every change noted so far."""
        async with self._writing:
            await self._flush()

    @property
    def writing(self) -> anyio.Lock:
        """Held while comms are written (a write keeps the runtime document across awaits):
        the document is not replaced meanwhile (``NotebookExecutor._compact_runtime``)."""
        return self._writing

    async def _flush(self) -> None:
        runtime = self._room.runtime
        if not runtime.ready:
            return
        changed = False
        if self._reset:
            self._reset = False
            self._buffers.clear()
            self._stored.clear()
            changed = runtime.clear_comms()
        for comm_id in self._closed:
            runtime.remove_comm(comm_id)
            self._buffers.pop(comm_id, None)
            changed = True
        self._closed = set()
        dirty, self._dirty = self._dirty, {}
        tracker = self._tracker
        for comm_id, keys in dirty.items():
            comm = tracker.comms.get(comm_id) if tracker is not None else None
            if comm is not None:
                changed = await self._write(runtime, comm, keys) or changed
        if changed:
            self._room.runtime_changed()

    async def _write(self, runtime: RuntimeDoc, comm: Comm, keys: frozenset[str] | None) -> bool:
        whole = keys is None or comm.comm_id not in self._buffers
        state: dict[str, JsonValue] = {}
        for key in comm.state if whole else sorted(keys or ()):
            if key not in comm.state:
                continue
            value = comm.state[key]
            try:
                clean = plain(value)
            except (TypeError, ValueError) as exc:
                log.warning("comm %s: state %r is not JSON (%s); left out", comm.comm_id, key, exc)
                continue
            if key == "outputs" and len(_ENCODER.encode(clean)) > MAX_STATE_BYTES:
                # An Output widget's captured outputs (a big image, a flood of text).
                log.warning(
                    "comm %s: Output widget outputs over %d bytes are not written to the"
                    " document; it keeps the last smaller ones",
                    comm.comm_id,
                    MAX_STATE_BYTES,
                )
                continue
            state[key] = clean
        buffers = await self._store_buffers(comm)
        unchanged = buffers == self._buffers.get(comm.comm_id) and not whole
        new_buffers = None if unchanged else buffers
        if not state and new_buffers is None and not whole:
            return False
        runtime.put_comm(
            comm.comm_id,
            target_name=comm.target_name,
            model=comm.model,
            state=state,
            buffers=new_buffers,
            whole=whole,
        )
        self._buffers[comm.comm_id] = buffers
        return True

    async def _store_buffers(self, comm: Comm) -> dict[str, JsonValue]:
        stored: dict[str, JsonValue] = {}
        for path, data in list(comm.buffers.items()):
            key = json.dumps(list(path))
            cached = self._stored.get(comm.comm_id + key)
            if cached is not None and cached[0] is data:
                stored[key] = cached[1]
                continue
            try:
                ref = await self._blobs.put(data, media_type=_BUFFER_MEDIA_TYPE)
            except BlobError as exc:
                log.warning("comm %s: buffer %s not stored: %s", comm.comm_id, key, exc)
                continue
            stored[key] = {"path": list(path), "blob": ref.hash, "size": len(data)}
            self._stored[comm.comm_id + key] = (data, stored[key])
        return stored


def comm_blob_hashes(runtime: RuntimeDoc) -> set[str]:
    """The blobs the document's comms name (for blob GC marking)."""
    hashes: set[str] = set()
    for comm in runtime.comms().values():
        buffers = comm.get("buffers")
        for entry in buffers.values() if isinstance(buffers, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("blob"), str):
                hashes.add(entry["blob"])
    return hashes


async def widget_state(runtime: RuntimeDoc, blobs: BlobStore) -> dict[str, Any] | None:
    """``metadata.widgets["application/vnd.jupyter.widget-state+json"]`` for the document's
    comms (nbclient's ``set_widgets_metadata``: every comm whose state has ``_model_name``,
    buffers base64-encoded with their paths); None when there are none.  A buffer whose
    blob is gone is left out (logged)."""
    models: dict[str, Any] = {}
    for comm_id, comm in runtime.comms().items():
        state = comm.get("state")
        if not isinstance(state, dict) or "_model_name" not in state:
            continue
        entry: dict[str, Any] = {
            "model_name": state.get("_model_name"),
            "model_module": state.get("_model_module"),
            "model_module_version": state.get("_model_module_version"),
            "state": state,
        }
        encoded = []
        buffers = comm.get("buffers")
        for buffer in buffers.values() if isinstance(buffers, dict) else []:
            try:
                data = await blobs.get(str(buffer["blob"]))
            except (BlobError, KeyError, TypeError) as exc:
                log.warning("widget %s: a buffer is unavailable (%s); not saved", comm_id, exc)
                continue
            encoded.append(
                {
                    "path": buffer["path"],
                    "data": base64.b64encode(data).decode("ascii"),
                    "encoding": "base64",
                }
            )
        if encoded:
            entry["buffers"] = encoded
        models[comm_id] = entry
    if not models:
        return None
    return {"version_major": 2, "version_minor": 0, "state": models}
