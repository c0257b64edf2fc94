"""runtimed.automation.inspect against papermill's inspection (``--help-notebook``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import papermill.cli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from papermill.inspection import _infer_parameters

from runtimed.automation.inspect import (
    ParameterInfo,
    format_parameters_help,
    has_parameters_cell,
    inspect_parameters,
    notebook_language,
    unknown_parameters,
)


def make_nb(sources: list[tuple[str, list[str]]], *, language: str = "python") -> dict[str, Any]:
    cells: list[dict[str, Any]] = []
    for index, (source, tags) in enumerate(sources):
        cells.append(
            {
                "id": f"c{index}",
                "cell_type": "code",
                "metadata": {"tags": tags},
                "execution_count": None,
                "outputs": [],
                "source": source,
            }
        )
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": f"{language}3", "display_name": "X", "language": language},
            "language_info": {"name": language},
        },
        "cells": cells,
    }


def to_node(nb: dict[str, Any]) -> Any:
    import nbformat

    from_dict: Any = nbformat.from_dict
    return from_dict(json.loads(json.dumps(nb)))


PARAMETER_CELLS = {
    "int": "a = 1",
    "float": "x = 2.5  # a float",
    "str": "s = 'hello'\nt = \"a # not a comment\"",
    "list": "items = [1, 2, 3]  # some items",
    "dict": "cfg = {'a': 1, 'b': [2, 3]}",
    "annotated": (
        "n: int = 1\nm: 'float' = 2.0  # quoted\nk: List[str] = ['a']\no: Optional[int] = None"
    ),
    "type-comment": "z = 3  # type: int the help",
    "commented": "# leading comment\n\nalpha = 1  # first\n# between\nbeta = 'b'   #   second   ",
    "multiline": "data = {\n    'a': 1,  # dropped\n    'b': 2,\n}  # help text\nafter = 0",
    "multiline-list": "lst = [\n  1,\n  2]\n",
    "double-equals": "cond = a == b\nok = 1\nurl = 'x?a=b'",
    "not-assignments": "import os\nprint('hi')\nfoo(bar)\nv = 1",
    "empty-value": "blank =\nw = 2",
    "unicode": "naïve = 'é'  # ünïcode help",
    "long": "a_really_long_parameter_name = 'some long default value'  # long help",
    "long-no-help": "a_really_long_parameter_name = 'some long default value'",
    "short-no-help": "q = 1",
    "none-annotation": "p: None = None",
    "only-comments": "# nothing here\n\n",
    "empty": "",
}


@pytest.mark.parametrize("key", list(PARAMETER_CELLS))
def test_inspect_matches_papermill(key: str) -> None:
    nb = to_node(make_nb([("import x", []), (PARAMETER_CELLS[key], ["parameters"])]))
    ours = inspect_parameters(nb)
    theirs = _infer_parameters(nb)
    assert [tuple(p) for p in ours] == [tuple(p) for p in theirs]
    assert all(isinstance(p, ParameterInfo) for p in ours)
    assert [p._asdict() for p in ours] == [p._asdict() for p in theirs]


def test_inspect_examples() -> None:
    nb = make_nb(
        [(PARAMETER_CELLS["annotated"] + "\n" + PARAMETER_CELLS["type-comment"], ["parameters"])]
    )
    assert inspect_parameters(nb) == [
        ParameterInfo("n", "int", "1", ""),
        ParameterInfo("m", "float", "2.0", "quoted"),
        ParameterInfo("k", "List[str]", "['a']", ""),
        ParameterInfo("o", "Optional[int]", "None", ""),
        ParameterInfo("z", "int", "3", "the help"),
    ]


def test_inspect_first_parameters_cell_only_and_no_cell() -> None:
    nb = make_nb([("a = 1", ["parameters"]), ("b = 2", ["parameters"])])
    assert [p.name for p in inspect_parameters(nb)] == ["a"]
    nb = to_node(make_nb([("a = 1", [])]))
    assert inspect_parameters(nb) == _infer_parameters(nb) == []
    assert not has_parameters_cell(nb)


def test_inspect_tolerates_missing_tags_and_metadata_and_list_source() -> None:
    nb = {
        "metadata": {},
        "cells": [
            {"cell_type": "markdown", "source": "x", "metadata": {}},
            {
                "cell_type": "code",
                "source": ["a = 1\n", "b = 2"],
                "metadata": {"tags": ["parameters"]},
            },
        ],
    }
    assert [p.name for p in inspect_parameters(nb)] == ["a", "b"]
    assert has_parameters_cell(nb)
    assert notebook_language(nb) is None


def test_inspect_non_python_is_empty() -> None:
    nb = make_nb([("a <- 1", ["parameters"])], language="R")
    assert inspect_parameters(nb) == []
    assert notebook_language(nb) == "R"


@pytest.mark.parametrize(
    ("kernel_name", "language", "expect_params"),
    [
        ("python3", "python", True),
        ("pysparkkernel", "python", True),
        ("pysparkkernel", "scala", True),  # kernel name wins, as in papermill
        ("bash", "python", False),
        ("my-python", "python", True),
        ("my-kernel", "julia", False),
    ],
)
def test_translator_lookup_order_matches_papermill(
    kernel_name: str, language: str, expect_params: bool
) -> None:
    nb = make_nb([("a = 1", ["parameters"])])
    nb["metadata"]["kernelspec"]["name"] = kernel_name
    nb["metadata"]["language_info"]["name"] = language
    node = to_node(nb)
    ours = inspect_parameters(node)
    assert bool(ours) is expect_params
    if expect_params:
        assert [tuple(p) for p in ours] == [tuple(p) for p in _infer_parameters(node)]
    else:
        # papermill's non-Python translators do not implement inspect: it warns, returns []
        assert _infer_parameters(node) == []


def test_missing_kernel_metadata_defaults_to_python() -> None:
    nb = make_nb([("a = 1", ["parameters"])])
    del nb["metadata"]["kernelspec"]
    assert [p.name for p in inspect_parameters(nb)] == ["a"]
    del nb["metadata"]["language_info"]
    assert [p.name for p in inspect_parameters(nb)] == ["a"]


def test_multiple_equals_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    nb = make_nb([("ok = 1\ncond = a == b", ["parameters"])])
    with caplog.at_level(logging.WARNING, logger="runtimed.automation.inspect"):
        assert [p.name for p in inspect_parameters(nb)] == ["ok"]
    assert "Unable to parse line 2 'cond = a == b'." in caplog.text


def test_unknown_parameters() -> None:
    nb = make_nb([("a = 1\nb = 2", ["parameters"])])
    assert unknown_parameters(nb, ["a", "c", "b", "d"]) == ["c", "d"]


lines = st.one_of(
    st.sampled_from(
        [
            "",
            "   ",
            "# comment",
            "x = 1",
            "y: int = 2",
            "z = 'a # b'  # help",
            "w = [1,",
            "  2]  # trailing",
            "v = {'a': 1,  # dropped",
            "}",
            "u = a == b",
            "t: 'str' = \"q\"",
            "s = 1  # type: float help me",
            "print(x)",
            "r =",
            "  indented = 3",
            "q = 1 # ",
        ]
    ),
    st.text(alphabet=st.sampled_from(list("ab_1 =#:'\"[],\t{}xé")), max_size=30),
)


@settings(max_examples=300)
@given(st.lists(lines, max_size=12))
def test_inspect_property_matches_papermill(source_lines: list[str]) -> None:
    nb = to_node(make_nb([("\n".join(source_lines), ["parameters"])]))
    assert [tuple(p) for p in inspect_parameters(nb)] == [tuple(p) for p in _infer_parameters(nb)]


# ------------------------------------------------------------------------------------------
# format_parameters_help vs `papermill NB --help-notebook`
# ------------------------------------------------------------------------------------------


def papermill_help(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    from click.testing import CliRunner

    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)
    result = CliRunner().invoke(papermill.cli.papermill, [str(path), "--help-notebook"])
    return result.exit_code, result.stdout


HELP_CASES: dict[str, list[tuple[str, list[str]]]] = {
    **{key: [(PARAMETER_CELLS[key], ["parameters"])] for key in PARAMETER_CELLS},
    "all": [("\n".join(PARAMETER_CELLS.values()), ["parameters"])],
    "no-parameters-cell": [("a = 1", [])],
    "no-cells": [],
}


@pytest.mark.parametrize("key", list(HELP_CASES))
def test_help_text_matches_papermill(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = make_nb(HELP_CASES[key])
    path = tmp_path / "notebook.ipynb"
    path.write_text(json.dumps(nb), "utf-8")
    exit_code, expected = papermill_help(path, monkeypatch)

    params = inspect_parameters(nb) if has_parameters_cell(nb) else None
    usage = expected.splitlines()[0]
    assert usage.startswith("Usage: ")
    assert format_parameters_help(path, params, usage=usage) == expected
    assert format_parameters_help(str(path), params) == expected[len(usage) + 1 :]
    assert exit_code == (0 if params is not None else 1)


def test_help_text_shapes() -> None:
    params = [
        ParameterInfo("a", "None", "1", ""),
        ParameterInfo("b", "int", "2", "short help"),
        ParameterInfo("long_name_for_a_parameter", "str", "'value'", "explained"),
    ]
    assert format_parameters_help("nb.ipynb", params) == (
        "\nParameters inferred for notebook 'nb.ipynb':\n"
        + "  a: Unknown type (default 1)".ljust(34)
        + "\n"
        + "  b: int (default 2)".ljust(34)
        + "short help\n"
        + "  long_name_for_a_parameter: str (default 'value')\n"
        + " " * 34
        + "explained\n"
    )
    assert format_parameters_help("nb.ipynb", None).endswith("\n  No cell tagged 'parameters'\n")
    assert "Can't infer anything" in format_parameters_help("nb.ipynb", [])
