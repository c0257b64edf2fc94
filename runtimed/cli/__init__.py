"""``runt``, the command line: ``main`` (daemon control and cell commands), ``runtimes``
(runtimes, pool, environments, configuration) and ``run`` (papermill-compatible runs)."""

from __future__ import annotations

from runtimed.cli.main import main

__all__ = ["main"]
