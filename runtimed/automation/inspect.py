"""Infer a notebook's parameters from its ``parameters`` cell, as ``papermill --help-notebook``.

Pure functions over nbformat notebooks: :func:`inspect_parameters` returns what
``papermill.inspection._infer_parameters`` returns (same names, type names, defaults and help
strings), and :func:`format_parameters_help` produces the text ``display_notebook_help``
prints after the CLI usage line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from runtimed.automation.parameters import PARAMETERS_TAG, find_first_tagged_cell_index

__all__ = [
    "ParameterInfo",
    "format_parameters_help",
    "has_parameters_cell",
    "inspect_parameters",
    "notebook_language",
    "unknown_parameters",
]

logger = logging.getLogger(__name__)


class ParameterInfo(NamedTuple):
    """One inferred parameter; field-for-field the same as ``papermill.models.Parameter``.

    Attributes:
        name: the assigned variable name.
        inferred_type_name: the annotation or ``# type:`` comment text, or ``"None"`` when
            unknown (papermill's convention; it is shown as "Unknown type").
        default: the source text of the assigned value (not evaluated).
        help: the trailing ``# comment`` text, or ``""``.
    """

    name: str
    inferred_type_name: str
    default: str
    help: str


# Same language as papermill's ``PythonTranslator.PARAMETER_PATTERN``, spelled out:
#   name  [: ["']Annotation["']]  =  value  [# [type: T] help]
# (``\w+`` is papermill's ``\w[\w_]*``; the value is lazy so trailing blanks and the comment
# are left to the optional comment group).
_ASSIGNMENT = re.compile(
    r"""
    ^(?P<target>\w+)\s*
    (:\s*["']?(?P<annotation>\w[\w\[\],\s]*)["']?\s*)?
    =\s*(?P<value>.*?)
    (\s*\#\s*(type:\s*(?P<type_comment>\S*)\s*)?(?P<help>.*))?$
    """,
    re.VERBOSE,
)

# Kernel names / languages that papermill maps to its PythonTranslator, the only built-in
# translator implementing ``inspect``, and every key papermill registers a translator for.
_PYTHON_KEYS = frozenset({"python", "pysparkkernel"})
PAPERMILL_TRANSLATOR_KEYS = _PYTHON_KEYS | {
    "R",
    "scala",
    "julia",
    "matlab",
    ".net-csharp",
    ".net-fsharp",
    ".net-powershell",
    "sparkkernel",
    "sparkrkernel",
    "bash",
}


def notebook_language(nb: Any) -> str | None:
    """The notebook's language as papermill resolves it, or ``None`` if unrecorded.

    ``metadata.language_info.name``, falling back to ``metadata.kernelspec.language``
    (papermill's ``nb_language``).
    """
    metadata = nb.get("metadata") or {}
    language = (metadata.get("language_info") or {}).get("name")
    if not language:
        language = (metadata.get("kernelspec") or {}).get("language")
    return str(language) if language else None


def has_parameters_cell(nb: Any) -> bool:
    """Whether any cell is tagged ``parameters`` (papermill's ``any_tagged_cell`` check).

    Use it to choose between ``params=None`` and a list for :func:`format_parameters_help`.
    """
    return find_first_tagged_cell_index(nb, PARAMETERS_TAG) >= 0


def _uses_python_translator(nb: Any) -> bool:
    # papermill's ``find_translator`` tries the kernel name first, then the language. It
    # raises ValueError when the notebook records no kernel name; we fall back to the
    # language, and assume Python when neither is recorded.
    metadata = nb.get("metadata") or {}
    kernel_name = (metadata.get("kernelspec") or {}).get("name")
    if kernel_name in PAPERMILL_TRANSLATOR_KEYS:
        return kernel_name in _PYTHON_KEYS
    language = notebook_language(nb)
    return language is None or language in _PYTHON_KEYS


def _join_continuation(lines: Sequence[str]) -> str:
    # A definition spread over several lines (a dict or list literal) is glued back into one
    # line. Comments are dropped from every line but the last, whose comment is the help
    # text. As in papermill, the first "#" counts even inside a string literal.
    parts = [line.split("#", 1)[0].strip() for line in lines[:-1]]
    if lines:
        parts.append(lines[-1].strip())
    return "".join(parts)


def _definitions(source: str) -> list[str]:
    # papermill's grouping: blank and comment-only lines are skipped; each line containing
    # "=" starts a new group; a line with more than one "=" (``a = b == c``, ``s = "k=v"``) is
    # reported and dropped, closing the previous group; other lines continue the group.
    groups: list[str] = []
    pending: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        equals = line.count("=")
        if equals:
            groups.append(_join_continuation(pending))
            pending = []
            if equals > 1:
                logger.warning("Unable to parse line %d '%s'.", number, line)
                continue
        pending.append(line)
    groups.append(_join_continuation(pending))
    return [group for group in groups if group]


def _parse_cell(source: str) -> list[ParameterInfo]:
    found: list[ParameterInfo] = []
    for definition in _definitions(source):
        match = _ASSIGNMENT.match(definition)
        if match is None:
            continue
        type_name = match["annotation"] or match["type_comment"] or "None"
        found.append(
            ParameterInfo(
                name=match["target"].strip(),
                inferred_type_name=type_name.strip(),
                default=match["value"].strip(),
                help=(match["help"] or "").strip(),
            )
        )
    return found


def inspect_parameters(nb: Any) -> list[ParameterInfo]:
    """Infer the parameters declared in the first cell tagged ``parameters``.

    Matches ``papermill.inspection._infer_parameters``: every ``name = value  # help`` or
    ``name: Type = value  # help`` (also ``# type: T help``) assignment is reported in cell
    order, with multi-line literals joined; values are *not* evaluated. Lines with more than
    one ``=`` are skipped (papermill logs a warning and so do we).

    Differences: a notebook recording no kernel name or language is treated as Python
    (papermill raises ``ValueError``), cells without ``metadata.tags`` are fine, and a
    non-Python notebook yields ``[]`` (papermill warns or raises depending on the language).

    Args:
        nb: an nbformat notebook (or dict of the same shape).

    Returns:
        The parameters, possibly empty (also when there is no ``parameters`` cell).
    """
    index = find_first_tagged_cell_index(nb, PARAMETERS_TAG)
    if index < 0 or not _uses_python_translator(nb):
        return []
    source = nb["cells"][index].get("source", "")
    if isinstance(source, list):  # unnormalised multi-line source, as stored on disk
        source = "".join(source)
    return _parse_cell(str(source))


def unknown_parameters(nb: Any, names: Iterable[str]) -> list[str]:
    """Names not declared in the notebook's ``parameters`` cell.

    papermill logs ``Passed unknown parameter: <name>`` for each of these before injecting;
    they are still injected.
    """
    declared = {param.name for param in inspect_parameters(nb)}
    return [name for name in names if name not in declared]


def _help_line(param: ParameterInfo) -> str:
    type_repr = "Unknown type" if param.inferred_type_name == "None" else param.inferred_type_name
    definition = f"  {param.name}: {type_repr} (default {param.default})"
    # papermill's layout: help in a column starting at 34 for short definitions (padding is
    # emitted even when there is no help), on the next line for definitions over 30 chars.
    if len(definition) > 30:
        return f"{definition}\n{' ' * 34}{param.help}" if param.help else definition
    return f"{definition:<34}{param.help}"


def format_parameters_help(
    nb_path: str | os.PathLike[str],
    params: Sequence[ParameterInfo] | None,
    *,
    usage: str | None = None,
) -> str:
    """The text ``papermill NB --help-notebook`` prints, after its usage line.

    Every line ends in ``\\n`` (papermill prints each block with ``click.echo``). Without a
    ``usage`` the text starts with the blank line papermill prints after its usage line.

    Args:
        nb_path: the notebook path, shown verbatim (as papermill does for local paths).
        params: :func:`inspect_parameters` output, or ``None`` when the notebook has no cell
            tagged ``parameters`` (papermill prints a different message then).
        usage: an optional first line (papermill prints the click usage of its command).

    Returns:
        The help text.
    """
    blocks: list[str] = [] if usage is None else [usage]
    blocks.append(f"\nParameters inferred for notebook '{os.fspath(nb_path)}':")
    if params is None:
        blocks.append("\n  No cell tagged 'parameters'")
    elif not params:
        blocks.append(
            "\n  Can't infer anything about this notebook's parameters. "
            "It may not have any parameter defined."
        )
    else:
        blocks.extend(_help_line(param) for param in params)
    return "".join(f"{block}\n" for block in blocks)
