"""The kernel's comms, followed from its IOPub: what a Jupyter widget frontend keeps.

Pure bookkeeping, fed synchronously by the IOPub reader (no I/O of its own; it sends comm
messages to the kernel only through the ``send`` callable it is given).  Follows the Jupyter
messaging spec's "Custom messages" section (``comm_open`` / ``comm_msg`` / ``comm_close``)
and the Jupyter widgets message protocol (version 2): a widget's ``comm_open`` carries
``data.state`` (with ``_model_name``, ``_model_module``, ...) and ``data.buffer_paths``;
``comm_msg`` with ``method: "update"`` (or ``"echo_update"``, ipywidgets 8 echoing a
frontend's update) replaces the top-level state keys it names; ``method: "custom"`` carries no
state.  Binary buffers are put back at their ``buffer_paths`` only in :attr:`Comm.buffers`,
never in :attr:`Comm.state`.

An ``OutputModel`` (``@jupyter-widgets/output``, ``ipywidgets.Output``) is handled as
JupyterLab and nbclient (``nbclient/output_widget.py``) handle it: while its ``msg_id``
state names a request, IOPub outputs whose parent is that request go to the widget's
``outputs`` state instead of the cell's, ``clear_output`` included.  Unlike nbclient, the new
``outputs`` are not sent back to the kernel (see :meth:`CommTracker.feed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from runtimed.errors import CommNotFound, InvalidRequest
from runtimed.kernels.outputs import Output, OutputAccumulator

__all__ = [
    "COMM_MESSAGES",
    "MAX_STATE_BYTES",
    "Comm",
    "CommChange",
    "CommSender",
    "CommTracker",
]

log = logging.getLogger(__name__)

COMM_MESSAGES = frozenset({"comm_open", "comm_msg", "comm_close"})
MAX_STATE_BYTES = 1 << 20
"""Largest JSON state one comm message may carry (binary buffers are not counted: they go
to the blob store).  A larger update is logged and dropped; the comm keeps its old state."""

_CAPTURED = frozenset({"stream", "display_data", "execute_result", "error", "clear_output"})
_OUTPUT_MODEL = ("@jupyter-widgets/output", "OutputModel")
_ENCODER = msgspec.json.Encoder()

BufferPath = tuple[str | int, ...]
CommSender = Callable[[dict[str, Any], list[bytes]], None]
"""``send(content, buffers)``: a ``comm_msg`` to the kernel on its shell channel."""


@dataclass(eq=False, slots=True)
class Comm:
    """One open comm: its target, JSON state (a widget's model state) and binary buffers."""

    comm_id: str
    target_name: str
    state: dict[str, Any] = field(default_factory=dict)
    buffers: dict[BufferPath, bytes] = field(default_factory=dict)
    outputs: OutputAccumulator | None = None  # an Output widget's captured outputs

    @property
    def model(self) -> tuple[str, str, str]:
        """``(model_module, model_name, model_module_version)`` from the state ("" if absent)."""
        return tuple(  # type: ignore[return-value]
            str(self.state.get(key, ""))
            for key in ("_model_module", "_model_name", "_model_module_version")
        )


@dataclass(frozen=True, slots=True)
class CommChange:
    """What changed: ``keys`` of the state (None: the whole comm), or it closed, or every
    comm went away (``comm_id`` None: a new kernel process)."""

    comm_id: str | None
    keys: frozenset[str] | None = None
    closed: bool = False


class CommTracker:
    """The comms of one kernel session's current process."""

    def __init__(self) -> None:
        self.comms: dict[str, Comm] = {}
        self.listener: Callable[[CommChange], None] | None = None
        self._send: CommSender | None = None
        # Output widgets capturing a request's outputs: parent msg_id -> comm ids, innermost
        # last (nested ``with out:`` blocks, as nbclient's output hook stack).
        self._captures: dict[str, list[str]] = {}

    def reset(self, send: CommSender | None) -> None:
        """A new kernel process: no comms yet; ``send`` reaches it."""
        self.comms.clear()
        self._captures.clear()
        self._send = send
        self._notify(CommChange(None))

    def _notify(self, change: CommChange) -> None:
        if self.listener is not None:
            self.listener(change)

    # -- from the kernel ----------------------------------------------------------------

    def feed(self, msg: Mapping[str, Any]) -> bool:
        """Apply one IOPub message; True if it was a comm message or an output an Output
        widget captured (the caller must not also give it to the cell)."""
        msg_type = msg["header"]["msg_type"]
        if msg_type in COMM_MESSAGES:
            try:
                self._comm_message(msg_type, msg["content"], list(msg.get("buffers") or []))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("dropped a %s from the kernel: %s", msg_type, exc)
            return True
        if msg_type not in _CAPTURED or not self._captures:
            return False
        parent = msg["parent_header"].get("msg_id")
        stack = self._captures.get(parent) if isinstance(parent, str) else None
        comm = self.comms.get(stack[-1]) if stack else None
        if comm is None or comm.outputs is None:
            return False
        change = comm.outputs.feed(msg_type, msg["content"])
        if change is not None:
            comm.state["outputs"] = comm.outputs.outputs
            # Not sent back to the kernel as an update (nbclient does): with ipykernel 7.4 a
            # comm_msg arriving while the cell runs inside ``with out:`` hung the cell in 2
            # of 5 runs of nbclient's Output.ipynb.  Output.outputs in the kernel stays as is.
            self._notify(CommChange(comm.comm_id, frozenset({"outputs"})))
        return True

    def _comm_message(self, msg_type: str, content: Mapping[str, Any], buffers: list[Any]) -> None:
        comm_id = content["comm_id"]
        if not isinstance(comm_id, str) or not comm_id:
            raise ValueError(f"comm_id must be a non-empty string, not {comm_id!r}")
        if msg_type == "comm_close":
            if self.comms.pop(comm_id, None) is not None:
                self._drop_captures(comm_id)
                self._notify(CommChange(comm_id, closed=True))
            return
        data = content.get("data") or {}
        if not isinstance(data, dict):
            raise TypeError(f"comm {comm_id}: data must be an object, not {type(data).__name__}")
        if msg_type == "comm_open":
            target = content["target_name"]
            if not isinstance(target, str):
                raise TypeError(f"comm {comm_id}: target_name must be a string")
            state, found = _state_and_buffers(comm_id, data, buffers)
            comm = Comm(comm_id, target, state, found)
            if comm.model[:2] == _OUTPUT_MODEL:
                comm.outputs = _accumulator(state.get("outputs"))
            self.comms[comm_id] = comm
            self._follow_capture(comm)
            self._notify(CommChange(comm_id))
            return
        known = self.comms.get(comm_id)
        if known is None:
            log.warning("dropped a comm_msg for unknown comm %s from the kernel", comm_id)
            return
        if data.get("method") in ("update", "echo_update"):
            self._update(known, data, buffers)

    def _update(self, comm: Comm, data: Mapping[str, Any], buffers: list[Any]) -> None:
        state, found = _state_and_buffers(comm.comm_id, data, buffers)
        if not state:
            return
        keys = frozenset(state)
        for path in [p for p in comm.buffers if p[0] in keys]:
            del comm.buffers[path]
        comm.buffers.update(found)
        comm.state.update(state)
        if comm.outputs is not None and "outputs" in state:
            # The kernel set Output.outputs itself (append_stdout, outputs = ()), or echoes ours.
            if state["outputs"] != comm.outputs.outputs:
                comm.outputs = _accumulator(state["outputs"])
            comm.state["outputs"] = comm.outputs.outputs
        if "msg_id" in state:
            self._follow_capture(comm)
        self._notify(CommChange(comm.comm_id, keys))

    def _follow_capture(self, comm: Comm) -> None:
        if comm.outputs is None:
            return
        self._drop_captures(comm.comm_id)
        msg_id = comm.state.get("msg_id")
        if isinstance(msg_id, str) and msg_id:
            self._captures.setdefault(msg_id, []).append(comm.comm_id)

    def _drop_captures(self, comm_id: str) -> None:
        for msg_id in list(self._captures):
            stack = [c for c in self._captures[msg_id] if c != comm_id]
            if stack:
                self._captures[msg_id] = stack
            else:
                del self._captures[msg_id]

    # -- from a client -------------------------------------------------------------------

    def send(self, comm_id: str, data: dict[str, Any], buffers: list[bytes]) -> None:
        """Send ``data`` (and ``buffers``) to the kernel as a ``comm_msg`` on ``comm_id``;
        an ``update`` also changes the state kept here at once (late clients see it).

        Raises:
            CommNotFound: no open comm has that id.
            InvalidRequest: a state too large, or buffer paths that do not match the buffers.
            KernelNotRunning: the kernel cannot be reached.
        """
        comm = self.comms.get(comm_id)
        if comm is None or self._send is None:
            known = ", ".join(sorted(self.comms)[:5]) or "none"
            raise CommNotFound(
                f"no open comm {comm_id!r} in this notebook's kernel (open comms: {known}); "
                "it may have been closed or the kernel restarted"
            )
        if data.get("method") == "update":
            try:
                _state_and_buffers(comm_id, data, list(buffers))
            except (TypeError, ValueError) as exc:
                raise InvalidRequest(f"comm {comm_id}: {exc}") from exc
        self._send({"comm_id": comm_id, "data": data}, list(buffers))
        if data.get("method") == "update":
            self._update(comm, data, list(buffers))


def _state_and_buffers(
    comm_id: str, data: Mapping[str, Any], buffers: list[Any]
) -> tuple[dict[str, Any], dict[BufferPath, bytes]]:
    """The JSON state of a widget message and its buffers by path (widgets protocol 2).

    Raises ValueError for a state over :data:`MAX_STATE_BYTES` (logged by the caller's
    boundary for kernel messages) and for buffer paths that do not match the buffers.
    """
    state = data.get("state") or {}
    if not isinstance(state, dict):
        raise TypeError(f"state must be an object, not {type(state).__name__}")
    size = len(_ENCODER.encode(state))
    if size > MAX_STATE_BYTES:
        raise ValueError(
            f"comm {comm_id}: a state of {size} bytes exceeds the limit of {MAX_STATE_BYTES}"
            " bytes (send large values as binary buffers); dropped"
        )
    paths = data.get("buffer_paths") or []
    if not isinstance(paths, list) or len(paths) != len(buffers):
        raise ValueError(f"{len(buffers)} buffers but buffer_paths {paths!r}")
    found: dict[BufferPath, bytes] = {}
    for path, buffer in zip(paths, buffers, strict=True):
        if not isinstance(path, list) or not path or not isinstance(path[0], str):
            raise ValueError(f"a buffer path must be a list starting with a key, not {path!r}")
        found[tuple(path)] = bytes(buffer)
    return dict(state), found


def _accumulator(outputs: object) -> OutputAccumulator:
    """An accumulator holding ``outputs`` (an Output widget's state), fed as messages."""
    acc = OutputAccumulator()
    for output in outputs if isinstance(outputs, list | tuple) else []:
        if not isinstance(output, dict):
            continue
        kind = output.get("output_type")
        try:
            if kind == "stream":
                text = output["text"]
                acc.feed("stream", {"name": output["name"], "text": "".join(text)})
            elif kind in ("display_data", "execute_result", "error"):
                acc.feed(kind, _content(output))
        except (KeyError, TypeError):
            log.warning("an Output widget's output is malformed; left out: %.200r", output)
    return acc


def _content(output: Output) -> dict[str, Any]:
    content = {k: v for k, v in output.items() if k != "output_type"}
    content.setdefault("metadata", {})
    return content
