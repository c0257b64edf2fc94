"""The notebook :func:`runtimed.automation.run.execute_notebook` returns: an nbformat
``NotebookNode``, as papermill's (its own module: nbformat is imported only here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import nbformat
from nbformat import NotebookNode

from runtimed.automation.report import RunResult

__all__ = ["ExecutedNotebook", "executed_notebook"]

_from_dict: Callable[[object], Any] = nbformat.from_dict


class ExecutedNotebook(NotebookNode):
    """The executed notebook :func:`execute_notebook` returns (an ``nbformat``
    ``NotebookNode``, as papermill's), with the run's :class:`RunResult` as ``.result``."""

    result: RunResult

    def __init__(self, nb: Mapping[str, Any], result: RunResult) -> None:
        super().__init__(nb)  # type: ignore[no-untyped-call]
        # An attribute, not a key: NotebookNode turns attribute writes into items.
        object.__setattr__(self, "result", result)


def executed_notebook(nb: Mapping[str, Any], result: RunResult) -> ExecutedNotebook:
    """``nb`` (as written) as an :class:`ExecutedNotebook` carrying ``result``."""
    return ExecutedNotebook(_from_dict(dict(nb)), result)
