"""``runt log`` lists the checkpoints the daemon saved, among the versions, and ``runt diff
--since`` works from one (issue 12 point 3), through a real daemon."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.client.history import notebook_checkpoints, notebook_log
from runtimed.daemon.app import Daemon
from runtimed.storage.documents import DocumentStore
from runtimed.storage.journal import read_checkpoints

from .conftest import write_notebook
from .test_diff_cli import runt
from .test_mcp_support import code

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def journal_of(daemon: Daemon, path: Path) -> Path:
    return DocumentStore(daemon.paths.documents).journal_path(
        DocumentStore.key_for(path.resolve(), "")
    )


async def test_saves_are_journaled_and_listed_in_history_order(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "ck.ipynb", [code("a = 1", "a")])
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path)
        await nb.set_source("a", "a = 2")
        await nb.save()
        first_sha = hashlib.sha256(await anyio.Path(path).read_bytes()).hexdigest()
        later = await nb.add_cell("markdown", "# after the first save")
        await nb.save()
        await nb.set_source("a", "a = 3")  # not saved

        checkpoints = await notebook_checkpoints(client, nb)
        assert checkpoints[0].sha256 == first_sha
        assert len(checkpoints) == 2
        assert checkpoints[0].path == str(path.resolve())
        assert checkpoints[0].time <= checkpoints[1].time
        assert set(checkpoints[1].heads) != set(checkpoints[0].heads)

        log = await notebook_log(client, nb)
        kinds = [e["kind"] for e in log]
        assert kinds.count("checkpoint") == 2
        assert kinds[-1] == "version"  # the unsaved edit comes after the last save
        saved = [e for e in log if e["kind"] == "checkpoint"]
        assert all(e["in_history"] for e in saved)
        await nb.close()

    # The journal is one fsynced JSON line per save, beside the persisted document.
    journal = journal_of(daemon, path)
    lines = (await anyio.Path(journal).read_text()).splitlines()
    assert [json.loads(line)["sha256"] for line in lines] == [c.sha256 for c in checkpoints]

    rc, out, err = await runt(daemon, short_tmp, "log", str(path))
    assert rc == 0, err
    assert out.count("saved ") == 2
    assert f"ck:{first_sha[:12]}" in out

    # From the first checkpoint: the cell added after it, and the unsaved edit.
    rc, out, err = await runt(
        daemon, short_tmp, "diff", str(path), "--since", f"ck:{first_sha[:12]}", "--json"
    )
    assert rc == 0, err
    diff = json.loads(out)
    assert [c["cell_id"] for c in diff["added"]] == [later]
    assert "a = 3" in json.dumps(diff["modified"])

    # The agents' tool takes a checkpoint too.
    rc, out, err = await runt(
        daemon, short_tmp, "nb", "call", "changes_since", "--args",
        json.dumps({"notebook": str(path), "version": f"ck:{first_sha[:12]}"}),
    )  # fmt: skip
    assert rc == 0, err
    assert [c["cell_id"] for c in json.loads(out)["added"]] == [later]

    rc, out, err = await runt(daemon, short_tmp, "diff", str(path), "--since", "ck:000000000000")
    assert rc == 2
    assert "no saved checkpoint 'ck:000000000000'" in err


async def test_a_bad_journal_line_is_skipped_and_a_symlink_is_never_written_through(
    daemon: Daemon, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_notebook(short_tmp / "bad.ipynb", [code("a = 1", "a")])
    victim = short_tmp / "victim.txt"
    await anyio.Path(victim).write_text("keep me\n")
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path)
        await nb.save()
        journal = journal_of(daemon, path)
        async with await anyio.open_file(journal, "ab") as f:
            await f.write(b"{not json\n")
        await nb.set_source("a", "a = 2")
        await nb.save()
        assert len(await notebook_checkpoints(client, nb)) == 2
        assert "skipped a bad checkpoint line" in caplog.text

        # A symlink planted in the journal's place: the save still succeeds, the journal
        # is not written through it.
        await anyio.Path(journal).unlink()
        await anyio.Path(journal).symlink_to(victim)
        await nb.set_source("a", "a = 3")
        saved = await nb.save()
        assert "a = 3" in await anyio.Path(saved).read_text()
        assert await anyio.Path(victim).read_text() == "keep me\n"
        await nb.close()
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        await anyio.to_thread.run_sync(read_checkpoints, journal)
