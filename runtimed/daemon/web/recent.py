"""Notebooks the daemon has persisted: the home page's "recent" list, and how a page for a
notebook that is no longer loaded (culled, or the daemon restarted) finds its file again.

Reads the ``<home>/documents/<key>.json`` records (docs/schema.md, persistence); blocking
file reads, so callers run :func:`read_records` in a worker thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Record", "read_records"]

MAX_RECORDS = 200


@dataclass(frozen=True, slots=True)
class Record:
    notebook_id: str
    path: str | None
    modified: float


def read_records(documents: Path) -> list[Record]:
    """Every readable record, newest first (at most ``MAX_RECORDS``); bad files are skipped."""
    records: list[Record] = []
    try:
        candidates = [p for p in documents.glob("*.json") if not p.name.endswith(".runtime.json")]
    except OSError:
        return []
    for path in candidates:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            modified = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if not isinstance(raw, dict) or not isinstance(raw.get("doc_id"), str):
            continue
        nb_path = raw.get("path")
        records.append(
            Record(
                notebook_id=raw["doc_id"],
                path=nb_path if isinstance(nb_path, str) else None,
                modified=modified,
            )
        )
    records.sort(key=lambda r: r.modified, reverse=True)
    return records[:MAX_RECORDS]
