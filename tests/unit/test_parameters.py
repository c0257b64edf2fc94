"""runtimed.automation.parameters against papermill 2.x behaviour."""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import papermill.cli
import papermill.parameterize
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from papermill.iorw import load_notebook_node
from papermill.translators import PythonTranslator

from runtimed.automation.parameters import (
    INJECTED_PARAMETERS_TAG,
    ParameterError,
    collect_parameters,
    parameterize_notebook,
    parse_cli_value,
    render_python,
)

CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@pytest.fixture(autouse=True, scope="module")
def _no_black() -> Iterator[None]:
    # papermill black-formats the injected code only when black is importable; compare
    # against the unformatted output whatever the environment has installed.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "black", None)
        yield


def pm_codify(parameters: dict[str, Any], comment: str = "Parameters") -> str:
    return str(PythonTranslator.codify(parameters, comment))


# ------------------------------------------------------------------------------------------
# parse_cli_value
# ------------------------------------------------------------------------------------------

CLI_VALUES = [
    "True",
    "False",
    "None",
    "true",
    "false",
    "none",
    "TRUE",
    "0",
    "1",
    "-1",
    "+3",
    " 7 ",
    "1_000",
    "007",
    "0x10",
    "1.5",
    "-0.0",
    ".5",
    "1e3",
    "1E-3",
    "nan",
    "NaN",
    "inf",
    "-Infinity",
    "abc",
    "",
    " ",
    "1.0.0",
    "١٢",  # Arabic-Indic digits: int() accepts them
    "1" * 5000,  # beyond int()'s digit limit -> papermill falls through to float
    "hello world",
    "[1, 2]",
    "{'a': 1}",
]


@pytest.mark.parametrize("raw", CLI_VALUES)
def test_parse_cli_value_matches_papermill(raw: str) -> None:
    ours = parse_cli_value(raw)
    theirs = papermill.cli._resolve_type(raw)
    assert type(ours) is type(theirs)
    if isinstance(ours, float) and math.isnan(ours):
        assert isinstance(theirs, float)
        assert math.isnan(theirs)
    else:
        assert ours == theirs


@given(st.text())
def test_parse_cli_value_property(raw: str) -> None:
    ours = parse_cli_value(raw)
    theirs = papermill.cli._resolve_type(raw)
    assert type(ours) is type(theirs)
    assert ours == theirs or (isinstance(ours, float) and math.isnan(ours))


# ------------------------------------------------------------------------------------------
# collect_parameters
# ------------------------------------------------------------------------------------------


def papermill_cli_parameters(args: list[str], tmp_path: Path, monkeypatch: Any) -> dict[str, Any]:
    """Run papermill's real CLI up to ``execute_notebook`` and capture its parameters."""
    from click.testing import CliRunner

    captured: dict[str, Any] = {}

    def fake_execute(**kwargs: Any) -> None:
        captured.update(kwargs)

    monkeypatch.setattr(papermill.cli, "execute_notebook", fake_execute)
    # The CLI calls logging.basicConfig, which would leave a handler on the root logger.
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)
    result = CliRunner().invoke(
        papermill.cli.papermill, ["in.ipynb", str(tmp_path / "out.ipynb"), *args]
    )
    assert result.exit_code == 0, result.output
    parameters: dict[str, Any] = captured["parameters"]
    return parameters


def test_collect_parameters_precedence_matches_papermill_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_file = tmp_path / "params.yaml"
    yaml_file.write_text("f: file\nall: file\nfy: file\nfp: file\nd: 2024-01-01\n", "utf-8")
    b64 = base64.b64encode(b"b: b64\nall: b64\nfy: b64\nbr: b64\nx: [1, 2]\n").decode()
    yaml_text = "y: yaml\nall: yaml\nfy: yaml\nyp: yaml\nn: null\n"
    params = [("p", "1.5"), ("all", "True"), ("yp", "None"), ("fp", "3"), ("pr", "x")]
    raw = [("r", "1"), ("all", "raw"), ("br", "2"), ("pr", "None")]

    ours = collect_parameters(
        params=params, raw=raw, yaml_text=yaml_text, yaml_file=yaml_file, b64_yaml=b64
    )
    args = ["-b", b64, "-f", str(yaml_file), "-y", yaml_text]
    for name, value in params:
        args += ["-p", name, value]
    for name, value in raw:
        args += ["-r", name, value]
    theirs = papermill_cli_parameters(args, tmp_path, monkeypatch)

    assert list(ours.items()) == list(theirs.items())  # same values *and* key order
    assert ours["all"] == "raw"
    assert ours["d"] == "2024-01-01"  # NoDatesSafeLoader: dates stay strings
    assert ours["fy"] == "yaml"
    assert ours["yp"] is None
    assert ours["br"] == "2"


def test_collect_parameters_repeated_sources_apply_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.json"
    first.write_text("a: 1\nb: 1\n", "utf-8")
    second.write_text('{"b": 2, "c": 2}', "utf-8")
    ours = collect_parameters(
        yaml_file=[first, second],
        yaml_text=["a: x", "a: y"],
        params=[("n", "1"), ("n", "2")],
    )
    args = ["-f", str(first), "-f", str(second), "-y", "a: x", "-y", "a: y"]
    args += ["-p", "n", "1", "-p", "n", "2"]
    theirs = papermill_cli_parameters(args, tmp_path, monkeypatch)
    assert list(ours.items()) == list(theirs.items())
    assert ours == {"a": "y", "b": 2, "c": 2, "n": 2}


def test_collect_parameters_empty_sources() -> None:
    assert collect_parameters() == {}
    assert collect_parameters(yaml_text="", b64_yaml=base64.b64encode(b"~").decode()) == {}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"yaml_text": "a: [1, 2"}, "YAML parameters: could not parse YAML"),
        ({"yaml_text": "- 1\n- 2"}, "must be a mapping"),
        ({"yaml_text": "5"}, "must be a mapping"),
        ({"yaml_text": "1: x"}, "parameter 1: parameter names must be strings"),
        ({"b64_yaml": "!!!notbase64"}, "base64 YAML parameters: invalid base64"),
        ({"b64_yaml": base64.b64encode(b"{a: ").decode()}, "could not parse YAML"),
    ],
)
def test_collect_parameters_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ParameterError, match=re.escape(fragment)) as info:
        collect_parameters(**kwargs)
    assert isinstance(info.value, ValueError)


def test_collect_parameters_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="could not read file"):
        collect_parameters(yaml_file=tmp_path / "nope.yaml")


def test_raw_values_are_not_typed() -> None:
    assert collect_parameters(raw=[("a", "1"), ("b", "True"), ("c", "None")]) == {
        "a": "1",
        "b": "True",
        "c": "None",
    }


# ------------------------------------------------------------------------------------------
# render_python
# ------------------------------------------------------------------------------------------

VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -12,
    10**40,
    1.5,
    -0.0,
    1e100,
    1e-7,
    123456789.123456789,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "plain",
    'double " quote',
    "single ' quote",
    "back\\slash",
    'mixed \\" escape',
    "new\nline\r\ttab\x00\x07\x7f",
    "caf\u00e9 \u2603 \U0001f600 \u200b",
    "\ud800",  # lone surrogate
    [],
    [1, "a", None, [2.5, [True]]],
    {},
    {"a": 1, 'k"q': "v'q", "nested": {"x": [1, {"y": None}]}},
    {1: "int key", None: "none key", 2.5: "float key", False: "bool key"},
    (1, 2),
    {1, 2},
    b"bytes",
    Path("some/path"),
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:40] for v in VALUES])
def test_render_python_matches_codify_per_value(value: object) -> None:
    parameters = {"value": value}
    assert render_python(parameters) == pm_codify(parameters)


def test_render_python_all_values_at_once_and_comment() -> None:
    parameters = {f"v{i}": value for i, value in enumerate(VALUES)}
    assert render_python(parameters) == pm_codify(parameters)
    assert render_python(parameters, comment="Injected") == pm_codify(parameters, "Injected")
    assert render_python(parameters, comment="# Injected") == pm_codify(parameters, "Injected")
    assert render_python({}, comment="") == pm_codify({}, "") == "#\n"
    assert render_python({}) == "# Parameters\n"


def test_render_python_rejects_bad_names_and_comments() -> None:
    with pytest.raises(ParameterError, match="parameter 'my-param': not a valid Python identifier"):
        render_python({"my-param": 1})
    with pytest.raises(ParameterError, match="not a valid Python identifier"):
        render_python({"class": 1})
    with pytest.raises(ParameterError, match="names must be strings"):
        render_python({1: 1})  # type: ignore[dict-item]
    with pytest.raises(ParameterError, match="single line"):
        render_python({}, comment="a\nb")
    # soft keywords are fine as variable names
    assert render_python({"match": 1, "type": 2, "_": 3}).endswith("match = 1\ntype = 2\n_ = 3\n")


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: n not in {"None", "True", "False"} and n.isidentifier() and not _is_keyword(n)
)


def _is_keyword(name: str) -> bool:
    import keyword

    return keyword.iskeyword(name)


quoted_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("\"'\\\n\r\t #{}=é☃😀\x00\x1b\u2028")),
        st.characters(),
    )
)
json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | quoted_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(quoted_text, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.dictionaries(names, json_like, max_size=5))
def test_render_python_property_matches_codify(parameters: dict[str, object]) -> None:
    assert render_python(parameters) == pm_codify(parameters)


finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=True)
    | quoted_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(quoted_text, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(st.dictionaries(names, finite_json, max_size=5))
def test_render_python_round_trips_through_exec(parameters: dict[str, object]) -> None:
    namespace: dict[str, object] = {}
    exec(render_python(parameters), namespace)
    namespace.pop("__builtins__")
    assert namespace == parameters


# ------------------------------------------------------------------------------------------
# parameterize_notebook
# ------------------------------------------------------------------------------------------


def make_nb(cells: list[tuple[str, str, list[str]]], *, minor: int = 5) -> dict[str, Any]:
    """(cell_type, source, tags) triples -> notebook dict."""
    out_cells = []
    for index, (cell_type, source, tags) in enumerate(cells):
        cell: dict[str, Any] = {"cell_type": cell_type, "metadata": {}, "source": source}
        if tags:
            cell["metadata"]["tags"] = tags
        if minor >= 5:
            cell["id"] = f"c{index}"
        if cell_type == "code":
            cell.update(execution_count=None, outputs=[])
        out_cells.append(cell)
    return {
        "nbformat": 4,
        "nbformat_minor": minor,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": out_cells,
    }


WITH_PARAMS = make_nb(
    [
        ("markdown", "# Title", []),
        ("code", "import os", []),
        ("code", "a = 1\nb = 'x'", ["parameters", "other"]),
        ("code", "print(a)", []),
    ]
)
NO_PARAMS = make_nb([("markdown", "hi", []), ("code", "x = 1", [])])
ALREADY_INJECTED = make_nb(
    [
        ("code", "a = 1", ["parameters"]),
        ("code", "print(a)", []),
        ("code", "# Parameters\na = 5\n", ["injected-parameters"]),  # not next to params
        ("code", "print(a * 2)", []),
    ]
)
INJECTED_ONLY = make_nb([("code", "x", []), ("code", "# Parameters\n", ["injected-parameters"])])
PARAMS_LAST = make_nb([("code", "x", []), ("code", "a = 1", ["parameters"])])
EMPTY = make_nb([])
ALL_TYPES: dict[str, object] = {
    "s": 'he said "hi"\n\u00e9',
    "i": 3,
    "f": 2.5,
    "nan": float("nan"),
    "inf": float("inf"),
    "b": True,
    "n": None,
    "l": [1, "two", [3.0]],
    "d": {"k": {"nested": [None, False]}, "": "x"},
}


def papermill_load(nb: dict[str, Any], tmp_path: Path) -> Any:
    # papermill only ever parameterizes notebooks coming from its loader, which adds
    # metadata.papermill and per-cell tags/papermill dicts; do the same for both sides.
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb), "utf-8")
    return load_notebook_node(str(path))


def comparable(nb: Any, *, ours: bool) -> str:
    """Canonical JSON minus what legitimately differs: injected cell ids, our own metadata.

    Compared as text because NaN parameters never compare equal as objects.
    """
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if INJECTED_PARAMETERS_TAG in cell["metadata"].get("tags", []):
            assert CELL_ID.match(cell.pop("id"))
    if ours:
        runtimed = nb["metadata"].pop("runtimed")
        assert json.dumps(runtimed["parameters"]) == json.dumps(
            nb["metadata"]["papermill"]["parameters"]
        )
    return json.dumps(nb, sort_keys=True)


NOTEBOOKS = {
    "after-parameters-cell": WITH_PARAMS,
    "top": NO_PARAMS,
    "replace-existing": ALREADY_INJECTED,
    "replace-without-params-cell": INJECTED_ONLY,
    "parameters-cell-last": PARAMS_LAST,
    "empty": EMPTY,
}


@pytest.mark.parametrize("report_mode", [False, True])
@pytest.mark.parametrize("parameters", [ALL_TYPES, {"a": 2}, {}], ids=["all", "one", "none"])
@pytest.mark.parametrize("nb_name", list(NOTEBOOKS))
def test_parameterize_matches_papermill(
    nb_name: str, parameters: dict[str, object], report_mode: bool, tmp_path: Path
) -> None:
    loaded = papermill_load(NOTEBOOKS[nb_name], tmp_path)
    before = copy.deepcopy(loaded)
    ours = parameterize_notebook(loaded, parameters, report_mode=report_mode)
    assert loaded == before, "input must not be mutated"

    theirs = papermill.parameterize.parameterize_notebook(
        copy.deepcopy(loaded), copy.deepcopy(parameters), report_mode=report_mode
    )
    assert comparable(ours, ours=True) == comparable(theirs, ours=False)
    nbformat.validate(ours)


@pytest.mark.parametrize("nb_name", list(NOTEBOOKS))
def test_reparameterize_replaces_like_papermill(nb_name: str, tmp_path: Path) -> None:
    loaded = papermill_load(NOTEBOOKS[nb_name], tmp_path)
    ours = parameterize_notebook(parameterize_notebook(loaded, {"a": 1}), {"a": 2, "z": "q"})
    theirs = papermill.parameterize.parameterize_notebook(
        papermill.parameterize.parameterize_notebook(copy.deepcopy(loaded), {"a": 1}),
        {"a": 2, "z": "q"},
    )
    assert comparable(ours, ours=True) == comparable(theirs, ours=False)
    injected = [c for c in ours.cells if INJECTED_PARAMETERS_TAG in c.metadata.get("tags", [])]
    assert len(injected) == 1
    assert injected[0].source == '# Parameters\na = 2\nz = "q"\n'


def test_placement_and_cell_shape() -> None:
    out = parameterize_notebook(WITH_PARAMS, {"a": 2})
    assert [c.source for c in out.cells] == [
        "# Title",
        "import os",
        "a = 1\nb = 'x'",
        "# Parameters\na = 2\n",
        "print(a)",
    ]
    cell = out.cells[3]
    assert cell == {
        "id": "injected-parameters",
        "cell_type": "code",
        "metadata": {"tags": ["injected-parameters"]},
        "execution_count": None,
        "source": "# Parameters\na = 2\n",
        "outputs": [],
    }
    top = parameterize_notebook(NO_PARAMS, {"a": 2})
    assert top.cells[0].metadata.tags == ["injected-parameters"]
    hidden = parameterize_notebook(NO_PARAMS, {"a": 2}, report_mode=True)
    assert hidden.cells[0].metadata == {
        "tags": ["injected-parameters"],
        "jupyter": {"source_hidden": True},
    }


def test_metadata_recorded_without_papermill_loader() -> None:
    out = parameterize_notebook(WITH_PARAMS, {"a": 2, "l": [1]})
    assert out.metadata.papermill == {
        "default_parameters": {},
        "parameters": {"a": 2, "l": [1]},
        "environment_variables": {},
    }
    assert out.metadata.runtimed == {"parameters": {"a": 2, "l": [1]}}
    # existing keys are kept, parameters replaced
    nb = copy.deepcopy(WITH_PARAMS)
    nb["metadata"]["papermill"] = {"version": "2.7.0", "parameters": {"old": 1}}
    nb["metadata"]["runtimed"] = {"other": True}
    out = parameterize_notebook(nb, {"a": 3})
    assert out.metadata.papermill == {"version": "2.7.0", "parameters": {"a": 3}}
    assert out.metadata.runtimed == {"other": True, "parameters": {"a": 3}}


def test_recorded_parameters_are_copies() -> None:
    params: dict[str, object] = {"l": [1]}
    out = parameterize_notebook(WITH_PARAMS, params)
    params["l"].append(2)  # type: ignore[attr-defined]
    assert out.metadata.papermill.parameters == {"l": [1]}
    out.metadata.runtimed.parameters["l"].append(3)
    assert out.metadata.papermill.parameters == {"l": [1]}


def test_cell_ids_stable_unique_and_deterministic() -> None:
    first = parameterize_notebook(WITH_PARAMS, {"a": 2})
    assert first == parameterize_notebook(WITH_PARAMS, {"a": 2})  # pure
    again = parameterize_notebook(first, {"a": 3})
    assert again.cells[3].id == first.cells[3].id == "injected-parameters"

    clash = copy.deepcopy(WITH_PARAMS)
    clash["cells"][0]["id"] = "injected-parameters"
    out = parameterize_notebook(clash, {"a": 1})
    ids = [c.id for c in out.cells]
    assert len(set(ids)) == len(ids)
    assert all(CELL_ID.match(i) for i in ids)
    nbformat.validate(out)

    # an existing injected cell with an invalid id gets a fresh valid one
    bad = copy.deepcopy(ALREADY_INJECTED)
    bad["cells"][2]["id"] = "not a valid id!"
    out = parameterize_notebook(bad, {"a": 1})
    assert out.cells[2].id == "injected-parameters"


def test_old_minor_version_is_upgraded_deterministically() -> None:
    old = make_nb([("code", "a = 1", ["parameters"]), ("code", "a", [])], minor=4)
    out = parameterize_notebook(old, {"a": 2})
    assert out.nbformat_minor == 5
    assert out.metadata.orig_nbformat_minor == 4
    assert [c.id for c in out.cells] == ["cell-0", "injected-parameters", "cell-1"]
    assert out == parameterize_notebook(old, {"a": 2})
    nbformat.validate(out)
    assert "id" not in old["cells"][0]


def test_parameterize_errors() -> None:
    with pytest.raises(ParameterError, match="only Python"):
        parameterize_notebook(WITH_PARAMS, {"a": 1}, kernel_language="R")
    with pytest.raises(ParameterError, match="parameter 'a b'"):
        parameterize_notebook(WITH_PARAMS, {"a b": 1})
    assert parameterize_notebook(WITH_PARAMS, {"a": 1}, kernel_language="pysparkkernel")


def test_custom_comment() -> None:
    out = parameterize_notebook(NO_PARAMS, {"a": 1}, comment="# From runt")
    assert out.cells[0].source == "# From runt\na = 1\n"
