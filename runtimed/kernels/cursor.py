"""Cursor positions between our documents and a kernel (pure).

Our documents index a cell's source in Unicode code points (Automerge Text, and Python
``str``).  The Jupyter messaging protocol does the same since version 5.2 (the spec's section
"Cursor pos and unicode offsets",
https://jupyter-client.readthedocs.io/en/stable/messaging.html#cursor-pos-and-unicode-offsets):
``cursor_pos``, ``cursor_start`` and ``cursor_end`` count code points, and a kernel may read
the positions of a request that declares protocol 5.1 or older as UTF-16 code units, which
JavaScript frontends used to send.  So for a kernel speaking 5.2 or later (ipykernel 7 says
5.3) a position passes unchanged; for an older one it is converted to UTF-16 code units on
the way out and back to code points on the way in.
"""

from __future__ import annotations

from runtimed.errors import InvalidRequest

__all__ = [
    "check_cursor",
    "from_kernel_cursor",
    "protocol_version",
    "to_kernel_cursor",
    "uses_code_points",
]

_CODE_POINTS_SINCE = (5, 2)


def protocol_version(value: object) -> tuple[int, int]:
    """``"5.3"`` → ``(5, 3)``; anything unreadable counts as 5.0 (the oldest we speak)."""
    if not isinstance(value, str):
        return (5, 0)
    parts = value.split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (5, 0)
    return (major, minor)


def uses_code_points(version: tuple[int, int]) -> bool:
    """Whether a kernel of this protocol version counts cursors in code points."""
    return version >= _CODE_POINTS_SINCE


def check_cursor(source: str, cursor: int | None, *, cell_id: str) -> int:
    """The cursor to use: ``cursor``, or the end of ``source`` when None.

    Raises:
        InvalidRequest: the cursor is negative or past the end of the source.
    """
    if cursor is None:
        return len(source)
    if cursor < 0 or cursor > len(source):
        raise InvalidRequest(
            f"cursor {cursor} is outside cell {cell_id!r}, whose source has {len(source)}"
            f" characters; give a position from 0 to {len(source)} (code points)"
        )
    return cursor


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def to_kernel_cursor(source: str, cursor: int, version: tuple[int, int]) -> int:
    """A code-point position in ``source`` as the kernel counts it."""
    if uses_code_points(version):
        return cursor
    return _utf16_units(source[:cursor])


def from_kernel_cursor(source: str, position: int, version: tuple[int, int]) -> int:
    """A position the kernel gave, as code points in ``source`` (clamped to the source: a
    kernel's bad offset must not become ours)."""
    position = max(0, position)
    if uses_code_points(version):
        return min(position, len(source))
    units = 0
    for index, char in enumerate(source):
        if units >= position:
            return index
        units += 2 if ord(char) > 0xFFFF else 1
    return len(source)
