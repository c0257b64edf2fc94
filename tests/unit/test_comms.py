"""The pure comm bookkeeping (runtimed.kernels.comms) and the runtime document's comm maps."""

from __future__ import annotations

from typing import Any

import pytest

from runtimed.documents.runtime import RuntimeDoc
from runtimed.errors import CommNotFound, InvalidRequest
from runtimed.kernels.comms import MAX_STATE_BYTES, CommChange, CommTracker

Sent = list[tuple[dict[str, Any], list[bytes]]]


def msg(
    msg_type: str,
    content: dict[str, Any],
    *,
    parent: str = "p0",
    buffers: list[bytes] | None = None,
) -> dict[str, Any]:
    return {
        "header": {"msg_type": msg_type, "msg_id": "m"},
        "parent_header": {"msg_id": parent},
        "content": content,
        "buffers": buffers or [],
    }


def widget(comm_id: str, name: str, **state: Any) -> dict[str, Any]:
    full = {"_model_name": name, "_model_module": "@jupyter-widgets/controls", **state}
    if name == "OutputModel":
        full.update(_model_module="@jupyter-widgets/output", msg_id="", outputs=[])
    return msg(
        "comm_open",
        {"comm_id": comm_id, "target_name": "jupyter.widget", "data": {"state": full}},
    )


def update(comm_id: str, parent: str = "p0", **state: Any) -> dict[str, Any]:
    data = {"method": "update", "state": state, "buffer_paths": []}
    return msg("comm_msg", {"comm_id": comm_id, "data": data}, parent=parent)


def stream(text: str, parent: str) -> dict[str, Any]:
    return msg("stream", {"name": "stdout", "text": text}, parent=parent)


@pytest.fixture
def sent() -> Sent:
    return []


@pytest.fixture
def tracker(sent: Sent) -> CommTracker:
    t = CommTracker()
    t.reset(lambda content, buffers: sent.append((content, buffers)))
    return t


def test_open_update_close_follow_the_kernel(tracker: CommTracker) -> None:
    changes: list[CommChange] = []
    tracker.listener = changes.append

    assert tracker.feed(widget("s", "IntSliderModel", value=1, max=10)) is True
    assert tracker.feed(update("s", value=5)) is True
    assert tracker.comms["s"].state["value"] == 5
    assert tracker.comms["s"].model == ("@jupyter-widgets/controls", "IntSliderModel", "")
    assert tracker.feed(msg("comm_close", {"comm_id": "s", "data": {}})) is True

    assert "s" not in tracker.comms
    assert changes == [
        CommChange("s"),
        CommChange("s", frozenset({"value"})),
        CommChange("s", closed=True),
    ]


def test_buffers_are_kept_by_path_and_out_of_the_state(tracker: CommTracker) -> None:
    content = {
        "comm_id": "i",
        "target_name": "jupyter.widget",
        "data": {"state": {"_model_name": "ImageModel"}, "buffer_paths": [["value"]]},
    }
    tracker.feed(msg("comm_open", content, buffers=[b"\x89PNG"]))

    assert tracker.comms["i"].buffers == {("value",): b"\x89PNG"}
    assert "value" not in tracker.comms["i"].state


@pytest.mark.parametrize(
    "content",
    [
        {"data": {}},
        {"comm_id": 3, "data": {}},
        {"comm_id": "s", "data": [1]},
        {"comm_id": "s", "data": {"method": "update", "state": "x"}},
        {"comm_id": "s", "data": {"method": "update", "state": {}, "buffer_paths": [["a"]]}},
    ],
)
def test_a_malformed_comm_msg_is_dropped(
    tracker: CommTracker, content: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    tracker.feed(widget("s", "IntSliderModel", value=1))

    assert tracker.feed(msg("comm_msg", content)) is True

    assert tracker.comms["s"].state["value"] == 1
    assert "dropped" in caplog.text


def test_an_oversized_state_is_refused_and_the_old_state_kept(tracker: CommTracker) -> None:
    tracker.feed(widget("t", "TextareaModel", value="small"))

    tracker.feed(update("t", value="x" * (MAX_STATE_BYTES + 1)))

    assert tracker.comms["t"].state["value"] == "small"


def test_output_widget_captures_its_requests_outputs(tracker: CommTracker, sent: Sent) -> None:
    tracker.feed(widget("o", "OutputModel"))
    assert tracker.feed(stream("cell\n", "exec1")) is False  # not captured yet

    tracker.feed(update("o", msg_id="exec1"))
    assert tracker.feed(stream("a\n", "exec1")) is True
    assert tracker.feed(msg("clear_output", {"wait": True}, parent="exec1")) is True
    assert tracker.feed(stream("b\n", "exec1")) is True
    assert tracker.feed(stream("other\n", "exec2")) is False
    tracker.feed(update("o", msg_id=""))
    assert tracker.feed(stream("after\n", "exec1")) is False

    outputs = [{"output_type": "stream", "name": "stdout", "text": "b\n"}]
    assert tracker.comms["o"].state["outputs"] == outputs
    assert sent == []  # not sent back to the kernel (ipykernel 7.4 could hang: see comms.py)


def test_nested_output_widgets_capture_into_the_innermost(tracker: CommTracker) -> None:
    tracker.feed(widget("inner", "OutputModel"))
    tracker.feed(widget("outer", "OutputModel"))
    tracker.feed(update("inner", msg_id="x"))
    tracker.feed(stream("in inner\n", "x"))
    tracker.feed(update("outer", msg_id="x"))
    tracker.feed(stream("in outer\n", "x"))
    tracker.feed(update("outer", msg_id=""))
    tracker.feed(stream("also in inner\n", "x"))

    def text(comm_id: str) -> str:
        return "".join(o["text"] for o in tracker.comms[comm_id].state["outputs"])

    assert (text("inner"), text("outer")) == ("in inner\nalso in inner\n", "in outer\n")


def test_the_kernel_setting_outputs_replaces_the_captured_ones(tracker: CommTracker) -> None:
    tracker.feed(widget("o", "OutputModel"))
    tracker.feed(update("o", msg_id="e"))
    tracker.feed(stream("a\n", "e"))

    tracker.feed(update("o", outputs=[]))  # out.outputs = () in the kernel
    tracker.feed(stream("b\n", "e"))

    assert tracker.comms["o"].state["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "b\n"}
    ]


def test_a_client_update_goes_to_the_kernel_and_into_the_state(
    tracker: CommTracker, sent: Sent
) -> None:
    tracker.feed(widget("s", "IntSliderModel", value=1))

    tracker.send("s", {"method": "update", "state": {"value": 4}, "buffer_paths": []}, [])

    assert sent == [
        (
            {
                "comm_id": "s",
                "data": {"method": "update", "state": {"value": 4}, "buffer_paths": []},
            },
            [],
        )
    ]
    assert tracker.comms["s"].state["value"] == 4


def test_a_client_message_to_an_unknown_comm_or_with_bad_buffers_is_refused(
    tracker: CommTracker, sent: Sent
) -> None:
    tracker.feed(widget("s", "IntSliderModel", value=1))

    with pytest.raises(CommNotFound, match="no open comm 'x'"):
        tracker.send("x", {"method": "custom"}, [])
    with pytest.raises(InvalidRequest, match="buffers"):
        tracker.send("s", {"method": "update", "state": {}, "buffer_paths": []}, [b"1"])
    assert sent == []


def test_reset_forgets_every_comm(tracker: CommTracker) -> None:
    tracker.feed(widget("s", "IntSliderModel"))

    tracker.reset(None)

    assert tracker.comms == {}
    with pytest.raises(CommNotFound):
        tracker.send("s", {}, [])


def test_runtime_document_comm_maps_round_trip() -> None:
    rt = RuntimeDoc.new()
    assert rt.comms() == {}
    model = ("@jupyter-widgets/controls", "IntSliderModel", "2.0.0")
    buffers: dict[str, Any] = {'["v"]': {"path": ["v"], "blob": "ab" * 32, "size": 3}}

    rt.put_comm("c", target_name="jupyter.widget", model=model, state={"value": 1}, whole=True)
    rt.put_comm("c", target_name="jupyter.widget", model=model, state={"max": 9}, buffers=buffers)

    assert rt.comms() == {
        "c": {
            "target_name": "jupyter.widget",
            "model_module": "@jupyter-widgets/controls",
            "model_name": "IntSliderModel",
            "model_module_version": "2.0.0",
            "state": {"value": 1, "max": 9},
            "buffers": buffers,
        }
    }
    rt.remove_comm("c")
    assert rt.comms() == {}
    rt.put_comm("d", target_name="t", model=("", "", ""), state={}, whole=True)
    assert rt.clear_comms() is True
    assert rt.comms() == {}
