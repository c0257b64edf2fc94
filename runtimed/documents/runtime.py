"""Runtime state of one notebook: a second, daemon-authoritative Automerge document.

Kernel status, the execution queue, executions and every code cell's current outputs live
here, not in the notebook document. Only the daemon writes it; clients keep a read-only
replica in sync. Its history is disposable: the daemon persists a plain snapshot of the
current state (:meth:`RuntimeDoc.snapshot`), never the history, and builds a fresh document
from it when it loads a notebook. So re-running a cell a thousand times never grows the
persisted notebook history. Within one daemon session the in-memory history grows with every
execution, and with it the cost of every read and write of an overwritten key: the daemon
replaces the live document with a :meth:`RuntimeDoc.fresh_copy` of its state every
:data:`runtimed.daemon.executor.RUNTIME_COMPACT_EVERY` executions, when the notebook is idle
(clients are told to resync from empty: ``RuntimeResync``).

Only the daemon writes this document (the daemon refuses client changes to it), so it holds
only what we write; its reads still go through the boundary (:func:`amjson.get`).

Schema (``docs/schema.md``)::

    ROOT
      schema_version: Int (1)
      kernel: Map {state: Str, name: Str, pid: Int|Null, message: Str}
      kernel_info: Map (absent until a kernel started) — the kernel's kernel_info_reply:
          {protocol_version: Str, implementation: Str, implementation_version: Str,
           banner: Str, language_info: Map, help_links: List, supported_features: List}
      queue: List of Str (execution ids waiting, in order)
      running: Str|Null (the execution id running now)
      executions: Map execution_id -> Map
          {cell_id: Str, status: Str, seq: Int, execution_count: Int|Null,
           ename: Str|Null, evalue: Str|Null}
      cells: Map cell_id -> Map
          {execution_count: Int|Null, execution_id: Str|Null,
           outputs: List of Str (each a JSON-encoded output manifest)}
      comms: Map comm_id -> Map (absent until a comm opened; runtimed.documents.comms)
"""

from __future__ import annotations

import json
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from protocol.states import FINISHED, ExecutionStatus, KernelState
from runtimed.documents.amjson import JsonValue, encode_key, get, put_json, read_json, scalar
from runtimed.documents.boundary import automerge_errors
from runtimed.documents.comms import CommRecord, clear_comms, put_comm, read_comms, remove_comm

__all__ = ["FINISHED", "KERNEL_INFO_KEYS", "ExecutionRecord", "RuntimeDoc"]

SCHEMA_VERSION = 1

ExecutionRecord = dict[str, JsonValue]

KERNEL_INFO_KEYS = (
    "protocol_version",
    "implementation",
    "implementation_version",
    "banner",
    "language_info",
    "help_links",
    "supported_features",
)
"""The fields of a ``kernel_info_reply`` (Jupyter messaging spec) kept in ``kernel_info``."""


class RuntimeDoc:
    """Schema-aware reads and (daemon-side) writes of a runtime document."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc

    @classmethod
    def empty(cls) -> RuntimeDoc:
        return cls(Document())

    @classmethod
    def new(cls) -> RuntimeDoc:
        doc = Document()
        with doc.transaction() as tx:
            tx.put(ROOT, "schema_version", ScalarType.Int, SCHEMA_VERSION)
            kernel = tx.put_object(ROOT, "kernel", ObjType.Map)
            tx.put(kernel, "state", ScalarType.Str, KernelState.NOT_STARTED)
            tx.put(kernel, "name", ScalarType.Str, "")
            tx.put(kernel, "pid", ScalarType.Null, None)
            tx.put(kernel, "message", ScalarType.Str, "")
            tx.put_object(ROOT, "queue", ObjType.List)
            tx.put(ROOT, "running", ScalarType.Null, None)
            tx.put_object(ROOT, "executions", ObjType.Map)
            tx.put_object(ROOT, "cells", ObjType.Map)
        return cls(doc)

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> RuntimeDoc:
        """A fresh document (no history) holding ``snapshot``'s state."""
        rt = cls.new()
        with rt.doc.transaction() as tx:
            for cell_id, cell in snapshot.get("cells", {}).items():
                put_json(tx, rt._obj("cells"), cell_id, cell)
            for exec_id, record in snapshot.get("executions", {}).items():
                put_json(tx, rt._obj("executions"), exec_id, record)
        return rt

    def fresh_copy(self) -> RuntimeDoc:
        """A new document holding exactly this one's current state, without its history.

        Automerge keeps every value a key ever had: a read or write of a key costs time in
        proportion to how often it was overwritten (here: ~2 us per 100 overwrites), and
        the kernel state, the running execution and a re-run cell's fields are overwritten
        on every execution. The daemon swaps in such a copy now and then
        (:meth:`runtimed.daemon.room.NotebookRoom.replace_runtime`).
        """
        state = read_json(self.doc, ROOT)
        assert isinstance(state, dict)
        doc = Document()
        with doc.transaction() as tx:
            for key, value in state.items():
                put_json(tx, ROOT, encode_key(key), value)
        return type(self)(doc)

    def snapshot(self) -> dict[str, Any]:
        """Current cell outputs and finished executions as plain JSON (no history)."""
        executions = {
            k: v
            for k, v in read_json(self.doc, self._obj("executions")).items()
            if v.get("status") in FINISHED
        }
        return {"cells": read_json(self.doc, self._obj("cells")), "executions": executions}

    def save(self) -> bytes:
        with automerge_errors("saving the runtime document"):
            return bytes(self.doc.save())

    @property
    def ready(self) -> bool:
        return get(self.doc, ROOT, "cells") is not None

    def _obj(self, key: str, parent: bytes = ROOT) -> bytes:
        got = get(self.doc, parent, key)
        if got is None or not isinstance(got[0], ObjType):
            raise KeyError(key)
        return got[1]

    def _maybe(self, parent: bytes, key: str) -> bytes | None:
        got = get(self.doc, parent, key)
        return got[1] if got is not None and isinstance(got[0], ObjType) else None

    # ------------------------------------------------------------ reads

    def kernel(self) -> dict[str, JsonValue]:
        return read_json(self.doc, self._obj("kernel"))  # type: ignore[no-any-return]

    def kernel_info(self) -> dict[str, JsonValue] | None:
        """What the current (or last) kernel said in its ``kernel_info_reply``; None before
        any kernel started in this document."""
        obj = self._maybe(ROOT, "kernel_info")
        return None if obj is None else read_json(self.doc, obj)

    def queue(self) -> list[str]:
        return [str(scalar(v)) for v in self.doc.values(self._obj("queue"))]

    def running(self) -> str | None:
        value = scalar(get(self.doc, ROOT, "running"))
        return None if value is None else str(value)

    def execution(self, execution_id: str) -> ExecutionRecord | None:
        obj = self._maybe(self._obj("executions"), execution_id)
        return None if obj is None else read_json(self.doc, obj)

    def execution_status(self, execution_id: str) -> str | None:
        """Just the status of an execution (cheaper than :meth:`execution`)."""
        obj = self._maybe(self._obj("executions"), execution_id)
        if obj is None:
            return None
        value = scalar(get(self.doc, obj, "status"))
        return None if value is None else str(value)

    def finished_by_age(self) -> list[str]:
        """Finished execution ids, oldest first (by seq)."""
        executions = self._obj("executions")
        finished = []
        for key in self.doc.keys(executions):
            got = get(self.doc, executions, key)
            if got is None or not isinstance(got[0], ObjType):
                continue
            if scalar(get(self.doc, got[1], "status")) in FINISHED:
                seq = scalar(get(self.doc, got[1], "seq"))
                finished.append((seq if isinstance(seq, int) else 0, key))
        return [key for _, key in sorted(finished)]

    def forget(self, execution_ids: list[str]) -> None:
        """Delete these execution records."""
        executions = self._obj("executions")
        with self.doc.transaction() as tx:
            for key in execution_ids:
                if get(self.doc, executions, key) is not None:
                    tx.delete(executions, key)

    def max_seq(self) -> int:
        """The highest execution sequence number recorded (0 if none)."""
        highest = 0
        for key in self.doc.keys(self._obj("executions")):
            record = self.execution(key) or {}
            seq = record.get("seq")
            if isinstance(seq, int) and seq > highest:
                highest = seq
        return highest

    def execution_ids(self) -> list[str]:
        return list(self.doc.keys(self._obj("executions")))

    def cell_execution_id(self, cell_id: str) -> str | None:
        """The execution whose outputs the cell shows now (None: none, or loaded from file)."""
        obj = self._maybe(self._obj("cells"), cell_id)
        if obj is None:
            return None
        value = scalar(get(self.doc, obj, "execution_id"))
        return None if value is None else str(value)

    def cell_ids(self) -> list[str]:
        """Cells that have runtime state (outputs or a count)."""
        return list(self.doc.keys(self._obj("cells")))

    def cell_state(self, cell_id: str) -> tuple[int | None, list[dict[str, Any]]]:
        """(execution_count, output manifests) of a cell; (None, []) if it never ran."""
        obj = self._maybe(self._obj("cells"), cell_id)
        if obj is None:
            return None, []
        count = get(self.doc, obj, "execution_count")
        outputs = self._maybe(obj, "outputs")
        manifests = (
            [json.loads(str(scalar(v))) for v in self.doc.values(outputs)]
            if outputs is not None
            else []
        )
        value = None if count is None or isinstance(count[0], ObjType) else count[0][1]
        return (int(value) if value is not None else None), manifests

    # ------------------------------------------------------------ writes (daemon only)

    def set_kernel(
        self,
        *,
        state: str,
        name: str | None = None,
        pid: int | None = None,
        message: str = "",
        used: bool | None = None,
    ) -> None:
        kernel = self._obj("kernel")
        with self.doc.transaction() as tx:
            tx.put(kernel, "state", ScalarType.Str, state)
            if used is not None:
                tx.put(kernel, "used", ScalarType.Boolean, used)
            if name is not None:
                tx.put(kernel, "name", ScalarType.Str, name)
            if pid is None:
                tx.put(kernel, "pid", ScalarType.Null, None)
            else:
                tx.put(kernel, "pid", ScalarType.Int, pid)
            tx.put(kernel, "message", ScalarType.Str, message)

    def set_kernel_info(self, content: dict[str, object]) -> bool:
        """Keep a ``kernel_info_reply``'s content (the keys of :data:`KERNEL_INFO_KEYS`);
        returns whether the document changed.  Only plain JSON reaches the document (a
        value the binding refused mid-transaction could poison it); anything else is left out.
        """
        info: dict[str, JsonValue] = {}
        for key in KERNEL_INFO_KEYS:
            if key not in content:
                continue
            try:
                info[key] = json.loads(json.dumps(content[key], allow_nan=False))
            except (TypeError, ValueError):
                continue
        if self.kernel_info() == info:
            return False
        with self.doc.transaction() as tx:
            put_json(tx, ROOT, "kernel_info", info)
        return True

    def add_execution(self, execution_id: str, cell_id: str, seq: int) -> None:
        with self.doc.transaction() as tx:
            put_json(
                tx,
                self._obj("executions"),
                execution_id,
                {
                    "cell_id": cell_id,
                    "status": ExecutionStatus.QUEUED,
                    "seq": seq,
                    "execution_count": None,
                    "ename": None,
                    "evalue": None,
                },
            )
            queue = self._obj("queue")
            tx.insert(queue, tx.length(queue), ScalarType.Str, execution_id)

    def update_execution(self, execution_id: str, **fields: JsonValue) -> None:
        obj = self._maybe(self._obj("executions"), execution_id)
        if obj is None:
            return
        status = fields.get("status")
        # Only a queued execution is in the queue (add_execution puts it there, its first
        # status change takes it out): a finished one is not looked for in a queue of
        # hundreds (a RunAll) on every cell.
        leaves_queue = (
            status is not None
            and status != ExecutionStatus.QUEUED
            and scalar(get(self.doc, obj, "status")) in (ExecutionStatus.QUEUED, None)
        )
        with self.doc.transaction() as tx:
            for key, value in fields.items():
                put_json(tx, obj, key, value)
            if leaves_queue:
                queue = self._obj("queue")
                # FIFO: the execution that starts is nearly always at the head; look there
                # before reading the whole queue (hundreds of entries for a RunAll).
                if self.doc.length(queue) and scalar(get(self.doc, queue, 0)) == execution_id:
                    tx.delete(queue, 0)
                else:
                    for index, value_ in enumerate(self.doc.values(queue)):
                        if scalar(value_) == execution_id:
                            tx.delete(queue, index)
                            break
            if status == ExecutionStatus.RUNNING:
                tx.put(ROOT, "running", ScalarType.Str, execution_id)
            elif status in FINISHED and self.running() == execution_id:
                tx.put(ROOT, "running", ScalarType.Null, None)

    def _cell_obj(self, cell_id: str) -> bytes:
        cells = self._obj("cells")
        obj = self._maybe(cells, cell_id)
        if obj is None:
            with self.doc.transaction() as tx:
                obj = tx.put_object(cells, cell_id, ObjType.Map)
                tx.put(obj, "execution_count", ScalarType.Null, None)
                tx.put(obj, "execution_id", ScalarType.Null, None)
                tx.put_object(obj, "outputs", ObjType.List)
        return obj

    def start_cell_run(self, cell_id: str, execution_id: str) -> None:
        """Clear the cell's outputs and count as a new run begins (Jupyter semantics)."""
        obj = self._cell_obj(cell_id)
        with self.doc.transaction() as tx:
            tx.put(obj, "execution_id", ScalarType.Str, execution_id)
            tx.put(obj, "execution_count", ScalarType.Null, None)
            tx.put_object(obj, "outputs", ObjType.List)

    def set_execution_count(self, cell_id: str, count: int | None) -> None:
        obj = self._cell_obj(cell_id)
        with self.doc.transaction() as tx:
            if count is None:
                tx.put(obj, "execution_count", ScalarType.Null, None)
            else:
                tx.put(obj, "execution_count", ScalarType.Int, count)

    def set_outputs(self, cell_id: str, manifests: list[dict[str, Any]]) -> None:
        """Make the cell's outputs equal ``manifests``, touching only what changed."""
        obj = self._cell_obj(cell_id)
        outputs = self._maybe(obj, "outputs")
        new = [json.dumps(m, sort_keys=True, separators=(",", ":")) for m in manifests]
        with self.doc.transaction() as tx:
            if outputs is None:
                outputs = tx.put_object(obj, "outputs", ObjType.List)
            old = [str(scalar(v)) for v in self.doc.values(outputs)]
            common = 0
            while common < min(len(old), len(new)) and old[common] == new[common]:
                common += 1
            for index in range(common, min(len(old), len(new))):
                tx.put(outputs, index, ScalarType.Str, new[index])
            for _ in range(len(new), len(old)):
                tx.delete(outputs, len(new))
            for index in range(len(old), len(new)):
                tx.insert(outputs, index, ScalarType.Str, new[index])

    def clear_cell(self, cell_id: str) -> None:
        obj = self._maybe(self._obj("cells"), cell_id)
        if obj is None:
            return
        with self.doc.transaction() as tx:
            tx.put(obj, "execution_count", ScalarType.Null, None)
            tx.put_object(obj, "outputs", ObjType.List)

    def load_cell(self, cell_id: str, count: int | None, manifests: list[dict[str, Any]]) -> None:
        """Record outputs read from an .ipynb (no execution behind them)."""
        self.set_execution_count(cell_id, count)
        self.set_outputs(cell_id, manifests)

    # ------------------------------------------------------------ comms (docs/schema.md)

    def comms(self) -> dict[str, CommRecord]:
        """The kernel's open comms (widget models) by comm id: ``target_name``,
        ``model_module``, ``model_name``, ``model_module_version``, ``state``, ``buffers``."""
        return read_comms(self.doc)

    def put_comm(
        self,
        comm_id: str,
        *,
        target_name: str,
        model: tuple[str, str, str],
        state: dict[str, JsonValue],
        buffers: dict[str, JsonValue] | None = None,
        whole: bool = False,
    ) -> None:
        """Write a comm (see :func:`runtimed.documents.comms.put_comm`)."""
        put_comm(
            self.doc,
            comm_id,
            target_name=target_name,
            model=model,
            state=state,
            buffers=buffers,
            whole=whole,
        )

    def remove_comm(self, comm_id: str) -> None:
        remove_comm(self.doc, comm_id)

    def clear_comms(self) -> bool:
        """Remove every comm; returns whether there were any."""
        return clear_comms(self.doc)
