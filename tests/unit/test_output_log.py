"""``--log-output`` writes every part of a cell's outputs exactly once, however the kernel
chunks and interleaves its streams and whenever the runner happens to look."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runtimed.automation.progress import OutputLog
from runtimed.kernels.outputs import OutputAccumulator

# IOPub messages as ipykernel sends them: stream chunks of either name, in any order (the two
# streams are flushed on separate timers, and a print can be split across flushes), and
# results in between.
_MESSAGES = st.lists(
    st.one_of(
        st.tuples(
            st.just("stream"),
            st.sampled_from(["stdout", "stderr"]),
            st.text("ab\n", min_size=1, max_size=4),
        ),
        st.tuples(st.just("execute_result"), st.just(""), st.text("xy", min_size=1, max_size=3)),
    ),
    max_size=10,
)


def _content(kind: str, name: str, text: str) -> dict[str, Any]:
    if kind == "stream":
        return {"name": name, "text": text}
    return {"data": {"text/plain": text}, "metadata": {}, "execution_count": 1}


def _logged_at_once(outputs: list[dict[str, Any]]) -> str:
    log = io.StringIO()
    writer = OutputLog(log=log)
    writer.cell_started(0, "c")
    writer.outputs("c", outputs, final=True)
    return log.getvalue()


@settings(max_examples=500, deadline=None)
@given(_MESSAGES, st.lists(st.booleans(), max_size=10))
def test_what_is_logged_while_running_adds_up_to_the_final_outputs(
    messages: list[tuple[str, str, str]], looks: list[bool]
) -> None:
    acc = OutputAccumulator()
    log = io.StringIO()
    writer = OutputLog(log=log)
    writer.cell_started(0, "c")
    for index, (kind, name, text) in enumerate(messages):
        acc.feed(kind, _content(kind, name, text))
        if index < len(looks) and looks[index]:  # the runner saw the outputs so far
            writer.outputs("c", acc.outputs, final=False)
    writer.outputs("c", acc.outputs, final=True)
    assert log.getvalue() == _logged_at_once(acc.outputs)


def test_stderr_before_stdout_is_logged_as_it_came() -> None:
    acc = OutputAccumulator()
    log = io.StringIO()
    writer = OutputLog(log=log)
    writer.cell_started(2, "c")
    for name, text in (("stderr", "to stderr"), ("stdout", "value first\n"), ("stderr", "\n")):
        acc.feed("stream", {"name": name, "text": text})
        writer.outputs("c", acc.outputs, final=False)
    writer.outputs("c", acc.outputs, final=True)
    assert log.getvalue() == "Executing Cell 3---------------------------------------\n" + (
        "to stderrvalue first\n\n"
    )
