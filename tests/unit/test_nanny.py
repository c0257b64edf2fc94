"""The nanny's record stream (runtimed.kernels.nanny): what an adopting daemon parses."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from runtimed.kernels.adoption import adopted_reply
from runtimed.kernels.nanny import encode_record, exit_status, parse_records

frames = st.lists(st.binary(max_size=64), max_size=5)


@given(st.lists(frames, max_size=6), st.integers(min_value=1, max_value=7))
def test_records_fed_in_any_chunks_come_out_whole_and_in_order(
    messages: list[list[bytes]], chunk: int
) -> None:
    stream = b"".join(encode_record(b"M", m) for m in messages)
    buffer = bytearray()
    out: list[list[bytes]] = []
    for start in range(0, len(stream), chunk):
        buffer += stream[start : start + chunk]
        out.extend(f for _, f in parse_records(buffer))
    assert out == messages
    assert buffer == bytearray()


def test_the_exit_record_carries_the_kernels_status() -> None:
    buffer = bytearray(encode_record(b"X", [struct.pack("!i", -9)]))
    [(kind, parts)] = parse_records(buffer)
    assert kind == b"X"
    assert exit_status(parts) == -9
    assert exit_status([b"bad"]) is None


def test_an_adopted_execution_reply_is_read_from_iopub() -> None:
    idle = {"header": {"date": "2026-01-01T00:00:00Z"}}
    ok = adopted_reply(idle, 3, None)
    assert ok["content"] == {"status": "ok", "execution_count": 3}
    error = {"ename": "ValueError", "evalue": "no", "traceback": ["tb"]}
    failed = adopted_reply(idle, 4, error)["content"]
    assert (failed["status"], failed["ename"], failed["traceback"]) == (
        "error",
        "ValueError",
        ["tb"],
    )
