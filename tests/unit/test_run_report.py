"""Papermill-format bookkeeping of ``runt run`` (pure parts), checked against papermill."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import nbformat
import papermill.execute
import papermill.parameterize
import pytest

from runtimed.automation.parameters import ParameterError
from runtimed.automation.report import (
    ERROR_MARKER_TAG,
    CellTimeline,
    RunResult,
    error_marker_cells,
    error_output,
    format_path,
    is_clean_exit,
    materialize,
    prepare_notebook,
    start_notebook,
)


def notebook(*cells: Any, metadata: dict[str, Any] | None = None) -> Any:
    nb = nbformat.v4.new_notebook()
    nb.metadata = (
        metadata
        if metadata is not None
        else {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    nb.cells = list(cells)
    return nb


def params_cell(source: str) -> Any:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    return cell


def test_error_marker_cells_are_papermills() -> None:
    top, anchor = error_marker_cells(7)
    assert top["source"] == papermill.execute.ERROR_MESSAGE_TEMPLATE % "7"
    assert anchor["source"] == papermill.execute.ERROR_ANCHOR_MSG
    assert top["metadata"] == anchor["metadata"] == {"tags": [papermill.execute.ERROR_MARKER_TAG]}
    assert ERROR_MARKER_TAG == papermill.execute.ERROR_MARKER_TAG


def test_prepare_notebook_matches_papermill_steps(tmp_path: Path) -> None:
    marker = nbformat.v4.new_markdown_cell("old error")
    marker.metadata["tags"] = [ERROR_MARKER_TAG]
    source = notebook(
        marker,
        nbformat.v4.new_markdown_cell("# t"),
        params_cell("a = 1"),
        nbformat.v4.new_code_cell("print(a)"),
    )
    path = tmp_path / "in.ipynb"
    nbformat.write(source, path)
    ours, unknown = prepare_notebook(
        source, parameters={"a": 2, "b": "x"}, input_path="in", output_path="out", report_mode=True
    )
    # papermill's own steps, as in papermill.execute.execute_notebook
    theirs = papermill.iorw.load_notebook_node(str(path))
    theirs = papermill.parameterize.parameterize_notebook(
        theirs, {"a": 2, "b": "x"}, report_mode=True
    )
    theirs = papermill.execute.prepare_notebook_metadata(theirs, "in", "out", report_mode=True)
    theirs = papermill.execute.remove_error_markers(theirs)
    for nb in (ours, theirs):
        nb.metadata.pop("runtimed", None)
        nb.metadata.papermill.pop("version", None)
        for cell in nb.cells:
            cell.pop("id")
    assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs))
    assert unknown == ["b"]


def test_prepare_without_parameters_injects_nothing() -> None:
    source = notebook(params_cell("a = 1"))
    ours, unknown = prepare_notebook(source, parameters={}, input_path="i", output_path="o")
    assert len(ours.cells) == 1
    assert unknown == []
    assert ours.metadata.papermill == {
        "default_parameters": {},
        "parameters": {},
        "environment_variables": {},
        "input_path": "i",
        "output_path": "o",
    }
    assert source.cells[0].metadata == {"tags": ["parameters"]}  # input untouched


def test_prepare_refuses_non_python() -> None:
    source = notebook(
        params_cell("a <- 1"), metadata={"kernelspec": {"name": "ir", "language": "R"}}
    )
    with pytest.raises(ParameterError, match="only Python"):
        prepare_notebook(source, parameters={"a": 1}, input_path="i", output_path="o")


def test_start_notebook_resets_like_papermill_notebook_start() -> None:
    cell = nbformat.v4.new_code_cell(
        "1", execution_count=3, outputs=[nbformat.v4.new_output("stream", text="x")]
    )
    prepared, _ = prepare_notebook(
        notebook(cell, nbformat.v4.new_markdown_cell("m")),
        parameters={},
        input_path="i",
        output_path="o",
    )
    before = copy.deepcopy(prepared)
    started = start_notebook(prepared, start_time="T", kernel_name="other", cwd="/w")
    assert prepared == before
    assert started.cells[0].outputs == []
    assert started.cells[0].execution_count is None
    pending = {
        "exception": None,
        "start_time": None,
        "end_time": None,
        "duration": None,
        "status": "pending",
    }
    assert [c.metadata.papermill for c in started.cells] == [pending, pending]
    assert started.metadata.papermill["start_time"] == "T"
    assert started.metadata.papermill["exception"] is None
    assert started.metadata.kernelspec == {"name": "other", "display_name": "other"}
    assert started.metadata.runtimed == {"cwd": "/w"}
    nbformat.validate(started)


def test_cell_timeline_marks_passed_over_running_and_finished_cells() -> None:
    timeline = CellTimeline(5)
    edits = timeline.started(2, "t1", 10.0)
    assert [(i, r["status"]) for i, r in edits] == [
        (0, "completed"),
        (1, "completed"),
        (2, "running"),
    ]
    assert edits[0][1] == {
        "exception": False,
        "start_time": "t1",
        "end_time": "t1",
        "duration": 0.0,
        "status": "completed",
    }
    [(index, record)] = timeline.finished(2, "t2", 10.5, failed=True)
    assert index == 2
    assert record == {
        "exception": True,
        "start_time": "t1",
        "end_time": "t2",
        "duration": 0.5,
        "status": "failed",
    }
    # A cell seen only once finished still gets a start record first.
    edits = timeline.finished(3, "t3", 11.0, failed=False)
    assert [(i, r["status"]) for i, r in edits] == [(3, "running"), (3, "completed")]
    assert [i for i, _ in timeline.passed_over(5, "t4")] == [4]
    assert timeline.reached == 5


@pytest.mark.parametrize("path", ["out/{name}-{alpha}.ipynb", "plain.ipynb", "{pm[run_uuid]}x"])
def test_format_path_matches_papermill(path: str) -> None:
    parameters = {"name": "a", "alpha": 0.5}
    ours = format_path(path, parameters)
    if "pm[" in path:
        assert len(ours) == 37
        return
    assert ours == papermill.parameterize.parameterize_path(path, parameters)


def test_format_path_errors_name_the_parameter() -> None:
    with pytest.raises(ParameterError, match="'nope'"):
        format_path("out-{nope}.ipynb", {})
    with pytest.raises(ParameterError, match="not a valid template"):
        format_path("out-{.ipynb", {})


def test_clean_exit_and_error_output() -> None:
    assert is_clean_exit("SystemExit", "")
    assert is_clean_exit("SystemExit", "0")
    assert not is_clean_exit("SystemExit", "1")
    assert not is_clean_exit("ValueError", "")
    outputs = [
        {"output_type": "error", "ename": "KeyboardInterrupt"},
        {"output_type": "stream", "text": "x"},
        {"output_type": "error", "ename": "ExecutionTimeout"},
    ]
    assert error_output(outputs, "KeyboardInterrupt") is outputs[0]
    assert error_output(outputs, "Other") is outputs[2]
    assert error_output(outputs[1:2], None) is None


def test_materialize_writes_the_prepared_output(tmp_path: Path) -> None:
    src = tmp_path / "in.ipynb"
    nbformat.write(notebook(params_cell("a = 1")), src)
    prepared = materialize(
        src,
        tmp_path / "deep" / "out-{a}.ipynb",
        {"a": 3},
        kernel_name=None,
        report_mode=False,
        prepare_only=False,
        cwd=tmp_path,
    )
    assert prepared.output == tmp_path / "deep" / "out-3.ipynb"
    written = nbformat.read(prepared.output, as_version=4)
    assert written.cells[1].source == "# Parameters\na = 3\n"
    # The kernel's folder travels with OpenNotebook; nothing machine-specific is recorded.
    assert "cwd" not in written.metadata.runtimed
    assert prepared.kernel_cwd == tmp_path
    with pytest.raises(Exception, match="not a folder"):
        materialize(
            src,
            tmp_path / "o.ipynb",
            {},
            kernel_name=None,
            report_mode=False,
            prepare_only=False,
            cwd=tmp_path / "nope",
        )


def test_run_result_to_dict_is_json() -> None:
    result = RunResult(
        status="ok",
        input_path="i",
        output_path="o",
        duration=1.0,
        scraps={"x": [1]},
        parameters={"a": 1},
    )
    assert json.loads(json.dumps(result.to_dict()))["scraps"] == {"x": [1]}
    assert result.ok
