"""The web page while the daemon replaces a notebook's runtime document (every
``RUNTIME_COMPACT_EVERY`` executions, docs/schema.md): the page syncs the copy and keeps
showing the outputs, never an empty runtime state, in a real browser against a real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimed.client import Client
from runtimed.daemon.executor import RUNTIME_COMPACT_EVERY

from .conftest import DaemonProc, NewPage, code, write_notebook
from .test_web_notebook import RUN_DEADLINE, cell, open_page

pytestmark = pytest.mark.e2e

COUNTER = "n = globals().get('n', 0) + 1\nn"


def test_the_page_follows_the_runtime_document_being_replaced(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    runs = RUNTIME_COMPACT_EVERY + 5
    path = write_notebook(short_tmp / "long.ipynb", [code(COUNTER)])
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        page = open_page(new_page(), daemon, nb.id)
        # Every change the page renders: was its runtime replica empty then?
        page.evaluate(
            "() => { const r = window.runtimed.replica; window.emptyRenders = 0;"
            " r.on('change', () => { if (!r.runtime.cells) window.emptyRenders++; }); }"
        )
        for n in range(1, runs + 1):
            result = nb.execute("cell0", timeout=60)
            assert result.execution_count == n, result
        page.wait_for_selector(f"{cell('cell0')} >> text={runs}", timeout=RUN_DEADLINE)
        page.wait_for_function(
            "(runs) => { const c = window.runtimed.replica.runtime.cells;"
            " return c && c.cell0 && c.cell0.execution_count === runs; }",
            arg=runs,
        )
        # The page holds the copy (a few changes since it), not one change per write.
        changes = page.evaluate(
            "() => window.runtimed.A.getAllChanges(window.runtimed.replica.runtime).length"
        )
        assert changes < 50, changes
        assert page.evaluate("() => window.emptyRenders") == 0
