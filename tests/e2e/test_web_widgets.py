"""Widgets in the web notebook (issue 15 point 3): two browsers show one IntSlider from the
runtime document's comm state; moving it in one moves it in the other, and the kernel's
``observe`` callback sees the value."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page

from runtimed.client import Client

from .conftest import DaemonProc, NewPage, code, shot, write_notebook

pytestmark = pytest.mark.e2e

RUN_DEADLINE = 90_000  # ms: a kernel start on a loaded 2-core machine
SLIDER = """\
import ipywidgets as widgets
seen = []
slider = widgets.IntSlider(value=3, min=0, max=10, description="n")
slider.observe(lambda change: seen.append(change["new"]), names="value")
slider
"""
SLIDER_INPUT = '.widget-view input[type="range"]'


def open_page(page: Page, daemon: DaemonProc, notebook_id: str) -> Page:
    page.goto(daemon.url(f"/notebooks/{notebook_id}"))
    page.wait_for_selector("body[data-connection=connected]")
    page.wait_for_selector("body[data-synced=true]")
    return page


def test_two_browsers_see_an_int_slider_move_together(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "w.ipynb", [code(SLIDER), code("print(seen)")])
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        assert nb.execute("cell0", timeout=RUN_DEADLINE / 1000).status == "ok"
        a = open_page(new_page(), daemon, nb.id)
        b = open_page(new_page(), daemon, nb.id)
        for page in (a, b):
            page.wait_for_function(
                f"() => document.querySelector('{SLIDER_INPUT}')?.value === '3'",
                timeout=RUN_DEADLINE,
            )
        assert a.inner_text(".widget-view .widget-label") == "n"

        # A moves the slider (as a drag does: the input event with the new value).
        a.eval_on_selector(
            SLIDER_INPUT,
            "el => { el.value = '8'; el.dispatchEvent(new Event('input', {bubbles: true})); }",
        )

        b.wait_for_function(f"() => document.querySelector('{SLIDER_INPUT}').value === '8'")
        b.wait_for_selector(".widget-view .widget-readout >> text=8")
        shot(b, "widgets-b")
        result = nb.execute("cell1", timeout=RUN_DEADLINE / 1000)
        assert result.outputs[0]["text"] == "[8]\n"
        # The kernel changing it moves both pages too.
        nb.set_source("cell1", "slider.value = 2")
        assert nb.execute("cell1", timeout=RUN_DEADLINE / 1000).status == "ok"
        for page in (a, b):
            page.wait_for_function(f"() => document.querySelector('{SLIDER_INPUT}').value === '2'")
