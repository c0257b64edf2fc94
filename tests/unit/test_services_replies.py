"""The daemon's typed replies from what a kernel sent: malformed parts are dropped, never
passed on or raised."""

from __future__ import annotations

from typing import Any

from protocol.messages import Complete, CompletionItem
from runtimed.daemon.handlers.services import _completions, _history, _json_object

REQUEST = Complete(id=3, notebook_id="n", cell_id="c", cursor=4)


def test_a_complete_reply_becomes_completions_with_typed_items() -> None:
    content: dict[str, Any] = {
        "matches": ["import", 7, None],
        "cursor_start": 0,
        "cursor_end": 4,
        "metadata": {
            "_jupyter_types_experimental": [
                {"text": "import", "start": 0, "end": 4, "type": "keyword", "signature": ""},
                {"text": 5},
                "junk",
                {"text": "impossible", "type": 3},
            ]
        },
    }

    reply = _completions(REQUEST, content, 4)

    assert reply.matches == ["import"]
    assert (reply.id, reply.cursor_start, reply.cursor_end) == (3, 0, 4)
    assert reply.items == [
        CompletionItem(text="import", start=0, end=4, type="keyword", signature=""),
        CompletionItem(text="impossible", start=0, end=4, type=None, signature=None),
    ]


def test_an_empty_answer_is_no_completions_at_the_cursor() -> None:
    # What the session returns for a kernel's error reply (logged there).
    reply = _completions(REQUEST, {}, 4)
    assert (reply.matches, reply.cursor_start, reply.cursor_end, reply.items) == ([], 4, 4, [])


def test_history_keeps_only_well_formed_triples() -> None:
    entries = _history([[1, 1, "a = 1"], (1, 2, "b = 2"), [1, "x", "bad"], [1, 3], "junk", None])
    assert [(e.session, e.line, e.source) for e in entries] == [(1, 1, "a = 1"), (1, 2, "b = 2")]
    assert _history(None) == []


def test_a_mime_bundle_must_be_an_object() -> None:
    assert _json_object(["text/plain"]) == {}
    assert _json_object({"text/plain": "doc", "application/json": {"a": [1]}}) == {
        "text/plain": "doc",
        "application/json": {"a": [1]},
    }
