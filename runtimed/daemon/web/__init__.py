"""The web notebook: every notebook live in a browser (docs/web.md)."""

from __future__ import annotations

from runtimed.daemon.web.server import WebServer

__all__ = ["WebServer"]
