"""Papermill-compatible notebook automation: parameters, injection and inspection.

Pure functions over nbformat notebooks; see :mod:`runtimed.automation.parameters` and
:mod:`runtimed.automation.inspect`. Kernel-side scraps live in :mod:`runtimed.glue`.
Batches, locally or on a Dask cluster: :func:`execute_notebooks`
(:mod:`runtimed.automation.batch_api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtimed.automation.batch_api import execute_notebooks, execute_notebooks_async
    from runtimed.automation.cluster import ClusterError
    from runtimed.automation.inspect import (
        ParameterInfo,
        format_parameters_help,
        has_parameters_cell,
        inspect_parameters,
        notebook_language,
        unknown_parameters,
    )
    from runtimed.automation.parameters import (
        INJECTED_PARAMETERS_TAG,
        PARAMETERS_TAG,
        ParameterError,
        collect_parameters,
        find_first_tagged_cell_index,
        parameterize_notebook,
        parse_cli_value,
        render_python,
    )

__all__ = [
    "INJECTED_PARAMETERS_TAG",
    "PARAMETERS_TAG",
    "ClusterError",
    "ParameterError",
    "ParameterInfo",
    "collect_parameters",
    "execute_notebooks",
    "execute_notebooks_async",
    "find_first_tagged_cell_index",
    "format_parameters_help",
    "has_parameters_cell",
    "inspect_parameters",
    "notebook_language",
    "parameterize_notebook",
    "parse_cli_value",
    "render_python",
    "unknown_parameters",
]

_LAZY = {
    "ClusterError": "runtimed.automation.cluster",
    **dict.fromkeys(
        ("execute_notebooks", "execute_notebooks_async"), "runtimed.automation.batch_api"
    ),
    **dict.fromkeys(
        (
            "ParameterInfo",
            "format_parameters_help",
            "has_parameters_cell",
            "inspect_parameters",
            "notebook_language",
            "unknown_parameters",
        ),
        "runtimed.automation.inspect",
    ),
    **dict.fromkeys(
        (
            "INJECTED_PARAMETERS_TAG",
            "PARAMETERS_TAG",
            "ParameterError",
            "collect_parameters",
            "find_first_tagged_cell_index",
            "parameterize_notebook",
            "parse_cli_value",
            "render_python",
        ),
        "runtimed.automation.parameters",
    ),
}


def __getattr__(name: str) -> Any:
    # Lazy: `runt` imports runtimed.cli.run on every command; nbformat, jsonschema and
    # yaml load only when parameters or inspection are actually used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtimed.automation' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
