"""What a Dask worker has installed, asked before a batch is sent to it.

This module is pickled *by value* (``cloudpickle.register_pickle_by_value``), so the probe
runs on a worker where runtimed is not installed and says so, instead of failing there
with an unpickling error that names no worker. It imports nothing of runtimed at module level.
"""

from __future__ import annotations

__all__ = ["runtimed_on_worker"]


def runtimed_on_worker() -> dict[str, str | None]:
    """The runtimed this worker's interpreter would import: version, or why there is none.

    Returns:
        ``{"version": ..., "python": sys.executable, "error": None}``, or ``version`` None
        and ``error`` the reason (``No module named 'runtimed'``).
    """
    import importlib
    import sys

    try:
        module = importlib.import_module("runtimed.version")
        importlib.import_module("runtimed.automation.cluster_worker")
    except Exception as exc:  # any reason the import fails is reported, by name, to the caller
        return {"version": None, "python": sys.executable, "error": f"{type(exc).__name__}: {exc}"}
    return {"version": str(module.__version__), "python": sys.executable, "error": None}
