"""Nothing the daemon stores is written or read through a symlink planted in its place
(issue 10 §5): the persisted documents (runtimed.storage.documents) and the blob store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blobstore import BlobReadFailed, BlobStore, sha256_hex
from runtimed.storage.documents import DocumentStore

VICTIM = b"the user's file: must stay as it is\n"


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM)
    return path


def test_a_save_replaces_a_planted_symlink_and_never_writes_through_it(tmp_path: Path) -> None:
    target = victim(tmp_path)
    store = DocumentStore(tmp_path / "documents")
    store.root.mkdir()
    doc_path, runtime_path, meta_path = store._paths("k")
    for planted in (doc_path, runtime_path, meta_path):
        planted.symlink_to(target)

    store.save("k", notebook=b"doc", runtime={"cells": {}}, meta=("/n.ipynb", "d", "h", True))

    assert target.read_bytes() == VICTIM
    for written in (doc_path, runtime_path, meta_path):
        assert not written.is_symlink()
        assert written.is_file()
    loaded = store.load("k")
    assert loaded is not None
    assert loaded.notebook == b"doc"


def test_a_load_refuses_a_symlink_in_place_of_a_document(tmp_path: Path) -> None:
    target = victim(tmp_path)
    store = DocumentStore(tmp_path / "documents")
    store.root.mkdir()
    doc_path = store._paths("k")[0]
    doc_path.symlink_to(target)
    assert store.load("k") is None  # not read through the link

    store.save("j", notebook=b"doc", runtime={"cells": {}}, meta=("/n.ipynb", "d", "h", True))
    store._paths("j")[1].unlink()
    store._paths("j")[1].symlink_to(target)
    loaded = store.load("j")
    assert loaded is not None
    assert loaded.runtime == {}  # the planted runtime snapshot is ignored


def test_temp_files_are_new_and_private(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "documents")
    store.save("k", notebook=b"doc", runtime=None, meta=None)
    doc_path = store._paths("k")[0]
    assert doc_path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in store.root.iterdir()] == [doc_path.name]  # no temp left


@pytest.mark.anyio
async def test_a_blob_put_replaces_a_planted_symlink(tmp_path: Path) -> None:
    target = victim(tmp_path)
    store = BlobStore(tmp_path / "blobs")
    data = b"x" * len(VICTIM)  # same size: a stat through the link would call it present
    path = store.path_for(sha256_hex(data))
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    path.with_name(path.name + ".meta").symlink_to(target)

    ref = await store.put(data, media_type="text/plain")

    assert target.read_bytes() == VICTIM
    assert not path.is_symlink()
    assert await store.get(ref.hash) == data
    assert await store.media_type(ref.hash) == "text/plain"


@pytest.mark.anyio
async def test_a_blob_get_refuses_a_symlink(tmp_path: Path) -> None:
    target = victim(tmp_path)
    store = BlobStore(tmp_path / "blobs")
    h = sha256_hex(VICTIM)  # the link's target would even hash right
    path = store.path_for(h)
    path.parent.mkdir(parents=True)
    os.symlink(target, path)
    with pytest.raises(BlobReadFailed):
        await store.get(h)
    assert target.read_bytes() == VICTIM
