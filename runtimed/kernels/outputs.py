"""Turn the IOPub messages of ONE execution into its nbformat v4 output list.

Pure bookkeeping: no I/O, no concurrency. :class:`OutputAccumulator` mirrors what nbclient
(0.10/0.11, ``NotebookClient.process_message`` / ``output`` / ``clear_output`` /
``_update_display_id``) stores in ``cell.outputs``, with output dicts shaped exactly like
``nbformat.v4.output_from_msg`` builds them, with ONE deliberate difference:

* **Streams are coalesced and rendered like a terminal.**  nbclient appends every ``stream``
  message as its own output.  We append a chunk to the previous output when that output is a
  stream of the same ``name`` (what Jupyter frontends show and what nbformat's writers do),
  and interpret ``\\r`` (cursor to the start of the line, following characters overwrite) and
  ``\\b`` (cursor one column left, nothing erased) the way a terminal displays them, so a
  progress bar ends up as its last state instead of thousands of chunks.  Applying
  :func:`coalesce_streams` to nbclient's raw list yields exactly our list.  (nbclient's own
  opt-in ``coalesce_streams`` differs: it merges *non-consecutive* streams into the first one
  of the same name, and erases everything before a ``\\r`` instead of overwriting it.)

Not modelled (same as nbclient without ipywidgets): comm messages and the
``jupyter.widget.Output`` capture hook; they produce no outputs.  Display ids are tracked for
this execution only; :attr:`OutputChange.display_update` lets the caller apply an update to
outputs of *other* cells carrying the same display id (nbclient keeps a notebook-wide map).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ChangeKind",
    "DisplayUpdate",
    "Output",
    "OutputAccumulator",
    "OutputChange",
    "coalesce_streams",
]

Output = dict[str, Any]
"""One nbformat v4 output, e.g. ``{"output_type": "stream", "name": "stdout", "text": "hi"}``."""

ChangeKind = Literal["append", "replace", "clear"]

# Output-producing IOPub message types (messaging spec, "IOPub" section); anything else that
# reaches ``feed`` and is not handled explicitly (status, comm_*, debug_event, ...) is ignored.
_OUTPUT_TYPES = frozenset({"stream", "display_data", "execute_result", "error"})
_CONTROL = re.compile(r"[\r\n\b]|[^\r\n\b]+")


class _TerminalText:
    """Text written to a terminal-like line buffer, in O(total length).

    Finished lines are kept as a list of chunks and joined lazily; the current line lives in a
    :class:`io.StringIO` so an overwrite after ``\\r``/``\\b`` costs O(length written), not
    O(line length).  (CPython's StringIO treats seek offsets as character positions.)
    """

    __slots__ = ("_cached", "_cursor", "_done", "_line", "_line_len")

    def __init__(self) -> None:
        self._done: list[str] = []
        self._line = io.StringIO(newline="")
        self._line_len = 0
        self._cursor = 0
        self._cached: str | None = ""

    def write(self, text: str) -> None:
        if not text:
            return
        self._cached = None
        if self._cursor == self._line_len and "\r" not in text and "\b" not in text:
            # Fast path: plain appended text, the overwhelmingly common case.
            last_nl = text.rfind("\n")
            if last_nl < 0:
                self._put(text)
                return
            self._done.append(self._take_line() + text[: last_nl + 1])
            self._put(text[last_nl + 1 :])
            return
        for token in _CONTROL.findall(text):
            if token == "\n":
                self._done.append(self._take_line() + "\n")
            elif token == "\r":
                self._cursor = 0
                self._line.seek(0)
            elif token == "\b":
                if self._cursor:
                    self._cursor -= 1
                    self._line.seek(self._cursor)
            else:
                self._put(token)

    def _put(self, run: str) -> None:
        if run:
            self._line.write(run)  # overwrites at the cursor, extends past the end
            self._cursor += len(run)
            self._line_len = max(self._line_len, self._cursor)

    def _take_line(self) -> str:
        if not self._line_len:
            return ""
        line = self._line.getvalue()
        self._line = io.StringIO(newline="")
        self._line_len = self._cursor = 0
        return line

    @property
    def text(self) -> str:
        if self._cached is None:
            done = "".join(self._done)
            self._done = [done] if done else []
            self._cached = done + self._line.getvalue() if self._line_len else done
        return self._cached


class _Stream:
    """A coalesced ``stream`` output under construction."""

    __slots__ = ("_output", "name", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = _TerminalText()
        self._output: Output | None = None

    def write(self, text: str) -> None:
        self.text.write(text)
        self._output = None

    def output(self) -> Output:
        if self._output is None:
            self._output = {"output_type": "stream", "name": self.name, "text": self.text.text}
        return self._output


@dataclass(frozen=True, slots=True)
class DisplayUpdate:
    """New ``data``/``metadata`` for every output carrying ``display_id``, in any cell.

    Emitted for ``update_display_data`` and for ``display_data``/``execute_result`` messages
    whose ``transient.display_id`` is set (nbclient updates earlier outputs with the same id
    in both cases).  Apply it to the *other* cells' outputs: replace their ``data`` and
    ``metadata``, keep every other key.
    """

    display_id: str
    data: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True, eq=False)
class OutputChange:
    """What one IOPub message changed in an execution's output list.

    ``kind``:

    * ``"append"``: a new output was added; it is ``indices[-1]`` (the last output).  Any
      earlier entries of ``indices`` are outputs of this execution rewritten in place by the
      same message (a re-used display id).
    * ``"replace"``: the outputs at ``indices`` changed in place (a stream grew, or a display
      id was updated).  ``indices`` may be empty when the display id lives only in other
      cells; see ``display_update``.
    * ``"clear"``: the list was reset; re-read it entirely.  It may already hold the output
      that triggered a deferred ``clear_output(wait=True)``; ``indices`` lists what it holds.

    ``outputs`` materializes the accumulator's list *when read* (it reflects later messages if
    read later), so a caller that rate-limits its writes only pays for the reads it makes.
    """

    kind: ChangeKind
    indices: tuple[int, ...]
    display_update: DisplayUpdate | None
    accumulator: OutputAccumulator = field(repr=False)

    @property
    def outputs(self) -> list[Output]:
        """The accumulator's current output list (see :attr:`OutputAccumulator.outputs`)."""
        return self.accumulator.outputs


class OutputAccumulator:
    """Builds the nbformat v4 output list of one execution from its IOPub messages."""

    def __init__(self) -> None:
        self._items: list[Output | _Stream] = []
        self._display_index: dict[str, list[int]] = {}
        self._clear_pending = False
        self.execution_count: int | None = None
        """From ``execute_input`` / ``execute_result`` (any content carrying the key)."""

    @property
    def outputs(self) -> list[Output]:
        """The outputs so far, as a new list; treat the dicts in it as read-only."""
        return [item.output() if isinstance(item, _Stream) else item for item in self._items]

    @property
    def display_ids(self) -> dict[str, tuple[int, ...]]:
        """Display id -> indices of this execution's outputs carrying it (after any clear).

        Keep it with the cell's outputs to apply later :class:`DisplayUpdate` s from other
        executions (output dicts do not record their display id: it is transient).
        """
        return {key: tuple(idx) for key, idx in self._display_index.items() if idx}

    def feed(self, msg_type: str, content: Mapping[str, Any]) -> OutputChange | None:
        """Apply one IOPub message (its ``msg_type`` and ``content``) of this execution.

        Returns what changed, or ``None`` when the output list is unchanged (``status``,
        ``execute_input``, ``clear_output(wait=True)``, comms, unknown types).
        """
        # nbclient: any content carrying execution_count sets the cell's prompt number; per
        # spec that is execute_input and execute_result.
        if "execution_count" in content:
            self.execution_count = content["execution_count"]
        if msg_type in _OUTPUT_TYPES:
            return self._output(msg_type, content)
        if msg_type == "update_display_data":
            display_id = _display_id(content)
            if display_id is None:
                return None
            update = DisplayUpdate(display_id, content["data"], content["metadata"])
            return OutputChange("replace", self._apply(update), update, self)
        if msg_type == "clear_output":
            # Spec: wait=True defers the clear until the next output arrives.
            if content.get("wait"):
                self._clear_pending = True
                return None
            self._reset()
            return OutputChange("clear", (), None, self)
        return None

    def _output(self, msg_type: str, content: Mapping[str, Any]) -> OutputChange:
        display_id = _display_id(content) if msg_type != "stream" else None
        update: DisplayUpdate | None = None
        rewritten: tuple[int, ...] = ()
        if display_id is not None:
            update = DisplayUpdate(display_id, content["data"], content["metadata"])
            rewritten = self._apply(update)
        cleared = self._clear_pending
        if cleared:
            self._reset()
            rewritten = ()
        items = self._items
        if msg_type == "stream":
            last = items[-1] if items else None
            if isinstance(last, _Stream) and last.name == content["name"]:
                # Never after a deferred clear: the list was just emptied.
                last.write(content["text"])
                return OutputChange("replace", (len(items) - 1,), None, self)
            stream = _Stream(content["name"])
            stream.write(content["text"])
            items.append(stream)
        else:
            if display_id is not None:
                self._display_index.setdefault(display_id, []).append(len(items))
            items.append(_to_output(msg_type, content))
        if cleared:
            return OutputChange("clear", tuple(range(len(items))), update, self)
        return OutputChange("append", (*rewritten, len(items) - 1), update, self)

    def _apply(self, update: DisplayUpdate) -> tuple[int, ...]:
        indices = tuple(self._display_index.get(update.display_id, ()))
        for i in indices:
            old = self._items[i]
            assert isinstance(old, dict)
            self._items[i] = {**old, "data": update.data, "metadata": update.metadata}
        return indices

    def _reset(self) -> None:
        self._items = []
        self._display_index.clear()
        self._clear_pending = False


def _display_id(content: Mapping[str, Any]) -> str | None:
    # nbclient: ``transient`` may be present and explicitly None.
    transient = content.get("transient")
    display_id = transient.get("display_id") if transient else None
    return display_id if isinstance(display_id, str) and display_id else None


def _to_output(msg_type: str, content: Mapping[str, Any]) -> Output:
    """The output ``nbformat.v4.output_from_msg`` builds (same keys, no validation)."""
    if msg_type == "error":
        return {
            "output_type": "error",
            "ename": content["ename"],
            "evalue": content["evalue"],
            "traceback": content["traceback"],
        }
    out: Output = {
        "output_type": msg_type,
        "metadata": content["metadata"],
        "data": content["data"],
    }
    if msg_type == "execute_result":
        out["execution_count"] = content["execution_count"]
    return out


def coalesce_streams(outputs: Iterable[Mapping[str, Any]]) -> list[Output]:
    """Coalesce consecutive same-name ``stream`` outputs exactly as the accumulator does.

    Useful to compare an nbclient (raw, one output per stream message) list with ours, or to
    normalize outputs loaded from a notebook.  Non-stream outputs are copied shallowly.
    """
    result: list[Output | _Stream] = []
    for out in outputs:
        if out.get("output_type") == "stream":
            last = result[-1] if result else None
            if not (isinstance(last, _Stream) and last.name == out["name"]):
                last = _Stream(out["name"])
                result.append(last)
            text = out["text"]
            last.write(text if isinstance(text, str) else "".join(text))
        else:
            result.append(dict(out))
    return [item.output() if isinstance(item, _Stream) else item for item in result]
