"""The server-rendered HTML: the home page, the notebook page's shell, the refusal pages.

Everything interpolated is escaped (``html.escape``); the pages carry no inline script (the
Content-Security-Policy forbids it), only the bundle from ``/static``.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import PurePath
from urllib.parse import quote

from protocol.messages import NotebookInfo
from protocol.states import KernelState
from runtimed.daemon.web.presence import ViewerInfo
from runtimed.daemon.web.recent import Record

__all__ = ["home_page", "notebook_shell", "refusal_page"]


def _head(title: str, asset_version: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        f'<link rel=stylesheet href="/static/app.css?v={asset_version}">'
        f'<link rel=icon href="/static/favicon.svg?v={asset_version}">'
    )


def _preview_cell(cell_id: str, cell_type: str, source: str) -> str:
    body = (
        f'<div class="markdown ssr-md">{escape(source)}</div>'
        if cell_type == "markdown"
        else f'<pre class="static-source">{escape(source) or " "}</pre>'
    )
    prompt = "[ ]:" if cell_type == "code" else ""
    return (
        f'<div class="cell ssr" data-cell-id="{escape(cell_id)}" data-cell-type="'
        f'{escape(cell_type)}"><div class=cell-gutter><div class=prompt>{prompt}</div></div>'
        f"<div class=cell-body><div class=cell-input>{body}</div></div></div>"
    )


def notebook_shell(
    *,
    notebook_id: str,
    title: str,
    nonce: str,
    asset_version: str,
    preview: list[tuple[str, str, str]] | None = None,
) -> str:
    """The notebook page: the bundle renders everything from its replica. ``preview``: the
    first cells as (id, type, source), painted before the bundle runs and replaced by it."""
    cells = "".join(_preview_cell(*c) for c in preview or [])
    return (
        _head(f"{title} — runtimed", asset_version)
        + f'<script type=module src="/static/app.js?v={asset_version}"></script>'
        # Fetched alongside the bundle, not after it has run (main.ts fetches it the same way:
        # same-origin, credentials, so the preloaded response is the one used).
        + f'<link rel=preload href="/static/automerge.wasm?v={asset_version}" as=fetch'
        + " type=application/wasm crossorigin>"
        + "</head><body class=notebook-page>"
        + f'<div id=app data-notebook-id="{escape(notebook_id)}" data-nonce="{escape(nonce)}"'
        + f' data-asset-version="{asset_version}">'
        + '<header class=topbar><a class=logo href="/">runtimed</a>'
        + f"<span class=nb-title>{escape(title)}</span></header>"
        + '<nav class="toolbar ssr-toolbar"><span class=boot>Loading notebook…</span></nav>'
        + f'<main class="cells ssr-cells">{cells}</main></div></body></html>'
    )


def _kernel_badge(info: NotebookInfo) -> str:
    state = info.kernel.state if info.kernel else KernelState.NOT_STARTED
    return (
        f'<span class="kernel-badge state-{escape(state)}">{escape(state.replace("_", " "))}</span>'
    )


def _name(path: str | None, notebook_id: str) -> str:
    return PurePath(path).name if path else f"untitled ({notebook_id[:8]})"


def home_page(
    *,
    open_notebooks: list[NotebookInfo],
    viewers: dict[str, list[ViewerInfo]],
    recent: list[Record],
    asset_version: str,
    error: str | None = None,
) -> str:
    rows = []
    for info in open_notebooks:
        who = viewers.get(info.notebook_id, [])
        names = ", ".join(escape(v.name) for v in who) or "nobody in a browser"
        running = " · running" if info.running else ""
        queued = f" · {len(info.queue)} queued" if info.queue else ""
        rows.append(
            "<li class=nb-row>"
            f'<a href="/notebooks/{quote(info.notebook_id)}">'
            f"{escape(_name(info.path, info.notebook_id))}</a>"
            f"{_kernel_badge(info)}"
            f"<span class=meta>{info.cells} cells · {info.clients} clients{running}{queued}"
            f" · viewing: {names}</span>"
            f"<div class=path>{escape(info.path or '')}</div></li>"
        )
    open_ids = {info.notebook_id for info in open_notebooks}
    recent_rows = []
    for record in recent:
        if record.notebook_id in open_ids or not record.path:
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.modified))
        recent_rows.append(
            "<li class=nb-row>"
            f'<a href="/notebooks/{quote(record.notebook_id)}">'
            f"{escape(_name(record.path, record.notebook_id))}</a>"
            f"<span class=meta>last used {when}</span>"
            f"<div class=path>{escape(record.path)}</div></li>"
        )
    error_html = f'<p class="error-banner">{escape(error)}</p>' if error else ""
    return (
        _head("runtimed", asset_version)
        + "</head><body class=home-page><header class=topbar><span class=logo>runtimed</span>"
        + "<span class=subtitle>notebooks on this machine</span></header><main class=home>"
        + error_html
        + '<form class=open-form method=post action="/open">'
        + "<label for=path>Open a notebook by path</label>"
        + '<input id=path name=path placeholder="/home/you/analysis.ipynb" required>'
        + "<button type=submit>Open</button></form>"
        + "<h2>Open now</h2>"
        + (
            "<ul class=nb-list>" + "".join(rows) + "</ul>"
            if rows
            else "<p class=empty>No notebook is open in the daemon.</p>"
        )
        + "<h2>Recent</h2>"
        + (
            "<ul class=nb-list>" + "".join(recent_rows) + "</ul>"
            if recent_rows
            else "<p class=empty>Nothing yet: <code>runt run</code> and <code>runt open</code>"
            " notebooks appear here.</p>"
        )
        + "</main></body></html>"
    )


_REFUSAL_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}code{background:#f2f2f2;padding:.1rem .3rem;border-radius:3px}"
    "h1{font-size:1.4rem}"
)


def refusal_page(title: str, message: str) -> str:
    """A plain page (its own CSP allows only this inline style) saying what to do."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)} — runtimed</title><style>{_REFUSAL_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>{message}</p></body></html>"
    )


STALE_TOKEN_MESSAGE = (
    "This link does not carry this daemon's current token (it may be from another daemon, "
    "or the token was rotated). Get a fresh link with <code>runt open PATH</code> "
    "(or <code>runt open</code> for the list of notebooks)."
)
NO_TOKEN_MESSAGE = (
    "The runtimed web notebook needs its token. Open it with <code>runt open PATH</code> "
    "(or <code>runt open</code> for the list of notebooks), which starts the daemon if "
    "needed and opens a link that carries the token."
)
