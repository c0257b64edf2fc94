"""The web notebook in headless Chromium (issue 11's benchmark).

    python bench/bench_web.py [--runs N] [--keys N] [--lines N]

1. A 1,000-cell notebook opened in a fresh browser context (cold: wasm compiled, bundle
   parsed): time from navigation start to the first cell painted and to "fully synced" (all
   1,000 cells in the DOM from the replica). Peers: the Rust runtimed's published desktop-app
   figures (first cell 803-871 ms, synced 1.0-1.7 s), and the Python client's open of the same
   notebook measured in this run.
2. Keystroke latency: browser A's editor inserts one character (a CodeMirror transaction, as
   typing makes), browser B's DOM shows it (stamped in B at the next animation frame after the
   mutation). Both pages run in one browser on this machine, so ``performance.timeOrigin +
   performance.now()`` is one clock. p50/p99 over N keystrokes, each sent after B showed the
   previous one.
3. A cell printing 100,000 lines, run from the page: the longest gap between animation frames
   while it runs and its output arrives (a frozen page has long gaps), then while scrolling
   the 100,000-line output.

Chromium is Debian's (``apt-get install chromium``) driven by Playwright; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, percentile, write_notebook
from runtimed.client import Client

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Injected before the page's own scripts: stamps when the first cell and the N-th cell
# reach the DOM (MutationObserver, then the next animation frame = painted).
PAINT_PROBE = """
(() => {
  const want = %d;
  window.__bench = {};
  const stamp = (key) => requestAnimationFrame(() => { window.__bench[key] ??= performance.now(); });
  new MutationObserver(() => {
    const n = document.querySelectorAll('.cell').length;
    const real = document.querySelectorAll('.cell:not(.ssr)').length;
    if (n >= 1 && !('first' in window.__bench) && !window.__bench.firstQueued) { window.__bench.firstQueued = 1; stamp('first'); }
    if (real >= want && !window.__bench.allQueued) { window.__bench.allQueued = 1; stamp('synced'); }
  }).observe(document, { childList: true, subtree: true });
})();
"""

FRAME_PROBE = """
(() => {
  window.__frames = { max: 0, last: performance.now(), on: true };
  const tick = (t) => {
    const f = window.__frames;
    if (f.on) { f.max = Math.max(f.max, t - f.last); f.last = t; }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(work: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        RUNTIMED_HTTP_PORT=str(port),
        RUNTIMED_CONFIG=str(work / "no-config.toml"),
        RUNTIMED_POOL_SIZE="0",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtimed.daemon.main",
            "--socket",
            str(work / "rt.sock"),
            "--home",
            str(work / "home"),
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("daemon did not start")


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values):7.1f} ms  min {min(values):7.1f}  max {max(values):7.1f}  n={len(values)}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()

    load_before = load()
    work = Path(tempfile.mkdtemp(prefix="rtw-", dir="/tmp"))
    port = free_port()
    proc = start_daemon(work, port)
    try:
        sources = [f"x{i} = {i}\nprint(x{i} * 2)  # cell {i}" for i in range(1000)]
        big = write_notebook(work / "big.ipynb", sources, markdown_every=10)
        token = (work / "home" / "web-token").read_text().strip()
        base = f"http://127.0.0.1:{port}"
        with Client.connect(work / "rt.sock") as client, sync_playwright() as p:
            # Peer in this run: the Python client opening the same 1,000 cells.
            t0 = time.perf_counter()
            nb = client.open(big)
            python_open = (time.perf_counter() - t0) * 1000
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)

            def fresh_page() -> tuple[BrowserContext, Page]:
                ctx = browser.new_context(viewport={"width": 1280, "height": 900})
                page = ctx.new_page()
                page.set_default_timeout(120_000)
                page.goto(f"{base}/?token={token}")  # trade the token for the cookie first
                return ctx, page

            # ---------------------------------------------------------------- 1. open
            first, synced, loads = [], [], []
            for _ in range(args.runs):
                ctx, page = fresh_page()
                page.add_init_script(PAINT_PROBE % 1000)
                page.goto(f"{base}/notebooks/{nb.id}")
                page.wait_for_function("() => window.__bench && 'synced' in window.__bench")
                stamps = page.evaluate("() => window.__bench")
                first.append(stamps["first"])
                synced.append(stamps["synced"])
                # The page's own User Timing marks (shipped; no debug hooks): the saved
                # document loaded into the replica, and the replica rendered in full.
                marks = page.evaluate(
                    "() => Object.fromEntries(['rt:load-snapshot', 'rt:synced'].map(n => "
                    "[n, performance.getEntriesByName(n)[0]]).filter(([, e]) => e)"
                    ".map(([n, e]) => [n, e.duration || e.startTime]))"
                )
                if "rt:load-snapshot" in marks:
                    loads.append(marks["rt:load-snapshot"])
                ctx.close()

            # ---------------------------------------------------------------- 2. keystrokes
            small = write_notebook(work / "keys.ipynb", ["s = ''"])
            knb = client.open(small)
            ctx_a, a = fresh_page()
            ctx_b, b = fresh_page()
            for page in (a, b):
                page.goto(f"{base}/notebooks/{knb.id}")
                page.wait_for_selector("body[data-synced=true]")
                # The editor is its own bundle, loaded once the notebook is shown.
                page.wait_for_selector(".cell .cm-content" if page is a else ".cell .cell-input")
            b.evaluate(
                """() => {
                  window.__seen = [];
                  const el = document.querySelector('.cell .cell-input');
                  new MutationObserver(() => {
                    const n = el.textContent.length;
                    requestAnimationFrame(() => window.__seen.push([n, performance.timeOrigin + performance.now()]));
                  }).observe(el, { subtree: true, childList: true, characterData: true });
                }"""
            )
            a.evaluate("() => window.runtimed.view.cells.get('c0').ensureEditor()")
            base_len = b.evaluate(
                "() => document.querySelector('.cell .cell-input').textContent.length"
            )
            latencies = []
            for i in range(args.keys):
                sent = a.evaluate(
                    """() => {
                      const v = window.runtimed.view.cells.get('c0').ensureEditor();
                      const t = performance.timeOrigin + performance.now();
                      v.dispatch({ changes: { from: v.state.doc.length, insert: 'k' } });
                      return t;
                    }"""
                )
                want = base_len + i + 1
                b.wait_for_function(
                    "(n) => window.__seen.some(([len]) => len >= n)", arg=want, polling=1
                )
                seen = b.evaluate("(n) => window.__seen.find(([len]) => len >= n)[1]", want)
                b.evaluate("() => { window.__seen = window.__seen.slice(-4); }")
                latencies.append(seen - sent)
            ctx_a.close()
            ctx_b.close()

            # ---------------------------------------------------------------- 3. stream
            stream_nb = write_notebook(
                work / "stream.ipynb", [f"for i in range({args.lines}):\n    print('line', i)"]
            )
            snb = client.open(stream_nb)
            ctx, page = fresh_page()
            page.goto(f"{base}/notebooks/{snb.id}")
            page.wait_for_selector("body[data-synced=true]")
            page.evaluate(FRAME_PROBE)
            page.evaluate("() => window.runtimed.replica.execute('c0')")
            page.wait_for_selector(".long-text-note", timeout=300_000)
            page.wait_for_selector('.cell[data-state="ok"]', timeout=300_000)
            page.wait_for_timeout(500)  # frames after the final output landed
            during = page.evaluate("() => window.__frames.max")
            page.evaluate(
                "() => { window.__frames.max = 0; window.__frames.last = performance.now(); }"
            )
            scroller = page.locator(".long-text-scroller")
            scroller.hover()
            for _ in range(40):
                page.mouse.wheel(0, 4000)
                page.wait_for_timeout(16)
            scrolling = page.evaluate("() => window.__frames.max")
            shown = page.inner_text(".long-text-note")
            ctx.close()
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    static = ROOT / "runtimed" / "daemon" / "web" / "static"
    import gzip

    def size(name: str) -> str:
        data = (static / name).read_bytes()
        return f"{len(data) / 1024:7.0f} KiB ({len(gzip.compress(data, 9)) / 1024:5.0f} KiB gzip)"

    print(f"load average at start: {load_before}; at end: {load()}")
    print(f"1,000-cell notebook, cold page load, {args.runs} runs")
    print(f"  first cell painted   {ms(first)}   (Rust runtimed desktop: 803-871 ms)")
    print(f"  fully synced         {ms(synced)}   (Rust runtimed desktop: 1000-1700 ms)")
    if loads:
        print(f"    of which Automerge.load of the saved document: {ms(loads)}")
    print(f"  peer: Python client open of the same notebook: {python_open:.1f} ms")
    print(f"keystroke A -> visible in B, {len(latencies)} keystrokes")
    print(
        f"  p50 {percentile(latencies, 50):6.2f} ms   p99 {percentile(latencies, 99):6.2f} ms   max {max(latencies):6.2f} ms"
    )
    print(f"{args.lines:,}-line stream run from the page ({shown})")
    print(f"  longest frame while it ran and landed: {during:7.1f} ms")
    print(f"  longest frame while scrolling it:      {scrolling:7.1f} ms")
    print(
        "bundle: app.js "
        + size("app.js")
        + "; automerge.wasm "
        + size("automerge.wasm")
        + "; editor.js "
        + (size("editor.js") if (static / "editor.js").exists() else "-")
        + "; app.css "
        + size("app.css")
    )


if __name__ == "__main__":
    main()
