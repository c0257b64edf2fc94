"""What changed in a notebook between two versions (pure: no I/O).

A *version* is an opaque string to agents: the notebook document's heads plus the runtime
document's execution sequence number at that moment (``v1:<head>.<head>:<seq>``). The binding's
``Document.diff`` is opaque (docs/principles.md, automerge notes), so a diff is made by reading
the document at both heads (``fork(heads)``) and comparing what the schema says: cells added,
deleted, moved, each cell's source (a unified diff), type and metadata, and the notebook's
metadata. Who made a change is read from the Automerge changes between the two heads (their
actor ids); which cells ran, and with what result, from the runtime document's execution
records (their ``seq`` orders them across daemon restarts).

Two ``.ipynb`` files are compared the same way (:func:`state_from_nbformat`), with execution
counts and outputs compared as well. The ``jep8`` part of a diff follows nbdime's diff format
(Jupyter Enhancement Proposal 8: ``add``/``remove``/``replace``/``patch`` on dicts,
``addrange``/``removerange``/``patch`` on sequences, keys of sequences index the *base*); cell
sources are diffed as lists of lines. nbdime itself is not a dependency: it pulls in a Jupyter
server, tornado and GitPython for what is here ~100 lines.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence, Set
from dataclasses import asdict, dataclass, field
from typing import Any

from automerge.core import ObjType

from runtimed.documents.notebook import NotebookDoc
from runtimed.documents.runtime import RuntimeDoc
from runtimed.errors import InvalidRequest

__all__ = [
    "CellState",
    "NotebookDiff",
    "NotebookState",
    "changes_between",
    "diff_documents",
    "diff_nbformat",
    "diff_states",
    "format_diff",
    "format_version",
    "parse_version",
    "state_from_nbformat",
    "state_of",
    "versions",
    "with_checkpoints",
]

VERSION_PREFIX = "v1"
MAX_ATTRIBUTED_CHANGES = 200
"""Above this many Automerge changes between two versions, changes are not attributed to
cells one by one (each needs a read of the document at that change); the actors are still
listed."""


def format_version(heads_hex: Iterable[str], seq: int) -> str:
    """The opaque version string for these notebook heads and runtime sequence number."""
    return f"{VERSION_PREFIX}:{'.'.join(sorted(heads_hex))}:{seq}"


def parse_version(version: str) -> tuple[list[str], int]:
    """(heads as hex, execution seq) of a version string.

    Raises:
        InvalidRequest: not a version this module made.
    """
    parts = version.split(":") if isinstance(version, str) else []
    if len(parts) != 3 or parts[0] != VERSION_PREFIX or not parts[2].isdigit():
        raise InvalidRequest(
            f"{version!r} is not a notebook version; use the 'version' a notebook read returned"
        )
    heads = [h for h in parts[1].split(".") if h]
    for head in heads:
        if len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
            raise InvalidRequest(f"{version!r} is not a notebook version (bad change hash)")
    return heads, int(parts[2])


# ---------------------------------------------------------------- states


@dataclass(frozen=True, slots=True)
class CellState:
    """One cell as the diff sees it."""

    id: str
    cell_type: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    position: str = ""
    """The document's fractional index ('' for files)."""
    execution_count: int | None = None
    outputs: tuple[str, ...] = ()
    """Files only: each output as canonical JSON (compared, not shown)."""


@dataclass(frozen=True, slots=True)
class NotebookState:
    metadata: dict[str, Any]
    cells: tuple[CellState, ...]

    def by_id(self) -> dict[str, CellState]:
        return {c.id: c for c in self.cells}


def _heads_bytes(heads_hex: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in heads_hex]


def _at(doc: NotebookDoc, heads: Sequence[bytes] | None) -> NotebookDoc:
    if heads is None:
        return doc
    try:
        return NotebookDoc(doc.doc.fork(list(heads)))
    except Exception as exc:  # the binding raises a bare Exception for unknown hashes
        raise InvalidRequest(
            "this notebook does not contain that version (another notebook's, or from before "
            "the file was changed outside the daemon)"
        ) from exc


def state_of(doc: NotebookDoc, heads: Sequence[bytes] | None = None) -> NotebookState:
    """The notebook document as it was at ``heads`` (None: now)."""
    at = _at(doc, heads)
    if not at.ready:
        return NotebookState(metadata={}, cells=())
    cells = []
    for position, cell_id, obj in at._ordered():
        cell = at._cell(cell_id, obj)
        cells.append(
            CellState(
                id=cell_id,
                cell_type=cell.cell_type,
                source=cell.source,
                metadata=dict(cell.metadata),
                position=position,
            )
        )
    return NotebookState(metadata=dict(at.metadata()), cells=tuple(cells))


def _join(source: object) -> str:
    if isinstance(source, list):
        return "".join(str(s) for s in source)
    return str(source or "")


def state_from_nbformat(nb: dict[str, Any]) -> NotebookState:
    """A notebook file (an nbformat v4 dict) as a state; cells without ids are matched by
    their index (``index-<n>``)."""
    cells = []
    for index, cell in enumerate(nb.get("cells", [])):
        count = cell.get("execution_count")
        cells.append(
            CellState(
                id=str(cell.get("id") or f"index-{index}"),
                cell_type=str(cell.get("cell_type", "code")),
                source=_join(cell.get("source", "")),
                metadata=dict(cell.get("metadata", {})),
                execution_count=count if isinstance(count, int) else None,
                outputs=tuple(json.dumps(o, sort_keys=True) for o in cell.get("outputs", [])),
            )
        )
    return NotebookState(metadata=dict(nb.get("metadata", {})), cells=tuple(cells))


# ---------------------------------------------------------------- diffs


@dataclass(slots=True)
class NotebookDiff:
    """What changed from one version (or file) to another. ``to_json()`` for agents."""

    since: str
    to: str
    added: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    moved: list[dict[str, Any]] = field(default_factory=list)
    modified: list[dict[str, Any]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    """JEP 8 diff of the notebook metadata."""
    executions: list[dict[str, Any]] = field(default_factory=list)
    actors: list[str] = field(default_factory=list)
    """Actor ids (hex) of the document changes in between; empty for files."""
    attribution: str = "none"
    """``cells``: each cell entry names its actors; ``actors-only``: too many changes to
    attribute; ``none``: no actors known (files)."""
    jep8: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.added
            or self.deleted
            or self.moved
            or self.modified
            or self.metadata
            or self.executions
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def diff_dicts(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """JEP 8 diff of two JSON dicts (nested dicts patched, anything else replaced)."""
    ops: list[dict[str, Any]] = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            ops.append({"op": "remove", "key": key})
        elif key not in a:
            ops.append({"op": "add", "key": key, "value": b[key]})
        elif a[key] != b[key]:
            if isinstance(a[key], dict) and isinstance(b[key], dict):
                ops.append({"op": "patch", "key": key, "diff": diff_dicts(a[key], b[key])})
            else:
                ops.append({"op": "replace", "key": key, "value": b[key]})
    return ops


def diff_lines(a: str, b: str) -> list[dict[str, Any]]:
    """JEP 8 diff of two strings as sequences of lines (keys index ``a``'s lines)."""
    old, new = a.splitlines(keepends=True), b.splitlines(keepends=True)
    ops: list[dict[str, Any]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag in ("delete", "replace"):
            ops.append({"op": "removerange", "key": i1, "length": i2 - i1})
        if tag in ("insert", "replace"):
            ops.append({"op": "addrange", "key": i1, "valuelist": new[j1:j2]})
    return ops


def unified_source_diff(cell_id: str, a: str, b: str) -> str:
    lines = difflib.unified_diff(
        a.splitlines(),
        b.splitlines(),
        fromfile=f"{cell_id} (before)",
        tofile=f"{cell_id} (after)",
        lineterm="",
        n=2,
    )
    return "\n".join(lines)


def _cell_json(cell: CellState) -> dict[str, Any]:
    return {
        "id": cell.id,
        "cell_type": cell.cell_type,
        "source": cell.source,
        "metadata": cell.metadata,
    }


def _cell_patch(a: CellState, b: CellState) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    if a.cell_type != b.cell_type:
        ops.append({"op": "replace", "key": "cell_type", "value": b.cell_type})
    if a.execution_count != b.execution_count:
        ops.append({"op": "replace", "key": "execution_count", "value": b.execution_count})
    if a.metadata != b.metadata:
        ops.append({"op": "patch", "key": "metadata", "diff": diff_dicts(a.metadata, b.metadata)})
    if a.outputs != b.outputs:
        ops.append({"op": "replace", "key": "outputs", "value": [json.loads(o) for o in b.outputs]})
    if a.source != b.source:
        ops.append({"op": "patch", "key": "source", "diff": diff_lines(a.source, b.source)})
    return ops


def diff_states(a: NotebookState, b: NotebookState, *, since: str, to: str) -> NotebookDiff:
    """Compare two states: cells matched by id, never by index."""
    diff = NotebookDiff(since=since, to=to)
    old, new = a.by_id(), b.by_id()
    old_ids, new_ids = [c.id for c in a.cells], [c.id for c in b.cells]
    for index, cell in enumerate(b.cells):
        if cell.id not in old:
            diff.added.append(
                {"cell_id": cell.id, "index": index, "cell_type": cell.cell_type,
                 "source": cell.source}
            )  # fmt: skip
    for index, cell in enumerate(a.cells):
        if cell.id not in new:
            diff.deleted.append(
                {"cell_id": cell.id, "index": index, "cell_type": cell.cell_type,
                 "source": cell.source}
            )  # fmt: skip
    # Moved: common cells outside the longest run of cells kept in the same relative order.
    common_old = [i for i in old_ids if i in new]
    common_new = [i for i in new_ids if i in old]
    matcher = difflib.SequenceMatcher(a=common_old, b=common_new, autojunk=False)
    in_order = {
        common_old[blk.a + k] for blk in matcher.get_matching_blocks() for k in range(blk.size)
    }
    for cell_id in common_new:
        if cell_id not in in_order:
            diff.moved.append(
                {"cell_id": cell_id, "from_index": old_ids.index(cell_id),
                 "to_index": new_ids.index(cell_id)}
            )  # fmt: skip
    for index, cell in enumerate(b.cells):
        before = old.get(cell.id)
        if before is None:
            continue
        entry: dict[str, Any] = {"cell_id": cell.id, "index": index}
        if before.source != cell.source:
            entry["source_diff"] = unified_source_diff(cell.id, before.source, cell.source)
        if before.cell_type != cell.cell_type:
            entry["cell_type"] = {"from": before.cell_type, "to": cell.cell_type}
        if before.metadata != cell.metadata:
            entry["metadata"] = diff_dicts(before.metadata, cell.metadata)
        if len(entry) > 2:
            diff.modified.append(entry)
        if before.execution_count != cell.execution_count or before.outputs != cell.outputs:
            diff.executions.append(_file_execution(cell))
    diff.metadata = diff_dicts(a.metadata, b.metadata)
    diff.jep8 = _jep8(a, b, diff.metadata)
    return diff


def _file_execution(cell: CellState) -> dict[str, Any]:
    outputs = [json.loads(o) for o in cell.outputs]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    return {
        "cell_id": cell.id,
        "execution_count": cell.execution_count,
        "status": "error" if errors else "ok",
        "ename": errors[-1].get("ename") if errors else None,
        "evalue": errors[-1].get("evalue") if errors else None,
        "outputs": len(outputs),
    }


def _jep8(
    a: NotebookState, b: NotebookState, metadata: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    cell_ops: list[dict[str, Any]] = []
    old_ids, new_ids = [c.id for c in a.cells], [c.id for c in b.cells]
    matcher = difflib.SequenceMatcher(a=old_ids, b=new_ids, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for offset in range(i2 - i1):
                patch = _cell_patch(a.cells[i1 + offset], b.cells[j1 + offset])
                if patch:
                    cell_ops.append({"op": "patch", "key": i1 + offset, "diff": patch})
            continue
        if tag in ("delete", "replace"):
            cell_ops.append({"op": "removerange", "key": i1, "length": i2 - i1})
        if tag in ("insert", "replace"):
            cell_ops.append(
                {"op": "addrange", "key": i1, "valuelist": [_cell_json(c) for c in b.cells[j1:j2]]}
            )
    ops: list[dict[str, Any]] = []
    if cell_ops:
        ops.append({"op": "patch", "key": "cells", "diff": cell_ops})
    if metadata:
        ops.append({"op": "patch", "key": "metadata", "diff": metadata})
    return ops


def diff_nbformat(
    a: dict[str, Any], b: dict[str, Any], *, since: str = "a", to: str = "b"
) -> NotebookDiff:
    """What changed from notebook file ``a`` to ``b`` (nbformat dicts)."""
    return diff_states(state_from_nbformat(a), state_from_nbformat(b), since=since, to=to)


# ---------------------------------------------------------------- document history


@dataclass(frozen=True, slots=True)
class ChangeInfo:
    hash: str
    actor: str
    seq: int
    deps: tuple[str, ...]


def changes_between(
    doc: NotebookDoc, since: Sequence[bytes], to: Sequence[bytes] | None = None
) -> list[ChangeInfo]:
    """The Automerge changes in ``to`` (None: now) that ``since`` does not have, causally
    ordered."""
    at = _at(doc, to)
    return [
        ChangeInfo(
            hash=bytes(c.hash).hex(),
            actor=bytes(c.actor_id).hex(),
            seq=int(c.seq),
            deps=tuple(bytes(d).hex() for d in c.deps),
        )
        for c in at.doc.get_changes(list(since))
    ]


def _touched(a: NotebookState, b: NotebookState) -> set[str]:
    """Cells (and ``""`` for notebook metadata) that differ between two states."""
    old, new = a.by_id(), b.by_id()
    touched = {i for i in set(old) ^ set(new)}
    touched |= {i for i in set(old) & set(new) if old[i] != new[i]}
    if a.metadata != b.metadata:
        touched.add("")
    return touched


def _attribute(doc: NotebookDoc, changes: list[ChangeInfo]) -> dict[str, list[str]]:
    """cell id -> actors whose changes touched it (each change's state vs its parents')."""
    cache: dict[tuple[str, ...], NotebookState] = {}

    def state(heads: Sequence[str]) -> NotebookState:
        key = tuple(sorted(heads))
        if key not in cache:
            cache[key] = state_of(doc, _heads_bytes(key))
        return cache[key]

    actors: dict[str, list[str]] = {}
    for change in changes:
        for cell_id in _touched(state(change.deps), state([change.hash])):
            names = actors.setdefault(cell_id, [])
            if change.actor not in names:
                names.append(change.actor)
    return actors


def diff_documents(
    notebook: NotebookDoc,
    runtime: RuntimeDoc | None,
    since: str,
    to: str | None = None,
) -> NotebookDiff:
    """What changed in ``notebook`` from version ``since`` to ``to`` (None: now), who made the
    changes, and which executions ``runtime`` recorded in between.

    Raises:
        InvalidRequest: a version is malformed or not in this document.
    """
    since_heads, since_seq = parse_version(since)
    if to is None:
        to_heads: list[str] | None = None
        to_seq = max_seq(runtime)
        to_version = format_version(notebook.heads_hex(), to_seq)
    else:
        to_heads, to_seq = parse_version(to)
        to_version = to
    before = state_of(notebook, _heads_bytes(since_heads))
    after = state_of(notebook, None if to_heads is None else _heads_bytes(to_heads))
    diff = diff_states(before, after, since=since, to=to_version)
    diff.executions = executions_between(runtime, since_seq, to_seq) if runtime else []
    changes = changes_between(
        notebook, _heads_bytes(since_heads), None if to_heads is None else _heads_bytes(to_heads)
    )
    diff.actors = sorted({c.actor for c in changes})
    if len(changes) <= MAX_ATTRIBUTED_CHANGES:
        diff.attribution = "cells"
        by_cell = _attribute(notebook, changes)
        for group in (diff.added, diff.deleted, diff.moved, diff.modified):
            for entry in group:
                entry["actors"] = by_cell.get(entry["cell_id"], [])
    else:
        diff.attribution = "actors-only"
    return diff


def max_seq(runtime: RuntimeDoc | None) -> int:
    """The highest execution sequence number in ``runtime`` (0: none), reading only each
    record's ``seq`` (a version is made on every notebook read)."""
    if runtime is None or not runtime.ready:
        return 0
    doc = runtime.doc
    executions = runtime._obj("executions")
    highest = 0
    for key in doc.keys(executions):
        record = doc.get(executions, key)
        if record is None or not isinstance(record[0], ObjType):
            continue
        seq = doc.get(record[1], "seq")
        value = None if seq is None or isinstance(seq[0], ObjType) else seq[0][1]
        if isinstance(value, int) and value > highest:
            highest = value
    return highest


def executions_between(runtime: RuntimeDoc, since_seq: int, to_seq: int) -> list[dict[str, Any]]:
    """Execution records with ``since_seq < seq <= to_seq``, in order."""
    if not runtime.ready:
        return []
    found = []
    for execution_id in runtime.execution_ids():
        record = runtime.execution(execution_id) or {}
        seq = record.get("seq")
        if isinstance(seq, int) and since_seq < seq <= to_seq:
            found.append(
                {
                    "execution_id": execution_id,
                    "cell_id": record.get("cell_id"),
                    "status": record.get("status"),
                    "execution_count": record.get("execution_count"),
                    "ename": record.get("ename"),
                    "evalue": record.get("evalue"),
                    "seq": seq,
                }
            )
    found.sort(key=lambda r: r["seq"] if isinstance(r["seq"], int) else 0)
    return found


def _runs(changes: list[ChangeInfo], boundaries: Set[str]) -> list[int]:
    """The version (run) index of each change: a run is consecutive changes by one actor,
    ended early after a change in ``boundaries`` (a saved checkpoint's heads)."""
    out: list[int] = []
    run, actor, cut = -1, None, False
    for change in changes:
        if change.actor != actor or cut:
            run += 1
            actor = change.actor
        cut = change.hash in boundaries
        out.append(run)
    return out


def versions(
    notebook: NotebookDoc, seq: int = 0, *, boundaries: Set[str] = frozenset()
) -> list[dict[str, Any]]:
    """The document's history as versions, oldest first: one per run of consecutive changes
    by one actor (``version`` reads the document as it was after that run), with the cells
    the run touched (``""`` stands for the notebook's metadata). A run also ends after a
    change in ``boundaries`` (a checkpoint's heads: its state is then a version)."""
    changes = changes_between(notebook, [])
    runs: list[dict[str, Any]] = []
    for change, index in zip(changes, _runs(changes, boundaries), strict=True):
        if index < len(runs):
            runs[-1]["changes"] += 1
            runs[-1]["head"] = change.hash
        else:
            runs.append({"actor": change.actor, "changes": 1, "head": change.hash})
    out = []
    previous = NotebookState(metadata={}, cells=())
    for index, run in enumerate(runs):
        latest = index == len(runs) - 1
        heads = notebook.heads_hex() if latest else [run["head"]]
        state = state_of(notebook, _heads_bytes(heads))
        out.append(
            {
                "version": format_version(heads, seq if latest else 0),
                "actor": run["actor"],
                "changes": run["changes"],
                "cells": sorted(_touched(previous, state)),
            }
        )
        previous = state
    return out


# ---------------------------------------------------------------- for people


def format_diff(diff: NotebookDiff) -> str:
    """The diff as text for a terminal (``runt diff``)."""
    lines: list[str] = [f"--- {diff.since}", f"+++ {diff.to}"]
    if diff.empty:
        lines.append("no changes")
    for cell in diff.added:
        lines.append(f"added {cell['cell_type']} cell {cell['cell_id']} at {cell['index']}"
                     + _by(cell))  # fmt: skip
        lines.extend(f"  + {line}" for line in cell["source"].splitlines())
    for cell in diff.deleted:
        lines.append(f"deleted {cell['cell_type']} cell {cell['cell_id']} (was at "
                     f"{cell['index']})" + _by(cell))  # fmt: skip
    for cell in diff.moved:
        lines.append(
            f"moved cell {cell['cell_id']} from {cell['from_index']} to {cell['to_index']}"
            + _by(cell)
        )
    for cell in diff.modified:
        lines.append(f"modified cell {cell['cell_id']}" + _by(cell))
        if "cell_type" in cell:
            lines.append(f"  type: {cell['cell_type']['from']} -> {cell['cell_type']['to']}")
        if "metadata" in cell:
            lines.append(f"  metadata: {json.dumps(cell['metadata'], sort_keys=True)}")
        if "source_diff" in cell:
            lines.extend(f"  {line}" for line in cell["source_diff"].splitlines())
    if diff.metadata:
        lines.append(f"notebook metadata: {json.dumps(diff.metadata, sort_keys=True)}")
    for run in diff.executions:
        result = run["status"]
        if run.get("ename"):
            result += f" ({run['ename']}: {run.get('evalue') or ''})"
        count = run.get("execution_count")
        lines.append(f"ran cell {run['cell_id']}" + (f" [{count}]" if count else "")
                     + f": {result}")  # fmt: skip
    if diff.actors:
        lines.append("actors: " + ", ".join(a[:8] for a in diff.actors))
    return "\n".join(lines)


def _by(entry: dict[str, Any]) -> str:
    actors = entry.get("actors")
    return f" by {', '.join(a[:8] for a in actors)}" if actors else ""


# ---------------------------------------------------------------- checkpoints in the log


def with_checkpoints(
    notebook: NotebookDoc,
    entries: list[dict[str, Any]],
    checkpoints: Sequence[tuple[Sequence[str], dict[str, Any]]],
) -> list[dict[str, Any]]:
    """``entries`` (from :func:`versions` with ``boundaries`` the checkpoints' heads, each
    gaining ``"kind": "version"``) with each
    checkpoint (its heads, and the dict to list) placed right after the last version it
    contains — history order: Automerge changes carry no wall time here, the checkpoints
    do (ties in time order). A checkpoint whose heads this document does not have (the
    document was set aside since) is listed first, with ``"in_history": False``."""
    changes = changes_between(notebook, [])
    deps = {c.hash: c.deps for c in changes}
    # The version each change belongs to, as versions() cut them (pass it the same heads).
    boundaries = {h for heads, _ in checkpoints for h in heads}
    run_of = dict(zip((c.hash for c in changes), _runs(changes, boundaries), strict=True))
    placed: dict[int, list[dict[str, Any]]] = {}
    for heads, checkpoint in checkpoints:
        if not all(h in deps for h in heads):
            placed.setdefault(-2, []).append({**checkpoint, "in_history": False})
            continue
        seen: set[str] = set()
        stack = list(heads)
        while stack:
            h = stack.pop()
            if h not in seen:
                seen.add(h)
                stack.extend(deps[h])
        last = max((run_of[h] for h in seen), default=-1)
        placed.setdefault(last, []).append({**checkpoint, "in_history": True})
    out: list[dict[str, Any]] = []
    for bucket in (-2, -1):
        out += sorted(placed.get(bucket, []), key=lambda c: c.get("time", 0))
    for index, entry in enumerate(entries):
        out.append({"kind": "version", **entry})
        out += sorted(placed.get(index, []), key=lambda c: c.get("time", 0))
    return out
