"""Scraps: named values a notebook records in its outputs for later collection.

Kernel side, :func:`glue` publishes a value as a display output with the MIME type
:data:`MIME`; it only needs IPython (imported on first use) and no daemon. Reader side,
:func:`read_scraps` and :func:`scraps_table` pull the values back out of saved nbformat
notebooks and need neither IPython nor pandas. The payload is
``{"name": ..., "data": ..., "encoder": "json" | "pandas"}``, in the spirit of scrapbook's
``glue``/``read_notebook(...).scraps`` but with a runtimed MIME type.

This module must stay import-light (stdlib only at import time): it is imported inside
user kernels.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

__all__ = [
    "MIME",
    "Scrap",
    "encode_scrap",
    "glue",
    "iter_scraps",
    "read_scraps",
    "scraps_table",
]

#: MIME type of a scrap display output.
MIME = "application/vnd.runtimed.scrap+json"

# Output types that carry a mime bundle in a saved notebook.
_BUNDLE_OUTPUTS = frozenset({"display_data", "execute_result", "update_display_data"})


class Scrap(NamedTuple):
    """One scrap as stored in a notebook.

    Attributes:
        name: the scrap name given to :func:`glue`.
        data: the JSON value (for ``encoder == "pandas"``: the ``orient="split"`` dict).
        encoder: ``"json"`` or ``"pandas"``.
    """

    name: str
    data: object
    encoder: str


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"scrap name must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError("scrap name must not be empty")
    return name


def _is_dataframe(value: object) -> bool:
    # Only look at pandas if the kernel already imported it: a DataFrame cannot exist
    # otherwise, and importing pandas here would cost every glue() call a second or so.
    pandas = sys.modules.get("pandas")
    frame_type = getattr(pandas, "DataFrame", None)
    return isinstance(frame_type, type) and isinstance(value, frame_type)


def _pandas_json_default(value: object) -> object:
    # Cells of a DataFrame may hold numpy scalars (older pandas) or timestamps.
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _nan_to_none(value: object) -> object:
    # Missing values are NaN in pandas; store them as JSON null like DataFrame.to_json does.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list | tuple):
        return [_nan_to_none(item) for item in value]
    return value


def _to_json(name: str, value: object, *, default: Callable[[object], object] | None) -> object:
    # Round-trip through json so the published value is exactly what a reader gets back
    # (tuples become lists, int keys become strings) and bad values fail here, naming the
    # scrap, rather than deep inside the kernel's message serialisation.
    try:
        text = json.dumps(value, allow_nan=False, default=default)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"scrap {name!r}: value is not JSON-serializable ({exc})") from exc
    return json.loads(text)


def encode_scrap(name: str, value: object) -> dict[str, object]:
    """Build the ``{"name", "data", "encoder"}`` payload :func:`glue` publishes.

    Args:
        name: scrap name (non-empty string).
        value: a JSON-serializable value (no NaN/inf), or a pandas DataFrame.

    Returns:
        The payload, with ``data`` normalised through JSON.

    Raises:
        TypeError: ``name`` is not a string, or ``value`` cannot be stored as JSON.
        ValueError: ``name`` is empty.
    """
    name = _check_name(name)
    if _is_dataframe(value):
        split = value.to_dict(orient="split")  # type: ignore[attr-defined]
        data = _to_json(name, _nan_to_none_split(split), default=_pandas_json_default)
        return {"name": name, "data": data, "encoder": "pandas"}
    return {"name": name, "data": _to_json(name, value, default=None), "encoder": "json"}


def _nan_to_none_split(split: Mapping[str, object]) -> dict[str, object]:
    return {key: _nan_to_none(part) for key, part in split.items()}


def _display_function() -> Callable[..., object]:
    # Imported lazily so that reading scraps (daemon side) never needs IPython.
    try:
        module = importlib.import_module("IPython.display")
    except ImportError as exc:  # pragma: no cover - IPython is present in every kernel
        raise ImportError("runtimed.glue.glue() needs IPython (run it inside a kernel)") from exc
    display: Callable[..., object] = module.display
    return display


def glue(name: str, value: object, *, display: bool = False) -> None:
    """Record ``value`` under ``name`` in the current cell's outputs.

    Publishes ``{MIME: {"name", "data", "encoder"}}`` as a raw display output, with metadata
    ``{"runtimed": {"scrap": name, "data": True, "display": False}}``. With ``display=True``
    the value is additionally shown with its normal rich representation (metadata
    ``{"runtimed": {"scrap": name, "data": False, "display": True}}``).

    Args:
        name: scrap name; gluing the same name again supersedes the earlier value.
        value: JSON-serializable data, or a pandas DataFrame (stored ``orient="split"``).
        display: also display the value visibly.

    Raises:
        TypeError: the value is not JSON-serializable (the message names the scrap) or the
            name is not a string.
        ValueError: the name is empty.
    """
    payload = encode_scrap(name, value)
    show = _display_function()
    show(
        {MIME: payload},
        raw=True,
        metadata={"runtimed": {"scrap": name, "data": True, "display": False}},
    )
    if display:
        show(value, metadata={"runtimed": {"scrap": name, "data": False, "display": True}})


def _payload_of(output: Mapping[str, Any]) -> Scrap | None:
    if output.get("output_type") not in _BUNDLE_OUTPUTS:
        return None
    payload = (output.get("data") or {}).get(MIME)
    if isinstance(payload, str):
        # nbformat keeps "+json" data as objects, but tolerate writers that stored a string.
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    if not isinstance(payload, Mapping) or "data" not in payload:
        return None
    name, encoder = payload.get("name"), payload.get("encoder", "json")
    if not isinstance(name, str) or not isinstance(encoder, str):
        return None
    return Scrap(name=name, data=payload["data"], encoder=encoder)


def iter_scraps(nb: Mapping[str, Any]) -> Iterator[Scrap]:
    """Yield every scrap in ``nb``'s outputs, in cell and output order.

    Malformed scrap payloads are skipped. ``nb`` may be a ``NotebookNode`` or a plain dict.
    """
    for cell in nb.get("cells") or []:
        for output in cell.get("outputs") or []:
            scrap = _payload_of(output)
            if scrap is not None:
                yield scrap


def _decode_dataframe(data: object) -> object:
    pandas = importlib.import_module("pandas")
    if not isinstance(data, Mapping):
        raise TypeError("pandas scrap data must be an orient='split' mapping")
    return pandas.DataFrame(data.get("data"), index=data.get("index"), columns=data.get("columns"))


def read_scraps(
    nb: Mapping[str, Any] | str | os.PathLike[str], *, decode: bool = False
) -> dict[str, object]:
    """Read scraps back from a notebook: ``{name: value}``, the last value for a name winning.

    Args:
        nb: an nbformat notebook (``NotebookNode`` or plain dict), or the path of an
            ``.ipynb`` file (scrapbook's ``read_notebook(path).scraps`` habit).
        decode: rebuild ``pandas`` scraps as DataFrames (imports pandas). By default they
            are returned as their ``orient="split"`` dicts, so no pandas is needed.

    Returns:
        Names in order of first appearance, mapped to their latest value.

    Raises:
        ImportError: ``decode=True``, a pandas scrap is present and pandas is not installed.
    """
    if isinstance(nb, str | os.PathLike):
        with open(nb, encoding="utf-8") as f:
            loaded = json.load(f)
        if not isinstance(loaded, dict):
            raise ValueError(f"{os.fspath(nb)}: not a notebook (no JSON object)")
        nb = loaded
    scraps: dict[str, object] = {}
    for scrap in iter_scraps(nb):
        if decode and scrap.encoder == "pandas":
            scraps[scrap.name] = _decode_dataframe(scrap.data)
        else:
            scraps[scrap.name] = scrap.data
    return scraps


def scraps_table(nbs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, object]]:
    """Flatten the scraps of several notebooks into rows for a cross-notebook table.

    Args:
        nbs: ``{notebook path: notebook}``, in the order rows should appear.

    Returns:
        ``[{"notebook": path, "name": name, "value": value}, ...]``, one row per scrap name
        per notebook (latest value, as :func:`read_scraps`); pandas scraps stay split dicts.
    """
    return [
        {"notebook": path, "name": name, "value": value}
        for path, nb in nbs.items()
        for name, value in read_scraps(nb).items()
    ]


class _CallableModule(types.ModuleType):
    """This module, callable: ``glue(name, value)`` is :func:`glue`, so that
    ``from runtimed import glue`` gives what notebooks call (see :mod:`runtimed`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return glue(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
