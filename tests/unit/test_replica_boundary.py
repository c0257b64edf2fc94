"""The client's Replica calls the Automerge binding only through the boundary (issue 9 point
5): a sync message from the daemon that makes the binding panic is a typed error on that
notebook, never an exception in the client's reader, and the replica keeps syncing."""

from __future__ import annotations

from automerge.core import Message

from runtimed.client.notebook import Replica
from runtimed.documents.boundary import DocumentError
from runtimed.documents.notebook import NotebookDoc

# A sync message whose bloom filter has 0 bits per entry: accepted, then the next
# generate_sync_message panics inside the Rust core (issue 10).
ZERO_BLOOM = bytes.fromhex("42000001000301000700")


def daemon_with_one_cell() -> tuple[NotebookDoc, Replica]:
    daemon = NotebookDoc.new()
    daemon.add_cell("code", "x = 1", cell_id="c1")
    return daemon, Replica("nb")


def sync(daemon: NotebookDoc, replica: Replica) -> None:
    """Run the sync protocol between ``daemon`` and the replica's notebook to a fixpoint."""
    from automerge.core import SyncState

    state = SyncState()
    for _ in range(10):
        outgoing = replica.generate("notebook")
        if outgoing is not None:
            daemon.doc.receive_sync_message(state, Message.decode(outgoing))
        reply = daemon.doc.generate_sync_message(state)
        if reply is not None:
            assert replica.receive("notebook", bytes(reply.encode()))
        if outgoing is None and reply is None:
            return


def test_the_panicking_payload_is_a_typed_failure_and_the_replica_resyncs() -> None:
    daemon, replica = daemon_with_one_cell()
    sync(daemon, replica)

    assert replica.receive("notebook", ZERO_BLOOM)  # accepted by the binding ...
    assert replica.generate("notebook") is None  # ... and the panic it causes is contained

    assert isinstance(replica.failure, DocumentError)
    assert "panicked" in str(replica.failure)
    assert "notebook nb" in str(replica.failure)
    daemon.add_cell("code", "y = 2", cell_id="c2")
    sync(daemon, replica)  # a fresh sync state: the replica catches up as if new
    assert replica.notebook.cell_ids() == ["c1", "c2"]


def test_bytes_that_are_not_a_sync_message_are_refused_without_raising() -> None:
    daemon, replica = daemon_with_one_cell()
    assert replica.receive("runtime", b"\x42\xff\xff\xff") is False
    assert isinstance(replica.failure, DocumentError)
    assert "runtime sync message from the daemon" in str(replica.failure)
    sync(daemon, replica)
    assert replica.notebook.cell_ids() == ["c1"]


def test_another_replica_is_untouched() -> None:
    daemon, bad = daemon_with_one_cell()
    good = Replica("other")
    sync(daemon, bad)
    bad.receive("notebook", ZERO_BLOOM)
    assert bad.generate("notebook") is None
    assert bad.failure is not None
    sync(daemon, good)
    assert good.failure is None
    assert good.notebook.cell_ids() == ["c1"]
