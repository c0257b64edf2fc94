"""One module per request group; :mod:`runtimed.daemon.app` dispatches to them with a thin
``match``."""
