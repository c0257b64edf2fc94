"""Issue 13 point 19: set-aside documents are dropped when they hold nothing new, and
collected by age."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runtimed.storage.documents import STALE_MAX_AGE, DocumentStore


def test_saved_flag_round_trips(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    key = DocumentStore.key_for(tmp_path / "nb.ipynb", "")
    store.save(key, notebook=b"doc", runtime={}, meta=("p", "d", "sha", True))
    loaded = store.load(key)
    assert loaded is not None
    assert loaded.saved
    store.save(key, notebook=b"doc2", runtime=None, meta=("p", "d", "sha", False))
    loaded = store.load(key)
    assert loaded is not None
    assert not loaded.saved
    store.discard(key)
    assert store.load(key) is None


def test_remove_stale_by_age(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    old = tmp_path / "k.1.stale.automerge"
    new = tmp_path / "k.2.stale.automerge"
    for path in (old, new):
        path.write_bytes(b"x")
    past = time.time() - STALE_MAX_AGE - 10
    os.utime(old, (past, past))
    assert store.remove_stale() == 1
    assert not old.exists()
    assert new.exists()
