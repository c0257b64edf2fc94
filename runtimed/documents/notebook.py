"""The notebook as an Automerge document: schema, reads, edits, nbformat conversion.

Schema (``docs/schema.md``)::

    ROOT
      schema_version: Int (1)
      doc_id: Str (uuid hex; also the notebook id the daemon reports; survives restarts)
      nbformat: Int, nbformat_minor: Int
      metadata: Map (notebook metadata, JSON as nested Maps/Lists; unknown keys kept)
      cells: Map cell_id -> Map
        id: Str (stable, nbformat 4.5 cell id; equal to the key)
        position: Str (fractional index: cells are ordered by (position, id))
        cell_type: Str ("code" | "markdown" | "raw")
        source: Text (edited one code point at a time; concurrent edits merge per character)
        metadata: Map (unknown keys kept)
        attachments: Map (markdown/raw cells that have them)

Order is a fractional index rather than a list position so that moving a cell is one
write: two replicas moving the same cell concurrently converge on one copy (last writer
wins), and a move never loses a concurrent edit to the cell's source.

Outputs and execution counts are runtime state and live in the runtime document
(:mod:`runtimed.documents.runtime`), so re-running cells never grows this document's history.
No I/O happens here.

Reads tolerate documents written by other Automerge libraries: a field the schema says is a
Str may be a Text (the stock JS library writes a plain string as Text) and is read as its
string; a value the binding cannot read (a Counter) is left out. Either way the cell is still
read, and what could not be read is listed in :attr:`Cell.problems` (and by
:meth:`NotebookDoc.problems`), naming the cell, so one bad cell never makes the notebook
unreadable or unsavable.
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType, Transaction
from fractional_indexing import (  # type: ignore[import-untyped]
    generate_key_between,
    generate_n_keys_between,
)

from runtimed.documents.amjson import (
    JsonValue,
    encode_key,
    get,
    put_json,
    read_json,
    splice_text,
    text_or_str,
    unreadable_reason,
)
from runtimed.documents.boundary import DocumentError, automerge_errors
from runtimed.errors import CellNotFound, InvalidRequest

__all__ = ["CELL_TYPES", "KERNEL_METADATA_KEY", "Cell", "NotebookDoc", "new_cell_id"]

SCHEMA_VERSION = 1
CELL_TYPES = ("code", "markdown", "raw")
KERNEL_METADATA_KEY = "language_info"
"""The one notebook metadata key the daemon writes itself: the ``language_info`` of the
kernel's ``kernel_info_reply`` (as nbclient does), whenever a new kernel process reports.
A client comparing the daemon's copy of a notebook with its file leaves it out."""
_CELL_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def new_cell_id(existing: set[str] | frozenset[str] = frozenset()) -> str:
    """A fresh nbformat-valid cell id (8 hex chars, like nbformat's own), unique in ``existing``."""
    while True:
        candidate = secrets.token_hex(4)
        if candidate not in existing:
            return candidate


def _check_cell_id(cell_id: str) -> None:
    # nbformat 4.5: 1-64 characters of [a-zA-Z0-9-_].
    if not 1 <= len(cell_id) <= 64 or not set(cell_id) <= _CELL_ID_CHARS:
        raise InvalidRequest(
            f"invalid cell id {cell_id!r}: use 1-64 characters of letters, digits, '-' and '_'"
        )


@dataclass(frozen=True, slots=True)
class Cell:
    """A read-only snapshot of one cell."""

    id: str
    cell_type: str
    source: str
    metadata: dict[str, JsonValue] = field(default_factory=dict)
    attachments: dict[str, JsonValue] | None = None
    problems: tuple[str, ...] = ()
    """What of this cell could not be read as the schema says (empty for a healthy cell)."""


class NotebookDoc:
    """One notebook's Automerge document, with schema-aware reads and edits."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        # The cell order at some heads: reading it walks every cell (a 1,000-cell notebook
        # takes ~20 ms), and most callers (a status line, ExecuteCell's lookup, the client's
        # cell_ids) ask again before the document has changed. Equal heads mean the same
        # document state, so the heads are the whole key (this works across fork() too).
        self._order: tuple[list[bytes], tuple[tuple[str, str, bytes], ...]] | None = None

    # ------------------------------------------------------------ construction

    @classmethod
    def empty(cls) -> NotebookDoc:
        """A document with no schema yet: a client replica before its first sync."""
        return cls(Document())

    @classmethod
    def new(cls, *, metadata: dict[str, JsonValue] | None = None) -> NotebookDoc:
        """A fresh notebook with no cells."""
        return cls.from_nbformat(
            {"nbformat": 4, "nbformat_minor": 5, "metadata": metadata or {}, "cells": []}
        )

    @classmethod
    def from_nbformat(cls, nb: dict[str, Any]) -> NotebookDoc:
        """Build the document from a validated nbformat v4 notebook (a plain dict).

        Cells without an id get a fresh one (and the notebook becomes nbformat 4.5).
        Outputs and execution counts are not stored here; see :mod:`runtimed.documents.runtime`.
        """
        doc = Document()
        minor = int(nb.get("nbformat_minor", 5))
        with doc.transaction() as tx:
            tx.put(ROOT, "schema_version", ScalarType.Int, SCHEMA_VERSION)
            tx.put(ROOT, "doc_id", ScalarType.Str, uuid.uuid4().hex)
            tx.put(ROOT, "nbformat", ScalarType.Int, int(nb.get("nbformat", 4)))
            put_json(tx, ROOT, "metadata", dict(nb.get("metadata", {})))
            cells = tx.put_object(ROOT, "cells", ObjType.Map)
            seen: set[str] = set()
            source_cells = list(nb.get("cells", []))
            positions = generate_n_keys_between(None, None, len(source_cells))
            for position, cell in zip(positions, source_cells, strict=True):
                cell_id = cell.get("id")
                if not cell_id or cell_id in seen:
                    cell_id = new_cell_id(seen)
                    minor = max(minor, 5)
                seen.add(cell_id)
                _insert_cell(
                    tx,
                    cells,
                    position,
                    cell_id=cell_id,
                    cell_type=cell["cell_type"],
                    source=_join_source(cell.get("source", "")),
                    metadata=dict(cell.get("metadata", {})),
                    attachments=cell.get("attachments"),
                )
            tx.put(ROOT, "nbformat_minor", ScalarType.Int, minor)
        return cls(doc)

    @classmethod
    def load(cls, data: bytes) -> NotebookDoc:
        with automerge_errors("loading a notebook document"):
            return cls(Document.load(data))

    def save(self) -> bytes:
        with automerge_errors("saving the notebook document"):
            return bytes(self.doc.save())

    # ------------------------------------------------------------ heads

    def changes_since(self, heads: list[bytes]) -> bytes:
        """The changes made since ``heads`` (which must be this document's own earlier
        heads), as change chunks: appended to a saved copy, ``Document.load`` reads them."""
        with automerge_errors("reading the notebook's new changes"):
            return b"".join(bytes(change.raw_bytes) for change in self.doc.get_changes(heads))

    def heads(self) -> list[bytes]:
        return list(self.doc.get_heads())

    def heads_hex(self) -> list[str]:
        return [h.hex() for h in self.doc.get_heads()]

    def has_heads(self, heads_hex: list[str]) -> bool:
        """True when every change in ``heads_hex`` is in this document."""
        try:
            heads = [bytes.fromhex(h) for h in heads_hex]
        except ValueError as exc:
            raise InvalidRequest(f"heads must be hex change hashes: {exc}") from exc
        if not heads:
            return True
        if set(heads) <= set(self.doc.get_heads()):
            return True  # the common case, without fork()
        try:
            # fork() raises for a hash it does not know (get_changes does not); it is cheap.
            self.doc.fork(heads)
        except Exception:  # the binding raises a bare Exception for unknown hashes
            return False
        return True

    # ------------------------------------------------------------ reads

    @property
    def ready(self) -> bool:
        """Whether the schema has arrived (a fresh client replica is empty until first sync)."""
        return self._get(ROOT, "cells") is not None

    def _get(self, obj: bytes, key: str | int) -> tuple[Any, bytes] | None:
        return get(self.doc, obj, key)

    def _cells_obj(self) -> bytes:
        got = self._get(ROOT, "cells")
        if got is None or got[0] != ObjType.Map:
            raise InvalidRequest("the notebook document has no cells map (not synced yet?)")
        return got[1]

    def _ordered(self) -> tuple[tuple[str, str, bytes], ...]:
        """(position, id, obj) of every cell, in notebook order."""
        with automerge_errors("reading the heads"):
            heads = self.doc.get_heads()
        if self._order is not None and self._order[0] == heads:
            return self._order[1]
        ordered = self._read_order()
        self._order = (heads, ordered)
        return ordered

    def _read_order(self) -> tuple[tuple[str, str, bytes], ...]:
        cells = self._cells_obj()
        entries = []
        with automerge_errors("listing the cells"):
            keys = self.doc.keys(cells)
        for key in keys:
            try:
                got = self._get(cells, key)
            except DocumentError:
                continue  # not a cell at all (a Counter under cells/): nothing to order
            if got is None or got[0] != ObjType.Map:
                continue
            entries.append((self._str(got[1], "position"), key, got[1]))
        entries.sort()
        return tuple(entries)

    def _iter_cell_objs(self) -> Iterator[tuple[str, bytes]]:
        for _, cell_id, obj in self._ordered():
            yield cell_id, obj

    def _str(
        self, obj: bytes, key: str, default: str = "", *, problems: list[str] | None = None
    ) -> str:
        """A string field, whether stored as Str or as Text; ``default`` when it is missing
        or holds something else (noted in ``problems``)."""
        try:
            got = self._get(obj, key)
            value = text_or_str(self.doc, got)
        except DocumentError as exc:
            if problems is not None:
                problems.append(f"{key}: {unreadable_reason(exc)}; read as {default!r}")
            return default
        if value is None:
            if got is not None and problems is not None:
                problems.append(f"{key}: not a string")
            return default
        return value

    @property
    def doc_id(self) -> str:
        return self._str(ROOT, "doc_id")

    def cell_ids(self) -> list[str]:
        return [cell_id for _, cell_id, _ in self._ordered()]

    def __len__(self) -> int:
        return len(self._ordered())

    def _obj(self, cell_id: str) -> bytes:
        try:
            got = self._get(self._cells_obj(), cell_id)
        except DocumentError:
            got = None
        if got is None or got[0] != ObjType.Map:
            raise CellNotFound(f"cell {cell_id!r} is not in this notebook")
        return got[1]

    def _find(self, cell_id: str) -> tuple[int, bytes]:
        obj = self._obj(cell_id)
        return self.cell_ids().index(cell_id), obj

    def index_of(self, cell_id: str) -> int:
        return self._find(cell_id)[0]

    def _source_obj(self, cell_obj: bytes, cell_id: str = "") -> bytes:
        try:
            got = self._get(cell_obj, "source")
        except DocumentError as exc:
            raise InvalidRequest(f"cell {cell_id!r}: its source cannot be read ({exc})") from exc
        if got is None or got[0] != ObjType.Text:
            raise InvalidRequest(f"cell {cell_id!r} has no source text")
        return got[1]

    def _cell(self, cell_id: str, obj: bytes) -> Cell:
        problems: list[str] = []
        stored_id = self._str(obj, "id", cell_id, problems=problems)
        if stored_id != cell_id:
            problems.append(f"id: {stored_id!r} differs from its key; the key is used")
        cell_type = self._str(obj, "cell_type", "code", problems=problems)
        if cell_type not in CELL_TYPES:
            problems.append(f"cell_type: unknown type {cell_type!r}; read as 'raw'")
            cell_type = "raw"
        try:
            source = text_or_str(self.doc, self._get(obj, "source"))
        except DocumentError as exc:
            source = None
            problems.append(f"source: {unreadable_reason(exc)}; read as empty")
        if source is None:
            if not any(p.startswith("source:") for p in problems):
                problems.append("source: missing or not text; read as empty")
            source = ""
        metadata = self._json_field(obj, "metadata", problems)
        attachments = self._json_field(obj, "attachments", problems)
        return Cell(
            id=cell_id,
            cell_type=cell_type,
            source=source,
            metadata=metadata if isinstance(metadata, dict) else {},
            attachments=attachments if isinstance(attachments, dict) else None,
            problems=tuple(f"cell {cell_id!r}: {p}" for p in problems),
        )

    def _json_field(self, obj: bytes, key: str, problems: list[str]) -> JsonValue:
        try:
            got = self._get(obj, key)
        except DocumentError as exc:
            problems.append(f"{key}: {unreadable_reason(exc)}; left out")
            return None
        if got is None:
            return None
        if got[0] != ObjType.Map:
            problems.append(f"{key}: not a map; left out")
            return None
        return read_json(self.doc, got[1], problems=problems, where=key)

    def cells(self) -> list[Cell]:
        """Every cell in order; a cell with unreadable parts is returned with what could be
        read and its :attr:`Cell.problems`."""
        return [self._cell(cell_id, obj) for cell_id, obj in self._iter_cell_objs()]

    def cell(self, cell_id: str) -> Cell:
        return self._cell(cell_id, self._obj(cell_id))

    def source(self, cell_id: str) -> str:
        """The cell's source (a Str written where Text belongs is read too)."""
        obj = self._obj(cell_id)
        try:
            source = text_or_str(self.doc, self._get(obj, "source"))
        except DocumentError as exc:
            raise InvalidRequest(f"cell {cell_id!r}: its source cannot be read ({exc})") from exc
        return source or ""

    def metadata(self, *, problems: list[str] | None = None) -> dict[str, JsonValue]:
        """Notebook metadata (values the binding cannot read are left out, noted in
        ``problems``)."""
        got = self._get(ROOT, "metadata")
        if got is None or got[0] != ObjType.Map:
            return {}
        value = read_json(self.doc, got[1], problems=problems, where="metadata")
        return value if isinstance(value, dict) else {}

    def problems(self) -> list[str]:
        """Everything in this document that could not be read as the schema says, each
        naming its cell or field; empty for a healthy document."""
        found: list[str] = []
        self.metadata(problems=found)
        found = [f"notebook {p}" for p in found]
        for cell in self.cells():
            found.extend(cell.problems)
        return found

    def to_nbformat(
        self, outputs_for: Callable[[str], tuple[int | None, list[dict[str, Any]]]] | None = None
    ) -> dict[str, Any]:
        """The notebook as an nbformat v4 dict; ``outputs_for(cell_id)`` supplies code cells'
        execution count and outputs (default: none)."""
        cells: list[dict[str, Any]] = []
        for cell in self.cells():
            out: dict[str, Any] = {
                "id": cell.id,
                "cell_type": cell.cell_type,
                "metadata": copy.deepcopy(cell.metadata),
                "source": cell.source,
            }
            if cell.cell_type == "code":
                count, outputs = outputs_for(cell.id) if outputs_for else (None, [])
                out["execution_count"] = count
                out["outputs"] = outputs
            elif cell.attachments is not None:
                out["attachments"] = cell.attachments
            cells.append(out)
        return {
            "nbformat": self._int("nbformat", 4),
            "nbformat_minor": self._int("nbformat_minor", 5),
            "metadata": self.metadata(),
            "cells": cells,
        }

    def _int(self, key: str, default: int) -> int:
        try:
            got = self._get(ROOT, key)
        except DocumentError:
            return default
        if got is None or isinstance(got[0], ObjType):
            return default
        value = got[0][1]
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            return default
        return int(value)

    # ------------------------------------------------------------ edits

    def add_cell(
        self,
        cell_type: str = "code",
        source: str = "",
        *,
        index: int | None = None,
        cell_id: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
    ) -> str:
        """Insert a cell (at the end by default) and return its id."""
        if cell_type not in CELL_TYPES:
            raise InvalidRequest(f"unknown cell type {cell_type!r}; use one of {CELL_TYPES}")
        existing = set(self.cell_ids())
        if cell_id is None:
            cell_id = new_cell_id(existing)
        else:
            _check_cell_id(cell_id)
            if cell_id in existing:
                raise InvalidRequest(f"cell id {cell_id!r} is already in this notebook")
        cells = self._cells_obj()
        position = self._position_for(index)
        with automerge_errors("adding a cell"), self.doc.transaction() as tx:
            _insert_cell(
                tx,
                cells,
                position,
                cell_id=cell_id,
                cell_type=cell_type,
                source=source,
                metadata=metadata or {},
                attachments=None,
            )
        return cell_id

    def _position_for(self, index: int | None, *, excluding: str | None = None) -> str:
        """A fractional index that sorts at ``index`` (None: the end)."""
        positions = [p for p, cell_id, _ in self._ordered() if cell_id != excluding]
        at = len(positions) if index is None else max(0, min(index, len(positions)))
        before = positions[at - 1] if at > 0 else None
        after = positions[at] if at < len(positions) else None
        if before is not None and after is not None and before >= after:
            # Concurrent inserts can leave equal positions (ties sort by id): go past them.
            later = [p for p in positions[at:] if p > before]
            after = later[0] if later else None
        return str(generate_key_between(before, after))

    def delete_cell(self, cell_id: str) -> None:
        self._obj(cell_id)  # CellNotFound
        with automerge_errors(f"deleting cell {cell_id!r}"), self.doc.transaction() as tx:
            tx.delete(self._cells_obj(), cell_id)

    def move_cell(self, cell_id: str, index: int) -> None:
        """Move a cell to ``index`` (counted without the cell itself).

        One write of the cell's position: concurrent moves converge on one copy and
        concurrent edits to the cell's source are kept.
        """
        obj = self._obj(cell_id)
        position = self._position_for(index, excluding=cell_id)
        with automerge_errors(f"moving cell {cell_id!r}"), self.doc.transaction() as tx:
            tx.put(obj, "position", ScalarType.Str, position)

    def splice_source(self, cell_id: str, index: int, delete: int, insert: str) -> None:
        """Delete ``delete`` code points at ``index`` of the cell's source and insert ``insert``."""
        text = self._source_obj(self._obj(cell_id), cell_id)
        with automerge_errors(f"reading the source of cell {cell_id!r}"):
            length = self.doc.length(text)
        if index < 0 or delete < 0 or index + delete > length:
            raise InvalidRequest(
                f"splice out of range: index {index}, delete {delete}, source length {length}"
            )
        with automerge_errors(f"editing cell {cell_id!r}"), self.doc.transaction() as tx:
            splice_text(tx, text, index, delete, insert)

    def set_source(self, cell_id: str, source: str) -> None:
        """Replace the source, touching only the changed middle (common prefix/suffix kept),
        so concurrent edits elsewhere in the cell survive."""
        old = self.source(cell_id)
        if old == source:
            return
        prefix = 0
        limit = min(len(old), len(source))
        while prefix < limit and old[prefix] == source[prefix]:
            prefix += 1
        suffix = 0
        while (
            suffix < limit - prefix
            and old[len(old) - 1 - suffix] == source[len(source) - 1 - suffix]
        ):
            suffix += 1
        self.splice_source(
            cell_id, prefix, len(old) - prefix - suffix, source[prefix : len(source) - suffix]
        )

    def set_cell_type(self, cell_id: str, cell_type: str) -> None:
        if cell_type not in CELL_TYPES:
            raise InvalidRequest(f"unknown cell type {cell_type!r}; use one of {CELL_TYPES}")
        obj = self._obj(cell_id)
        with automerge_errors(f"editing cell {cell_id!r}"), self.doc.transaction() as tx:
            tx.put(obj, "cell_type", ScalarType.Str, cell_type)

    def set_cell_metadata(self, cell_id: str, key: str, value: JsonValue) -> None:
        obj = self._obj(cell_id)
        meta = self._map_or_none(obj, "metadata")
        with automerge_errors(f"editing cell {cell_id!r}"), self.doc.transaction() as tx:
            target = meta if meta is not None else tx.put_object(obj, "metadata", ObjType.Map)
            put_json(tx, target, encode_key(key), value)

    def _map_or_none(self, obj: bytes, key: str) -> bytes | None:
        """The Map under ``key``, or None when it is missing or not a Map (then a write
        replaces it with a fresh Map rather than writing into something else)."""
        try:
            got = self._get(obj, key)
        except DocumentError:
            return None
        return got[1] if got is not None and got[0] == ObjType.Map else None

    def set_metadata(self, key: str, value: JsonValue) -> None:
        """Set one top-level notebook metadata key (others, known or not, are kept)."""
        meta = self._map_or_none(ROOT, "metadata")
        with automerge_errors("editing notebook metadata"), self.doc.transaction() as tx:
            target = meta if meta is not None else tx.put_object(ROOT, "metadata", ObjType.Map)
            put_json(tx, target, encode_key(key), value)


def _join_source(source: str | list[str]) -> str:
    return source if isinstance(source, str) else "".join(source)


def _insert_cell(
    tx: Transaction,
    cells: bytes,
    position: str,
    *,
    cell_id: str,
    cell_type: str,
    source: str,
    metadata: dict[str, JsonValue],
    attachments: dict[str, JsonValue] | None,
) -> None:
    obj = tx.put_object(cells, cell_id, ObjType.Map)
    tx.put(obj, "id", ScalarType.Str, cell_id)
    tx.put(obj, "position", ScalarType.Str, position)
    tx.put(obj, "cell_type", ScalarType.Str, cell_type)
    text = tx.put_object(obj, "source", ObjType.Text)
    splice_text(tx, text, 0, 0, source)
    put_json(tx, obj, "metadata", metadata)
    if attachments is not None:
        put_json(tx, obj, "attachments", attachments)
