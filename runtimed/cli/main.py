"""``runt``'s entry point: ``ps`` and ``daemon status`` are answered by
:mod:`runtimed.cli.quick` without importing every command, the rest by
:mod:`runtimed.cli.commands`."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from runtimed.cli.quick import quick_command

    quick = quick_command(sys.argv[1:] if argv is None else argv)
    if quick is not None:
        return quick()
    from runtimed.cli.commands import main as full

    return full(argv)
