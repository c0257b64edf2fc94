"""A notebook's execution queue as a pure state machine: commands in, effects out.

Everything that decides what runs, in which order and how each execution ends lives here
(the model is h11's ``_state.py``). :class:`ExecutionQueue` does no I/O: it reads no clock,
draws no randomness (execution ids come from a factory it is given), touches no document,
kernel or socket. :class:`~runtimed.daemon.executor.NotebookExecutor` is its I/O shell: it
turns requests and kernel results into :data:`Command` values, hands them to
:meth:`ExecutionQueue.handle`, and performs the :data:`Effect` values it gets back, in order
(runtime-document writes, events to every client, kernel requests). No rule depends on time
today; one that does will get the time in its command.

One execution's life (:data:`TRANSITIONS`, the only place a status change is allowed)::

    (new) --queue--> queued --start--> running --finish--> ok | error | aborted | died | timeout
                     queued --skip---> skipped      a cell before it failed
                     queued --cancel-> cancelled    the kernel was restarted / notebook closed

The rules (``docs/schema.md`` "The execution queue"):

1. **FIFO, one at a time.** Executions start in the order they were queued; one runs at a
   time. :class:`StartNext` starts the head, and only when nothing runs.
2. **Only code runs.** :class:`QueueCell` refuses a markdown or raw cell
   (:class:`~runtimed.errors.CellNotCode`) and a blank one (:class:`~runtimed.errors.CellEmpty`);
   :class:`QueueAll` passes over those and every cell tagged ``skip-execution``, in document
   order (papermill/nbclient semantics; ``QueueCell`` runs a ``skip-execution`` cell: it was
   asked for by name).
3. **Stop after a failure.** When an execution ends with a status in
   :data:`~protocol.states.FAILED` (error, died, timeout), everything still queued ends
   ``skipped`` — unless the cell is tagged ``raises-exception`` and its own code raised
   (status ``error``): a timeout or a death stops the run even then (papermill semantics).
4. **Restart and close cancel what waits.** Everything queued ends ``cancelled``, with the
   reason; the running execution ends by its own outcome (a restart kills the process it
   runs in: ``died``).
5. **Interrupt only what runs.** :class:`Interrupt` asks for a kernel interrupt only when an
   execution runs (or was sent ahead); the execution then ends by its outcome (usually
   ``error`` with ``KeyboardInterrupt``, which is rule 3).
6. **Send ahead after success only.** When an execution ends ``ok``, the next one (unless it
   may ask for input: its prompt must not come before it runs) is sent to the kernel before
   the finished one is recorded, so the kernel does not wait on the daemon. Never after a
   failure: ipykernel aborts only the requests queued when a cell fails.
7. **A death shows in the notebook.** Its error is appended to the cell's outputs as an
   ``error`` output. A timeout adds nothing: the kernel's own ``KeyboardInterrupt`` output
   (from the interrupt) shows it, exactly as nbclient/papermill record it.
8. **Forget old records.** Finished executions are remembered in the order they finished
   (seeded, oldest first, from the document); once there are more than
   ``keep_executions + FORGET_SLACK`` the oldest are dropped down to ``keep_executions``, in
   one batch.

A kernel's death reaches the queue as the running execution's :class:`Finished` with status
``died`` (the kernel session reports it); nothing else changes, and the next execution gets a
fresh kernel (the executor's job). An invalid command — finishing an execution that does not
run, starting with nothing queued — raises :class:`InvalidTransition` and changes nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, assert_never

from protocol.messages import ExecutionDone, ExecutionStarted
from protocol.states import FAILED, KERNEL_OUTCOMES, ExecutionStatus
from runtimed.documents.notebook import Cell
from runtimed.errors import CellEmpty, CellNotCode, InternalError

__all__ = [
    "FORGET_SLACK",
    "TRANSITIONS",
    "AbandonSent",
    "Broadcast",
    "CancelReason",
    "Close",
    "Command",
    "Effect",
    "Entry",
    "Execute",
    "ExecutionQueue",
    "Finished",
    "ForgetRecords",
    "Interrupt",
    "InterruptKernel",
    "InvalidTransition",
    "QueueAll",
    "QueueCell",
    "RecordNotRun",
    "RecordOutcome",
    "RecordQueued",
    "RecordRunning",
    "Restart",
    "SendAhead",
    "SentAhead",
    "StartNext",
    "Trigger",
    "cell_tags",
]

Output = dict[str, Any]
"""An nbformat output dict."""

FORGET_SLACK: Final = 50
"""Finished records beyond ``keep_executions`` tolerated before a batch is forgotten."""

RAISES_EXCEPTION: Final = "raises-exception"
SKIP_EXECUTION: Final = "skip-execution"


class Trigger(StrEnum):
    """What moves one execution from a status to the next."""

    START = "start"
    FINISH = "finish"
    SKIP = "skip"
    CANCEL = "cancel"


_S = ExecutionStatus
TRANSITIONS: Final[Mapping[ExecutionStatus, Mapping[Trigger, frozenset[ExecutionStatus]]]] = {
    _S.QUEUED: {
        Trigger.START: frozenset({_S.RUNNING}),
        Trigger.SKIP: frozenset({_S.SKIPPED}),
        Trigger.CANCEL: frozenset({_S.CANCELLED}),
    },
    _S.RUNNING: {Trigger.FINISH: KERNEL_OUTCOMES},
    # Every status in FINISHED is terminal: no entry, nothing moves it.
}
"""status -> trigger -> the statuses it may lead to. A status absent here is terminal."""


class CancelReason(StrEnum):
    """Why queued executions end ``cancelled`` (their record's ``evalue``)."""

    RESTART = "the kernel was restarted"
    CLOSE = "the notebook was closed"


class InvalidTransition(InternalError):
    """A command the queue's state does not allow (a bug in the caller, not bad input)."""


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Entry:
    """One execution the queue knows: what to run and how."""

    execution_id: str
    cell_id: str
    source: str
    tags: frozenset[str]
    seq: int
    """Order of queueing (the runtime document's ``executions[*].seq``)."""
    allow_stdin: bool = False
    timeout: float | None = None

    @property
    def raises_exception(self) -> bool:
        return RAISES_EXCEPTION in self.tags


# ---------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class QueueCell:
    """Queue one cell (rule 2 refuses it if it is not a non-blank code cell)."""

    cell: Cell
    allow_stdin: bool = False
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class QueueAll:
    """Queue every code cell that is not blank or tagged ``skip-execution``, in this order."""

    cells: Sequence[Cell]
    allow_stdin: bool = False
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class StartNext:
    """Start the head of the queue (the executor is ready to run one)."""


@dataclass(frozen=True, slots=True)
class SentAhead:
    """The kernel accepted the execution a :class:`SendAhead` effect asked for."""

    execution_id: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The running execution ended on the kernel (or could not get one: ``error``)."""

    execution_id: str
    status: ExecutionStatus
    execution_count: int | None = None
    outputs: Sequence[Output] = ()
    ename: str | None = None
    evalue: str | None = None
    traceback: Sequence[str] = ()
    display_ids: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Display ids the outputs showed (opaque to the queue; passed on to the record)."""


@dataclass(frozen=True, slots=True)
class Interrupt:
    """A client asked to interrupt the kernel."""


@dataclass(frozen=True, slots=True)
class Restart:
    """The kernel is about to be restarted."""


@dataclass(frozen=True, slots=True)
class Close:
    """The notebook is closing."""


Command = QueueCell | QueueAll | StartNext | SentAhead | Finished | Interrupt | Restart | Close

# ---------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class RecordQueued:
    """Runtime document: add the execution's record (``queued``) and append it to ``queue``."""

    execution_id: str
    cell_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class RecordRunning:
    """Runtime document: the record is ``running``; the cell's outputs and count are cleared
    as a run begins (Jupyter semantics)."""

    execution_id: str
    cell_id: str


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """Runtime document: the cell's final outputs and count, the record's terminal status."""

    execution_id: str
    cell_id: str
    status: ExecutionStatus
    execution_count: int | None
    outputs: tuple[Output, ...]
    ename: str | None
    evalue: str | None
    display_ids: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordNotRun:
    """Runtime document: the record ends ``skipped`` or ``cancelled``; ``reason`` is its
    ``evalue``."""

    execution_id: str
    status: ExecutionStatus
    reason: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send this event to every client of the notebook (after the document writes before it
    are marked for sync)."""

    event: ExecutionStarted | ExecutionDone


@dataclass(frozen=True, slots=True)
class Execute:
    """Kernel: run ``entry`` (get a kernel first if there is none) and report its
    :class:`Finished`. ``sent_ahead``: its request already went out (:class:`SentAhead`);
    wait for that one instead of sending it again."""

    entry: Entry
    sent_ahead: bool


@dataclass(frozen=True, slots=True)
class SendAhead:
    """Kernel: send ``entry`` now, to run after the current one; report :class:`SentAhead`
    if the kernel took it (otherwise it is sent when it starts)."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class AbandonSent:
    """Kernel: forget the request sent ahead for this execution (it will not run here)."""

    execution_id: str


@dataclass(frozen=True, slots=True)
class InterruptKernel:
    """Kernel: interrupt (SIGINT or ``interrupt_request``)."""


@dataclass(frozen=True, slots=True)
class ForgetRecords:
    """Runtime document: delete these finished execution records."""

    execution_ids: tuple[str, ...]


Effect = (
    RecordQueued
    | RecordRunning
    | RecordOutcome
    | RecordNotRun
    | Broadcast
    | Execute
    | SendAhead
    | AbandonSent
    | InterruptKernel
    | ForgetRecords
)

# ---------------------------------------------------------------------------- the machine


def cell_tags(cell: Cell) -> frozenset[str]:
    """The cell's ``metadata.tags`` (nbformat), ignoring anything that is not a string."""
    tags = cell.metadata.get("tags", [])
    if not isinstance(tags, list):
        return frozenset()
    return frozenset(t for t in tags if isinstance(t, str))


def _runnable(cell: Cell) -> bool:
    return cell.cell_type == "code" and bool(cell.source.strip())


class ExecutionQueue:
    """One notebook's execution queue (see the module docstring for its rules).

    Args:
        notebook_id: named in the events it emits.
        new_execution_id: returns a fresh, unique execution id per call.
        keep_executions: finished records to keep (rule 8).
        finished: ids of finished executions already in the document, oldest first.
        next_seq: the ``seq`` of the next execution queued.
    """

    def __init__(
        self,
        notebook_id: str,
        *,
        new_execution_id: Callable[[], str],
        keep_executions: int,
        finished: Iterable[str] = (),
        next_seq: int = 1,
    ) -> None:
        self.notebook_id = notebook_id
        self._new_id = new_execution_id
        self._keep = keep_executions
        self._finished: collections.deque[str] = collections.deque(finished)
        self._seq = next_seq
        self._waiting: collections.deque[Entry] = collections.deque()
        self._running: Entry | None = None
        self._sent_ahead: str | None = None

    # ------------------------------------------------------------ reads

    @property
    def running(self) -> Entry | None:
        """The execution that runs now."""
        return self._running

    @property
    def waiting(self) -> tuple[Entry, ...]:
        """The executions queued, head first."""
        return tuple(self._waiting)

    @property
    def has_waiting(self) -> bool:
        return bool(self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing runs and nothing waits."""
        return self._running is None and not self._waiting

    @property
    def can_start(self) -> bool:
        """:class:`StartNext` would start an execution."""
        return self._running is None and bool(self._waiting)

    @property
    def sent_ahead(self) -> str | None:
        """The queued execution whose request the kernel already holds."""
        return self._sent_ahead

    @property
    def finished_count(self) -> int:
        """Finished records remembered (rule 8)."""
        return len(self._finished)

    def get(self, execution_id: str) -> Entry | None:
        """The queued or running execution with this id."""
        if self._running is not None and self._running.execution_id == execution_id:
            return self._running
        for entry in self._waiting:
            if entry.execution_id == execution_id:
                return entry
        return None

    def status(self, execution_id: str) -> ExecutionStatus | None:
        """``queued`` or ``running``; None for an execution that is neither."""
        if self._running is not None and self._running.execution_id == execution_id:
            return ExecutionStatus.RUNNING
        if any(e.execution_id == execution_id for e in self._waiting):
            return ExecutionStatus.QUEUED
        return None

    # ------------------------------------------------------------ commands

    def reserve_seq(self, seq: int) -> None:
        """Executions queued from now on get a ``seq`` above ``seq`` (one recorded by other
        means: an adopted kernel's)."""
        self._seq = max(self._seq, seq + 1)

    def handle(self, command: Command) -> list[Effect]:
        """Apply ``command``; return the effects to perform, in order.

        Raises:
            CellNotCode, CellEmpty: :class:`QueueCell` of a cell that cannot run.
            InvalidTransition: the command is not allowed now (nothing changed).
        """
        match command:
            case QueueCell():
                if command.cell.cell_type != "code":
                    raise CellNotCode(
                        f"cell {command.cell.id!r} is a {command.cell.cell_type} cell; "
                        "only code cells can be executed"
                    )
                if not command.cell.source.strip():
                    raise CellEmpty(
                        f"cell {command.cell.id!r} is empty; there is nothing to execute"
                    )
                return [self._queue(command.cell, command.allow_stdin, command.timeout)]
            case QueueAll():
                return [
                    self._queue(cell, command.allow_stdin, command.timeout)
                    for cell in command.cells
                    if _runnable(cell) and SKIP_EXECUTION not in cell_tags(cell)
                ]
            case StartNext():
                return self._start()
            case SentAhead():
                return self._sent(command.execution_id)
            case Finished():
                return self._finish(command)
            case Interrupt():
                active = self._running is not None or self._sent_ahead is not None
                return [InterruptKernel()] if active else []
            case Restart():
                return self._cancel_waiting(CancelReason.RESTART)
            case Close():
                return self._cancel_waiting(CancelReason.CLOSE)
            case _:
                assert_never(command)

    # ------------------------------------------------------------ transitions

    @staticmethod
    def _check(
        entry: Entry, current: ExecutionStatus, trigger: Trigger, new: ExecutionStatus
    ) -> None:
        allowed = TRANSITIONS.get(current, {}).get(trigger, frozenset())
        if new not in allowed:
            raise InvalidTransition(
                f"execution {entry.execution_id!r} is {current}; {trigger} cannot make it {new}"
            )

    def _queue(self, cell: Cell, allow_stdin: bool, timeout: float | None) -> RecordQueued:
        entry = Entry(
            execution_id=self._new_id(),
            cell_id=cell.id,
            source=cell.source,
            tags=cell_tags(cell),
            seq=self._seq,
            allow_stdin=allow_stdin,
            timeout=timeout,
        )
        self._seq += 1
        self._waiting.append(entry)
        return RecordQueued(entry.execution_id, entry.cell_id, entry.seq)

    def _start(self) -> list[Effect]:
        if self._running is not None:
            raise InvalidTransition(
                f"execution {self._running.execution_id!r} is still running; one runs at a time"
            )
        if not self._waiting:
            raise InvalidTransition("nothing is queued")
        entry = self._waiting[0]
        self._check(entry, _S.QUEUED, Trigger.START, _S.RUNNING)
        self._waiting.popleft()
        self._running = entry
        sent_ahead = self._sent_ahead == entry.execution_id
        self._sent_ahead = None
        return [
            RecordRunning(entry.execution_id, entry.cell_id),
            Broadcast(
                ExecutionStarted(
                    notebook_id=self.notebook_id,
                    cell_id=entry.cell_id,
                    execution_id=entry.execution_id,
                )
            ),
            Execute(entry, sent_ahead=sent_ahead),
        ]

    def _sent(self, execution_id: str) -> list[Effect]:
        head = self._waiting[0] if self._waiting else None
        if head is None or head.execution_id != execution_id or self._sent_ahead is not None:
            # Cancelled (or skipped) while it was being sent: it must not run.
            return [AbandonSent(execution_id)]
        self._sent_ahead = execution_id
        return []

    def _finish(self, command: Finished) -> list[Effect]:
        entry = self._running
        if entry is None or entry.execution_id != command.execution_id:
            raise InvalidTransition(f"execution {command.execution_id!r} is not running")
        try:
            status = ExecutionStatus(command.status)
        except ValueError:
            raise InvalidTransition(f"{command.status!r} is not an execution status") from None
        self._check(entry, _S.RUNNING, Trigger.FINISH, status)
        self._running = None
        self._finished.append(entry.execution_id)
        effects: list[Effect] = []
        head = self._waiting[0] if self._waiting else None
        if status is _S.OK and head is not None and not head.allow_stdin:
            effects.append(SendAhead(head))  # rule 6
        outputs = tuple(command.outputs)
        if status is _S.DIED and command.ename is not None:
            outputs += (
                {
                    "output_type": "error",
                    "ename": command.ename,
                    "evalue": command.evalue or "",
                    "traceback": list(command.traceback),
                },
            )  # rule 7
        effects.append(
            RecordOutcome(
                entry.execution_id,
                entry.cell_id,
                status,
                command.execution_count,
                outputs,
                command.ename,
                command.evalue,
                command.display_ids,
            )
        )
        effects.append(
            Broadcast(
                ExecutionDone(
                    notebook_id=self.notebook_id,
                    cell_id=entry.cell_id,
                    execution_id=entry.execution_id,
                    status=status,
                    execution_count=command.execution_count,
                    ename=command.ename,
                    evalue=command.evalue,
                    traceback=list(command.traceback),
                )
            )
        )
        if status in FAILED and not (status is _S.ERROR and entry.raises_exception):  # rule 3
            reason = f"skipped: cell {entry.cell_id!r} failed before it"
            effects += self._end_waiting(Trigger.SKIP, _S.SKIPPED, reason)
        effects += self._forget()
        return effects

    def _cancel_waiting(self, reason: CancelReason) -> list[Effect]:
        return self._end_waiting(Trigger.CANCEL, _S.CANCELLED, str(reason))

    def _end_waiting(self, trigger: Trigger, status: ExecutionStatus, reason: str) -> list[Effect]:
        effects: list[Effect] = []
        if self._sent_ahead is not None:
            effects.append(AbandonSent(self._sent_ahead))
            self._sent_ahead = None
        while self._waiting:
            entry = self._waiting[0]
            self._check(entry, _S.QUEUED, trigger, status)
            self._waiting.popleft()
            self._finished.append(entry.execution_id)
            effects.append(RecordNotRun(entry.execution_id, status, reason))
            effects.append(
                Broadcast(
                    ExecutionDone(
                        notebook_id=self.notebook_id,
                        cell_id=entry.cell_id,
                        execution_id=entry.execution_id,
                        status=status,
                        evalue=reason,
                    )
                )
            )
        return effects

    def _forget(self) -> list[Effect]:
        if len(self._finished) <= self._keep + FORGET_SLACK:
            return []
        drop = tuple(self._finished.popleft() for _ in range(len(self._finished) - self._keep))
        return [ForgetRecords(drop)]
