"""The ``comms`` map of the runtime document: the kernel's open comms (Jupyter widgets).

Schema (``docs/schema.md``)::

    comms: Map comm_id -> Map
        target_name           Str   e.g. "jupyter.widget"
        model_module          Str   the state's _model_module ("" for a comm that is no widget)
        model_name            Str   the state's _model_name
        model_module_version  Str   the state's _model_module_version
        state                 Map   the JSON state; each top-level key written on its own
        buffers               Map   json.dumps(path) -> {path: List, blob: Str, size: Int}

Binary buffers live in the blob store; the document names them.  Only the daemon writes this
map (:class:`~runtimed.documents.runtime.RuntimeDoc` delegates here); readers accept a map
without ``comms`` (a document from an older daemon).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType

from runtimed.documents.amjson import JsonValue, encode_key, get, put_json, read_json, scalar

__all__ = ["CommRecord", "clear_comms", "plain", "put_comm", "read_comms", "remove_comm"]

CommRecord = dict[str, Any]
"""One comm as read back: the keys of the schema above."""


def _obj(doc: Document, parent: bytes, key: str) -> bytes | None:
    got = get(doc, parent, key)
    return got[1] if got is not None and isinstance(got[0], ObjType) else None


def read_comms(doc: Document) -> dict[str, CommRecord]:
    """Every comm in the document (an empty dict if it has no ``comms`` map)."""
    comms = _obj(doc, ROOT, "comms")
    if comms is None:
        return {}
    result: dict[str, CommRecord] = read_json(doc, comms)
    return result


def plain(value: object) -> JsonValue:
    """``value`` as plain JSON (checked before any write: a value the binding refused
    mid-transaction could poison the document).  Raises TypeError or ValueError."""
    result: JsonValue = json.loads(json.dumps(value, allow_nan=False))
    return result


def put_comm(
    doc: Document,
    comm_id: str,
    *,
    target_name: str,
    model: tuple[str, str, str],
    state: Mapping[str, JsonValue],
    buffers: Mapping[str, JsonValue] | None,
    whole: bool,
) -> None:
    """Write a comm: all of it (``whole``), else only the given state keys (and the
    buffers map when ``buffers`` is not None).  Values must be plain JSON (:func:`plain`)."""
    with doc.transaction() as tx:
        comms = _obj(doc, ROOT, "comms")
        if comms is None:
            comms = tx.put_object(ROOT, "comms", ObjType.Map)
        obj = None if whole else _obj(doc, comms, comm_id)
        if obj is None:
            obj = tx.put_object(comms, comm_id, ObjType.Map)
            tx.put(obj, "target_name", ScalarType.Str, target_name)
            tx.put_object(obj, "state", ObjType.Map)
            buffers = buffers if buffers is not None else {}
        for key, value in zip(
            ("model_module", "model_name", "model_module_version"), model, strict=True
        ):
            got = get(doc, obj, key)
            if scalar(got) != value:
                tx.put(obj, key, ScalarType.Str, value)
        state_obj = _obj(doc, obj, "state")
        if state_obj is None:
            state_obj = tx.put_object(obj, "state", ObjType.Map)
        for key, value in state.items():
            put_json(tx, state_obj, encode_key(key), value)  # "" is a valid trait name in JSON
        if buffers is not None:
            put_json(tx, obj, "buffers", dict(buffers))


def remove_comm(doc: Document, comm_id: str) -> None:
    comms = _obj(doc, ROOT, "comms")
    if comms is not None and get(doc, comms, comm_id) is not None:
        with doc.transaction() as tx:
            tx.delete(comms, comm_id)


def clear_comms(doc: Document) -> bool:
    """Remove every comm (a new kernel process has none); returns whether any was there."""
    comms = _obj(doc, ROOT, "comms")
    if comms is None or not list(doc.keys(comms)):
        return False
    with doc.transaction() as tx:
        tx.put_object(ROOT, "comms", ObjType.Map)
    return True
