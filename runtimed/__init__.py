"""runtimed: a local notebook runtime daemon and its clients.

Two names are exported for notebooks and scripts:

* ``runtimed.execute_notebook(input, output, parameters)`` runs a notebook papermill-style
  through the daemon (:mod:`runtimed.automation.run`); it is imported on first use, so
  ``import runtimed`` stays cheap.
* ``runtimed.glue(name, value)`` records a value in a notebook (:mod:`runtimed.glue`), for
  ``from runtimed import glue`` inside kernels.

``runtimed.glue`` is also the name of the submodule, and importing a submodule binds it on
its package, so a plain function export would be replaced by the module as soon as anything
imported ``runtimed.glue``. Instead the (stdlib-only, cheap) module is imported here and made
callable: ``glue(name, value)`` calls :func:`runtimed.glue.glue`, and ``glue.read_scraps``
etc. keep working.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from runtimed.version import __version__

__all__ = ["__version__", "execute_notebook", "glue"]

if TYPE_CHECKING:
    from runtimed.automation.run import execute_notebook


class _CallableModule(types.ModuleType):
    """A module whose call is its function of the same name (``runtimed.glue``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


from runtimed import glue  # noqa: E402 (after the class that makes it callable)

sys.modules[glue.__name__].__class__ = _CallableModule


def __getattr__(name: str) -> Any:
    # Lazy: importing runtimed.automation pulls in anyio, nbformat and the client.
    if name == "execute_notebook":
        from runtimed.automation.run import execute_notebook

        return execute_notebook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
