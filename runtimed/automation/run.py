"""Run a whole notebook through the daemon, papermill style: ``runt run`` and its Python API.

:func:`execute_notebook` (blocking) and :func:`execute_notebook_async` read the input
notebook, inject parameters exactly as papermill does, write the parameterized notebook to
the output path and open *that file* in the daemon, so the run is a live notebook other
clients can watch (``runt ps`` lists it; its link is :func:`notebook_link`). Every code cell
is then queued at once with ``RunAll`` (``skip-execution`` cells are left out by the daemon;
an error stops the queue unless the cell is tagged ``raises-exception``), results are
followed through the synced runtime document, papermill's ``metadata.papermill`` records are
kept on the notebook and on every cell, and the output file is checkpointed by the daemon at
the end — on failure too, with papermill's error marker cells. Then the notebook is unloaded
(its kernel stopped) unless ``keep_open``. Cancelling a run (Ctrl-C in ``runt run``)
interrupts the running cell and still saves what ran.

Where and how the kernel runs: as papermill, in the caller's working directory unless
``cwd`` is given, with the caller's environment (``inherit_env``). Both travel with the
``OpenNotebook`` request (``kernel_cwd``, ``kernel_env``); nothing machine-specific is
written into the notebook.

Differences from papermill, on purpose: a ``raises-exception`` cell that raises does not
fail the run (papermill runs on but then reports the error); ``metadata.papermill.version``
is not written.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING, Any

import anyio

from runtimed.automation import phases
from runtimed.automation.live import LiveRun
from runtimed.automation.locations import Staged, stage
from runtimed.automation.progress import OutputLog, ProgressBar, RunObserver
from runtimed.automation.report import (
    FailedCell,
    NotebookExecutionError,
    Prepared,
    RunResult,
    format_path,
    materialize,
    notebook_link,
)
from runtimed.errors import InvalidRequest, NotebookInvalid, RuntimedError

if TYPE_CHECKING:
    from runtimed.automation.executed import ExecutedNotebook
    from runtimed.client import AsyncClient

__all__ = [
    "ExecutedNotebook",
    "FailedCell",
    "NotebookExecutionError",
    "RunResult",
    "execute_notebook",
    "execute_notebook_async",
    "notebook_link",
]

log = logging.getLogger(__name__)

# execute_notebook's: the executed notebook as written, read before a staged copy ('-', a
# URL) is published and removed.
_OUTPUT_SINK: ContextVar[list[Any] | None] = ContextVar("runtimed_output_sink", default=None)


@asynccontextmanager
async def _connected(
    client: AsyncClient | None, socket: str | os.PathLike[str] | None, autostart: bool
) -> AsyncIterator[AsyncClient]:
    if client is not None:
        yield client
        return
    from runtimed.client import AsyncClient

    where = os.fspath(socket) if socket is not None else None
    async with await AsyncClient.connect(where, autostart=autostart) as connected:
        phases.stamp("connected")
        yield connected


async def execute_notebook_async(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    parameters: Mapping[str, object] | None = None,
    *,
    kernel_name: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    execution_timeout: float | None = None,
    start_timeout: float = 60,
    prepare_only: bool = False,
    report_mode: bool = False,
    log_output: bool = False,
    log_stream: IO[str] | None = None,
    stdout_file: IO[str] | None = None,
    stderr_file: IO[str] | None = None,
    progress_bar: bool = True,
    observer: RunObserver | None = None,
    autosave_cell_every: float = 30,
    keep_open: bool = False,
    socket: str | os.PathLike[str] | None = None,
    autostart: bool = True,
    client: AsyncClient | None = None,
    raise_on_error: bool = False,
    inherit_env: bool = True,
    env: Mapping[str, str] | None = None,
    language: str | None = None,
    engine_name: str | None = None,
    request_save_on_cell_execute: bool = True,
) -> RunResult:
    """Execute a notebook through the daemon and write the executed copy to ``output_path``.

    Args:
        input_path: the notebook to run (not modified). Both paths may hold ``{name}``
            fields filled from ``parameters`` (papermill's ``parameterize_path``).
        output_path: where the executed notebook is written (its folder is created); it is
            written even when a cell fails.
        parameters: values injected after the ``parameters`` cell, as papermill does.
        kernel_name: run with this kernelspec instead of the notebook's.
        cwd: the kernel's working directory (default: the current one, as papermill).
        execution_timeout: seconds each cell may run before it is interrupted and the run
            fails (status ``timeout``).
        start_timeout: seconds to wait for the kernel to start.
        prepare_only: only write the parameterized notebook; execute nothing.
        report_mode: hide code cell inputs (``metadata.jupyter.source_hidden``).
        log_output: write outputs as they arrive to ``log_stream`` (default stderr).
        stdout_file, stderr_file: also write the cells' stdout / stderr streams there.
        progress_bar: draw a progress bar on stderr (only when it is a terminal).
        observer: hooks called as the run progresses.
        autosave_cell_every: also checkpoint the output every this many seconds (0: only at
            the end), as papermill's autosave.
        keep_open: leave the notebook and its kernel open in the daemon afterwards (default:
            unload it, stopping the kernel, unless another client has it open).
        socket, autostart: how to reach the daemon (ignored when ``client`` is given).
        client: an already connected client to share (batches do).
        raise_on_error: raise :class:`NotebookExecutionError` instead of returning a
            ``failed`` result.
        inherit_env: give the run's kernel this process's environment (``os.environ``), as
            papermill's kernels inherit it; False: the daemon's environment only.
        env: more variables for the run's kernel (set over the inherited ones).
        language: the notebook's language for parameter injection (papermill's
            ``language``); only Python is supported.
        engine_name: papermill's engine: None, ``"nbclient"`` or ``"runtimed"`` (all
            mean the daemon); any other is refused.
        request_save_on_cell_execute: False: no checkpoints while running, only at the
            end (papermill's flag; ``autosave_cell_every`` is then ignored).

    Returns:
        The :class:`RunResult`.

    Raises:
        ParameterError: bad parameters or path templates.
        NotebookNotFound, NotebookInvalid, NotebookIOError: the input cannot be read or the
            output cannot be written.
        InvalidRequest: ``cwd`` is not a directory; the output notebook is already being
            executed by another client.
        DaemonNotRunning, ConnectionClosed, RuntimedError: the daemon is unreachable or failed.
        NotebookExecutionError: with ``raise_on_error``, a cell failed.
    """
    started_at = time.monotonic()
    params = dict(parameters or {})
    check_run_options(
        execution_timeout=execution_timeout,
        start_timeout=start_timeout,
        autosave_cell_every=autosave_cell_every,
        language=language,
        engine_name=engine_name,
    )
    if not request_save_on_cell_execute:
        autosave_cell_every = 0
    names = (
        format_path(os.fspath(input_path), params),
        format_path(os.fspath(output_path), params),
    )
    staged = await anyio.to_thread.run_sync(stage, *names)
    try:
        return await _execute_staged(
            staged,
            params,
            kernel_name=kernel_name,
            cwd=cwd,
            execution_timeout=execution_timeout,
            start_timeout=start_timeout,
            prepare_only=prepare_only,
            report_mode=report_mode,
            log_output=log_output,
            log_stream=log_stream,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
            progress_bar=progress_bar,
            observer=observer,
            autosave_cell_every=autosave_cell_every,
            keep_open=keep_open,
            socket=socket,
            autostart=autostart,
            client=client,
            raise_on_error=raise_on_error,
            kernel_env=_kernel_env(inherit_env, env),
            started_at=started_at,
        )
    finally:
        # The output reaches stdout / its URL whatever happened (it is always written).
        with anyio.CancelScope(shield=True):
            sink = _OUTPUT_SINK.get()
            if sink is not None and await anyio.Path(staged.output_path).exists():
                from runtimed.storage.ipynb import read_notebook

                sink.append(await anyio.to_thread.run_sync(read_notebook, staged.output_path))
            await anyio.to_thread.run_sync(staged.publish)


async def _execute_staged(
    staged: Staged,
    params: dict[str, object],
    *,
    kernel_name: str | None,
    cwd: str | os.PathLike[str] | None,
    execution_timeout: float | None,
    start_timeout: float,
    prepare_only: bool,
    report_mode: bool,
    log_output: bool,
    log_stream: IO[str] | None,
    stdout_file: IO[str] | None,
    stderr_file: IO[str] | None,
    progress_bar: bool,
    observer: RunObserver | None,
    autosave_cell_every: float,
    keep_open: bool,
    socket: str | os.PathLike[str] | None,
    autostart: bool,
    client: AsyncClient | None,
    raise_on_error: bool,
    kernel_env: dict[str, str] | None,
    started_at: float,
) -> RunResult:
    async def prepare(checked: bool) -> Prepared:
        return await anyio.to_thread.run_sync(
            functools.partial(
                materialize,
                staged.input_path,
                staged.output_path,
                params,
                kernel_name=kernel_name,
                report_mode=report_mode,
                prepare_only=prepare_only,
                cwd=cwd,
                names=(staged.input_name, staged.output_name),
                checked=checked,
            )
        )

    # A run's output is opened (and validated) by the daemon: the input is read without
    # nbformat unless only the prepared file is wanted (then it is the product: validated).
    prepared = await prepare(prepare_only)
    phases.stamp("prepared")
    for name in prepared.unknown_parameters:
        log.warning("Passed unknown parameter: %s", name)
    for warning in prepared.warnings:
        log.warning("%s: %s", prepared.input_path, warning)
    if prepare_only:
        return RunResult(
            status="ok",
            input_path=prepared.input_path,
            output_path=prepared.output_path,
            duration=time.monotonic() - started_at,
            parameters=params,
        )
    if log_output and log_stream is None:
        import sys

        log_stream = sys.stderr

    def live(prepared: Prepared) -> LiveRun:
        return LiveRun(
            prepared,
            parameters=params,
            execution_timeout=execution_timeout,
            start_timeout=start_timeout,
            observer=observer or RunObserver(),
            outputs=OutputLog(
                log=log_stream if log_output else None,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
            ),
            bar=ProgressBar(len(prepared.nb.cells)) if progress_bar and not log_output else None,
            autosave_every=autosave_cell_every,
            keep_open=keep_open,
            started_at=started_at,
            kernel_env=kernel_env,
            kernel_name=kernel_name,
        )

    try:
        result = await _run_stoppable(live(prepared), client, socket, autostart)
    except NotebookInvalid:
        if prepared.checked:
            raise
        # The daemon refused the file read without nbformat: the careful path says why
        # about the input (or repairs invalid metadata, with a warning) and runs it.
        written = prepared.output
        try:
            prepared = await prepare(True)
        except NotebookInvalid:
            # Leave no unvalidated copy where papermill would have written nothing.
            await anyio.Path(written).unlink(missing_ok=True)
            raise
        for warning in prepared.warnings:
            log.warning("%s: %s", prepared.input_path, warning)
        result = await _run_stoppable(live(prepared), client, socket, autostart)
    if raise_on_error and result.status == "failed":
        raise NotebookExecutionError(result)
    return result


_ENGINES = frozenset({"nbclient", "runtimed"})


def check_run_options(
    *,
    execution_timeout: float | None,
    start_timeout: float,
    autosave_cell_every: float,
    language: str | None,
    engine_name: str | None,
) -> None:
    """Refuse values a run cannot honour, each with a message naming the option.

    Raises:
        InvalidRequest: a number out of range, a language other than Python, an engine
            other than papermill's default.
    """
    if execution_timeout is not None and not execution_timeout > 0:
        raise InvalidRequest(
            f"execution_timeout must be more than 0 seconds (got {execution_timeout:g}); "
            "leave it out for no limit"
        )
    if not start_timeout > 0:
        raise InvalidRequest(f"start_timeout must be more than 0 seconds (got {start_timeout:g})")
    if not autosave_cell_every >= 0:
        raise InvalidRequest(
            f"autosave_cell_every must be 0 (off) or more seconds (got {autosave_cell_every:g})"
        )
    if language is not None and language.lower() != "python":
        raise InvalidRequest(
            f"language {language!r} is not supported: runtimed injects parameters for Python "
            "notebooks only"
        )
    if engine_name is not None and engine_name not in _ENGINES:
        raise InvalidRequest(
            f"engine {engine_name!r} is not available: runtimed runs notebooks through its "
            f"daemon; accepted engine names: {', '.join(sorted(_ENGINES))}"
        )


def _kernel_env(inherit: bool, extra: Mapping[str, str] | None) -> dict[str, str] | None:
    env = dict(os.environ) if inherit else {}
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidRequest(f"env must map strings to strings (got {name!r}: {value!r})")
        env[name] = value
    return env or None


def execute_notebook(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    parameters: Mapping[str, object] | None = None,
    engine_name: str | None = None,
    request_save_on_cell_execute: bool = True,
    prepare_only: bool = False,
    kernel_name: str | None = None,
    language: str | None = None,
    progress_bar: bool = True,
    log_output: bool = False,
    stdout_file: IO[str] | None = None,
    stderr_file: IO[str] | None = None,
    start_timeout: float = 60,
    report_mode: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    *,
    execution_timeout: float | None = None,
    autosave_cell_every: float = 30,
    raise_on_error: bool = True,
    inherit_env: bool = True,
    env: Mapping[str, str] | None = None,
    keep_open: bool = False,
    observer: RunObserver | None = None,
    socket: str | os.PathLike[str] | None = None,
    autostart: bool = True,
) -> ExecutedNotebook:
    """Run a notebook through the daemon, as ``papermill.execute_notebook`` (same
    arguments, same order; ``execution_timeout`` and ``autosave_cell_every`` are
    papermill's engine keywords). Safe to call while an event loop runs in this thread
    (e.g. inside Jupyter): the run happens on a private event loop thread.

    Returns:
        The executed notebook as written to ``output_path`` (``.result``: the
        :class:`RunResult`: status, failed cell, scraps, duration, ...).

    Raises:
        NotebookExecutionError: a cell failed (``raise_on_error=False``: return the
            notebook instead; ``.result.failed_cell`` says which). Like papermill's
            ``PapermillExecutionError`` it has ``cell_index``, ``exec_count``, ``source``,
            ``ename``, ``evalue``, ``traceback``; the output notebook is written first.
        InvalidRequest, ParameterError, NotebookNotFound, ...: as
            :func:`execute_notebook_async`.
    """
    from anyio.from_thread import start_blocking_portal

    call = functools.partial(
        execute_notebook_async,
        input_path,
        output_path,
        parameters,
        engine_name=engine_name,
        request_save_on_cell_execute=request_save_on_cell_execute,
        prepare_only=prepare_only,
        kernel_name=kernel_name,
        language=language,
        progress_bar=progress_bar,
        log_output=log_output,
        stdout_file=stdout_file,
        stderr_file=stderr_file,
        start_timeout=start_timeout,
        report_mode=report_mode,
        cwd=cwd,
        execution_timeout=execution_timeout,
        autosave_cell_every=autosave_cell_every,
        inherit_env=inherit_env,
        env=env,
        keep_open=keep_open,
        observer=observer,
        socket=socket,
        autostart=autostart,
    )

    async def run_and_read() -> tuple[RunResult, Any]:
        sink: list[Any] = []
        token = _OUTPUT_SINK.set(sink)
        try:
            result = await call()
        finally:
            _OUTPUT_SINK.reset(token)
        return result, sink[0] if sink else None

    with start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        result, written = portal.call(run_and_read)
    from runtimed.automation.executed import executed_notebook

    executed = executed_notebook(written or {}, result)
    if raise_on_error and result.status == "failed":
        raise NotebookExecutionError(result)
    return executed


async def _run_stoppable(
    run: LiveRun,
    client: AsyncClient | None,
    socket: str | os.PathLike[str] | None,
    autostart: bool,
) -> RunResult:
    """Run ``run``; cancelling the caller stops it gracefully.

    The run (and the client it may create) runs shielded, so that on cancellation (Ctrl-C in
    ``runt run``) it can still interrupt the running cell, drop the queue and save the output
    through the daemon; after 30 s it is cancelled outright.
    """
    outcome: list[RunResult | BaseException] = []
    done = anyio.Event()
    scope = anyio.CancelScope(shield=True)

    async def guarded() -> None:
        try:
            with scope:
                async with _connected(client, socket, autostart) as connected:
                    outcome.append(await run.run(connected))
        except BaseException as exc:  # re-raised below, not wrapped in an ExceptionGroup
            outcome.append(exc)
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            run.stop.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await done.wait()
            scope.cancel()
            raise
    if not outcome:
        raise RuntimedError(f"the run of {run.prepared.input_path} was cancelled")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def __getattr__(name: str) -> Any:
    # ExecutedNotebook is an nbformat NotebookNode: nbformat (and jsonschema) load only when
    # the blocking API returns one, not for every ``runt run``.
    if name == "ExecutedNotebook":
        from runtimed.automation import executed

        return executed.ExecutedNotebook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
