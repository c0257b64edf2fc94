"""runtimed.documents.boundary: every binding failure, panics included, becomes DocumentError."""

from __future__ import annotations

import pytest
from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState

from runtimed.documents.boundary import DocumentError, automerge_errors, is_panic

# A sync message whose bloom filter has 0 bits per entry: accepted, then the next
# generate_sync_message divides by zero inside the Rust core (issue 10).
ZERO_BLOOM = bytes.fromhex("42000001000301000700")


def test_a_binding_error_becomes_document_error_naming_the_operation() -> None:
    doc = Document()
    with pytest.raises(DocumentError, match="reading the cells") as info:  # noqa: SIM117
        with automerge_errors("reading the cells"):
            doc.get(b"not an object id", "x")
    assert info.value.__cause__ is not None


def test_a_panic_becomes_document_error() -> None:
    doc = Document()
    with doc.transaction() as tx:
        tx.put(ROOT, "a", ScalarType.Str, "x")
    state = SyncState()
    doc.receive_sync_message(state, Message.decode(ZERO_BLOOM))
    with pytest.raises(DocumentError, match="panicked") as info:  # noqa: SIM117
        with automerge_errors("generating a sync message"):
            doc.generate_sync_message(state)
    assert info.value.__cause__ is not None
    assert is_panic(info.value.__cause__)
    assert doc.get(ROOT, "a") is not None  # a panic in sync generation does not poison


def test_cancellation_and_interrupts_pass_through() -> None:
    with pytest.raises(KeyboardInterrupt), automerge_errors("anything"):
        raise KeyboardInterrupt


def test_a_clean_block_is_untouched() -> None:
    doc = Document()
    with automerge_errors("writing text"), doc.transaction() as tx:
        tx.put_object(ROOT, "t", ObjType.Text)
    assert doc.get(ROOT, "t") is not None
