"""The web notebook in a real browser, against a real daemon and real kernels: the
scenarios of issue 11 ("Tests — in a real browser")."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import ElementHandle, Page

from runtimed.client import Client

from .conftest import DaemonProc, NewPage, code, markdown, shot, write_notebook

pytestmark = pytest.mark.e2e

RUN_DEADLINE = 90_000  # ms: a kernel start on a loaded 2-core machine


def cell(cell_id: str) -> str:
    return f'.cell[data-cell-id="{cell_id}"]'


def present(element: ElementHandle | None) -> ElementHandle:
    """What wait_for_selector found (it raises on a timeout; None only for hidden states)."""
    assert element is not None
    return element


def open_page(page: Page, daemon: DaemonProc, notebook_id: str) -> Page:
    page.goto(daemon.url(f"/notebooks/{notebook_id}"))
    page.wait_for_selector("body[data-connection=connected]")
    page.wait_for_selector("body[data-synced=true]")
    return page


def source_in_browser(page: Page, cell_id: str) -> str:
    return str(
        page.evaluate(
            "(id) => { const c = window.runtimed.replica.notebook.cells[id]; "
            "return String(c.source); }",
            cell_id,
        )
    )


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll a cheap predicate against a deadline (for Python-side replica state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def focus_editor_end(page: Page, cell_id: str) -> None:
    page.click(f"{cell(cell_id)} .cell-input")
    page.wait_for_selector(f"{cell(cell_id)} .cm-content")
    page.click(f"{cell(cell_id)} .cm-content")
    page.keyboard.press("Control+End")


# ---------------------------------------------------------------------- runt run link


def test_a_runt_run_link_opens_the_run_and_cells_complete_live(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    gate = short_tmp / "gate"
    src = write_notebook(
        short_tmp / "run.ipynb",
        [
            markdown("# A run\nwatched live"),
            code("print('first')"),
            code(
                "import os, time\n"
                f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\n"
                "print('second')"
            ),
        ],
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtimed.cli",
            "run",
            str(src),
            str(short_tmp / "out.ipynb"),
            "--no-progress-bar",
        ],
        env=daemon.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 90
        while "http://" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        match = re.search(r"http://127\.0\.0\.1:\d+/notebooks/[0-9a-f]+\?token=[\w-]+", line)
        assert match, f"runt run printed no web link: {line!r}"
        page = new_page()
        page.goto(match.group(0))
        page.wait_for_selector(f"{cell('cell1')} .output-stream", timeout=RUN_DEADLINE)
        assert page.inner_text(f"{cell('cell1')} .output-stream").strip() == "first"
        page.wait_for_selector(f'{cell("cell2")}[data-state="running"]')
        assert page.inner_text(f"{cell('cell2')} .prompt") == "[*]:"
        shot(page, "run-live")
        gate.touch()
        page.wait_for_selector(f"{cell('cell2')} .output-stream", timeout=RUN_DEADLINE)
        page.wait_for_selector(f'{cell("cell2")}[data-state="ok"]')
        assert page.inner_text(f"{cell('cell2')} .prompt") == "[2]:"
        assert proc.wait(timeout=60) == 0
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()


# ---------------------------------------------------------------------- together


def test_edits_travel_between_two_browsers_and_a_python_client(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "together.ipynb", [code("x = 1"), markdown("notes")])
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        a = open_page(new_page(), daemon, nb.id)
        b = open_page(new_page(), daemon, nb.id)
        # A types (per character, through CodeMirror) — with an emoji and a combining accent,
        # whose lengths differ between UTF-16 (JS) and code points (Python).
        focus_editor_end(a, "cell0")
        a.keyboard.type("\n# café 😀 e\u0301!")
        expected = "x = 1\n# café 😀 e\u0301!"
        b.wait_for_function(
            '([id, s]) => { const el = document.querySelector(`.cell[data-cell-id="${id}"] .cell-input`);'
            " return el && el.innerText.includes(s); }",
            arg=["cell0", "😀 e\u0301!"],
        )
        wait_until(lambda: nb.cell("cell0").source == expected, what="python to see A's edit")
        # An insert after the emoji lands in the right place on every side.
        a.keyboard.press("Control+End")
        for _ in range(3):
            a.keyboard.press("ArrowLeft")  # by grapheme: "!", "e\u0301", " " -> after the emoji
        a.keyboard.type("Z")
        wait_until(
            lambda: nb.cell("cell0").source == "x = 1\n# café 😀Z e\u0301!",
            what="the insert after the emoji",
        )
        # Python edits: both browsers see it.
        nb.splice_source("cell0", 0, 0, "y = 2  # from python\n")
        for page in (a, b):
            page.wait_for_function(
                "() => String(window.runtimed.replica.notebook.cells.cell0.source)"
                ".startsWith('y = 2  # from python')"
            )
            page.wait_for_selector(f"{cell('cell0')} >> text=from python")
        # B adds a cell; A and Python see it, in order, with scalar fields Python can read.
        b.click(f"{cell('cell1')} .cell-input")
        b.click("button.add-code")
        b.keyboard.type("print('from b')")
        wait_until(lambda: len(nb.cell_ids()) == 3, what="python to see B's new cell")
        new_id = nb.cell_ids()[2]
        wait_until(lambda: nb.cell(new_id).source == "print('from b')", what="B's new source")
        assert nb.cell(new_id).cell_type == "code"
        a.wait_for_selector(f"{cell(new_id)}")
        # Runs are seen live by the other browser.
        a.hover(cell(new_id))
        a.click(f"{cell(new_id)} .run-cell")
        b.wait_for_selector(f"{cell(new_id)} .output-stream", timeout=RUN_DEADLINE)
        assert b.inner_text(f"{cell(new_id)} .output-stream").strip() == "from b"
        # Presence: B sees where A is.
        a.click(f"{cell('cell1')} .cell-input")
        b.wait_for_selector(f"{cell('cell1')} .presence-dot")
        shot(b, "together-b")
        # Saved from the page: a valid file with all three cells.
        a.keyboard.press("Escape")
        a.keyboard.press("Control+s")
        wait_until(lambda: "from b" in path.read_text(), what="the page's save")
        import nbformat

        saved = nbformat.read(path, as_version=4)
        nbformat.validate(saved)
        assert [c.cell_type for c in saved.cells] == ["code", "markdown", "code"]


# ---------------------------------------------------------------------- run, interrupt, restart


def test_run_interrupt_restart_and_input_from_the_page(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "control.ipynb",
        [
            code("import time\nn = 41\nfor i in range(600):\n    time.sleep(0.1)"),
            code("print(n + 1)"),
            code("name = input('who? ')\nprint('hi', name)"),
        ],
    )
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        page = open_page(new_page(), daemon, nb.id)
        page.click(f"{cell('cell0')} .cell-input")
        page.keyboard.press("Escape")
        page.keyboard.press("Shift+Enter")  # command mode: run and select the next cell
        page.wait_for_selector(f'{cell("cell0")}[data-state="running"]', timeout=RUN_DEADLINE)
        page.wait_for_selector(".kernel-badge.state-busy")
        page.click("button.interrupt")
        page.wait_for_selector(f'{cell("cell0")}[data-state="error"]')
        page.wait_for_selector(f"{cell('cell0')} .output-error >> text=KeyboardInterrupt")
        # The kernel kept its state: n is defined.
        page.hover(cell("cell1"))
        page.click(f"{cell('cell1')} .run-cell")
        page.wait_for_selector(f"{cell('cell1')} .output-stream >> text=42")
        # input() answered in the page.
        page.hover(cell("cell2"))
        page.click(f"{cell('cell2')} .run-cell")
        page.wait_for_selector(f"{cell('cell2')} .stdin-field")
        assert "who?" in page.inner_text(f"{cell('cell2')} .stdin-prompt")
        page.fill(f"{cell('cell2')} .stdin-field", "Ada")
        page.press(f"{cell('cell2')} .stdin-field", "Enter")
        page.wait_for_selector(f"{cell('cell2')} .output-stream >> text=hi Ada")
        # Restart: the kernel forgets n.
        page.click("button.restart")
        # The restarted kernel has run nothing yet (runtime document: kernel.used).
        page.wait_for_function(
            "() => { const k = window.runtimed.replica.runtime.kernel; return k?.used === false && String(k.state) === 'idle'; }",
            timeout=RUN_DEADLINE,
        )
        page.hover(cell("cell1"))
        page.click(f"{cell('cell1')} .run-cell")
        page.wait_for_selector(
            f"{cell('cell1')} .output-error >> text=NameError", timeout=RUN_DEADLINE
        )
        shot(page, "control")


# ---------------------------------------------------------------------- outputs


def png_bytes(width: int = 120, height: int = 60) -> bytes:
    """A small valid RGB PNG (a gradient)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 2 % 256, y * 4 % 256, 180)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


HOSTILE_HTML = """
<div id="probe">probing…</div>
<script>
  var out = [];
  try { out.push('cookie=' + JSON.stringify(document.cookie)); } catch (e) { out.push('cookie blocked'); }
  try { out.push('parent=' + parent.document.title); } catch (e) { out.push('parent blocked'); }
  try { out.push('storage=' + localStorage.length); } catch (e) { out.push('storage blocked'); }
  document.getElementById('probe').textContent = out.join('; ');
</script>
"""


def test_outputs_images_by_blob_url_html_sandboxed_ansi_and_placeholders(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    png = png_bytes()
    b64 = base64.b64encode(png).decode()
    (short_tmp / "img.png").write_bytes(png)
    path = write_notebook(
        short_tmp / "outputs.ipynb",
        [
            code(
                "from IPython.display import display, HTML, Image\n"
                f"display(Image(filename={str(short_tmp / 'img.png')!r}))"
            ),
            code(f"from IPython.display import HTML\nHTML({HOSTILE_HTML!r})"),
            code(
                "import sys\n"
                "print('\\x1b[31mred\\x1b[0m and \\x1b[1;32mbold green\\x1b[0m')\n"
                "for i in range(5):\n    print(f'\\rprogress {i}/4', end='')\nprint()\n"
                "1/0"
            ),
            {
                "cell_type": "code",
                "source": "# stored output of a type nobody renders",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"application/x-weird": "???"},
                    },
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"image/png": b64, "text/plain": "<image>"},
                    },
                ],
                "execution_count": 7,
            },
            markdown(
                "**bold** <script>window.pwned = 1</script> [ok](https://example.org) [bad](javascript:alert(1))"
            ),
            code(
                "from IPython.display import display\n"
                "h = display('display before', display_id=True)\n"
                "h.update('display after')"
            ),
        ],
    )
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        page = open_page(new_page(), daemon, nb.id)
        # Stored outputs: an unknown mime type is a visible placeholder, the PNG a blob URL.
        page.wait_for_selector(f"{cell('cell3')} .output-placeholder >> text=application/x-weird")
        img = present(page.wait_for_selector(f"{cell('cell3')} img.output-image"))
        assert (img.get_attribute("src") or "").startswith("/blob/")
        page.wait_for_function(
            "() => { const i = document.querySelector('.cell[data-cell-id=\"cell3\"] img'); "
            "return i && i.complete && i.naturalWidth === 120; }"
        )
        # Markdown is sanitized: no script ran, the javascript: link is text.
        assert page.evaluate("() => window.pwned") is None
        assert page.locator(f"{cell('cell4')} a").count() == 1
        assert "<script>" in page.inner_text(f"{cell('cell4')} .markdown")
        page.click("button.run-all")
        page.wait_for_selector(f'{cell("cell2")}[data-state="error"]', timeout=RUN_DEADLINE)
        # Image from a running kernel: through the blob store, never base64 in the document.
        img = present(page.wait_for_selector(f"{cell('cell0')} img.output-image"))
        assert (img.get_attribute("src") or "").startswith("/blob/")
        runtime_json = page.evaluate("() => JSON.stringify(window.runtimed.replica.runtime)")
        assert b64[:200] not in runtime_json
        # The hostile HTML ran in its sandbox and got nothing.
        frame_el = present(page.wait_for_selector(f"{cell('cell1')} iframe.output-frame"))
        assert frame_el.get_attribute("sandbox") == "allow-scripts"
        frame = frame_el.content_frame()
        assert frame is not None
        frame.wait_for_function(
            "() => !document.getElementById('probe').textContent.includes('probing')"
        )
        probe = frame.inner_text("#probe")
        assert "cookie blocked" in probe, probe
        assert "parent blocked" in probe, probe
        # The page's own cookie is HttpOnly: not even the page's scripts can read it.
        assert page.evaluate("() => document.cookie") == ""
        # ANSI colours, \r progress and a coloured traceback.
        red = present(page.wait_for_selector(f"{cell('cell2')} .output-stream .ansi-red"))
        assert red.inner_text() == "red"
        stream = page.inner_text(f"{cell('cell2')} .output-stream")
        assert "progress 4/4" in stream
        assert "progress 3/4" not in stream
        page.wait_for_selector(f"{cell('cell2')} .output-error >> text=ZeroDivisionError")
        assert page.locator(f"{cell('cell2')} .output-error [class^=ansi-]").count() > 0
        # update_display_data rewrote the displayed output in place (run all stopped at the
        # error above, so this cell is run on its own).
        page.hover(cell("cell5"))
        page.click(f"{cell('cell5')} .run-cell")
        page.wait_for_selector(
            f"{cell('cell5')} .output >> text=display after", timeout=RUN_DEADLINE
        )
        assert "display before" not in page.inner_text(f"{cell('cell5')} .cell-outputs")
        page.evaluate("() => window.scrollTo(0, 0)")
        shot(page, "outputs")


# ---------------------------------------------------------------------- refusals, reconnect


def test_pages_refuse_without_the_token_and_say_how_to_get_a_link(
    daemon: DaemonProc, new_page: NewPage
) -> None:
    page = new_page()
    response = page.goto(daemon.base("/notebooks/anything"))
    assert response is not None
    assert response.status == 401
    assert "runt open" in page.inner_text("body")
    response = page.goto(daemon.base("/") + "?token=stale-token")
    assert response is not None
    assert response.status == 401
    assert "Stale link" in page.inner_text("h1")
    # With the token once, the cookie carries on; the address bar loses the token.
    page.goto(daemon.url("/"))
    assert "token=" not in page.url
    assert page.inner_text(".logo") == "runtimed"
    response = page.goto(daemon.base("/static/app.css"))
    assert response is not None
    assert response.status == 200


def test_the_home_page_lists_open_notebooks_and_opens_a_file(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    first = write_notebook(short_tmp / "listed.ipynb", [code("1")])
    other = write_notebook(short_tmp / "by-path.ipynb", [markdown("# opened from home")])
    with Client.connect(daemon.socket) as client:
        nb = client.open(first)
        viewer = open_page(new_page(), daemon, nb.id)
        page = new_page()
        page.goto(daemon.url("/"))
        row = present(page.wait_for_selector(".nb-row >> text=listed.ipynb"))
        assert row is not None
        assert "Viewer" in page.inner_text(".nb-list")  # who is viewing
        shot(page, "home")
        page.fill("#path", str(other))
        page.click(".open-form button")
        page.wait_for_selector("body[data-synced=true]")
        page.wait_for_selector(".markdown h1 >> text=opened from home")
        assert viewer.is_visible("body")


def test_the_page_reconnects_after_the_daemon_restarts_keeping_local_edits(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "restart.ipynb", [code("a = 1")])
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        notebook_id = nb.id
        page = open_page(new_page(), daemon, notebook_id)
        focus_editor_end(page, "cell0")
        page.keyboard.type("  # before")
        wait_until(lambda: nb.cell("cell0").source == "a = 1  # before", what="first edit")
        client.open(path).save()
    wait_until(lambda: "before" in path.read_text(), what="save")
    daemon.stop()
    page.wait_for_selector("body[data-connection=disconnected]")
    assert "reconnecting" in page.inner_text(".connection-state")
    shot(page, "disconnected")
    page.keyboard.type(" and offline")  # edited while the daemon is away
    daemon.start()
    page.wait_for_selector("body[data-connection=connected]", timeout=60_000)
    assert page.url.endswith(f"/notebooks/{notebook_id}")
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        assert nb.id == notebook_id
        wait_until(
            lambda: nb.cell("cell0").source == "a = 1  # before and offline",
            what="the offline edit to reach the restarted daemon",
        )


# ---------------------------------------------------------------------- cell operations


def test_add_move_retype_delete_and_clear_from_the_page(
    daemon: DaemonProc, new_page: NewPage, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "ops.ipynb", [code("print('one')"), code("two = 2")])
    with Client.connect(daemon.socket) as client:
        nb = client.open(path)
        nb.execute("cell0")
        page = open_page(new_page(), daemon, nb.id)
        page.wait_for_selector(f"{cell('cell0')} .output-stream")
        # Command mode on cell1: "b" adds a code cell below, typed into at once.
        page.click(f"{cell('cell1')} .cell-input")
        page.keyboard.press("Escape")
        page.keyboard.press("b")
        wait_until(lambda: len(nb.cell_ids()) == 3, what="the added cell")
        added = nb.cell_ids()[2]
        # Its editor takes the focus; keys typed before it has it are command-mode keys.
        page.wait_for_selector(f"{cell(added)} .cm-editor.cm-focused")
        page.keyboard.type("# notes")
        wait_until(lambda: nb.cell(added).source == "# notes", what="its source")
        # "m": it becomes markdown (rendered), as Python reads it too.
        page.keyboard.press("Escape")
        page.keyboard.press("m")
        wait_until(lambda: nb.cell(added).cell_type == "markdown", what="the type change")
        page.wait_for_selector(f"{cell(added)} .markdown h1 >> text=notes")
        # Move it to the top with the cell toolbar.
        page.hover(cell(added))
        page.click(f"{cell(added)} .move-up")
        page.hover(cell(added))
        page.click(f"{cell(added)} .move-up")
        wait_until(lambda: nb.cell_ids() == [added, "cell0", "cell1"], what="the move")
        page.wait_for_function(
            "(want) => [...document.querySelectorAll('.cells > .cell')].map(e => e.dataset.cellId).join() === want",
            arg=f"{added},cell0,cell1",
        )
        # Delete cell1 with "dd".
        page.click(f"{cell('cell1')} .cell-input")
        page.keyboard.press("Escape")
        page.keyboard.press("d")
        page.keyboard.press("d")
        wait_until(lambda: nb.cell_ids() == [added, "cell0"], what="the deletion")
        # Clear outputs.
        page.click("button.clear")
        page.wait_for_function(
            "() => !document.querySelector('.cell[data-cell-id=\"cell0\"] .output-stream')"
        )
        wait_until(lambda: nb.outputs("cell0") == [], what="outputs cleared")
