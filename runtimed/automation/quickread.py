"""A run's input read and its prepared output written without nbformat (blocking).

The daemon validates the notebook it opens (the output file a run writes), so the client
need not validate the input as well: :func:`read_plain` reads a notebook that is plainly
nbformat 4.5 (unique, well-formed cell ids) as nbformat's reader would return it (lines
rejoined, transient keys dropped), and :func:`plain_bytes` writes the prepared copy as
JSON. Anything else — an older minor version to upgrade, duplicate or missing ids, a file
that is not a notebook, or one the daemon then refuses — takes the careful path
(:func:`runtimed.automation.report.read_input_notebook`, nbformat's reader and validator),
which says what is wrong exactly as before.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from runtimed.automation.nodes import NBFORMAT, NBFORMAT_MINOR

__all__ = ["plain_bytes", "read_plain"]

_CELL_ID = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")
_CELL_TYPES = frozenset({"code", "markdown", "raw"})
_BUNDLE_OUTPUTS = frozenset({"execute_result", "display_data"})


def read_plain(path: Path) -> dict[str, Any] | None:
    """The notebook at ``path`` as plain dicts, or None when it needs the careful path.

    Raises:
        NotebookNotFound, NotebookIOError, NotebookInvalid: as
            :func:`runtimed.storage.ipynb.read_notebook_bytes` (missing, not a regular
            file, too large).
    """
    from runtimed.storage.ipynb import read_notebook_bytes

    raw = read_notebook_bytes(path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # the careful path says why
    if not _plain_v45(data):
        return None
    for cell in data["cells"]:
        _rejoin(cell)
    metadata = data["metadata"]
    for key in ("orig_nbformat", "orig_nbformat_minor", "signature"):
        metadata.pop(key, None)
    notebook: dict[str, Any] = data
    return notebook


def _plain_v45(data: Any) -> bool:
    if not isinstance(data, dict) or data.get("nbformat") != NBFORMAT:
        return False
    if data.get("nbformat_minor") != NBFORMAT_MINOR or not isinstance(data.get("metadata"), dict):
        return False
    cells = data.get("cells")
    if not isinstance(cells, list):
        return False
    seen: set[str] = set()
    for cell in cells:
        if not isinstance(cell, dict) or cell.get("cell_type") not in _CELL_TYPES:
            return False
        cell_id = cell.get("id")
        if not isinstance(cell_id, str) or not _CELL_ID.match(cell_id) or cell_id in seen:
            return False  # nbformat's validator repairs duplicates: let it
        seen.add(cell_id)
        if not isinstance(cell.get("metadata"), dict):
            return False
        if cell["cell_type"] == "code" and not isinstance(cell.get("outputs"), list):
            return False
    return True


def _rejoin(cell: dict[str, Any]) -> None:
    """nbformat's ``rejoin_lines`` and ``strip_transient`` for one cell."""
    if isinstance(cell.get("source"), list):
        cell["source"] = "".join(cell["source"])
    cell["metadata"].pop("trusted", None)
    attachments = cell.get("attachments")
    if isinstance(attachments, dict):
        for bundle in attachments.values():
            _rejoin_bundle(bundle)
    if cell["cell_type"] != "code":
        return
    for output in cell["outputs"]:
        if not isinstance(output, dict):
            continue
        if output.get("output_type") in _BUNDLE_OUTPUTS:
            _rejoin_bundle(output.get("data"))
        elif output.get("output_type") and isinstance(output.get("text"), list):
            output["text"] = "".join(output["text"])


def _rejoin_bundle(bundle: Any) -> None:
    if not isinstance(bundle, dict):
        return
    for mime, value in bundle.items():
        if (
            not _json_mime(mime)
            and isinstance(value, list)
            and all(isinstance(line, str) for line in value)
        ):
            bundle[mime] = "".join(value)


def _json_mime(mime: str) -> bool:
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def plain_bytes(nb: dict[str, Any]) -> bytes:
    """``nb`` as the JSON of an ``.ipynb`` file (nbformat's key order and indent; not
    validated: the daemon validates the file when it opens it)."""
    return (json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()
