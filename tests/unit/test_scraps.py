"""runtimed.glue: publishing scraps kernel-side and reading them back from notebooks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

import runtimed.glue as glue_mod
from runtimed.glue import MIME, Scrap, encode_scrap, glue, iter_scraps, read_scraps, scraps_table

REPO = Path(__file__).resolve().parents[2]

# nbformat's helpers are unannotated; bind them with explicit types for mypy --strict.
new_output: Callable[..., Any] = nbformat.v4.new_output
new_notebook: Callable[..., Any] = nbformat.v4.new_notebook
new_code_cell: Callable[..., Any] = nbformat.v4.new_code_cell
new_markdown_cell: Callable[..., Any] = nbformat.v4.new_markdown_cell
nb_write: Callable[..., Any] = nbformat.write
nb_read: Callable[..., Any] = nbformat.read


def scrap_output(name: str, data: object, encoder: str = "json", **extra: Any) -> Any:
    return new_output(
        "display_data",
        data={MIME: {"name": name, "data": data, "encoder": encoder}, **extra},
        metadata={"runtimed": {"scrap": name, "data": True, "display": False}},
    )


def notebook(*outputs_per_cell: list[Any]) -> Any:
    nb = new_notebook()
    nb.cells.append(new_markdown_cell("# scraps"))
    for outputs in outputs_per_cell:
        cell = new_code_cell("glue(...)")
        cell.outputs = outputs
        nb.cells.append(cell)
    return nb


class FakeDisplay:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


@pytest.fixture
def fake_display(monkeypatch: pytest.MonkeyPatch) -> FakeDisplay:
    fake = FakeDisplay()
    monkeypatch.setattr(glue_mod, "_display_function", lambda: fake)
    return fake


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------


def test_read_scraps_last_value_wins_and_ignores_other_outputs() -> None:
    nb = notebook(
        [
            scrap_output("a", 1),
            new_output("stream", name="stdout", text="hello\n"),
            scrap_output("b", {"x": [1, 2]}),
        ],
        [],
        [
            new_output("execute_result", data={"text/plain": "42"}, execution_count=1),
            new_output("error", ename="E", evalue="v", traceback=[]),
            scrap_output("a", "second", **{"text/plain": "ignored"}),
        ],
    )
    nbformat.validate(nb)
    assert read_scraps(nb) == {"a": "second", "b": {"x": [1, 2]}}
    assert list(read_scraps(nb)) == ["a", "b"]
    assert list(iter_scraps(nb)) == [
        Scrap("a", 1, "json"),
        Scrap("b", {"x": [1, 2]}, "json"),
        Scrap("a", "second", "json"),
    ]


def test_read_scraps_survives_a_save_round_trip(tmp_path: Path) -> None:
    nb = notebook([scrap_output("n", None), scrap_output("f", 1.5)])
    path = tmp_path / "nb.ipynb"
    nb_write(nb, str(path))
    assert read_scraps(nb_read(str(path), as_version=4)) == {"n": None, "f": 1.5}


def test_read_scraps_plain_dicts_string_payloads_and_malformed() -> None:
    nb: dict[str, Any] = {
        "cells": [
            {"cell_type": "markdown", "source": "x"},
            {
                "cell_type": "code",
                "outputs": [
                    {"output_type": "display_data", "data": {MIME: '{"name": "s", "data": [1]}'}},
                    {"output_type": "display_data", "data": {MIME: "not json"}},
                    {"output_type": "display_data", "data": {MIME: {"data": 1}}},  # no name
                    {"output_type": "display_data", "data": {MIME: {"name": "n"}}},  # no data
                    {"output_type": "display_data", "data": {MIME: [1, 2]}},
                    {"output_type": "display_data", "data": {MIME: {"name": 3, "data": 1}}},
                    {"output_type": "stream", "data": {MIME: {"name": "x", "data": 1}}},
                    {"output_type": "execute_result", "data": {MIME: {"name": "e", "data": 0}}},
                ],
            },
            {"cell_type": "code"},  # no outputs key at all
        ]
    }
    assert read_scraps(nb) == {"s": [1], "e": 0}
    assert read_scraps({}) == {}


def test_scraps_table_across_notebooks() -> None:
    nbs = {
        "a.ipynb": notebook([scrap_output("x", 1), scrap_output("y", "b"), scrap_output("x", 2)]),
        "b.ipynb": notebook([]),
        "c.ipynb": notebook([scrap_output("x", [3])]),
    }
    assert scraps_table(nbs) == [
        {"notebook": "a.ipynb", "name": "x", "value": 2},
        {"notebook": "a.ipynb", "name": "y", "value": "b"},
        {"notebook": "c.ipynb", "name": "x", "value": [3]},
    ]
    assert scraps_table({}) == []


def test_reading_needs_neither_ipython_nor_pandas() -> None:
    code = (
        "import sys; sys.modules['IPython'] = None; sys.modules['pandas'] = None\n"
        "import runtimed.glue as g\n"
        "nb = {'cells': [{'outputs': [{'output_type': 'display_data',"
        " 'data': {g.MIME: {'name': 'a', 'data': 1, 'encoder': 'json'}}}]}]}\n"
        "assert g.read_scraps(nb) == {'a': 1}\n"
        "assert g.scraps_table({'p': nb}) == [{'notebook': 'p', 'name': 'a', 'value': 1}]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


def test_import_is_light() -> None:
    code = (
        "import sys, runtimed.glue\n"
        "heavy = {'IPython', 'pandas'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


# ------------------------------------------------------------------------------------------
# glue()
# ------------------------------------------------------------------------------------------


def test_glue_publishes_raw_scrap_bundle(fake_display: FakeDisplay) -> None:
    glue("answer", {"value": 42, "items": (1, 2)})
    assert fake_display.calls == [
        (
            (
                {
                    MIME: {
                        "name": "answer",
                        "data": {"value": 42, "items": [1, 2]},
                        "encoder": "json",
                    }
                },
            ),
            {
                "raw": True,
                "metadata": {"runtimed": {"scrap": "answer", "data": True, "display": False}},
            },
        )
    ]


def test_glue_display_true_also_shows_value(fake_display: FakeDisplay) -> None:
    glue("shown", [1, 2], display=True)
    assert len(fake_display.calls) == 2
    args, kwargs = fake_display.calls[1]
    assert args == ([1, 2],)
    assert kwargs == {"metadata": {"runtimed": {"scrap": "shown", "data": False, "display": True}}}


def test_glue_output_reads_back(fake_display: FakeDisplay) -> None:
    values: dict[str, object] = {
        "none": None,
        "text": 'quote " and\nnewline é',
        "num": 1.25,
        "nested": {"a": [1, {"b": True}]},
    }
    for name, value in values.items():
        glue(name, value)
    outputs = [
        new_output("display_data", data=args[0], metadata=kwargs["metadata"])
        for args, kwargs in fake_display.calls
    ]
    nb = notebook(outputs)
    nbformat.validate(nb)
    assert read_scraps(nb) == values


def test_glue_uses_ipython_display_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("IPython")
    import IPython.display

    fake = FakeDisplay()
    monkeypatch.setattr(IPython.display, "display", fake)
    glue("x", 1)
    assert fake.calls[0][0] == ({MIME: {"name": "x", "data": 1, "encoder": "json"}},)


class Unserializable:
    pass


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        Unserializable(),
        b"bytes",
        float("nan"),
        float("inf"),
        {"nested": [math.inf]},
        {("tuple", "key"): 1},
    ],
    ids=["set", "object", "bytes", "nan", "inf", "nested-inf", "tuple-key"],
)
def test_glue_rejects_non_json_values(fake_display: FakeDisplay, value: object) -> None:
    with pytest.raises(TypeError, match=r"scrap 'bad': value is not JSON-serializable"):
        glue("bad", value)
    assert fake_display.calls == []


def test_glue_rejects_circular_values(fake_display: FakeDisplay) -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="scrap 'loop'"):
        glue("loop", loop)


def test_glue_rejects_bad_names(fake_display: FakeDisplay) -> None:
    with pytest.raises(TypeError, match="scrap name must be a str"):
        glue(1, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        glue("", 2)
    assert fake_display.calls == []


# ------------------------------------------------------------------------------------------
# pandas (a stand-in module: pandas is not a dependency)
# ------------------------------------------------------------------------------------------


class FakeFrame:
    def __init__(self, data: Any = None, index: Any = None, columns: Any = None) -> None:
        self.data, self.index, self.columns = data, index, columns

    def to_dict(self, orient: str) -> dict[str, Any]:
        assert orient == "split"
        return {"index": self.index, "columns": self.columns, "data": self.data}


@pytest.fixture
def fake_pandas(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("pandas")
    module.DataFrame = FakeFrame  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pandas", module)
    return module


def test_glue_dataframe_uses_pandas_encoder(
    fake_display: FakeDisplay, fake_pandas: types.ModuleType
) -> None:
    frame = FakeFrame(data=[[1, float("nan")], [2, 3.5]], index=[0, 1], columns=["a", "b"])
    glue("df", frame)
    bundle = fake_display.calls[0][0][0]
    assert bundle == {
        MIME: {
            "name": "df",
            "data": {"index": [0, 1], "columns": ["a", "b"], "data": [[1, None], [2, 3.5]]},
            "encoder": "pandas",
        }
    }
    nb = notebook([new_output("display_data", data=bundle)])
    assert read_scraps(nb) == {"df": bundle[MIME]["data"]}
    decoded = read_scraps(nb, decode=True)["df"]
    assert isinstance(decoded, FakeFrame)
    assert decoded.columns == ["a", "b"]
    assert decoded.data == [[1, None], [2, 3.5]]


def test_dataframe_cells_are_converted(fake_pandas: types.ModuleType) -> None:
    class NumpyLike:
        def item(self) -> int:
            return 7

    class TimestampLike:
        def isoformat(self) -> str:
            return "2024-01-01T00:00:00"

    frame = FakeFrame(data=[[NumpyLike(), TimestampLike()]], index=[0], columns=["n", "t"])
    assert encode_scrap("df", frame)["data"] == {
        "index": [0],
        "columns": ["n", "t"],
        "data": [[7, "2024-01-01T00:00:00"]],
    }
    frame = FakeFrame(data=[[Unserializable()]], index=[0], columns=["o"])
    with pytest.raises(TypeError, match="scrap 'df'"):
        encode_scrap("df", frame)


def test_decode_without_pandas_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    nb = notebook([scrap_output("df", {"index": [], "columns": [], "data": []}, "pandas")])
    assert read_scraps(nb) == {"df": {"index": [], "columns": [], "data": []}}
    with pytest.raises(ImportError):
        read_scraps(nb, decode=True)


def test_real_pandas_round_trip(fake_display: FakeDisplay) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", None]}, index=["r1", "r2"])
    glue("df", frame)
    nb = notebook([new_output("display_data", data=fake_display.calls[0][0][0])])
    decoded: Any = read_scraps(nb, decode=True)["df"]
    assert decoded.equals(frame)
