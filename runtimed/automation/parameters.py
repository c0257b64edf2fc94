"""Papermill-compatible notebook parameters: parse, merge, render and inject.

Everything here is pure (it works on plain dicts and nbformat ``NotebookNode`` objects and
never mutates its inputs); the only I/O is :func:`collect_parameters` reading a ``yaml_file``.

The behaviour mirrors papermill 2.x so that notebooks parameterized by runtimed are
indistinguishable from ones produced by ``papermill -p ...``:

* ``-p`` values are typed like ``papermill.cli._resolve_type``; ``-r`` values stay strings.
* Sources are merged in the order of ``papermill.cli.papermill``: base64 YAML, YAML files,
  YAML text, ``-p``, ``-r`` (a later source overrides an earlier one for the same name).
* The injected code is the text of ``PythonTranslator.codify`` *without* black formatting
  (papermill only runs black when it happens to be installed).
* The injected cell is placed exactly where ``papermill.parameterize.parameterize_notebook``
  puts it and has the same shape and metadata.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import keyword
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runtimed.automation import nodes
from runtimed.errors import InvalidRequest

__all__ = [
    "INJECTED_PARAMETERS_TAG",
    "PARAMETERS_TAG",
    "ParameterError",
    "collect_parameters",
    "find_first_tagged_cell_index",
    "parameterize_notebook",
    "parse_cli_value",
    "render_python",
]

#: Tag of the cell holding the notebook's default parameters (papermill convention).
PARAMETERS_TAG = "parameters"
#: Tag of the cell papermill (and runtimed) inserts with the supplied values.
INJECTED_PARAMETERS_TAG = "injected-parameters"

# Languages / kernel names whose parameters papermill renders with ``PythonTranslator``
# (papermill registers "python" and "pysparkkernel"; it looks the kernel name up first).
_PYTHON_TRANSLATOR_KEYS = frozenset({"python", "pysparkkernel"})

# nbformat's helpers are unannotated; bind them once with the types we rely on.
_from_dict: Callable[[object], Any] = nodes.from_dict
_nbformat_upgrade: Callable[[Any], Any] = nodes.upgrade

# nbformat 4.5 cell ids: 1-64 characters of [a-zA-Z0-9-_].
_CELL_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ParameterError(InvalidRequest, ValueError):
    """A parameter could not be parsed, merged or rendered.

    Part of the runtimed error tree (an :class:`~runtimed.errors.InvalidRequest`); still a
    ``ValueError``, as papermill's parameter errors are, for callers that catch that.

    ``str(err)`` reads ``"parameter 'x': <reason>"`` when a single parameter is at fault,
    otherwise ``"<source>: <reason>"`` or just the reason.

    Attributes:
        name: the offending parameter name, if any.
        source: where the parameters came from (e.g. ``"YAML file 'p.yaml'"``), if known.
        reason: the message without the name/source prefix.
    """

    def __init__(self, reason: str, *, name: object = None, source: str | None = None) -> None:
        self.name = name
        self.source = source
        self.reason = reason
        if name is not None:
            message = f"parameter {name!r}: {reason}"
        elif source is not None:
            message = f"{source}: {reason}"
        else:
            message = reason
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# CLI parsing and merging
# --------------------------------------------------------------------------------------------


def _parses_as(kind: type[int] | type[float], raw: str) -> bool:
    # papermill's ``_is_int``/``_is_float`` simply try the constructor, so anything Python
    # accepts counts: " 7 ", "1_000", "+3", "1e3", "nan", "-Infinity", non-ASCII digits...
    try:
        kind(raw)
    except ValueError:
        return False
    return True


def parse_cli_value(raw: str) -> object:
    """Type a ``-p NAME VALUE`` value exactly like papermill's ``_resolve_type``.

    ``"True"``/``"False"`` become bools and ``"None"`` becomes ``None`` (exact, case-sensitive
    matches only), then anything ``int()`` accepts is an int, anything ``float()`` accepts is a
    float (including ``"nan"``/``"inf"``), and everything else stays the original string.
    ``-r`` values are never passed through this function.

    Args:
        raw: the value as typed on the command line.

    Returns:
        ``bool``, ``None``, ``int``, ``float`` or the unchanged ``str``.
    """
    if raw == "True":
        return True
    if raw == "False":
        return False
    if raw == "None":
        return None
    if _parses_as(int, raw):
        return int(raw)
    if _parses_as(float, raw):
        return float(raw)
    return raw


@functools.cache
def _no_dates_loader() -> type[Any]:
    # yaml is imported here, not at module level: most runs take no YAML parameters.
    import yaml

    # papermill loads every YAML source with ``NoDatesSafeLoader``: a SafeLoader whose
    # implicit timestamp resolver is removed, so ``2024-01-01`` stays the *string*
    # "2024-01-01" instead of a ``datetime.date`` (which could not be rendered as Python).
    # Built with ``type()`` rather than a class statement because ``yaml`` is untyped here.
    resolvers = {
        first: [r for r in entries if r[0] != "tag:yaml.org,2002:timestamp"]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader: type[Any] = type(
        "_NoDatesSafeLoader", (yaml.SafeLoader,), {"yaml_implicit_resolvers": resolvers}
    )
    return loader


def _load_yaml_mapping(text: str | bytes, *, source: str) -> dict[str, object]:
    import yaml

    try:
        loaded = yaml.load(text, Loader=_no_dates_loader())
    except yaml.YAMLError as exc:
        raise ParameterError(f"could not parse YAML: {exc}", source=source) from exc
    # papermill does ``yaml.load(...) or {}``: an empty document means "no parameters".
    if not loaded:
        return {}
    if not isinstance(loaded, dict):
        # papermill would crash inside ``dict.update``; say what is wrong instead.
        raise ParameterError(
            f"YAML parameters must be a mapping of names to values, got {type(loaded).__name__}",
            source=source,
        )
    for key in loaded:
        if not isinstance(key, str):
            # ``1: x`` or ``true: y`` would render as ``1 = "x"``, which is not Python.
            raise ParameterError("parameter names must be strings", name=key, source=source)
    return dict(loaded)


def _as_list(value: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    if value is None:
        return []
    if isinstance(value, str | Path):
        return [value]
    return list(value)


def collect_parameters(
    *,
    params: Sequence[tuple[str, str]] = (),
    raw: Sequence[tuple[str, str]] = (),
    yaml_text: str | Sequence[str] | None = None,
    yaml_file: Path | str | Sequence[Path | str] | None = None,
    b64_yaml: str | Sequence[str] | None = None,
) -> dict[str, object]:
    """Merge parameters from every papermill-style source into one dict.

    Sources are applied in the order of ``papermill.cli.papermill`` and a later source
    overrides an earlier one for the same name (the name keeps the position where it first
    appeared, as with ``dict.update``)::

        b64_yaml (-b)  <  yaml_file (-f)  <  yaml_text (-y)  <  params (-p)  <  raw (-r)

    Each YAML option accepts one value or a sequence of values (papermill's options are
    repeatable); within one option they apply in order.

    Args:
        params: ``(name, value)`` pairs from ``-p``; values are typed by :func:`parse_cli_value`.
        raw: ``(name, value)`` pairs from ``-r``; values stay strings.
        yaml_text: YAML document(s) mapping names to values (``-y``).
        yaml_file: path(s) of YAML/JSON files to read (``-f``); the only I/O in this module.
        b64_yaml: base64-encoded YAML document(s) (``-b``).

    Returns:
        The merged ``{name: value}`` mapping.

    Raises:
        ParameterError: invalid base64, unparsable YAML, a YAML document that is not a
            mapping, non-string names, or an unreadable ``yaml_file``.
    """
    merged: dict[str, object] = {}
    for encoded in _as_list(b64_yaml):
        source = "base64 YAML parameters"
        try:
            decoded = base64.b64decode(str(encoded))
        except (binascii.Error, ValueError) as exc:
            raise ParameterError(f"invalid base64: {exc}", source=source) from exc
        merged.update(_load_yaml_mapping(decoded, source=source))
    for path in _as_list(yaml_file):
        source = f"YAML parameters file '{path}'"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParameterError(f"could not read file: {exc}", source=source) from exc
        merged.update(_load_yaml_mapping(text, source=source))
    for document in _as_list(yaml_text):
        merged.update(_load_yaml_mapping(str(document), source="YAML parameters"))
    for name, value in params:
        merged[name] = parse_cli_value(value)
    for name, value in raw:
        merged[name] = value
    return merged


# --------------------------------------------------------------------------------------------
# Rendering (PythonTranslator.codify without black)
# --------------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    # papermill's ``translate_escaped_str``: the ``unicode_escape`` codec turns backslashes,
    # control characters and every non-ASCII character into escapes (\\, \n, \xe9, \u2603,
    # \U0001f600), leaves ``'`` alone, and then ``"`` is backslash-escaped inside "...".
    escaped = text.encode("unicode_escape").decode("ascii")
    return '"' + escaped.replace('"', '\\"') + '"'


def _render_float(value: float) -> str:
    # ``repr`` for finite floats; papermill spells the non-finite ones as float('...') calls.
    if math.isfinite(value):
        return f"{value}"
    if math.isnan(value):
        return "float('nan')"
    return "float('-inf')" if value < 0 else "float('inf')"


def _render_value(value: object) -> str:
    # The type tests run in papermill's ``Translator.translate`` order: str before bool
    # (str subclasses), bool before int (bool is an int), then int, float, dict, list.
    if value is None:
        return "None"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool | int):
        return f"{value}"
    if isinstance(value, float):
        return _render_float(value)
    if isinstance(value, dict):
        # Keys always go through the *string* quoting, even non-str ones: {1: 2} -> {"1": 2}.
        items = ", ".join(f"{_render_key(k)}: {_render_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_render_value(v) for v in value) + "]"
    # Last resort, as papermill: str(value) in double quotes, *not* escaped (so a tuple
    # (1, 2) becomes "(1, 2)").
    return f'"{value}"'


def _render_key(key: object) -> str:
    # papermill's ``translate_str`` only escapes real strings; other keys are str()-quoted.
    return _quote(key) if isinstance(key, str) else f'"{key}"'


def _comment_line(comment: str) -> str:
    if "\n" in comment or "\r" in comment:
        raise ParameterError(f"comment must be a single line, got {comment!r}")
    if comment.lstrip().startswith("#"):
        return comment.strip()
    # A bare comment text behaves like papermill's ``comment=`` argument: f"# {text}".strip().
    return f"# {comment}".strip()


def _check_name(name: object) -> str:
    # Deliberate difference: papermill writes any key verbatim (``my-param = 1``) and the
    # notebook then fails with a SyntaxError at run time; we reject such names up front.
    if not isinstance(name, str):
        raise ParameterError("parameter names must be strings", name=name)
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ParameterError("not a valid Python identifier", name=name)
    return name


def render_python(parameters: Mapping[str, object], *, comment: str = "# Parameters") -> str:
    """Render ``name = value`` assignments, byte-identical to papermill's Python translator.

    The result equals ``papermill.translators.PythonTranslator.codify(parameters, "Parameters")``
    when black is not installed: a comment line, then one ``name = value`` line per
    parameter in mapping order, each line (including the last) ending in ``\\n``.

    Values: ``None``/bools/ints as Python literals, finite floats via ``repr``, ``nan``/``inf``
    as ``float('nan')``/``float('inf')``/``float('-inf')``, strings double-quoted with
    ``unicode_escape`` escaping, dicts and lists recursively (dict keys always quoted as
    strings), anything else as ``str(value)`` in double quotes.

    Args:
        parameters: ``{name: value}``; names must be Python identifiers.
        comment: the first line. Text not starting with ``#`` is treated like papermill's
            ``comment`` argument (``"Parameters"`` -> ``"# Parameters"``).

    Returns:
        Python source text.

    Raises:
        ParameterError: a name is not a string / valid identifier, or ``comment`` spans lines.
    """
    lines = [_comment_line(comment)]
    lines.extend(
        f"{_check_name(name)} = {_render_value(value)}" for name, value in parameters.items()
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Injection
# --------------------------------------------------------------------------------------------


def _tags(cell: Mapping[str, Any]) -> list[Any]:
    metadata = cell.get("metadata") or {}
    tags = metadata.get("tags") or []
    return list(tags) if isinstance(tags, list | tuple) else []


def find_first_tagged_cell_index(nb: Any, tag: str) -> int:
    """Index of the first cell carrying ``tag`` in its ``metadata.tags``, or ``-1``.

    Unlike ``papermill.utils.find_first_tagged_cell_index`` this tolerates cells without a
    ``tags`` key (papermill relies on its loader having added ``tags: []`` everywhere).

    Args:
        nb: an nbformat notebook (or a dict of the same shape).
        tag: the tag to look for.
    """
    for index, cell in enumerate(nb.get("cells", [])):
        if tag in _tags(cell):
            return index
    return -1


def _upgrade(nb: Any) -> Any:
    # papermill runs ``nbformat.v4.upgrade`` first so the notebook is v4.5 (cell ids). For
    # v4.0-4.4 nbformat assigns *random* ids; we assign deterministic, unique ones instead so
    # this function stays pure (same input -> same output). Other versions go to nbformat.
    major = nb.get("nbformat")
    minor = nb.get("nbformat_minor", 0)
    if major == 4 and minor < nodes.NBFORMAT_MINOR:
        for index, cell in enumerate(nb.cells):
            cell["id"] = f"cell-{index}"
        nb.metadata["orig_nbformat_minor"] = minor
        nb["nbformat_minor"] = nodes.NBFORMAT_MINOR
        return nb
    return _nbformat_upgrade(nb)


def _injected_cell_id(
    cells: Sequence[Mapping[str, Any]], replaced: Mapping[str, Any] | None
) -> str:
    # Re-parameterizing keeps the injected cell's id stable (papermill makes a fresh random
    # one), which keeps cell identity stable for collaborators; otherwise pick a readable id
    # that no other cell uses.
    taken = {cell.get("id") for cell in cells if cell is not replaced}
    if replaced is not None:
        old = replaced.get("id")
        if isinstance(old, str) and _CELL_ID_RE.match(old) and old not in taken:
            return old
    candidate, counter = INJECTED_PARAMETERS_TAG, 1
    while candidate in taken:
        counter += 1
        candidate = f"{INJECTED_PARAMETERS_TAG}-{counter}"
    return candidate


def parameterize_notebook(
    nb: Any,
    parameters: Mapping[str, object],
    *,
    kernel_language: str = "python",
    report_mode: bool = False,
    comment: str = "# Parameters",
) -> Any:
    """Return a copy of ``nb`` with an ``injected-parameters`` cell holding ``parameters``.

    Placement follows ``papermill.parameterize.parameterize_notebook``: an existing cell
    tagged ``injected-parameters`` is replaced in place (the first one, wherever it is);
    otherwise the new cell goes right after the first cell tagged ``parameters``; otherwise
    at the top. The new cell is ``nbformat.v4.new_code_cell`` shaped (no outputs,
    ``execution_count`` None) with ``metadata.tags == ["injected-parameters"]`` and, in report
    mode, ``metadata.jupyter.source_hidden == True``. Like papermill, an empty mapping still
    injects a cell containing only the comment.

    The notebook is upgraded to nbformat 4.5 first (as papermill does), and the parameters
    are recorded in ``metadata.papermill.parameters`` (created with papermill's
    ``default_parameters``/``environment_variables`` keys when absent, other keys kept) and in
    ``metadata.runtimed.parameters``.

    Args:
        nb: the source notebook; it is not modified.
        parameters: ``{name: value}`` to inject.
        kernel_language: kernel language (or kernel name); only Python is supported.
        report_mode: hide the injected cell's source, as ``papermill --report-mode`` does.
        comment: first line of the injected source (see :func:`render_python`).

    Returns:
        A new ``NotebookNode``.

    Raises:
        ParameterError: unsupported language or a parameter that cannot be rendered.
    """
    if kernel_language not in _PYTHON_TRANSLATOR_KEYS:
        raise ParameterError(
            f"no parameter translator for kernel language {kernel_language!r} "
            "(only Python is supported)"
        )
    source = render_python(parameters, comment=comment)
    recorded = copy.deepcopy(dict(parameters))

    out = _upgrade(_from_dict(copy.deepcopy(nb)))

    injected_index = find_first_tagged_cell_index(out, INJECTED_PARAMETERS_TAG)
    params_index = find_first_tagged_cell_index(out, PARAMETERS_TAG)
    cells = list(out.cells)
    if injected_index >= 0:
        position, replaced = injected_index, cells.pop(injected_index)
    elif params_index >= 0:
        position, replaced = params_index + 1, None
    else:
        position, replaced = 0, None

    metadata: dict[str, Any] = {"tags": [INJECTED_PARAMETERS_TAG]}
    if report_mode:
        # papermill ends up with exactly {"source_hidden": True} here (it reads the
        # cell-level, not metadata-level, "jupyter" key, which a new cell never has).
        metadata["jupyter"] = {"source_hidden": True}
    new_cell = _from_dict(
        {
            "id": _injected_cell_id(cells, replaced),
            "cell_type": "code",
            "metadata": metadata,
            "execution_count": None,
            "source": source,
            "outputs": [],
        }
    )
    cells.insert(position, new_cell)
    out["cells"] = cells

    papermill_meta = out.metadata.get("papermill")
    if not isinstance(papermill_meta, dict):
        # papermill's loader seeds this dict (plus its own "version", which we do not claim).
        papermill_meta = _from_dict(
            {"default_parameters": {}, "parameters": {}, "environment_variables": {}}
        )
        out.metadata["papermill"] = papermill_meta
    papermill_meta["parameters"] = recorded

    runtimed_meta = out.metadata.get("runtimed")
    if not isinstance(runtimed_meta, dict):
        runtimed_meta = _from_dict({})
        out.metadata["runtimed"] = runtimed_meta
    runtimed_meta["parameters"] = copy.deepcopy(recorded)
    return out
