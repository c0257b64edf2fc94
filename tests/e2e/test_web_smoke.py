"""The thin slice: a notebook opened by a Python client is shown, live, in the browser."""

from __future__ import annotations

from pathlib import Path

from runtimed.client import Client

from .conftest import DaemonProc, NewPage, code, markdown, shot, write_notebook


def test_a_notebook_opened_in_python_shows_its_cells_in_the_browser(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "hello.ipynb",
        [markdown("# Hello\n\nSome *text*."), code("x = 6 * 7\nprint(x)")],
    )
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        page = new_page()
        page.goto(daemon.url(f"/notebooks/{nb.id}"))
        page.wait_for_selector(
            '.cell[data-cell-id="cell1"] .static-source, .cell[data-cell-id="cell1"] .cm-content'
        )
        assert "Hello" in page.inner_text('.cell[data-cell-id="cell0"] h1')
        page.wait_for_selector("body[data-connection=connected]")
        page.hover('.cell[data-cell-id="cell1"]')
        page.click('.cell[data-cell-id="cell1"] .run-cell')
        page.wait_for_selector('.cell[data-cell-id="cell1"] .output-stream', timeout=60_000)
        assert page.inner_text('.cell[data-cell-id="cell1"] .output-stream').strip() == "42"
        shot(page, "smoke")
        assert "token=" not in page.url
