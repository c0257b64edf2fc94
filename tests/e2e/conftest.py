"""End-to-end fixtures: a real ``runtimed`` process (its web server on a fixed port, so a
restarted daemon comes back at the same address), real kernels, and headless Chromium
driven by Playwright (Debian's ``chromium`` package; ``.ci/run`` installs it).

Readiness is a successful connect within a deadline, never a sleep; every process and
browser started here is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("RUNTIMED_SCREENSHOTS", tempfile.gettempdir())) / "runtimed-e2e"
REPO = Path(__file__).resolve().parents[2]

NewPage = Callable[..., Page]
"""``new_page(width=, height=)``: a page in a fresh browser context."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DaemonProc:
    socket: Path
    home: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def token(self) -> str:
        return (self.home / "web-token").read_text().strip()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={self.token}"

    def base(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            PYTHONPATH=str(REPO),
            RUNTIMED_CONFIG=str(self.home.parent / "no-config.toml"),
            RUNTIMED_HTTP_PORT=str(self.port),
            RUNTIMED_POOL_SIZE="0",
            RUNTIMED_SOCKET=str(self.socket),
            RUNTIMED_HOME=str(self.home),
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtimed.daemon.main",
                "--socket",
                str(self.socket),
                "--home",
                str(self.home),
                "--log-level",
                "INFO",
            ],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=open(self.home.parent / "daemon.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError("daemon did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return (self.home.parent / "daemon.log").read_text()[-4000:]
        except OSError:
            return ""


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rte-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[DaemonProc]:
    d = DaemonProc(socket=short_tmp / "s" / "rt.sock", home=short_tmp / "home", port=free_port())
    d.home.mkdir(parents=True)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module. Not per session: Playwright's sync API keeps an event
    loop running in this thread while it is open, and the anyio tests that follow need it
    gone."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[NewPage]:
    """A factory of pages, each in its own context (own cookies: another person)."""
    contexts: list[BrowserContext] = []

    def make(width: int = 1200, height: int = 900) -> Page:
        ctx = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        return page

    try:
        yield make
    finally:
        for ctx in contexts:
            ctx.close()


def shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def write_notebook(path: Path, cells: list[dict[str, object]]) -> Path:
    full = []
    for index, cell in enumerate(cells):
        c: dict[str, object] = {"id": f"cell{index}", "metadata": {}, **cell}
        if c["cell_type"] == "code":
            c.setdefault("outputs", [])
            c.setdefault("execution_count", None)
        full.append(c)
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": full,
    }
    path.write_text(json.dumps(nb, indent=1))
    return path


def code(source: str) -> dict[str, object]:
    return {"cell_type": "code", "source": source}


def markdown(source: str) -> dict[str, object]:
    return {"cell_type": "markdown", "source": source}
