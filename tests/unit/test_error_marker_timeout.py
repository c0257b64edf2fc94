"""papermill's error marker cell names an execution timeout (issue 13, point 5)."""

from __future__ import annotations

import papermill.execute

from runtimed.automation.report import error_marker_cells


def test_timeout_marker_keeps_papermills_words_and_adds_the_timeout() -> None:
    top, anchor = error_marker_cells(3, status="timeout", timeout=2.5)
    source = top["source"]
    assert source.startswith(papermill.execute.ERROR_MESSAGE_TEMPLATE % "3")
    assert "timed out after 2.5 s" in source
    assert anchor["source"] == papermill.execute.ERROR_ANCHOR_MSG


def test_error_marker_without_timeout_is_papermills_exactly() -> None:
    top, _ = error_marker_cells(3, status="error", timeout=2.0)
    assert top["source"] == papermill.execute.ERROR_MESSAGE_TEMPLATE % "3"
