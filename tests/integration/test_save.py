"""Checkpoints to .ipynb: exact round trips, save-as, refusing bad files, crash recovery."""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from runtimed.client import AsyncClient, Client
from runtimed.daemon.app import Daemon
from runtimed.documents.notebook import NotebookDoc
from runtimed.errors import InvalidRequest, NotebookInvalid, NotebookIOError, NotebookNotFound
from runtimed.paths import RuntimedPaths
from runtimed.storage.documents import DocumentStore

from .conftest import wait_for_socket, write_notebook

ROOT = Path(__file__).resolve().parents[2]

_rng = random.Random(7)
PNG_B64 = base64.b64encode(bytes(_rng.randrange(256) for _ in range(6000))).decode() + "\n"
SMALL_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
    "RU5ErkJggg=="
)
LONG_STREAM = [f"line {i} é😀\n" for i in range(400)]  # spills to a blob


def rich_notebook() -> dict[str, Any]:
    """What Jupyter writes: multiline lists, unknown metadata everywhere, attachments,
    outputs of every type (some large enough to live in the blob store)."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {
                "name": "python3",
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            },
            "language_info": {
                "name": "python",
                "version": "3.11.7",
                "codemirror_mode": {"name": "ipython", "version": 3},
            },
            "toc-autonumbering": True,
            "my.extension": {
                "nested": {"list": [1, 2.5, None, True, "é"], "empty": {}},
                "float_one": 1.0,
            },
        },
        "cells": [
            {
                "id": "md-att",
                "cell_type": "markdown",
                "metadata": {"slideshow": {"slide_type": "slide"}, "vendor": {"x": [[]]}},
                "source": ["# Title é😀\n", "\n", "![pic](attachment:pic.png)"],
                "attachments": {
                    "pic.png": {"image/png": SMALL_PNG},
                    "big.png": {"image/png": PNG_B64},
                },
            },
            {
                "id": "code-1",
                "cell_type": "code",
                "execution_count": 3,
                "metadata": {
                    "tags": ["parameters"],
                    "collapsed": False,
                    "jupyter": {"source_hidden": True},
                    "custom": {"a": 1},
                },
                "source": ["import sys\n", "print('hi')\n", "40 + 2"],
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": ["hi\n", "there\n"]},
                    {"output_type": "stream", "name": "stderr", "text": LONG_STREAM},
                    {
                        "output_type": "execute_result",
                        "execution_count": 3,
                        "metadata": {"custom": True},
                        "data": {"text/plain": ["42"], "text/html": ["<b>42</b>"]},
                    },
                ],
            },
            {
                "id": "code-2",
                "cell_type": "code",
                "execution_count": 4,
                "metadata": {},
                "source": "display(img)",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {"image/png": {"width": 640, "height": 480}},
                        "data": {
                            "image/png": PNG_B64,
                            "text/plain": ["<Figure>"],
                            "application/json": {"k": [1, {"z": None}], "a": "é"},
                            "application/vnd.custom+json": {"deep": {"x": 1.5}},
                        },
                    },
                    {
                        "output_type": "error",
                        "ename": "ValueError",
                        "evalue": "bad é",
                        "traceback": ["\u001b[0;31mValueError\u001b[0m: bad é"],
                    },
                ],
            },
            {
                "id": "raw-1",
                "cell_type": "raw",
                "metadata": {"format": "text/x-rst"},
                "source": "raw ✓",
            },
            {
                "id": "code-3",
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "source": "",
                "outputs": [],
            },
        ],
    }


def normalized(path: Path) -> dict[str, Any]:
    """A notebook file as nbformat reads it (multiline lists joined), as plain JSON."""
    plain: dict[str, Any] = json.loads(json.dumps(nbformat.reads(path.read_text(), as_version=4)))
    return plain


def write_json(path: Path, nb: dict[str, Any]) -> Path:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------- round trips


@pytest.mark.anyio
async def test_open_then_save_writes_the_same_notebook(
    client: AsyncClient, short_tmp: Path
) -> None:
    original = rich_notebook()
    nbformat.validate(nbformat.from_dict(copy.deepcopy(original)))
    path = write_json(short_tmp / "rich.ipynb", original)
    expected = normalized(path)

    nb = await client.open(path)
    assert nb.cell("md-att").attachments == original["cells"][0]["attachments"]
    saved = await nb.save()
    assert saved == path.resolve()

    written = normalized(path)
    nbformat.validate(nbformat.from_dict(written))
    assert written["metadata"] == expected["metadata"]
    for got, want in zip(written["cells"], expected["cells"], strict=True):
        assert got["metadata"] == want["metadata"], want["id"]
        assert got.get("attachments") == want.get("attachments"), want["id"]
    assert written == expected


@pytest.mark.anyio
async def test_save_as_writes_a_new_file_and_follows_it(
    client: AsyncClient, short_tmp: Path
) -> None:
    path = write_json(short_tmp / "orig.ipynb", rich_notebook())
    before = path.read_bytes()
    nb = await client.open(path)
    await nb.set_source("code-3", "edited = True")
    new = short_tmp / "copy.ipynb"
    saved = await nb.save(new)
    assert saved == new.resolve()
    assert nb.path == new.resolve()
    assert path.read_bytes() == before  # the original is untouched
    written = normalized(new)
    expected = normalized(path)
    expected["cells"][4]["source"] = "edited = True"
    assert written == expected
    [info] = await client.list_notebooks()
    assert info.path == str(new.resolve())
    # Later saves without a path go to the new file.
    await nb.set_source("code-3", "edited = 2")
    await nb.save()
    assert normalized(new)["cells"][4]["source"] == "edited = 2"
    assert path.read_bytes() == before


@pytest.mark.anyio
async def test_save_as_onto_a_notebook_open_elsewhere_is_refused(
    client: AsyncClient, short_tmp: Path
) -> None:
    a = write_notebook(short_tmp / "a.ipynb", [{"cell_type": "code", "source": "a"}])
    b = write_notebook(short_tmp / "b.ipynb", [{"cell_type": "code", "source": "b"}])
    b_bytes = b.read_bytes()
    nb_a = await client.open(a)
    await client.open(b)
    with pytest.raises(InvalidRequest, match="is open as another notebook"):
        await nb_a.save(b)
    assert b.read_bytes() == b_bytes


@pytest.mark.anyio
async def test_created_notebook_is_saved_at_its_path(client: AsyncClient, short_tmp: Path) -> None:
    path = short_tmp / "new.ipynb"
    nb = await client.create(path)
    assert path.exists()
    await nb.add_cell("code", "x = 'é'", cell_id="only")
    await nb.save()
    saved = nbformat.read(path, as_version=4)
    nbformat.validate(saved)
    assert [(c.id, c.source) for c in saved.cells] == [("only", "x = 'é'")]


# ---------------------------------------------------------------- files that are refused

INVALID = {
    "garbage": b"\x00\xff not json at all \x89PNG",
    "not-utf8": b'{"cells": [], "nbformat": 4, "x": "\xff"}',
    "json-list": b"[1, 2, 3]",
    "json-not-notebook": b'{"hello": "world"}',
    "nbformat-3": json.dumps(
        {
            "nbformat": 3,
            "nbformat_minor": 0,
            "metadata": {},
            "worksheets": [{"cells": []}],
            "cells": [],
        }
    ).encode(),
    "invalid-v4": json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {},
            "cells": [{"cell_type": "code", "id": "x"}],
        }
    ).encode(),
    "empty": b"",
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(INVALID))
async def test_an_invalid_notebook_is_refused_and_left_untouched(
    client: AsyncClient, short_tmp: Path, name: str
) -> None:
    path = short_tmp / f"{name}.ipynb"
    path.write_bytes(INVALID[name])
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = path.stat()
    with pytest.raises(NotebookInvalid) as info:
        await client.open(path)
    assert str(path.resolve()) in str(info.value)
    if name == "nbformat-3":
        assert "nbformat 3" in str(info.value)
        assert "convert" in str(info.value)
    after = path.stat()
    assert path.read_bytes() == INVALID[name]
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert not list(short_tmp.glob(f".{name}.ipynb.*"))  # no temp file left behind
    await client.ping()
    assert await client.list_notebooks() == []


@pytest.mark.anyio
async def test_a_missing_file_is_notebook_not_found(client: AsyncClient, short_tmp: Path) -> None:
    path = short_tmp / "nope.ipynb"
    with pytest.raises(NotebookNotFound, match="no such notebook file") as info:
        await client.open(path)
    assert str(path.resolve()) in str(info.value)
    assert not path.exists()


@pytest.mark.anyio
async def test_a_directory_is_a_clear_io_error(client: AsyncClient, short_tmp: Path) -> None:
    path = short_tmp / "dir.ipynb"
    path.mkdir()
    with pytest.raises(NotebookIOError, match="is a directory") as info:
        await client.open(path)
    assert str(path.resolve()) in str(info.value)


@pytest.mark.anyio
@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
async def test_an_unreadable_file_is_a_clear_io_error(client: AsyncClient, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "locked.ipynb", [{"cell_type": "code", "source": "1"}])
    before = path.read_bytes()
    path.chmod(0)
    try:
        with pytest.raises(NotebookIOError, match="cannot read") as info:
            await client.open(path)
        assert str(path.resolve()) in str(info.value)
    finally:
        path.chmod(0o644)
    assert path.read_bytes() == before


# ---------------------------------------------------------------- crash recovery


class Daemons:
    """Daemon processes on one socket and home, started and crashed at will; every process
    still running at the end is stopped."""

    def __init__(self, short_tmp: Path) -> None:
        self.paths = RuntimedPaths(socket=short_tmp / "c" / "rt.sock", home=short_tmp / "chome")
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtimed.daemon.main",
                "--socket",
                str(self.paths.socket),
                "--home",
                str(self.paths.home),
                "--log-level",
                "WARNING",
            ],
            # No kernel pool: no kernel process to orphan when the daemon is SIGKILLed.
            env=dict(os.environ, PYTHONPATH=str(ROOT), RUNTIMED_POOL_SIZE="0"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.started.append(proc)
        wait_for_socket(self.paths.socket, proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def daemons(short_tmp: Path) -> Iterator[Daemons]:
    started = Daemons(short_tmp)
    try:
        yield started
    finally:
        started.close()


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def wait_persisted(paths: RuntimedPaths, path: Path, text: str, timeout: float = 10) -> None:
    """Until the daemon has persisted ``text`` (in some cell) for ``path``: its document holds
    it and the file record exists (the daemon persists on a short debounce; nothing else
    signals it across processes; the record is rewritten only when it changes)."""
    key = DocumentStore.key_for(path.resolve(), "")
    doc_file, meta_file = paths.documents / f"{key}.automerge", paths.documents / f"{key}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Each is written atomically (temp + rename).
            data = doc_file.read_bytes() if meta_file.exists() else b""
        except FileNotFoundError:
            data = b""
        if data:
            doc = NotebookDoc.load(data)
            if doc.ready and any(text in cell.source for cell in doc.cells()):
                return
        time.sleep(0.02)
    raise TimeoutError(f"{text!r} not persisted in {doc_file} within {timeout} s")


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_edits_survive_a_daemon_crash(daemons: Daemons, short_tmp: Path) -> None:
    paths, proc = daemons.paths, daemons.start()
    path = write_notebook(
        short_tmp / "crash.ipynb",
        [
            {"cell_type": "code", "source": "a = 1"},
            {"cell_type": "markdown", "source": "note"},
        ],
    )
    on_disk = path.read_bytes()
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        notebook_id = nb.id
        nb.set_source("cell0", "a = 'edited, never saved é😀'")
        nb.add_cell("code", "b = 2", cell_id="added")
        wait_persisted(paths, path, "never saved")
        wait_persisted(paths, path, "b = 2")
        kill(proc)  # no checkpoint, no clean shutdown
    assert path.read_bytes() == on_disk  # the .ipynb never got the edits

    restarted = daemons.start()
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        assert nb.id == notebook_id
        assert nb.cell_ids() == ["cell0", "cell1", "added"]
        assert nb.cell("cell0").source == "a = 'edited, never saved é😀'"
        assert nb.cell("added").source == "b = 2"
    assert stop(restarted) == 0


def test_edits_after_a_checkpoint_survive_a_crash(daemons: Daemons, short_tmp: Path) -> None:
    paths, proc = daemons.paths, daemons.start()
    path = write_notebook(short_tmp / "cp.ipynb", [{"cell_type": "code", "source": "v = 0"}])
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        nb.set_source("cell0", "v = 1  # saved")
        nb.save()
        saved = path.read_bytes()
        nb.set_source("cell0", "v = 2  # after the save")
        wait_persisted(paths, path, "after the save")
        kill(proc)
    assert path.read_bytes() == saved

    restarted = daemons.start()
    with Client.connect(paths.socket) as client:
        assert client.open(path).cell("cell0").source == "v = 2  # after the save"
    assert stop(restarted) == 0


def test_a_file_changed_while_the_daemon_was_down_wins(daemons: Daemons, short_tmp: Path) -> None:
    paths, proc = daemons.paths, daemons.start()
    path = write_notebook(short_tmp / "ext.ipynb", [{"cell_type": "code", "source": "old"}])
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        nb.set_source("cell0", "daemon edit")
        wait_persisted(paths, path, "daemon edit")
        kill(proc)
    write_notebook(path, [{"cell_type": "code", "source": "edited in another editor"}])

    restarted = daemons.start()
    with Client.connect(paths.socket) as client:
        nb = client.open(path)
        assert nb.cell("cell0").source == "edited in another editor"
    # The superseded document is kept aside, not deleted.
    assert list(paths.documents.glob("*.stale.automerge"))
    assert stop(restarted) == 0


@pytest.mark.anyio
async def test_a_clean_stop_checkpoints_unsaved_edits(daemon: Daemon, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "clean.ipynb", [{"cell_type": "code", "source": "x"}])
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path)
        await nb.set_source("cell0", "x = 'checkpointed on stop'")
        await nb.close()
        await client.shutdown_daemon()
        await client.wait_until(lambda: client.connection.closed, timeout=30)
    saved = nbformat.read(path, as_version=4)
    assert saved.cells[0].source == "x = 'checkpointed on stop'"


@pytest.mark.anyio
async def test_a_persist_rewrites_only_the_parts_that_changed(
    daemon: Daemon, short_tmp: Path
) -> None:
    import anyio

    path = write_notebook(short_tmp / "parts.ipynb", [{"cell_type": "code", "source": "1"}])
    key = DocumentStore.key_for(path.resolve(), "")
    files = [
        daemon.paths.documents / f"{key}{suffix}"
        for suffix in (".automerge", ".runtime.json", ".json")
    ]

    def inodes() -> list[int | None]:  # every write is temp + rename: a new inode
        return [f.stat().st_ino if f.exists() else None for f in files]

    def doc_size() -> int:  # the document's new changes are appended: same inode, longer
        return files[0].stat().st_size

    async def until(predicate: Any) -> None:
        with anyio.fail_after(10):
            while not predicate():
                await anyio.sleep(0.02)

    def persisted(text: str) -> bool:
        if None in inodes():
            return False
        return NotebookDoc.load(files[0].read_bytes()).cell("cell0").source == text

    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path)
        await nb.set_source("cell0", "x = 'first'")
        await until(lambda: persisted("x = 'first'"))
        doc, runtime, record = inodes()
        size = doc_size()
        # An edit of the notebook: only its document is written again (its changes appended).
        await nb.set_source("cell0", "x = 'second'")
        await until(lambda: persisted("x = 'second'"))
        await anyio.sleep(0.5)  # more than the debounce: nothing else follows
        assert doc_size() > size
        assert inodes()[1:] == [runtime, record]
        # A save changes the file's hash: the record is written, the document is not.
        doc, size = inodes()[0], doc_size()
        before = files[2].read_text()
        await nb.save()
        assert (inodes()[0], doc_size()) == (doc, size)
        # (Compared by content: a save writes the record twice, intended hash first, and the
        # second write may get the first inode number back.)
        assert files[2].read_text() != before
        assert json.loads(files[2].read_text())["file_sha256"] is not None


@pytest.mark.anyio
async def test_a_failed_persist_loses_nothing_once_the_disk_is_back(
    daemon: Daemon,
    short_tmp: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    import anyio

    from runtimed.documents.changechunk import complete_prefix
    from runtimed.storage import documents as persistence

    path = write_notebook(short_tmp / "fail.ipynb", [{"cell_type": "code", "source": "1"}])
    key = DocumentStore.key_for(path.resolve(), "")
    doc_file = daemon.paths.documents / f"{key}.automerge"
    real_write, real_append = persistence.atomic_write, persistence._append
    disk_full = True

    def full_disk_write(target: Path, data: bytes) -> None:
        if disk_full:  # root ignores file modes: fail the write as a full disk does
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real_write(target, data)

    def full_disk_append(target: Path, data: bytes) -> None:
        if disk_full:  # a full disk takes part of an append: a torn chunk is left behind
            real_append(target, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        real_append(target, data)

    def persisted_source() -> str | None:  # read as the daemon does (a torn append dropped)
        if not doc_file.exists():
            return None
        data = doc_file.read_bytes()
        return NotebookDoc.load(data[: complete_prefix(data)]).cell("cell0").source

    async def until(predicate: Any) -> None:
        with anyio.fail_after(10):
            while not predicate():
                await anyio.sleep(0.02)

    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path)
        await nb.set_source("cell0", "x = 'before'")
        await until(lambda: persisted_source() == "x = 'before'")
        monkeypatch.setattr(persistence, "atomic_write", full_disk_write)
        monkeypatch.setattr(persistence, "_append", full_disk_append)
        await nb.set_source("cell0", "x = 'while the disk was full'")
        await until(lambda: "could not persist notebook" in caplog.text)
        assert persisted_source() == "x = 'before'"  # the old state is intact
        disk_full = False
        # Retried without any further change: the edit made meanwhile reaches the disk.
        await until(lambda: persisted_source() == "x = 'while the disk was full'")
