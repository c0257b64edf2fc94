"""runtimed.storage.journal: append-only, bounded, O_NOFOLLOW, bad lines skipped."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from runtimed.storage import journal as journal_module
from runtimed.storage.journal import KEEP, Checkpoint, append_checkpoint, read_checkpoints


def checkpoint(n: int) -> Checkpoint:
    return Checkpoint(
        time=1000.0 + n, path="/n.ipynb", sha256=f"{n:064x}", heads=("ab" * 32,), seq=n
    )


def test_entries_round_trip_in_order(tmp_path: Path) -> None:
    journal = tmp_path / "k.checkpoints.jsonl"
    for n in range(3):
        append_checkpoint(journal, checkpoint(n))
    assert read_checkpoints(journal) == [checkpoint(0), checkpoint(1), checkpoint(2)]
    assert journal.stat().st_mode & 0o777 == 0o600
    assert checkpoint(1).name == "ck:000000000000"
    assert read_checkpoints(tmp_path / "none.jsonl") == []


def test_bad_lines_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "k.checkpoints.jsonl"
    append_checkpoint(journal, checkpoint(1))
    with journal.open("ab") as f:
        f.write(b'{"v": 1, "time": "yesterday"}\n[1, 2]\n{"v": 2}\n{torn')
    with caplog.at_level(logging.WARNING):
        assert read_checkpoints(journal) == [checkpoint(1)]
    assert caplog.text.count("skipped a bad checkpoint line") == 4


def test_the_journal_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "MAX_BYTES", 4096)
    journal = tmp_path / "k.checkpoints.jsonl"
    for n in range(KEEP * 3):
        append_checkpoint(journal, checkpoint(n))
    kept = read_checkpoints(journal)
    assert len(kept) <= KEEP + 4096 // 200
    assert kept[-1] == checkpoint(KEEP * 3 - 1)  # the newest survive, in order
    assert [c.seq for c in kept] == sorted(c.seq for c in kept)
    assert [p.name for p in tmp_path.iterdir()] == [journal.name]  # no temp left


def test_a_symlink_in_place_of_the_journal_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep\n")
    journal = tmp_path / "k.checkpoints.jsonl"
    journal.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic links") as info:
        append_checkpoint(journal, checkpoint(1))
    assert info.value.errno == errno.ELOOP
    with pytest.raises(OSError, match="symbolic links"):
        read_checkpoints(journal)
    assert victim.read_bytes() == b"keep\n"
