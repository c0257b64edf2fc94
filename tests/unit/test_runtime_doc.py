"""The runtime document: executions, the queue, outputs, and the history-free snapshot."""

from __future__ import annotations

import json
from typing import Any

from automerge.core import ROOT, ScalarType, SyncState

from runtimed.documents.runtime import FINISHED, RuntimeDoc

STREAM = {"output_type": "stream", "name": "stdout", "text": "hi é😀\n"}
RESULT = {
    "output_type": "execute_result",
    "execution_count": 1,
    "metadata": {},
    "data": {"text/plain": "42"},
}
IMAGE_REF = {
    "output_type": "display_data",
    "metadata": {"image/png": {"width": 3}},
    "data": {"image/png": {"blob": "ab" * 32, "size": 1234}},
}


def sync(server: RuntimeDoc, replica: RuntimeDoc) -> None:
    """Run the Automerge sync protocol between two documents until both are quiet."""
    s_state, r_state = SyncState(), SyncState()
    for _ in range(20):
        to_replica = server.doc.generate_sync_message(s_state)
        if to_replica is not None:
            replica.doc.receive_sync_message(r_state, to_replica)
        to_server = replica.doc.generate_sync_message(r_state)
        if to_server is not None:
            server.doc.receive_sync_message(s_state, to_server)
        if to_replica is None and to_server is None:
            return
    raise AssertionError("sync did not settle")


def test_new_document_has_the_schema() -> None:
    rt = RuntimeDoc.new()
    assert rt.ready
    assert rt.kernel() == {"state": "not_started", "name": "", "pid": None, "message": ""}
    assert rt.queue() == []
    assert rt.running() is None
    assert rt.execution_ids() == []
    assert rt.cell_state("nope") == (None, [])
    assert not RuntimeDoc.empty().ready


def test_executions_move_through_the_queue() -> None:
    rt = RuntimeDoc.new()
    rt.add_execution("e1", "c1", 1)
    rt.add_execution("e2", "c2", 2)
    rt.add_execution("e3", "c1", 3)
    assert rt.queue() == ["e1", "e2", "e3"]
    assert rt.execution("e1") == {
        "cell_id": "c1",
        "status": "queued",
        "seq": 1,
        "execution_count": None,
        "ename": None,
        "evalue": None,
    }

    rt.update_execution("e1", status="running")
    assert rt.queue() == ["e2", "e3"]
    assert rt.running() == "e1"

    rt.update_execution("e1", status="ok", execution_count=1)
    assert rt.running() is None
    assert rt.execution("e1")["status"] == "ok"  # type: ignore[index]
    assert rt.execution("e1")["execution_count"] == 1  # type: ignore[index]

    rt.update_execution("e2", status="running")
    rt.update_execution("e2", status="error", ename="ValueError", evalue="bad é")
    rt.update_execution("e3", status="skipped")
    assert rt.queue() == []
    assert rt.running() is None
    assert rt.execution("e2")["ename"] == "ValueError"  # type: ignore[index]
    assert rt.execution("e3")["status"] == "skipped"  # type: ignore[index]


def test_an_execution_leaves_the_queue_from_any_position() -> None:
    rt = RuntimeDoc.new()
    for n in range(1, 5):
        rt.add_execution(f"e{n}", "c1", n)
    rt.update_execution("e3", status="cancelled")  # the middle
    rt.update_execution("e4", status="cancelled")  # the tail
    assert rt.queue() == ["e1", "e2"]
    rt.update_execution("e1", status="running")  # the head
    assert rt.queue() == ["e2"]
    rt.update_execution("e1", status="ok")  # no longer queued: the queue is unchanged
    assert rt.queue() == ["e2"]


def test_finishing_another_execution_does_not_clear_running() -> None:
    rt = RuntimeDoc.new()
    rt.add_execution("e1", "c1", 1)
    rt.add_execution("e2", "c2", 2)
    rt.update_execution("e1", status="running")
    rt.update_execution("e2", status="cancelled")
    assert rt.running() == "e1"
    assert rt.queue() == []


def test_updating_an_unknown_execution_is_a_no_op() -> None:
    rt = RuntimeDoc.new()
    heads = rt.doc.get_heads()
    rt.update_execution("missing", status="ok")
    assert rt.doc.get_heads() == heads
    assert rt.execution("missing") is None


def test_kernel_state() -> None:
    rt = RuntimeDoc.new()
    rt.set_kernel(state="idle", name="python3", pid=4242)
    assert rt.kernel() == {"state": "idle", "name": "python3", "pid": 4242, "message": ""}
    rt.set_kernel(state="dead", message="exited with code -9")
    assert rt.kernel() == {
        "state": "dead",
        "name": "python3",
        "pid": None,
        "message": "exited with code -9",
    }


def test_outputs_are_set_appended_replaced_and_cleared() -> None:
    rt = RuntimeDoc.new()
    rt.start_cell_run("c1", "e1")
    assert rt.cell_state("c1") == (None, [])
    rt.set_outputs("c1", [STREAM])
    rt.set_outputs("c1", [STREAM, RESULT])
    rt.set_execution_count("c1", 7)
    assert rt.cell_state("c1") == (7, [STREAM, RESULT])

    grown = {**STREAM, "text": STREAM["text"] + "more\n"}
    rt.set_outputs("c1", [grown, RESULT, IMAGE_REF])
    assert rt.cell_state("c1") == (7, [grown, RESULT, IMAGE_REF])
    rt.set_outputs("c1", [grown])
    assert rt.cell_state("c1") == (7, [grown])

    rt.start_cell_run("c1", "e2")  # a new run clears count and outputs
    assert rt.cell_state("c1") == (None, [])
    rt.load_cell("c2", 3, [RESULT])
    rt.clear_cell("c2")
    assert rt.cell_state("c2") == (None, [])
    rt.clear_cell("never-ran")  # no error
    assert rt.cell_state("never-ran") == (None, [])


def test_unchanged_outputs_write_nothing() -> None:
    rt = RuntimeDoc.new()
    rt.set_outputs("c1", [STREAM, RESULT])
    before = rt.doc.get_heads()
    rt.set_outputs("c1", [STREAM, RESULT])
    assert rt.doc.get_heads() == before  # no change recorded: history does not grow
    assert rt.cell_state("c1") == (None, [STREAM, RESULT])


def test_snapshot_round_trip_keeps_outputs_and_finished_executions() -> None:
    rt = RuntimeDoc.new()
    rt.add_execution("e1", "c1", 1)
    rt.update_execution("e1", status="running")
    rt.start_cell_run("c1", "e1")
    rt.set_outputs("c1", [STREAM, IMAGE_REF])
    rt.set_execution_count("c1", 1)
    rt.update_execution("e1", status="ok", execution_count=1)
    rt.add_execution("e2", "c2", 2)
    rt.update_execution("e2", status="running")
    rt.start_cell_run("c2", "e2")
    rt.set_outputs("c2", [RESULT])
    rt.add_execution("e3", "c1", 3)  # still queued

    snapshot = rt.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot  # plain JSON
    assert set(snapshot["executions"]) == {"e1"}  # only finished ones survive a restart

    restored = RuntimeDoc.from_snapshot(snapshot)
    assert restored.cell_state("c1") == (1, [STREAM, IMAGE_REF])
    assert restored.cell_state("c2") == (None, [RESULT])
    assert restored.execution("e1") == rt.execution("e1")
    assert restored.execution("e2") is None
    assert restored.execution("e3") is None
    assert restored.queue() == []
    assert restored.running() is None
    assert restored.snapshot() == snapshot


def test_snapshot_of_a_churned_document_is_small() -> None:
    rt = RuntimeDoc.new()
    for i in range(300):
        rt.add_execution(f"e{i}", "c1", i)
        rt.update_execution(f"e{i}", status="running")
        rt.start_cell_run("c1", f"e{i}")
        rt.set_outputs("c1", [{**STREAM, "text": f"run {i}\n"}])
        rt.update_execution(f"e{i}", status="ok", execution_count=i)
    finished = rt.finished_by_age()
    rt.forget(finished[:-5])
    assert len(rt.execution_ids()) == 5
    restored = RuntimeDoc.from_snapshot(rt.snapshot())
    assert restored.cell_state("c1") == (None, [{**STREAM, "text": "run 299\n"}])
    assert len(restored.save()) < len(rt.save()) / 5


def test_finished_by_age_lists_only_finished_oldest_first() -> None:
    rt = RuntimeDoc.new()
    for i in range(1, 6):
        rt.add_execution(f"e{i}", "c", i)
        rt.update_execution(f"e{i}", status="ok")
    rt.add_execution("e6", "c", 6)
    assert rt.finished_by_age() == ["e1", "e2", "e3", "e4", "e5"]
    rt.forget(rt.finished_by_age()[:-2])
    assert sorted(rt.execution_ids()) == ["e4", "e5", "e6"]
    assert rt.queue() == ["e6"]


def test_a_replica_syncs_the_daemon_state() -> None:
    server = RuntimeDoc.new()
    replica = RuntimeDoc.empty()
    server.add_execution("e1", "c1", 1)
    server.update_execution("e1", status="running")
    server.set_outputs("c1", [STREAM])
    sync(server, replica)
    assert replica.ready
    assert replica.running() == "e1"
    assert replica.cell_state("c1") == (None, [STREAM])
    server.update_execution("e1", status="ok")
    sync(server, replica)
    assert replica.execution("e1")["status"] == "ok"  # type: ignore[index]
    assert replica.running() is None


def test_finished_statuses_match_the_wire_vocabulary() -> None:
    from protocol.messages import ExecutionStatus

    wire: set[Any] = set(ExecutionStatus)
    assert wire - {"queued", "running"} == set(FINISHED)


def test_sync_message_peek_tells_acknowledgements_from_changes() -> None:
    """The daemon's cheap path for runtime-document messages must never mistake a message
    carrying changes for a bare acknowledgement."""
    from automerge.core import Document, SyncState

    from runtimed.documents.syncwire import may_carry_changes

    daemon, client = RuntimeDoc.new(), Document()
    d_state, c_state = SyncState(), SyncState()
    saw_changes = saw_acks = 0
    for _ in range(10):
        m = daemon.doc.generate_sync_message(d_state)
        if m is not None:
            data = bytes(m.encode())
            before = client.get_heads()
            client.receive_sync_message(c_state, m)
            if client.get_heads() != before:
                assert may_carry_changes(data)
                saw_changes += 1
        reply = client.generate_sync_message(c_state)
        if reply is not None:
            data = bytes(reply.encode())
            assert not may_carry_changes(data)  # the client only acknowledges
            saw_acks += 1
            daemon.doc.receive_sync_message(d_state, reply)
    assert saw_changes
    assert saw_acks
    # A client that wrote to its replica: its next message carries the change.
    rogue = client.fork()
    with rogue.transaction() as tx:
        tx.put(ROOT, "running", ScalarType.Str, "rogue")
    fresh = SyncState()
    messages = []
    for _ in range(4):
        m = rogue.generate_sync_message(fresh)
        if m is None:
            break
        messages.append(bytes(m.encode()))
        answer_state = SyncState()
        probe = daemon.doc.fork()
        probe.receive_sync_message(answer_state, m)
        back = probe.generate_sync_message(answer_state)
        if back is not None:
            rogue.receive_sync_message(fresh, back)
    assert any(may_carry_changes(m) for m in messages)
    # Garbage and truncation answer "maybe" (the safe path), never raise.
    for junk in (b"", b"\x00", b"\x42", b"\x43\x05", b"\x42" + b"\xff" * 12):
        assert may_carry_changes(junk)


def test_kernel_info_is_kept_as_plain_json_and_written_only_when_it_changes() -> None:
    from runtimed.documents.runtime import RuntimeDoc

    rt = RuntimeDoc.new()
    assert rt.kernel_info() is None
    reply = {
        "status": "ok",
        "protocol_version": "5.3",
        "implementation": "ipython",
        "implementation_version": "9.0",
        "banner": "Python 3",
        "language_info": {"name": "python", "codemirror_mode": {"name": "ipython", "version": 3}},
        "help_links": [],
        "supported_features": ["kernel subshells"],
        "debugger": True,
    }
    assert rt.set_kernel_info(reply) is True
    heads = rt.doc.get_heads()
    assert rt.set_kernel_info(reply) is False  # unchanged: no new change in the document
    assert rt.doc.get_heads() == heads
    info = rt.kernel_info()
    assert info is not None
    assert info["protocol_version"] == "5.3"
    assert info["language_info"] == reply["language_info"]
    assert "status" not in info
    assert "debugger" not in info  # only the documented fields

    assert rt.set_kernel_info({"banner": float("nan"), "implementation": object()}) is True
    assert rt.kernel_info() == {}  # what is not plain JSON is left out, never written


def test_heads_count_reads_the_senders_heads_from_a_sync_message() -> None:
    from automerge.core import Document

    from runtimed.documents.syncwire import heads_count

    empty = Document().generate_sync_message(SyncState())
    assert empty is not None
    assert heads_count(bytes(empty.encode())) == 0
    # Two actors' concurrent changes: two heads.
    left, right = RuntimeDoc.new(), RuntimeDoc.new()
    right.doc.merge(left.doc)
    left.set_kernel(state="busy")
    right.set_kernel(state="idle")
    left.doc.merge(right.doc)
    message = left.doc.generate_sync_message(SyncState())
    assert message is not None
    data = bytes(message.encode())
    assert heads_count(data) == len(left.doc.get_heads()) == 2
    # Not a sync message, or cut short: no answer rather than a wrong one.
    for bad in (b"", b"\x00", b"\x42", data[:20], b"\x42\x05" + b"\x00" * 40, b"\xff" * 9):
        assert heads_count(bad) is None


def test_a_fresh_copy_holds_the_same_state_without_the_history() -> None:
    from runtimed.documents.amjson import read_json

    rt = RuntimeDoc.new()
    rt.set_kernel(state="idle", name="python3", pid=42, used=True)
    rt.set_kernel_info({"protocol_version": "5.3", "language_info": {"name": "python"}})
    for n in range(50):  # a cell run again and again, then one queued and one running
        rt.add_execution(f"e{n}", "c1", n + 1)
        rt.update_execution(f"e{n}", status="running")
        rt.start_cell_run("c1", f"e{n}")
        rt.set_outputs("c1", [STREAM, RESULT] if n % 2 else [IMAGE_REF])
        rt.set_execution_count("c1", n + 1)
        rt.update_execution(f"e{n}", status="ok", execution_count=n + 1)
    rt.forget([f"e{n}" for n in range(40)])
    rt.add_execution("q", "c2", 51)
    rt.add_execution("r", "c3", 52)
    rt.update_execution("r", status="running")
    rt.put_comm(
        "w1",
        target_name="jupyter.widget",
        model=("m", "IntModel", "1"),
        state={"value": 3, "": [1.5, None]},
    )
    copy = rt.fresh_copy()
    assert read_json(copy.doc, ROOT) == read_json(rt.doc, ROOT)
    assert (copy.queue(), copy.running(), copy.kernel()) == (["q"], "r", rt.kernel())
    assert copy.cell_state("c1") == rt.cell_state("c1")
    assert copy.comms() == rt.comms()
    assert copy.kernel_info() == rt.kernel_info()
    assert len(copy.doc.get_changes([])) == 1
    assert len(rt.doc.get_changes([])) > 300
    # A replica syncing from empty gets all of it.
    replica = RuntimeDoc.empty()
    sync(copy, replica)
    assert read_json(replica.doc, ROOT) == read_json(rt.doc, ROOT)
