"""``runt``, the command line: ``main`` (the entry point), ``commands`` (daemon control and
cell commands), ``runtimes`` (runtimes, pool, environments, configuration), ``run``
(papermill-compatible runs) and ``quick`` (``runt ps`` and ``runt daemon status`` without
the rest)."""

from __future__ import annotations

from runtimed.cli.main import main

__all__ = ["main"]
