"""The run's nbformat-free read and write (runtimed.automation.quickread, .nodes)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from runtimed.automation import nodes
from runtimed.automation.quickread import plain_bytes, read_plain

REPO = Path(__file__).resolve().parents[2]


def _notebook(minor: int = 5) -> dict[str, Any]:
    return {
        "nbformat": 4,
        "nbformat_minor": minor,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            {
                "id": "a",
                "cell_type": "code",
                "metadata": {"trusted": True, "tags": ["parameters"]},
                "source": ["x = 1\n", "y = 2"],
                "execution_count": 1,
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "text/plain": ["1\n", "2"],
                            "application/vnd.x+json": {"k": ["v"]},
                        },
                    },
                ],
            },
            {"id": "b", "cell_type": "markdown", "metadata": {}, "source": "# t"},
        ],
    }


def _write(path: Path, nb: dict[str, Any]) -> Path:
    path.write_text(json.dumps(nb))
    return path


def test_a_plain_notebook_reads_as_nbformat_reads_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.ipynb", _notebook())
    ours = read_plain(path)
    theirs = nbformat.reads(path.read_text(), as_version=4)
    assert ours == json.loads(json.dumps(theirs))


@pytest.mark.parametrize(
    "change",
    [
        lambda nb: nb.update(nbformat_minor=4),  # an upgrade is nbformat's
        lambda nb: nb["cells"][1].update(id="a"),  # duplicate ids: nbformat repairs them
        lambda nb: nb["cells"][1].pop("id"),
        lambda nb: nb["cells"][1].update(id="no spaces allowed"),
        lambda nb: nb["cells"][0].pop("outputs"),
        lambda nb: nb["cells"][0].update(cell_type="heading"),
        lambda nb: nb.update(nbformat=3),
        lambda nb: nb.pop("metadata"),
    ],
)
def test_anything_unusual_takes_the_careful_path(tmp_path: Path, change: Any) -> None:
    nb = _notebook()
    change(nb)
    assert read_plain(_write(tmp_path / "a.ipynb", nb)) is None


def test_not_json_takes_the_careful_path(tmp_path: Path) -> None:
    path = tmp_path / "a.ipynb"
    path.write_text("{not json")
    assert read_plain(path) is None


def test_the_written_bytes_are_a_valid_notebook(tmp_path: Path) -> None:
    nb = read_plain(_write(tmp_path / "a.ipynb", _notebook()))
    assert nb is not None
    data = plain_bytes(nb)
    assert data.endswith(b"}\n")
    nbformat.validate(nbformat.reads(data.decode(), as_version=4))


def test_nodes_behave_as_notebook_nodes() -> None:
    node = nodes.from_dict({"metadata": {"tags": []}, "cells": [{"id": "x"}]})
    assert node.metadata.tags == []
    assert node.cells[0].id == "x"
    node.metadata["papermill"] = {"status": "pending"}
    assert node.metadata.papermill.status == "pending"
    node.cells[0].setdefault("metadata", {})["k"] = 1
    assert node.cells[0].metadata.k == 1
    copied = copy.deepcopy(node)
    copied.metadata.papermill.status = "done"
    assert node.metadata.papermill.status == "pending"
    assert isinstance(copied.metadata, nodes.Node)
    with pytest.raises(AttributeError):
        _ = node.missing


def test_upgrade_leaves_a_45_notebook_alone_and_upgrades_older_ones() -> None:
    current = nodes.from_dict(_notebook())
    assert nodes.upgrade(current) is current
    older = nodes.upgrade(nodes.from_dict(_notebook(minor=4)))
    assert older.nbformat_minor == 5
    assert older.metadata.orig_nbformat_minor == 4


HEAVY = ("nbformat", "jsonschema", "yaml", "asyncio", "anyio", "automerge")


def modules_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    return done.stdout.split()


def test_runt_run_imports_neither_nbformat_nor_yaml() -> None:
    loaded = modules_after(
        "import runtimed.cli.commands, runtimed.automation.run, runtimed.automation.batch"
    )
    assert not {"nbformat", "jsonschema", "yaml"} & set(loaded)


def test_runt_ps_imports_no_event_loop(tmp_path: Path) -> None:
    code = (
        "from runtimed.cli.main import main\n"
        f"assert main(['--socket', {str(tmp_path / 'none.sock')!r}, 'ps']) == 2"
    )
    assert modules_after(code) == []
