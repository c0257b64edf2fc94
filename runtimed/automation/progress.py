"""What a run shows while it goes: observer hooks, a terminal progress bar, output logging.

:class:`RunObserver` is the hook interface :func:`runtimed.automation.run.execute_notebook_async`
calls (all methods optional no-ops). :class:`ProgressBar` is a small tqdm-like bar drawn with
``\\r`` on a terminal only. :class:`OutputLog` writes cell outputs as they arrive, as
``papermill --log-output`` / ``--stdout-file`` / ``--stderr-file`` do.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio

from protocol.states import FINISHED, ExecutionStatus, KernelState
from runtimed.automation.report import RunResult, error_output
from runtimed.errors import InvalidRequest

if TYPE_CHECKING:
    from runtimed.client import AsyncClient, AsyncNotebook

__all__ = [
    "ExecutionWatcher",
    "Finished",
    "OutputLog",
    "ProgressBar",
    "RunObserver",
    "format_table",
    "is_tty",
    "open_fresh",
    "strip_ansi",
]

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


def is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class RunObserver:
    """Hooks called during a run; subclass and override what you need (all are no-ops).

    ``index`` is the cell's position in the executed notebook, ``total`` the number of cells.
    """

    def run_started(
        self, *, input_path: str, output_path: str, notebook_id: str, link: str, total: int
    ) -> None:
        """The output notebook is open in the daemon and its cells are queued."""

    def cell_started(self, index: int, cell_id: str) -> None:
        """The daemon started running the cell."""

    def environment_progress(self, line: str) -> None:
        """A line of the environment build for the run's kernel (declared dependencies)."""

    def cell_output(
        self, index: int, cell_id: str, outputs: Sequence[dict[str, Any]], *, final: bool
    ) -> None:
        """The cell's outputs so far (``final``: it finished). Only when output is logged."""

    def cell_finished(self, index: int, cell_id: str, status: str, *, done: int) -> None:
        """The cell finished (``done`` cells of ``total`` are accounted for)."""

    def run_finished(self, result: RunResult) -> None:
        """The output notebook is saved."""


class ProgressBar:
    """``Executing:  40%|████      | 4/10 [00:01<00:02]`` redrawn in place, at most 10 times a
    second. Draws nothing unless ``stream`` is a terminal."""

    WIDTH = 24

    def __init__(
        self, total: int, *, stream: IO[str] | None = None, desc: str = "Executing"
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = is_tty(self.stream)
        self.total = max(total, 0)
        self.desc = desc
        self.n = 0
        self._start = time.monotonic()
        self._drawn = 0.0
        self._shown = False

    def update(self, n: int, *, force: bool = False) -> None:
        self.n = n
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        elapsed = now - self._start
        frac = self.n / self.total if self.total else 1.0
        filled = int(frac * self.WIDTH)
        part = "" if filled >= self.WIDTH else " ▏▎▍▌▋▊▉"[int((frac * self.WIDTH - filled) * 8)]
        bar = ("█" * filled + part).ljust(self.WIDTH)
        left = _clock(elapsed / frac - elapsed) if 0 < frac < 1 else "00:00"
        self.stream.write(
            f"\r{self.desc}: {frac:4.0%}|{bar}| {self.n}/{self.total} [{_clock(elapsed)}<{left}]"
        )
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the bar (before other text goes to the same terminal)."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
            self._drawn = 0.0

    def close(self) -> None:
        if self.enabled and self._shown:
            self.update(self.n, force=True)
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class OutputLog:
    """Writes a cell's outputs as they grow, each part once.

    ``log`` gets everything (papermill's ``--log-output``: streams, text results, errors,
    framed by ``Executing Cell N---`` lines); ``stdout_file``/``stderr_file`` get the
    cell's stdout/stderr streams only.
    """

    def __init__(
        self,
        *,
        log: IO[str] | None = None,
        stdout_file: IO[str] | None = None,
        stderr_file: IO[str] | None = None,
    ) -> None:
        self.log = log
        self.stdout_file = stdout_file
        self.stderr_file = stderr_file
        self._cell: str | None = None
        self._count = 0  # outputs fully written
        self._partial = 0  # characters of output[self._count] (a stream) already written

    @property
    def enabled(self) -> bool:
        return any(s is not None for s in (self.log, self.stdout_file, self.stderr_file))

    def cell_started(self, index: int, cell_id: str) -> None:
        self._cell, self._count, self._partial = cell_id, 0, 0
        if self.log is not None:
            self.log.write(f"Executing Cell {index + 1:-<40}\n")
            self.log.flush()

    def cell_finished(self, index: int) -> None:
        if self.log is not None:
            self.log.write(f"Ending Cell {index + 1:-<43}\n")
            self.log.flush()

    def outputs(self, cell_id: str, outputs: Sequence[dict[str, Any]], *, final: bool) -> None:
        if cell_id != self._cell:
            self._cell, self._count, self._partial = cell_id, 0, 0
        # Only the last output can still grow (a stream being appended to); earlier ones
        # are complete once a later one exists.
        upto = len(outputs) if final else max(len(outputs) - 1, 0)
        for position in range(self._count, len(outputs)):
            output = outputs[position]
            if output.get("output_type") == "stream":
                text = _text(output.get("text", ""))
                self._write_stream(str(output.get("name", "stdout")), text[self._partial :])
                self._partial = len(text)
                if position < upto:
                    self._count, self._partial = position + 1, 0
                continue
            if position >= upto:
                break
            self._write_other(output)
            self._count, self._partial = position + 1, 0
        for stream in (self.log, self.stdout_file, self.stderr_file):
            if stream is not None:
                stream.flush()

    def _write_stream(self, name: str, text: str) -> None:
        if not text:
            return
        if self.log is not None:
            self.log.write(text)
        target = self.stdout_file if name == "stdout" else self.stderr_file
        if target is not None:
            target.write(text)

    def _write_other(self, output: dict[str, Any]) -> None:
        if self.log is None:
            return
        kind = output.get("output_type")
        if kind == "error":
            traceback = output.get("traceback") or []
            text = "\n".join(traceback) or f"{output.get('ename')}: {output.get('evalue')}"
            self.log.write(text.rstrip("\n") + "\n")
        elif kind in ("execute_result", "display_data"):
            data = output.get("data") or {}
            if "text/plain" in data:
                self.log.write(_text(data["text/plain"]).rstrip("\n") + "\n")


def _text(value: object) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


# ------------------------------------------------------------------------------ following


async def open_fresh(
    client: AsyncClient,
    path: Path,
    expected: Any,
    *,
    kernel_env: dict[str, str] | None = None,
    kernel_cwd: Path | None = None,
) -> AsyncNotebook:
    """Open the notebook file just written at ``path`` in the daemon, as that file says.

    The daemon does not re-read a notebook some client still has open (or one left open
    with ``keep_open``): then its cells are replaced by ``expected``'s (an nbformat
    notebook) and its kernel restarted, so nothing of an earlier run leaks into this one.

    Raises:
        InvalidRequest: another client is executing that notebook.
    """
    nb = await client.open(path, kernel_env=kernel_env, kernel_cwd=kernel_cwd)
    try:
        runtime = nb.runtime
        if runtime.running() or runtime.queue():
            raise InvalidRequest(
                f"{path} is being executed by another client (see 'runt ps'); "
                "wait for it or write to another output path"
            )
        want = [(c.id, c.cell_type, c.source, c.metadata) for c in expected.cells]
        have = [(c.id, c.cell_type, c.source, c.metadata) for c in nb.cells()]
        if want != have or _file_metadata(nb.metadata()) != _file_metadata(expected.metadata):
            log.info("%s was open in the daemon already; replacing its content", path)
            for cell_id in nb.cell_ids():
                nb.doc.delete_cell(cell_id)
            for c in expected.cells:
                nb.doc.add_cell(c.cell_type, c.source, cell_id=c.id, metadata=c.metadata)
            for key, value in expected.metadata.items():
                nb.doc.set_metadata(key, value)
            await client.push(nb.id, "notebook")
            await nb.clear_outputs()
        if runtime.kernel().get("used"):
            # A kernel that ran cells of an earlier run: start from a clean namespace.  A
            # fresh one (from the pool, or started at open) is kept: restarting it would
            # throw the pool's head start away.
            await nb.restart()
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(15):
            await nb.close()
        raise
    return nb


def _file_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Notebook metadata as the file has it: without ``language_info``, which the daemon
    rewrites when the kernel reports (a pooled kernel: often before this client compares;
    counting it as a difference replaced every cell of every such run)."""
    from runtimed.documents.notebook import KERNEL_METADATA_KEY  # loaded with the replica

    return {k: v for k, v in metadata.items() if k != KERNEL_METADATA_KEY}


# Error names the daemon gives executions that end without a kernel error of their own.
_STATUS_BY_ENAME = {"KernelDied": ExecutionStatus.DIED, "ExecutionTimeout": ExecutionStatus.TIMEOUT}


@dataclass(frozen=True, slots=True)
class Finished:
    """How one execution ended, as the runtime document tells it."""

    status: str
    execution_count: int | None
    outputs: list[dict[str, Any]]
    ename: str | None
    evalue: str | None
    timing: dict[str, str] = field(default_factory=dict)
    """The kernel's ``iopub.execute_input`` / ``shell.execute_reply`` header dates, when
    the daemon recorded them (``kernel_timing`` of the execution record)."""


class ExecutionWatcher:
    """Follows a notebook's executions through its synced runtime document (no polling:
    it wakes whenever the replica changes)."""

    def __init__(self, client: AsyncClient, nb: AsyncNotebook) -> None:
        self.client, self.nb = client, nb
        self.kernel_up = False
        self._synced = False
        self.on_building: Callable[[str], None] | None = None  # environment build lines
        self._building = ""

    def reconnected(self) -> None:
        """The client reconnected to another daemon: its runtime document starts over (a
        record missing there is not known to have finished)."""
        self._synced = False

    def status(self, execution_id: str) -> str | None:
        """The execution's status; None before the record reached this replica."""
        runtime = self.nb.runtime
        if not runtime.ready:
            return None
        record = runtime.execution(execution_id)
        if record is not None:
            self._synced = True
            return str(record.get("status"))
        # The daemon keeps a bounded number of finished executions; once this run's records
        # have reached us, a missing one has finished and been forgotten.
        return "forgotten" if self._synced else None

    async def changed(self) -> None:
        """Return once the runtime document changed.

        Raises:
            ConnectionClosed: the daemon went away.
        """
        runtime = self.nb.runtime
        heads = list(runtime.doc.get_heads())
        await self.client.wait_until(
            lambda: self.nb.runtime is not runtime or list(runtime.doc.get_heads()) != heads
        )

    async def wait(
        self,
        execution_id: str,
        cell_id: str,
        *,
        start_deadline: float,
        on_start: Callable[[], None],
        on_outputs: Callable[[list[dict[str, Any]]], None] | None,
    ) -> Finished | None:
        """Wait for the execution to finish; None if the kernel is not up by
        ``start_deadline`` (``time.monotonic()``). ``on_start`` is called once it runs,
        ``on_outputs`` with the outputs so far whenever they change."""
        running = False
        while True:
            status = self.status(execution_id)
            if status not in (None, ExecutionStatus.QUEUED) and not running:
                running = True
                on_start()
            if status in FINISHED or status == "forgotten":
                self.kernel_up = True
                return await self._collect(execution_id, cell_id, str(status))
            if running and on_outputs is not None:
                on_outputs(self.nb.outputs(cell_id))
            if not self.kernel_up and self.nb.runtime.ready:
                kernel = self.nb.runtime.kernel()
                self.kernel_up = kernel.get("state") in (KernelState.IDLE, KernelState.BUSY)
                if kernel.get("state") == KernelState.BUILDING_ENV and self.on_building is not None:
                    line = str(kernel.get("message") or "")
                    if line and line != self._building:
                        self._building = line
                        self.on_building(line)
            timeout = math.inf if self.kernel_up else start_deadline - time.monotonic()
            if timeout <= 0:
                return None
            with anyio.move_on_after(timeout):
                await self.changed()

    async def _collect(self, execution_id: str, cell_id: str, status: str) -> Finished:
        nb = self.nb
        if status != "forgotten":
            result = await nb.wait_execution(execution_id)
            record = nb.runtime.execution(execution_id) or {}
            raw = record.get("kernel_timing")
            timing = (
                {str(k): v for k, v in raw.items() if isinstance(v, str)}
                if isinstance(raw, dict)
                else {}
            )
            return Finished(
                result.status,
                result.execution_count,
                result.outputs,
                result.ename,
                result.evalue,
                timing,
            )
        # Rare (a long queue raced far ahead of this client): read what the cell holds.
        cell_state = nb.runtime.snapshot()["cells"].get(cell_id) or {}
        if cell_state.get("execution_id") != execution_id:
            return Finished(ExecutionStatus.SKIPPED, None, [], None, None)
        outputs, count = nb.outputs(cell_id), nb.execution_count(cell_id)
        error = error_output(outputs, None)
        if error is None:
            return Finished(ExecutionStatus.OK, count, outputs, None, None)
        ename = str(error.get("ename", ""))
        return Finished(
            _STATUS_BY_ENAME.get(ename, ExecutionStatus.ERROR),
            count,
            outputs,
            ename,
            str(error.get("evalue", "")),
        )


# ------------------------------------------------------------------------------ text reports


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, a line per row."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in [header, *rows]
    )
