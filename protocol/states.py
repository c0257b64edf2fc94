"""One vocabulary for kernel states and execution statuses.

Both are written by the daemon into a notebook's runtime document (``docs/schema.md``) and
sent in events (``docs/protocol.md``); every module that names one uses these enums. They
are :class:`~enum.StrEnum` members, so a member *is* its string: it compares equal to the
plain string read back from a document or decoded from a ``str`` wire field, and it is
encoded on the wire and in documents as that string.

Forward compatibility — what a client does with a value it does not know:

* **Kernel states** travel in ``str`` fields (``KernelStatusChanged.state``,
  ``KernelInfo.state``, the runtime document's ``kernel.state``) and stay ``str`` there: a
  newer daemon may report a state this client has never heard of (a new lifecycle step such
  as ``building_env`` once was), and an older client must show it, not fail to decode the
  event. Code that reads a state compares it with members and treats an unknown value as
  "something else"; it never calls ``KernelState(value)`` on a value from the wire.
* **Execution statuses** in the runtime document's ``executions[*].status`` are read as
  ``str`` for the same reason. ``ExecutionDone.status`` is typed with :class:`ExecutionStatus`:
  a message with a status outside it fails to decode, as it did when the field was a
  ``Literal``. A new status therefore needs a new protocol version (the handshake refuses a
  mismatch), which is the rule for any change to a field's type (``docs/protocol.md``).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "FAILED",
    "FINISHED",
    "KERNEL_OUTCOMES",
    "NOT_RUN",
    "ExecutionStatus",
    "KernelState",
]


class KernelState(StrEnum):
    """A notebook kernel's state, as the runtime document's ``kernel.state`` tells it.

    A :class:`~runtimed.kernels.session.KernelSession` reports only ``starting``, ``idle``,
    ``busy`` and ``dead``; the daemon's executor adds the others around it.
    """

    NOT_STARTED = "not_started"
    """A new runtime document: no kernel was asked for yet."""
    STARTING = "starting"
    """The kernel is being acquired (taken from the pool or launched)."""
    BUILDING_ENV = "building_env"
    """An environment for the notebook's declared dependencies is being built."""
    IDLE = "idle"
    """Ready, nothing running."""
    BUSY = "busy"
    """An execution is running (kept between back-to-back queued executions)."""
    RESTARTING = "restarting"
    """``restart_kernel`` is replacing the kernel process."""
    DEAD = "dead"
    """Getting a kernel failed, the kernel died, or a restart failed."""
    SHUTDOWN = "shutdown"
    """The kernel was released."""


class ExecutionStatus(StrEnum):
    """An execution's status, from queued to one terminal status (``docs/schema.md``)."""

    QUEUED = "queued"
    RUNNING = "running"
    OK = "ok"
    """The kernel's ``execute_reply`` said ``ok``."""
    ERROR = "error"
    """The kernel's ``execute_reply`` said ``error``, or no kernel could run it."""
    ABORTED = "aborted"
    """The kernel's ``execute_reply`` said ``aborted``."""
    DIED = "died"
    """The kernel process exited while it ran."""
    TIMEOUT = "timeout"
    """It exceeded its timeout and the kernel was interrupted."""
    SKIPPED = "skipped"
    """Never ran: a cell before it failed."""
    CANCELLED = "cancelled"
    """Never ran: the kernel was restarted or the notebook closed while it was queued."""


FINISHED: frozenset[ExecutionStatus] = frozenset(ExecutionStatus) - {
    ExecutionStatus.QUEUED,
    ExecutionStatus.RUNNING,
}
"""The terminal statuses: an execution with one of these never changes again."""

KERNEL_OUTCOMES: frozenset[ExecutionStatus] = frozenset(
    {
        ExecutionStatus.OK,
        ExecutionStatus.ERROR,
        ExecutionStatus.ABORTED,
        ExecutionStatus.DIED,
        ExecutionStatus.TIMEOUT,
    }
)
"""How an execution that started can end."""

FAILED: frozenset[ExecutionStatus] = frozenset(
    {ExecutionStatus.ERROR, ExecutionStatus.DIED, ExecutionStatus.TIMEOUT}
)
"""Failures: the rest of the queue is skipped unless the cell is tagged ``raises-exception``
(nbclient and papermill semantics)."""

NOT_RUN: frozenset[ExecutionStatus] = frozenset(
    {ExecutionStatus.SKIPPED, ExecutionStatus.CANCELLED, ExecutionStatus.ABORTED}
)
"""Terminal statuses of an execution whose code did not run."""
