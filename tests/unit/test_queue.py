"""The pure execution queue: one test per rule, and random command sequences (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from protocol.messages import ExecutionDone, ExecutionStarted
from protocol.states import FAILED, FINISHED, KERNEL_OUTCOMES, NOT_RUN, ExecutionStatus
from runtimed.daemon.queue import (
    FORGET_SLACK,
    TRANSITIONS,
    AbandonSent,
    Broadcast,
    CancelReason,
    Close,
    Effect,
    Execute,
    ExecutionQueue,
    Finished,
    ForgetRecords,
    Interrupt,
    InterruptKernel,
    InvalidTransition,
    QueueAll,
    QueueCell,
    RecordNotRun,
    RecordOutcome,
    RecordQueued,
    RecordRunning,
    Restart,
    SendAhead,
    SentAhead,
    StartNext,
    Trigger,
    cell_tags,
)
from runtimed.documents.notebook import Cell
from runtimed.errors import CellEmpty, CellNotCode, InternalError

S = ExecutionStatus


def code(cell_id: str, source: str = "1+1", *tags: str) -> Cell:
    return Cell(id=cell_id, cell_type="code", source=source, metadata={"tags": list(tags)})


def make_queue(
    *, keep: int = 1000, finished: Sequence[str] = (), next_seq: int = 1
) -> ExecutionQueue:
    counter = itertools.count(1)
    return ExecutionQueue(
        "nb",
        new_execution_id=lambda: f"e{next(counter)}",
        keep_executions=keep,
        finished=finished,
        next_seq=next_seq,
    )


def queued_ids(effects: list[Effect]) -> list[str]:
    return [e.execution_id for e in effects if isinstance(e, RecordQueued)]


def events(effects: list[Effect]) -> list[ExecutionStarted | ExecutionDone]:
    return [e.event for e in effects if isinstance(e, Broadcast)]


def start(queue: ExecutionQueue) -> Execute:
    effects = queue.handle(StartNext())
    execute = effects[-1]
    assert isinstance(execute, Execute)
    return execute


def types(effects: list[Effect]) -> list[type]:
    return [type(e) for e in effects]


# ------------------------------------------------------------------ the table


def test_terminal_statuses_have_no_transitions() -> None:
    assert set(TRANSITIONS) == {S.QUEUED, S.RUNNING}
    assert not FINISHED & set(TRANSITIONS)


def test_the_table_reaches_every_status() -> None:
    reached = {s for by_trigger in TRANSITIONS.values() for to in by_trigger.values() for s in to}
    assert reached | {S.QUEUED} == set(ExecutionStatus)
    assert TRANSITIONS[S.RUNNING][Trigger.FINISH] == KERNEL_OUTCOMES


def test_state_vocabulary_sets() -> None:
    assert FAILED < KERNEL_OUTCOMES
    assert S.OK not in FAILED
    assert S.ABORTED not in FAILED
    assert NOT_RUN < FINISHED
    assert "ok" in FINISHED
    assert "queued" not in FINISHED


# ------------------------------------------------------------------ rule 1: FIFO, one at a time


def test_queue_cell_records_it_with_increasing_seq() -> None:
    queue = make_queue(next_seq=7)
    first = queue.handle(QueueCell(code("a")))
    second = queue.handle(QueueCell(code("b"), allow_stdin=True, timeout=2.5))
    assert first == [RecordQueued("e1", "a", 7)]
    assert second == [RecordQueued("e2", "b", 8)]
    assert [e.execution_id for e in queue.waiting] == ["e1", "e2"]
    assert queue.waiting[1].allow_stdin
    assert queue.waiting[1].timeout == 2.5
    assert queue.status("e1") is S.QUEUED
    assert not queue.idle


def test_start_takes_the_head_and_announces_it() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a", "x = 1")))
    queue.handle(QueueCell(code("b")))
    effects = queue.handle(StartNext())
    assert effects[0] == RecordRunning("e1", "a")
    assert events(effects) == [ExecutionStarted(notebook_id="nb", cell_id="a", execution_id="e1")]
    execute = effects[2]
    assert isinstance(execute, Execute)
    assert execute.entry.source == "x = 1"
    assert not execute.sent_ahead
    assert queue.running is not None
    assert queue.running.execution_id == "e1"
    assert queue.status("e1") is S.RUNNING
    assert not queue.can_start


def test_only_one_runs_at_a_time() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    start(queue)
    with pytest.raises(InvalidTransition, match="still running"):
        queue.handle(StartNext())
    assert [e.execution_id for e in queue.waiting] == ["e2"]


def test_starting_with_nothing_queued_is_refused() -> None:
    queue = make_queue()
    with pytest.raises(InvalidTransition, match="nothing is queued"):
        queue.handle(StartNext())
    assert issubclass(InvalidTransition, InternalError)


def test_executions_run_in_the_order_they_were_queued() -> None:
    queue = make_queue()
    for name in "abc":
        queue.handle(QueueCell(code(name)))
    order = []
    while queue.can_start:
        entry = start(queue).entry
        order.append(entry.cell_id)
        queue.handle(Finished(entry.execution_id, S.OK))
    assert order == ["a", "b", "c"]
    assert queue.idle


# ------------------------------------------------------------------ rule 2: only code runs


def test_markdown_and_blank_cells_are_refused_and_nothing_changes() -> None:
    queue = make_queue()
    with pytest.raises(CellNotCode, match="'m' is a markdown cell"):
        queue.handle(QueueCell(Cell(id="m", cell_type="markdown", source="# hi")))
    with pytest.raises(CellEmpty, match="'b' is empty"):
        queue.handle(QueueCell(code("b", " \n\t")))
    assert queue.idle
    assert queue.handle(QueueCell(code("c"))) == [RecordQueued("e1", "c", 1)]  # no id used


def test_queue_all_passes_over_markdown_blank_and_skip_execution_in_document_order() -> None:
    queue = make_queue()
    cells = [
        code("a"),
        Cell(id="m", cell_type="markdown", source="text"),
        code("blank", "   "),
        code("skipped", "1", "skip-execution"),
        Cell(id="r", cell_type="raw", source="raw"),
        code("b", "2", "other"),
    ]
    effects = queue.handle(QueueAll(cells, timeout=1.0))
    assert effects == [RecordQueued("e1", "a", 1), RecordQueued("e2", "b", 2)]
    assert all(e.timeout == 1.0 for e in queue.waiting)


def test_queue_cell_runs_a_skip_execution_cell_asked_for_by_name() -> None:
    queue = make_queue()
    assert queued_ids(queue.handle(QueueCell(code("s", "1", "skip-execution")))) == ["e1"]


def test_tags_other_than_a_list_of_strings_are_ignored() -> None:
    assert cell_tags(Cell(id="a", cell_type="code", source="1", metadata={"tags": "x"})) == set()
    mixed = Cell(id="a", cell_type="code", source="1", metadata={"tags": ["t", 3, None]})
    assert cell_tags(mixed) == {"t"}


# ------------------------------------------------------------------ rule 3: stop after a failure


@pytest.mark.parametrize("status", sorted(FAILED))
def test_a_failure_skips_everything_still_queued(status: ExecutionStatus) -> None:
    queue = make_queue()
    for name in "abc":
        queue.handle(QueueCell(code(name)))
    entry = start(queue).entry
    effects = queue.handle(Finished(entry.execution_id, status, ename="E", evalue="v"))
    reason = "skipped: cell 'a' failed before it"
    assert [e for e in effects if isinstance(e, RecordNotRun)] == [
        RecordNotRun("e2", S.SKIPPED, reason),
        RecordNotRun("e3", S.SKIPPED, reason),
    ]
    done = events(effects)
    assert [(e.execution_id, e.status) for e in done if isinstance(e, ExecutionDone)] == [
        ("e1", status),
        ("e2", S.SKIPPED),
        ("e3", S.SKIPPED),
    ]
    skipped = done[1]
    assert isinstance(skipped, ExecutionDone)
    assert skipped.evalue == reason
    assert skipped.ename is None
    assert skipped.traceback == []
    assert not any(isinstance(e, SendAhead) for e in effects)
    assert queue.idle


@pytest.mark.parametrize("status", [S.OK, S.ABORTED])
def test_ok_and_aborted_do_not_stop_the_queue(status: ExecutionStatus) -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    effects = queue.handle(Finished(start(queue).entry.execution_id, status))
    assert not any(isinstance(e, RecordNotRun) for e in effects)
    assert [e.execution_id for e in queue.waiting] == ["e2"]


def test_the_failure_is_recorded_before_the_rest_is_skipped() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    entry = start(queue).entry
    effects = queue.handle(
        Finished(
            entry.execution_id,
            S.ERROR,
            execution_count=3,
            outputs=[{"output_type": "stream", "name": "stdout", "text": "hi"}],
            ename="ZeroDivisionError",
            evalue="division by zero",
            traceback=["tb"],
            display_ids={"d": (0,)},
        )
    )
    assert types(effects) == [RecordOutcome, Broadcast, RecordNotRun, Broadcast]
    outcome = effects[0]
    assert outcome == RecordOutcome(
        "e1",
        "a",
        S.ERROR,
        3,
        ({"output_type": "stream", "name": "stdout", "text": "hi"},),
        "ZeroDivisionError",
        "division by zero",
        {"d": (0,)},
    )
    assert events(effects)[0] == ExecutionDone(
        notebook_id="nb",
        cell_id="a",
        execution_id="e1",
        status=S.ERROR,
        execution_count=3,
        ename="ZeroDivisionError",
        evalue="division by zero",
        traceback=["tb"],
    )


# ------------------------------------------------------------------ raises-exception


def test_a_cell_tagged_raises_exception_may_fail_without_stopping_the_queue() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a", "1/0", "raises-exception")))
    queue.handle(QueueCell(code("b")))
    effects = queue.handle(Finished(start(queue).entry.execution_id, S.ERROR, ename="E"))
    assert not any(isinstance(e, RecordNotRun) for e in effects)
    assert start(queue).entry.cell_id == "b"


def test_raises_exception_on_a_later_cell_does_not_protect_the_failing_one() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a", "1/0")))
    queue.handle(QueueCell(code("b", "2", "raises-exception")))
    queue.handle(Finished(start(queue).entry.execution_id, S.ERROR, ename="E"))
    assert queue.idle  # b was skipped with the rest


# ------------------------------------------------------------------ rule 4: restart and close


@pytest.mark.parametrize(
    ("command", "reason"),
    [(Restart(), CancelReason.RESTART), (Close(), CancelReason.CLOSE)],
)
def test_restart_and_close_cancel_what_waits_but_not_what_runs(
    command: Restart | Close, reason: CancelReason
) -> None:
    queue = make_queue()
    for name in "abc":
        queue.handle(QueueCell(code(name)))
    start(queue)
    effects = queue.handle(command)
    assert [e for e in effects if isinstance(e, RecordNotRun)] == [
        RecordNotRun("e2", S.CANCELLED, str(reason)),
        RecordNotRun("e3", S.CANCELLED, str(reason)),
    ]
    assert all(isinstance(e, ExecutionDone) and e.status is S.CANCELLED for e in events(effects))
    assert queue.running is not None
    assert queue.running.execution_id == "e1"
    # The running one ends by its outcome (a restart kills its process).
    queue.handle(Finished("e1", S.DIED, ename="KernelDied", evalue="gone"))
    assert queue.idle


def test_restart_with_nothing_queued_does_nothing() -> None:
    assert make_queue().handle(Restart()) == []


# ------------------------------------------------------------------ rule 5: interrupt


def test_interrupt_only_when_something_runs() -> None:
    queue = make_queue()
    assert queue.handle(Interrupt()) == []
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    assert queue.handle(Interrupt()) == []  # queued is not running
    entry = start(queue).entry
    assert queue.handle(Interrupt()) == [InterruptKernel()]
    queue.handle(Finished(entry.execution_id, S.OK))
    assert queue.handle(Interrupt()) == []  # nothing runs, nothing was sent ahead
    queue.handle(SentAhead("e2"))
    assert queue.handle(Interrupt()) == [InterruptKernel()]  # b runs on the kernel already


def test_an_interrupted_cell_stops_the_queue_like_any_failure() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    entry = start(queue).entry
    queue.handle(Interrupt())
    queue.handle(Finished(entry.execution_id, S.ERROR, ename="KeyboardInterrupt"))
    assert queue.idle


# ------------------------------------------------------------------ rule 6: send ahead


def test_after_success_the_next_is_sent_before_the_finished_one_is_recorded() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b", "2")))
    effects = queue.handle(Finished(start(queue).entry.execution_id, S.OK))
    assert types(effects) == [SendAhead, RecordOutcome, Broadcast]
    send = effects[0]
    assert isinstance(send, SendAhead)
    assert send.entry.source == "2"
    assert queue.handle(SentAhead("e2")) == []
    assert queue.sent_ahead == "e2"
    execute = start(queue)
    assert execute.entry.execution_id == "e2"
    assert execute.sent_ahead
    assert queue.sent_ahead is None


def test_nothing_is_sent_ahead_after_a_failure_or_to_a_cell_that_may_ask_for_input() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b"), allow_stdin=True))
    effects = queue.handle(Finished(start(queue).entry.execution_id, S.OK))
    assert not any(isinstance(e, SendAhead) for e in effects)
    assert not start(queue).sent_ahead
    queue.handle(QueueCell(code("c")))
    effects = queue.handle(Finished("e2", S.ABORTED))
    assert not any(isinstance(e, SendAhead) for e in effects)


def test_a_send_the_kernel_did_not_take_is_sent_at_start() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    queue.handle(Finished(start(queue).entry.execution_id, S.OK))
    # No SentAhead: the submit failed; the executor sends it the normal way.
    assert not start(queue).sent_ahead


def test_a_send_ahead_that_lands_after_a_restart_is_abandoned() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    queue.handle(Finished(start(queue).entry.execution_id, S.OK))
    queue.handle(Restart())  # while the send was under way
    assert queue.handle(SentAhead("e2")) == [AbandonSent("e2")]
    assert queue.sent_ahead is None
    assert queue.idle


def test_restart_abandons_the_request_sent_ahead() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    queue.handle(Finished(start(queue).entry.execution_id, S.OK))
    queue.handle(SentAhead("e2"))
    effects = queue.handle(Restart())
    assert effects[0] == AbandonSent("e2")
    assert RecordNotRun("e2", S.CANCELLED, str(CancelReason.RESTART)) in effects


# ------------------------------------------------------------------ rule 7: died, timeout


def test_a_death_adds_its_error_to_the_outputs() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    stream = {"output_type": "stream", "name": "stdout", "text": "so far"}
    effects = queue.handle(
        Finished(
            start(queue).entry.execution_id,
            S.DIED,
            outputs=[stream],
            ename="KernelDied",
            evalue="why",
        )
    )
    outcome = effects[0]
    assert isinstance(outcome, RecordOutcome)
    assert outcome.outputs == (
        stream,
        {"output_type": "error", "ename": "KernelDied", "evalue": "why", "traceback": []},
    )


def test_a_timeout_keeps_exactly_the_kernels_outputs() -> None:
    # The interrupt's KeyboardInterrupt output shows the timeout, as nbclient records it.
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    interrupted = {
        "output_type": "error",
        "ename": "KeyboardInterrupt",
        "evalue": "",
        "traceback": [],
    }
    effects = queue.handle(
        Finished(
            start(queue).entry.execution_id,
            S.TIMEOUT,
            outputs=[interrupted],
            ename="ExecutionTimeout",
            evalue="the cell ran over its 1 s",
        )
    )
    outcome = effects[0]
    assert isinstance(outcome, RecordOutcome)
    assert outcome.outputs == (interrupted,)


@pytest.mark.parametrize("status", [S.DIED, S.TIMEOUT])
def test_a_death_or_timeout_stops_the_queue_even_on_a_raises_exception_cell(
    status: ExecutionStatus,
) -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a", "1/0", "raises-exception")))
    queue.handle(QueueCell(code("b", "2")))
    effects = queue.handle(Finished(start(queue).entry.execution_id, status, ename="E"))
    skipped = [e for e in effects if isinstance(e, RecordNotRun)]
    assert [e.status for e in skipped] == [S.SKIPPED]


def test_an_error_from_the_kernel_is_not_duplicated_into_the_outputs() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    error = {"output_type": "error", "ename": "E", "evalue": "v", "traceback": []}
    effects = queue.handle(
        Finished(start(queue).entry.execution_id, S.ERROR, outputs=[error], ename="E")
    )
    outcome = effects[0]
    assert isinstance(outcome, RecordOutcome)
    assert outcome.outputs == (error,)


# ------------------------------------------------------------------ rule 8: forget old records


def test_old_records_are_forgotten_in_one_batch_oldest_first() -> None:
    keep = 3
    seeded = [f"old{i}" for i in range(keep + FORGET_SLACK)]
    queue = make_queue(keep=keep, finished=seeded)
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    effects = queue.handle(Finished(start(queue).entry.execution_id, S.ERROR, ename="E"))
    forget = effects[-1]
    assert isinstance(forget, ForgetRecords)
    # 53 seeded + e1 + e2 (skipped) = 55 > 53: all but the newest 3 go.
    assert forget.execution_ids == tuple(seeded[:52])
    assert queue.finished_count == keep


def test_nothing_is_forgotten_up_to_the_slack() -> None:
    queue = make_queue(keep=2, finished=[f"old{i}" for i in range(1 + FORGET_SLACK)])
    queue.handle(QueueCell(code("a")))
    effects = queue.handle(Finished(start(queue).entry.execution_id, S.OK))
    assert not any(isinstance(e, ForgetRecords) for e in effects)


# ------------------------------------------------------------------ invalid commands


def test_finishing_what_does_not_run_is_refused() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    with pytest.raises(InvalidTransition, match="'e1' is not running"):
        queue.handle(Finished("e1", S.OK))
    start(queue)
    with pytest.raises(InvalidTransition, match="'nope' is not running"):
        queue.handle(Finished("nope", S.OK))


@pytest.mark.parametrize("status", [S.QUEUED, S.RUNNING, S.SKIPPED, S.CANCELLED, "exploded"])
def test_a_run_cannot_end_in_a_status_the_table_does_not_allow(status: Any) -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    start(queue)
    with pytest.raises(InvalidTransition):
        queue.handle(Finished("e1", status))
    assert queue.status("e1") is S.RUNNING  # unchanged


def test_reads() -> None:
    queue = make_queue()
    queue.handle(QueueCell(code("a")))
    queue.handle(QueueCell(code("b")))
    start(queue)
    assert queue.get("e1") is queue.running
    assert queue.get("e2") is queue.waiting[0]
    assert queue.get("e3") is None
    assert queue.status("e3") is None
    assert queue.has_waiting


# ------------------------------------------------------------------ random sequences

TAGS = st.sampled_from([(), ("raises-exception",), ("skip-execution",), ("other",)])


class QueueMachine(RuleBasedStateMachine):
    """Drives the queue as the executor would and checks every effect against a model."""

    @initialize(keep=st.integers(min_value=0, max_value=5))
    def setup(self, keep: int) -> None:
        self.keep = keep
        self.queue = make_queue(keep=keep)
        self.cells = itertools.count()
        self.model_waiting: list[str] = []  # execution ids, queue order
        self.history: dict[str, list[ExecutionStatus]] = {}
        self.done_events: dict[str, int] = {}
        self.queued_order: list[str] = []
        self.started_order: list[str] = []
        self.pending_send: str | None = None  # a SendAhead not yet answered
        self.finishing: ExecutionStatus | None = None  # the status a Finished carries

    # ---------------------------------------------------------- applying effects

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case RecordQueued():
                    assert effect.execution_id not in self.history
                    self.history[effect.execution_id] = [S.QUEUED]
                    self.model_waiting.append(effect.execution_id)
                    self.queued_order.append(effect.execution_id)
                case RecordRunning():
                    self.move(effect.execution_id, S.RUNNING)
                    # FIFO: what starts is the oldest execution still waiting.
                    assert self.model_waiting[0] == effect.execution_id
                    self.model_waiting.pop(0)
                    self.started_order.append(effect.execution_id)
                case RecordOutcome():
                    self.move(effect.execution_id, effect.status)
                case RecordNotRun():
                    self.move(effect.execution_id, effect.status)
                    self.model_waiting.remove(effect.execution_id)
                case Broadcast():
                    if isinstance(effect.event, ExecutionDone):
                        eid = effect.event.execution_id
                        assert self.history[eid][-1] == effect.event.status
                        self.done_events[eid] = self.done_events.get(eid, 0) + 1
                case SendAhead():
                    # Only after a success: never after a failure (or an abort).
                    assert self.finishing is S.OK
                    assert self.model_waiting[0] == effect.entry.execution_id
                    assert not effect.entry.allow_stdin
                    self.pending_send = effect.entry.execution_id
                case Execute() | AbandonSent() | InterruptKernel() | ForgetRecords():
                    pass

    def move(self, execution_id: str, new: ExecutionStatus) -> None:
        states = self.history[execution_id]
        allowed = set().union(*TRANSITIONS.get(states[-1], {}).values())
        assert new in allowed, f"{execution_id}: {states[-1]} -> {new}"
        states.append(new)

    def new_cell(self, tags: tuple[str, ...], *, markdown: bool = False) -> Cell:
        n = next(self.cells)
        if markdown:
            return Cell(id=f"m{n}", cell_type="markdown", source="text")
        return code(f"c{n}", f"x = {n}", *tags)

    # ---------------------------------------------------------- rules

    @rule(tags=TAGS, allow_stdin=st.booleans())
    def queue_cell(self, tags: tuple[str, ...], allow_stdin: bool) -> None:
        effects = self.queue.handle(QueueCell(self.new_cell(tags), allow_stdin=allow_stdin))
        self.apply(effects)

    @rule(kinds=st.lists(st.tuples(st.booleans(), TAGS), max_size=5))
    def queue_all(self, kinds: list[tuple[bool, tuple[str, ...]]]) -> None:
        cells = [self.new_cell(tags, markdown=markdown) for markdown, tags in kinds]
        effects = self.queue.handle(QueueAll(cells))
        expected = sum(1 for m, t in kinds if not m and "skip-execution" not in t)
        assert len(queued_ids(effects)) == expected
        self.apply(effects)

    @precondition(lambda self: self.queue.can_start)
    @rule()
    def start(self) -> None:
        self.pending_send = None  # unanswered: the kernel did not take it
        self.apply(self.queue.handle(StartNext()))

    @precondition(lambda self: self.queue.running is not None)
    @rule(status=st.sampled_from(sorted(KERNEL_OUTCOMES)))
    def finish(self, status: ExecutionStatus) -> None:
        running = self.queue.running
        assert running is not None
        waiting_before = list(self.model_waiting)
        stops = status in FAILED and not (status is S.ERROR and "raises-exception" in running.tags)
        self.finishing = status
        self.apply(self.queue.handle(Finished(running.execution_id, status, ename="E")))
        self.finishing = None
        if stops:
            # Nothing runs after a failure: everything that waited was skipped.
            for eid in waiting_before:
                assert self.history[eid][-1] is S.SKIPPED
            assert self.queue.idle
        else:
            assert self.model_waiting == waiting_before

    @precondition(lambda self: self.pending_send is not None)
    @rule()
    def kernel_took_the_send(self) -> None:
        assert self.pending_send is not None
        effects = self.queue.handle(SentAhead(self.pending_send))
        if self.model_waiting and self.model_waiting[0] == self.pending_send:
            assert effects == []
            assert self.queue.sent_ahead == self.pending_send
        else:
            assert effects == [AbandonSent(self.pending_send)]
        self.pending_send = None
        self.apply(effects)

    @rule()
    def interrupt(self) -> None:
        effects = self.queue.handle(Interrupt())
        active = self.queue.running is not None or self.queue.sent_ahead is not None
        assert effects == ([InterruptKernel()] if active else [])

    @rule(close=st.booleans())
    def cancel(self, close: bool) -> None:
        running = self.queue.running
        self.apply(self.queue.handle(Close() if close else Restart()))
        assert not self.model_waiting
        assert not self.queue.has_waiting
        assert self.queue.running is running  # the running one ends by its outcome

    # ---------------------------------------------------------- invariants

    @invariant()
    def at_most_one_runs(self) -> None:
        running = [eid for eid, states in self.history.items() if states[-1] is S.RUNNING]
        assert len(running) <= 1
        current = self.queue.running
        assert running == ([current.execution_id] if current else [])

    @invariant()
    def the_model_and_the_queue_agree(self) -> None:
        assert [e.execution_id for e in self.queue.waiting] == self.model_waiting

    @invariant()
    def fifo(self) -> None:
        # Started executions are a prefix-ordered subsequence of the queueing order.
        positions = [self.queued_order.index(eid) for eid in self.started_order]
        assert positions == sorted(positions)

    @invariant()
    def terminal_once(self) -> None:
        for eid, states in self.history.items():
            terminal = [s for s in states if s in FINISHED]
            assert len(terminal) <= 1
            assert terminal == states[-1:] or not terminal
            assert self.done_events.get(eid, 0) == len(terminal)

    @invariant()
    def bounded_memory(self) -> None:
        assert self.queue.finished_count <= self.keep + FORGET_SLACK

    def teardown(self) -> None:
        # Drain: every execution ever queued ends in exactly one terminal status.
        if not hasattr(self, "queue"):
            return
        while not self.queue.idle:
            if self.queue.running is not None:
                self.finishing = S.OK
                self.apply(self.queue.handle(Finished(self.queue.running.execution_id, S.OK)))
            else:
                self.apply(self.queue.handle(StartNext()))
        for eid, states in self.history.items():
            assert states[-1] in FINISHED, (eid, states)
            assert sum(s in FINISHED for s in states) == 1
            assert self.done_events[eid] == 1
            if S.RUNNING not in states:
                assert states[-1] in (S.SKIPPED, S.CANCELLED)


QueueMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_queue_machine = QueueMachine.TestCase
