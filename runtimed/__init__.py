"""runtimed: a local notebook runtime daemon and its clients.

Two names are exported for notebooks and scripts:

* ``runtimed.execute_notebook(input, output, parameters)`` runs a notebook papermill-style
  through the daemon (:mod:`runtimed.automation.run`); it is imported on first use, so
  ``import runtimed`` stays cheap.
* ``runtimed.glue(name, value)`` records a value in a notebook (:mod:`runtimed.glue`), for
  ``from runtimed import glue`` inside kernels.

``runtimed.glue`` is also the name of the submodule, and importing a submodule binds it on
its package, so a plain function export would be replaced by the module as soon as anything
imported ``runtimed.glue``. Instead the (stdlib-only) module makes itself callable:
``glue(name, value)`` calls :func:`runtimed.glue.glue`, and ``glue.read_scraps`` etc. keep
working. It is imported on first use, like ``execute_notebook``: ``import runtimed`` (every
``runt`` command) does not pay for it.
"""

from __future__ import annotations

from runtimed.version import __version__

__all__ = ["__version__", "execute_notebook", "glue"]

# Not ``typing.TYPE_CHECKING``: every ``runt`` command imports this package first, and
# ``typing`` is a few milliseconds of a warm ``runt run`` handed to the warm runner.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from runtimed.automation.run import execute_notebook


def __getattr__(name: str) -> Any:
    if name == "glue":
        import importlib

        return importlib.import_module("runtimed.glue")  # which also binds runtimed.glue
    # Lazy: importing runtimed.automation pulls in anyio, nbformat and the client.
    if name == "execute_notebook":
        from runtimed.automation.run import execute_notebook

        return execute_notebook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
