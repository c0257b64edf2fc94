"""Cursor positions between our documents (code points) and kernels (code points since
protocol 5.2, UTF-16 code units before)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtimed.errors import InvalidRequest
from runtimed.kernels.cursor import (
    check_cursor,
    from_kernel_cursor,
    protocol_version,
    to_kernel_cursor,
    uses_code_points,
)

SOURCE = "x = 'é😀'; os.pa"  # é: 1 UTF-16 unit; 😀: 2 (a surrogate pair)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5.3", (5, 3)), ("5.2", (5, 2)), ("5.1", (5, 1)), ("6", (6, 0)), ("x.y", (5, 0))],
)
def test_protocol_version_parses(text: str, expected: tuple[int, int]) -> None:
    assert protocol_version(text) == expected


def test_an_absent_protocol_version_is_the_oldest() -> None:
    assert protocol_version(None) == (5, 0)
    assert not uses_code_points(protocol_version(None))


def test_since_5_2_positions_pass_unchanged() -> None:
    end = len(SOURCE)
    assert to_kernel_cursor(SOURCE, end, (5, 3)) == end
    assert from_kernel_cursor(SOURCE, end - 2, (5, 2)) == end - 2


def test_before_5_2_positions_are_utf16_code_units() -> None:
    after_emoji = SOURCE.index("😀") + 1  # code points
    assert to_kernel_cursor(SOURCE, after_emoji, (5, 1)) == after_emoji + 1
    assert to_kernel_cursor(SOURCE, len(SOURCE), (5, 0)) == len(SOURCE) + 1
    assert from_kernel_cursor(SOURCE, len(SOURCE) + 1, (5, 1)) == len(SOURCE)
    assert from_kernel_cursor(SOURCE, 5, (5, 1)) == 5  # before the emoji: the same


def test_a_kernel_position_outside_the_source_is_clamped() -> None:
    assert from_kernel_cursor(SOURCE, -3, (5, 3)) == 0
    assert from_kernel_cursor(SOURCE, 999, (5, 3)) == len(SOURCE)
    assert from_kernel_cursor(SOURCE, 999, (5, 1)) == len(SOURCE)


@given(st.text(), st.data())
def test_utf16_conversion_round_trips(text: str, data: st.DataObject) -> None:
    cursor = data.draw(st.integers(0, len(text)))
    units = to_kernel_cursor(text, cursor, (5, 1))
    assert units == len(text[:cursor].encode("utf-16-le")) // 2
    assert from_kernel_cursor(text, units, (5, 1)) == cursor


def test_check_cursor_defaults_to_the_end_and_refuses_outside() -> None:
    assert check_cursor("abc", None, cell_id="c1") == 3
    assert check_cursor("abc", 0, cell_id="c1") == 0
    assert check_cursor("abc", 3, cell_id="c1") == 3
    with pytest.raises(InvalidRequest, match="cursor 4 is outside cell 'c1'"):
        check_cursor("abc", 4, cell_id="c1")
    with pytest.raises(InvalidRequest, match="from 0 to 3"):
        check_cursor("abc", -1, cell_id="c1")
