"""Presence in two real browsers: who is viewing (browsers and socket clients) and where each
browser viewer's cursor and selection are, drawn inside the other's cell editor — ephemeral,
never in the notebook document or the saved file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page

from runtimed.client import Client

from .conftest import DaemonProc, NewPage, code, shot, write_notebook
from .test_web_notebook import cell, open_page, wait_until

pytestmark = pytest.mark.e2e

WAVE = "👋🏽"  # 4 UTF-16 units, 2 code points: the caret must land after it all the same


def chips(page: Page) -> list[str]:
    return [
        str(t)
        for t in page.eval_on_selector_all(".viewer-chip", "els => els.map(e => e.textContent)")
    ]


TEXT_BEFORE_CARET = """(sel) => {
  const caret = document.querySelector(sel);
  if (!caret) return null;
  const range = document.createRange();
  range.setStart(caret.closest('.cm-line'), 0);
  range.setEndBefore(caret);
  return range.toString();
}"""


def text_before_caret(page: Page, cell_id: str) -> str:
    """The text of the line holding the other viewer's caret, up to the caret."""
    return str(page.evaluate(TEXT_BEFORE_CARET, f"{cell(cell_id)} .remote-caret"))


def wait_caret_after(page: Page, cell_id: str, text: str) -> None:
    """Until the other viewer's caret stands just after ``text`` on its line. Presence is
    sent as the caret moves: the first caret drawn may show an earlier place (where a click
    put it) before the later updates arrive."""
    page.wait_for_function(
        f"([sel, want]) => ({TEXT_BEFORE_CARET})(sel) === want",
        arg=[f"{cell(cell_id)} .remote-caret", text],
    )


def test_two_browsers_see_each_others_cursor_and_selection_and_the_socket_client(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "presence.ipynb",
        [code(f"greeting = '{WAVE} hello'\nprint(greeting)"), code("y = 2")],
    )
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        a = open_page(new_page(), daemon, nb.id)
        b = open_page(new_page(), daemon, nb.id)
        # Who is viewing: each page lists itself, the other browser and the Python client.
        for page in (a, b):
            page.wait_for_function(
                "() => [...document.querySelectorAll('.viewer-chip')].map(e => e.textContent)"
                ".join('|').includes('socket client')"
            )
        assert "you" in chips(a)
        assert len([c for c in chips(a) if c.startswith("Viewer")]) == 1
        a_name = b.evaluate(
            "() => window.runtimed.replica.viewers.find(v => v.viewer_id !== "
            "window.runtimed.replica.viewerId && v.kind !== 'client').name"
        )
        # A puts its cursor just after the emoji of the first line, in its editor.
        a.click(f"{cell('cell0')} .cell-input")
        a.wait_for_selector(f"{cell('cell0')} .cm-content")
        a.click(f"{cell('cell0')} .cm-content")
        a.keyboard.press("Control+Home")
        for _ in range(len("greeting = '") + 1):  # the emoji is one grapheme: one press
            a.keyboard.press("ArrowRight")
        # B draws A's caret inside its own editor of that cell, at that place, named.
        b.wait_for_selector(f"{cell('cell0')} .cm-content")
        caret = b.wait_for_selector(f"{cell('cell0')} .cm-content .remote-caret")
        assert caret is not None
        assert caret.inner_text() == a_name
        wait_caret_after(b, "cell0", f"greeting = '{WAVE}")
        assert text_before_caret(b, "cell0") == f"greeting = '{WAVE}"
        # The daemon's copy of A's place counts code points (the documents' unit).
        viewer = b.evaluate(
            "(name) => window.runtimed.replica.viewers.find(v => v.name === name)", a_name
        )
        assert viewer["cell_id"] == "cell0"
        assert viewer["editing"] is True
        assert viewer["head"] == len(f"greeting = '{WAVE}")  # Python len: code points
        # A selects " hello": B shows it highlighted in A's colour.
        for _ in range(len(" hello")):
            a.keyboard.press("Shift+ArrowRight")
        selected = b.wait_for_selector(f"{cell('cell0')} .remote-selection")
        assert selected is not None
        b.wait_for_function(
            "(sel) => [...document.querySelectorAll(sel)].map(e => e.textContent).join('')"
            " === ' hello'",
            arg=f"{cell('cell0')} .remote-selection",
        )
        shot(b, "presence-b")
        # A types over the selection: B's copy of the text and A's caret follow.
        a.keyboard.type("bye")
        b.wait_for_function(
            "(s) => String(window.runtimed.replica.notebook.cells.cell0.source).startsWith(s)",
            arg=f"greeting = '{WAVE}bye'",
        )
        b.wait_for_function(
            "(s) => { const c = document.querySelector(s); return !!c && c.closest('.cm-line')"
            ".textContent.includes('bye'); }",
            arg=f"{cell('cell0')} .remote-caret",
        )
        b.wait_for_selector(f"{cell('cell0')} .remote-selection", state="detached")
        wait_caret_after(b, "cell0", f"greeting = '{WAVE}bye")  # after the last key's update
        assert text_before_caret(b, "cell0") == f"greeting = '{WAVE}bye"
        # A moves to the other cell: the caret leaves cell0 and the gutter marker moves.
        a.keyboard.press("Escape")
        a.click(f"{cell('cell1')} .cell-input")
        b.wait_for_selector(f"{cell('cell1')} .presence-dot")
        b.wait_for_selector(f"{cell('cell0')} .remote-caret", state="detached")
        # Ephemeral: nothing of it in the document or the saved file.
        a.keyboard.press("Escape")
        a.keyboard.press("Control+s")
        wait_until(lambda: "bye" in path.read_text(), what="the page's save")
        saved = path.read_text()
        document = json.dumps(
            b.evaluate("() => JSON.parse(JSON.stringify(window.runtimed.replica.notebook))")
        )
        for text in (a_name, "viewer_id", "anchor", "presence"):
            assert text not in saved
            assert text not in document
        # The socket client leaves: the pages stop listing it.
    b.wait_for_function(
        "() => ![...document.querySelectorAll('.viewer-chip')].some(e => "
        "e.textContent.includes('socket client'))"
    )
