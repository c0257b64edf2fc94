"""OutputAccumulator: IOPub contents -> nbformat v4 outputs, as nbclient stores them."""

from __future__ import annotations

import time
from typing import Any

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbclient import NotebookClient

from runtimed.kernels.outputs import DisplayUpdate, OutputAccumulator, coalesce_streams


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"name": name, "text": text}


def display(text: str, display_id: str | None = None) -> dict[str, Any]:
    transient = {"display_id": display_id} if display_id else {}
    return {"data": {"text/plain": text}, "metadata": {}, "transient": transient}


def result(text: str, count: int, display_id: str | None = None) -> dict[str, Any]:
    return {**display(text, display_id), "execution_count": count}


# -- message types -----------------------------------------------------------------------


def test_each_output_type_has_nbformat_keys() -> None:
    acc = OutputAccumulator()
    assert acc.feed("execute_input", {"code": "x", "execution_count": 7}) is None
    assert acc.execution_count == 7
    assert acc.feed("status", {"execution_state": "busy"}) is None
    acc.feed("stream", stream("hi\n"))
    acc.feed("display_data", {"data": {"text/html": "<b>x</b>"}, "metadata": {"a": 1}})
    acc.feed("execute_result", result("42", 7))
    acc.feed("error", {"ename": "ValueError", "evalue": "bad", "traceback": ["tb1", "tb2"]})
    assert acc.feed("comm_open", {"comm_id": "c", "target_name": "t", "data": {}}) is None
    assert acc.feed("some_future_type", {}) is None
    assert acc.outputs == [
        {"output_type": "stream", "name": "stdout", "text": "hi\n"},
        {"output_type": "display_data", "data": {"text/html": "<b>x</b>"}, "metadata": {"a": 1}},
        {
            "output_type": "execute_result",
            "data": {"text/plain": "42"},
            "metadata": {},
            "execution_count": 7,
        },
        {
            "output_type": "error",
            "ename": "ValueError",
            "evalue": "bad",
            "traceback": ["tb1", "tb2"],
        },
    ]
    for out in acc.outputs:  # exactly what nbformat builds, and valid
        if out["output_type"] != "stream":
            nbformat.validate(nbformat.v4.new_notebook(cells=[_cell([out])]))


def _cell(outputs: list[dict[str, Any]]) -> nbformat.NotebookNode:
    cell: nbformat.NotebookNode = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    return cell


def test_change_kinds_for_appends_and_stream_growth() -> None:
    acc = OutputAccumulator()
    first = acc.feed("stream", stream("a"))
    assert first is not None
    assert (first.kind, first.indices, first.display_update) == ("append", (0,), None)
    grow = acc.feed("stream", stream("b\n"))
    assert grow is not None
    assert (grow.kind, grow.indices) == ("replace", (0,))
    assert grow.outputs == [{"output_type": "stream", "name": "stdout", "text": "ab\n"}]
    err = acc.feed("stream", stream("oops\n", "stderr"))
    assert err is not None
    assert (err.kind, err.indices) == ("append", (1,))


def test_consecutive_same_name_streams_coalesce_only() -> None:
    acc = OutputAccumulator()
    for text, name in [("a", "stdout"), ("b\n", "stdout"), ("e\n", "stderr"), ("c\n", "stdout")]:
        acc.feed("stream", stream(text, name))
    acc.feed("display_data", display("d"))
    acc.feed("stream", stream("after\n"))
    assert [(o["output_type"], o.get("name"), o.get("text")) for o in acc.outputs] == [
        ("stream", "stdout", "ab\n"),
        ("stream", "stderr", "e\n"),
        ("stream", "stdout", "c\n"),
        ("display_data", None, None),
        ("stream", "stdout", "after\n"),
    ]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (["10%", "\r20%", "\r100%\n"], "100%\n"),
        (["abcdef\rxy"], "xycdef"),  # a terminal overwrites, it does not erase
        (["abc\r\n", "next"], "abc\nnext"),
        (["abc\r", "\nx"], "abc\nx"),  # \r\n split across chunks
        (["line1\nline2\rLINE"], "line1\nLINE2"),
        (["ab\b\bX"], "Xb"),  # \b moves the cursor left
        (["\b\rok"], "ok"),
        (["a\n\n\rb"], "a\n\nb"),
    ],
)
def test_carriage_return_and_backspace_render_like_a_terminal(
    chunks: list[str], expected: str
) -> None:
    acc = OutputAccumulator()
    for chunk in chunks:
        acc.feed("stream", stream(chunk))
    assert acc.outputs[0]["text"] == expected
    # Same result when the chunks arrive as one message or as single characters.
    for pieces in (["".join(chunks)], list("".join(chunks))):
        again = OutputAccumulator()
        for piece in pieces:
            again.feed("stream", stream(piece))
        assert again.outputs == acc.outputs


def test_clear_output_immediate() -> None:
    acc = OutputAccumulator()
    acc.feed("stream", stream("x\n"))
    change = acc.feed("clear_output", {"wait": False})
    assert change is not None
    assert (change.kind, change.indices, change.outputs) == ("clear", (), [])
    acc.feed("stream", stream("y\n"))
    assert acc.outputs == [{"output_type": "stream", "name": "stdout", "text": "y\n"}]


def test_clear_output_wait_clears_on_next_output() -> None:
    acc = OutputAccumulator()
    acc.feed("display_data", display("a", "d1"))
    acc.feed("stream", stream("x\n"))
    assert acc.feed("clear_output", {"wait": True}) is None
    assert len(acc.outputs) == 2  # still visible until something replaces it
    # An update is not an output: it does not trigger the pending clear.
    upd = acc.feed("update_display_data", display("b", "d1"))
    assert upd is not None
    assert upd.indices == (0,)
    assert acc.outputs[0]["data"] == {"text/plain": "b"}
    change = acc.feed("stream", stream("x"))  # same name as the cleared stream: fresh output
    assert change is not None
    assert (change.kind, change.indices) == ("clear", (0,))
    assert acc.outputs == [{"output_type": "stream", "name": "stdout", "text": "x"}]
    # The display id mapping went with the clear (nbclient: clear_display_id_mapping).
    late = acc.feed("update_display_data", display("c", "d1"))
    assert late is not None
    assert late.indices == ()


def test_update_display_data_updates_every_output_with_that_id() -> None:
    acc = OutputAccumulator()
    acc.feed("display_data", display("a", "d1"))
    acc.feed("display_data", display("other", "d2"))
    acc.feed("execute_result", result("r", 3, "d1"))
    # nbclient: a display_data re-using an id also rewrites the earlier outputs.
    assert acc.outputs[0]["data"] == {"text/plain": "r"}
    change = acc.feed(
        "update_display_data",
        {"data": {"text/plain": "new"}, "metadata": {"m": 1}, "transient": {"display_id": "d1"}},
    )
    assert change is not None
    assert (change.kind, change.indices) == ("replace", (0, 2))
    assert change.display_update == DisplayUpdate("d1", {"text/plain": "new"}, {"m": 1})
    outs = acc.outputs
    assert outs[0] == {
        "output_type": "display_data",
        "data": {"text/plain": "new"},
        "metadata": {"m": 1},
    }
    assert outs[1]["data"] == {"text/plain": "other"}
    assert outs[2] == {
        "output_type": "execute_result",
        "data": {"text/plain": "new"},
        "metadata": {"m": 1},
        "execution_count": 3,
    }


def test_display_update_hook_for_other_cells() -> None:
    acc = OutputAccumulator()
    # Only another cell shows "elsewhere": nothing to replace here, but the caller is told.
    change = acc.feed("update_display_data", display("z", "elsewhere"))
    assert change is not None
    assert (change.kind, change.indices) == ("replace", ())
    assert change.display_update == DisplayUpdate("elsewhere", {"text/plain": "z"}, {})
    shown = acc.feed("display_data", display("again", "elsewhere"))
    assert shown is not None
    assert (shown.kind, shown.indices) == ("append", (0,))
    assert shown.display_update == DisplayUpdate("elsewhere", {"text/plain": "again"}, {})
    # No transient / transient None / empty id: not a display update (nbclient ignores them).
    assert acc.feed("update_display_data", {"data": {}, "metadata": {}}) is None
    plain = acc.feed("display_data", {"data": {}, "metadata": {}, "transient": None})
    assert plain is not None
    assert plain.display_update is None


# -- equivalence with nbclient -------------------------------------------------------------

_text = st.text(alphabet="ab\n\r\b", max_size=6)
_ids = st.sampled_from(["d1", "d2", None])
_messages = st.lists(
    st.one_of(
        st.tuples(st.just("stream"), st.sampled_from(["stdout", "stderr"]), _text),
        st.tuples(st.sampled_from(["display_data", "update_display_data"]), _ids, _text),
        st.tuples(st.just("execute_result"), _ids, _text),
        st.tuples(st.just("clear_output"), st.booleans(), st.just("")),
        st.tuples(st.just("error"), st.just(None), _text),
        st.tuples(st.just("execute_input"), st.just(None), st.just("")),
    ),
    max_size=25,
)


def _content(kind: str, arg: Any, text: str) -> dict[str, Any]:
    if kind == "stream":
        return stream(text, arg)
    if kind in ("display_data", "update_display_data"):
        return display(text, arg)
    if kind == "execute_result":
        return result(text, 5, arg)
    if kind == "clear_output":
        return {"wait": arg}
    if kind == "error":
        return {"ename": "E", "evalue": text, "traceback": [text]}
    return {"code": "", "execution_count": 5}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages)
def test_equals_nbclient_after_coalescing(messages: list[tuple[str, Any, str]]) -> None:
    """Feed the same IOPub messages to nbclient's process_message and to us."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    client = NotebookClient(nb, record_timing=False)
    client.clear_before_next_output = False  # set per cell by async_execute_cell
    cell = nb.cells[0]
    acc = OutputAccumulator()
    for kind, arg, text in messages:
        content = _content(kind, arg, text)
        msg = {
            "msg_type": kind,
            "header": {"msg_type": kind},
            "parent_header": {"msg_id": "m"},
            "content": content,
        }
        client.process_message(msg, cell, 0)
        acc.feed(kind, content)
    assert acc.outputs == coalesce_streams(cell.outputs)
    assert acc.execution_count == cell.execution_count


def test_coalesce_streams_accepts_multiline_lists() -> None:
    outs: list[dict[str, Any]] = [
        {"output_type": "stream", "name": "stdout", "text": ["a\n", "b"]},
        {"output_type": "stream", "name": "stdout", "text": "\rc\n"},
    ]
    assert coalesce_streams(outs) == [{"output_type": "stream", "name": "stdout", "text": "a\nc\n"}]


# -- cost ------------------------------------------------------------------------------------


def test_100_mb_flood_in_small_chunks_is_linear() -> None:
    acc = OutputAccumulator()
    chunk = ("x" * 1023) + "\n"
    start = time.perf_counter()
    for _ in range(100 * 1024):  # 100 MiB in 1 KiB chunks
        acc.feed("stream", stream(chunk))
    text = acc.outputs[0]["text"]
    elapsed = time.perf_counter() - start
    assert len(text) == 100 * 1024 * 1024
    assert len(acc.outputs) == 1
    assert elapsed < 10, elapsed  # quadratic building would take hours


def test_long_line_without_newlines_and_progress_bar_stay_cheap() -> None:
    acc = OutputAccumulator()
    start = time.perf_counter()
    for _ in range(20_000):  # a 20 MB line, no newline
        acc.feed("stream", stream("y" * 1000))
    for i in range(100_000):  # then 100k carriage-return overwrites of its start
        acc.feed("stream", stream(f"\r{i:>6}"))
    text = acc.outputs[0]["text"]
    elapsed = time.perf_counter() - start
    assert text.startswith(" 99999yyy")
    assert len(text) == 20_000_000
    assert elapsed < 10, elapsed


def test_outputs_read_is_cached_between_changes() -> None:
    acc = OutputAccumulator()
    acc.feed("stream", stream("z" * 1000))
    first = acc.outputs[0]
    assert acc.outputs[0] is first  # no re-join without a change
    acc.feed("stream", stream("!"))
    assert acc.outputs[0]["text"].endswith("!")
