"""Is a notebook document still readable after a client's changes? (Pure; no I/O.)

The room applies a client's sync message to a shadow copy of the notebook document and, if it
changed, reads what changed the way a save would, before the change reaches the live document.
Reading everything costs O(notebook) per keystroke (about 10 ms for 200 cells here), so only
the parts the change touched are read. The new changes' own bytes name the objects their
operations wrote into (:mod:`runtimed.documents.changechunk`, microseconds): each of those objects
is read whole, and for the cells map only the cells whose keys were written. When the changes
cannot be decoded that way, the binding's ``diff`` names the touched cells instead (it walks the
whole document: about 2 ms for 300 cells here, 7 ms for 1,000). Its ``Patch`` objects expose
nothing but their ``repr`` (Rust's ``Debug`` of ``automerge::Patch``, which escapes ``"`` and
``\\`` in keys); anything in it this module does not recognise means "read it all".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from automerge.core import ROOT, Document, ObjType

from runtimed.documents.boundary import DocumentError, automerge_errors, is_panic
from runtimed.documents.changechunk import ROOT_KEY, object_key, written_objects
from runtimed.documents.notebook import NotebookDoc

__all__ = ["Touched", "check_readable", "touched"]

_CELL = 'path: [(Root, Map("cells")), ('
_CELL_DELETED = 'path: [(Root, Map("cells"))], action: DeleteMap '
_METADATA = 'path: [(Root, Map("metadata"))'
_CELL_ELEMENT = re.compile(r'Id\(\d+, ActorID\("[0-9a-f]*"\), \d+\), Map\("')


@dataclass
class Touched:
    """The parts of a notebook document a change touched."""

    cells: set[str] = field(default_factory=set)
    metadata: bool = False


def touched(doc: Document, before: list[bytes], after: list[bytes]) -> Touched | None:
    """What changed between ``before`` and ``after`` (None: read the whole document).

    Raises:
        DocumentError: the binding failed computing the diff.
    """
    with automerge_errors("reading what a sync message changed"):
        patches = [repr(p) for p in doc.diff(before, after)]
    result = Touched()
    for text in patches:
        start = text.find("path: [")
        if start < 0:
            return None
        text = text[start:]
        if text.startswith(_CELL):
            key = _cell_key(text, len(_CELL))
            if key is None:
                return None
            result.cells.add(key)
        elif text.startswith(_METADATA):
            result.metadata = True
        elif not text.startswith(_CELL_DELETED):
            return None  # a root key, a new cell, ...: read everything
    return result


def _cell_key(text: str, pos: int) -> str | None:
    """The cell id in ``Id(..), Map("<id>"))`` at ``pos``; None for anything unexpected."""
    match = _CELL_ELEMENT.match(text, pos)
    if match is None:
        return None
    chars: list[str] = []
    i = match.end()
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(chars)
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in '"\\':
                return None  # another escape (\n, \u{..}): do not guess
            chars.append(text[i + 1])
            i += 2
            continue
        chars.append(c)
        i += 1
    return None


def check_readable(doc: Document, before: list[bytes]) -> None:
    """Read what changed in ``doc`` since ``before``: every value of a touched cell (or of
    the notebook's metadata) the way a save reads them; the whole notebook when the change
    is not one this module can place.

    Raises:
        DocumentError: the binding failed or panicked reading it.
        RuntimedError: our schema refuses what it read (reported, not a binding failure).
    """
    with automerge_errors("reading the new changes of a sync message"):
        chunks = [bytes(change.raw_bytes) for change in doc.get_changes(before)]
    if _read_written(doc, chunks):
        return
    with automerge_errors("reading the notebook after a sync message"):
        parts = touched(doc, before, list(doc.get_heads()))
        if parts is None:
            NotebookDoc(doc).to_nbformat()
            return
        cells = doc.get(ROOT, "cells")
        for cell_id in parts.cells:
            cell = doc.get(cells[1], cell_id) if cells is not None else None
            if cell is not None:  # None: deleted by the same change
                _read_all(doc, cell[1])
        if parts.metadata:
            metadata = doc.get(ROOT, "metadata")
            if metadata is not None:
                _read_all(doc, metadata[1])


def _read_written(doc: Document, chunks: list[bytes]) -> bool:
    """Read every object the changes ``chunks`` wrote into; False when that cannot be done
    exactly (the caller falls back to the diff). As with the diff: a change to a root key or
    a new cell reads the whole notebook the way a save does (its reader tolerates what a new
    cell may hold); deleting cells reads nothing.

    Raises:
        DocumentError: the binding panicked reading it.
        RuntimedError: our schema refuses what it read.
    """
    written = written_objects(chunks)
    if written is None:
        return False
    with automerge_errors("reading the notebook after a sync message"):
        cells = doc.get(ROOT, "cells")
    if cells is None:
        return False  # not a notebook as we write them: the diff decides
    try:
        cells_key = object_key(cells[1])
    except ValueError:
        return False
    if written.objects.get(ROOT_KEY) is not None or written.objects.get(cells_key):
        with automerge_errors("reading the notebook after a sync message"):
            NotebookDoc(doc).to_nbformat()
        return True
    for key in written.objects:
        if key == cells_key:
            continue  # cells deleted
        try:
            with automerge_errors("reading what a sync message changed"):
                obj = written.exids[key]
                doc.object_type(obj)  # raises for an id the document does not hold
                _read_all(doc, obj)
        except DocumentError as exc:
            if exc.__cause__ is not None and is_panic(exc.__cause__):
                raise
            return False  # an id this module built wrong: the diff decides
    return True


def _read_all(doc: Document, obj: bytes) -> None:
    """Convert every value under ``obj`` (what panics on a Counter), texts as strings."""
    kind = doc.object_type(obj)
    if kind == ObjType.Text:
        doc.text(obj)
        return
    for value, child in doc.values(obj):
        if isinstance(value, ObjType):
            _read_all(doc, child)
