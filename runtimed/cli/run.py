"""``runt run``, ``runt inspect`` and ``runt scraps``: papermill's command line, on the daemon.

``runt run IN.ipynb OUT.ipynb -p NAME VALUE ...`` takes papermill's options (same names and
short flags) and exits 0 when every cell ran, 1 when a cell failed (the output notebook is
written all the same and a report of the failed cell goes to stderr), 2 for usage or input
errors (bad parameters, unreadable notebook, no daemon). Batches: see
:mod:`runtimed.automation.batch`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from protocol.states import ExecutionStatus
from runtimed.errors import RuntimedError

if TYPE_CHECKING:
    from runtimed.automation.report import FailedCell

# The rest of runtimed.automation (nbformat, yaml, the client) is imported when a command
# runs: add_run_parser is called for every ``runt`` invocation.

__all__ = ["add_run_parser", "format_failure", "run_command"]

_RUN_HELP = """\
Execute a notebook through the daemon, papermill style: parameters are injected after the
cell tagged 'parameters', every code cell runs in order on a fresh kernel, and the executed
notebook is written to OUTPUT (also when a cell fails). Exit status: 0 ok, 1 a cell failed,
2 usage or input error. Several inputs with --output-dir, or --batch SPEC.yaml, run in
parallel (--jobs)."""


# papermill's options, same names and short flags: (flags, metavar, help)
_REPEATABLE: tuple[tuple[tuple[str, ...], str | tuple[str, str], str], ...] = (
    (("-p", "--parameters"), ("NAME", "VALUE"), "a parameter, typed as papermill's -p does"),
    (("-r", "--parameters_raw", "--parameters-raw"), ("NAME", "VALUE"), "a string parameter"),
    (("-f", "--parameters_file", "--parameters-file"), "FILE", "YAML file of parameters"),
    (("-y", "--parameters_yaml", "--parameters-yaml"), "YAML", "YAML string of parameters"),
    (("-b", "--parameters_base64", "--parameters-base64"), "B64", "base64-encoded YAML"),
)
_FLAGS = (
    ("--inject-input-path", "pass the input path as parameter PAPERMILL_INPUT_PATH"),
    ("--inject-output-path", "pass the output path as parameter PAPERMILL_OUTPUT_PATH"),
    ("--inject-paths", "both of the above"),
    ("--help-notebook", "show the parameters the notebook declares, and exit"),
    ("--keep-open", "leave the notebook and its kernel open in the daemon afterwards"),
    ("--no-autostart", "fail instead of starting a daemon when none is running"),
    ("--json", "print the result(s) as JSON on stdout"),
)
_SWITCHES = (  # --name / --no-name
    ("--log-output", False, "write cell outputs to stderr as they arrive"),
    ("--progress-bar", None, "progress bar on stderr (default: on when it is a terminal)"),
    ("--report-mode", False, "hide code cell inputs in the output"),
    (
        "--request-save-on-cell-execute",
        True,
        "checkpoint the output while running (default; --no-...: only at the end)",
    ),
    (
        "--inherit-env",
        True,
        "the kernel gets this command's environment variables, as papermill's "
        "(default; --no-inherit-env: the daemon's environment only)",
    ),
)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _number(kind: str) -> Callable[[str], float]:
    """An argparse type: a float that is ``> 0`` (``positive``) or ``>= 0``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if kind == "positive" and value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0 (got {text})")
        if kind == "non-negative" and value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more (got {text})")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text})")
    return value


def add_run_parser(sub: Any) -> None:
    """Register ``run``, ``inspect`` and ``scraps`` on ``runt``'s subparsers."""
    run = sub.add_parser("run", help="execute notebooks papermill-style", description=_RUN_HELP)
    add = run.add_argument
    add(
        "notebooks",
        nargs="*",
        metavar="NOTEBOOK",
        help="INPUT OUTPUT (or inputs, --output-dir); '-' is stdin/stdout, and fsspec URLs "
        "(s3://, gs://, https://, ...) work with their backend installed",
    )
    for flags, metavar, text in _REPEATABLE:
        nargs = 2 if isinstance(metavar, tuple) else None
        add(*flags, nargs=nargs, action="append", default=[], metavar=metavar, help=text)
    for flag, text in _FLAGS:
        add(flag, action="store_true", help=text)
    for flag, default, text in _SWITCHES:
        add(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
    add("--prepare-only", action="store_true", help="write the parameterized notebook only")
    add("--prepare-execute", action="store_false", dest="prepare_only", help=argparse.SUPPRESS)
    add("-k", "--kernel", help="kernelspec to run instead of the notebook's")
    add(
        "--gateway-url",
        metavar="URL",
        help="run the kernel on this Jupyter Kernel/Enterprise Gateway (-k: the kernel name "
        "there); the notebook, outputs and blobs stay local",
    )
    add(
        "--gateway-token",
        metavar="TOKEN",
        help="the gateway's token (default: $RUNTIMED_GATEWAY_TOKEN, else the daemon's "
        "gateway.token)",
    )
    add("-l", "--language", help="language of the notebook for parameters (python only)")
    add(
        "--engine",
        metavar="NAME",
        help="papermill's execution engine: nbclient (its default) or runtimed, both the daemon",
    )
    add(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default="WARNING",
        help="what runt's own log shows on stderr (default WARNING)",
    )
    add("--cwd", help="working directory of the kernel (default: the current one)")
    add(
        "--execution-timeout",
        type=_number("positive"),
        metavar="S",
        help="seconds a cell may run (default: no limit)",
    )
    add(
        "--start-timeout",
        "--start_timeout",
        type=_number("positive"),
        default=60.0,
        metavar="S",
        help="seconds to wait for the kernel to start (default 60)",
    )
    add(
        "--autosave-cell-every",
        type=_number("non-negative"),
        default=30.0,
        metavar="S",
        help="checkpoint the output every S seconds while running, also during a long "
        "cell (default 30; 0: only at the end)",
    )
    add("--stdout-file", metavar="FILE", help="also write the cells' stdout to FILE")
    add("--stderr-file", metavar="FILE", help="also write the cells' stderr to FILE")
    add("--batch", metavar="SPEC", help="YAML file describing many runs")
    add("--output-dir", metavar="DIR", help="run every NOTEBOOK, writing DIR/<its name>")
    add("-j", "--jobs", type=_count, metavar="N", help="runs at once (default: number of CPUs)")
    add(
        "--cluster",
        metavar="ADDRESS",
        help="run the batch on a Dask cluster: dask://HOST:PORT, tcp://..., a scheduler "
        "file, or local:N (a local cluster of N worker processes); needs runtimed[dask]",
    )

    inspect = sub.add_parser(
        "inspect",
        help="show a notebook's parameters (--help-notebook)",
        description="Print the parameters the notebook's 'parameters' cell declares: name, "
        "inferred type, default and comment (papermill --help-notebook).",
    )
    inspect.add_argument("notebook", help="the notebook (.ipynb)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    scraps = sub.add_parser(
        "scraps",
        help="show values notebooks recorded with glue()",
        description="Print the values executed notebooks recorded with runtimed.glue.glue().",
    )
    scraps.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="executed notebooks")
    scraps.add_argument("--json", action="store_true", help="machine-readable output")


async def run_command(args: argparse.Namespace) -> int:
    """Run ``runt run`` / ``inspect`` / ``scraps``; returns the exit status."""
    from runtimed.automation.parameters import ParameterError

    _configure_logging(getattr(args, "log_level", "WARNING"))
    try:
        if args.command == "inspect":
            return await _inspect(args)
        if args.command == "scraps":
            return await _scraps(args)
        status = await _interruptible(lambda: _run(args))
        if status == 130 and len(args.notebooks) == 2 and not (args.batch or args.output_dir):
            _err(f"runt run: interrupted; what ran is in {args.notebooks[1]}")
        return status
    except (ParameterError, RuntimedError, _UsageError) as exc:
        _err(f"runt {args.command}: {exc}")
        return 2


class _UsageError(Exception):
    pass


def _err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def _configure_logging(level: str) -> None:
    """runt's own log (warnings such as unknown parameters) on stderr, papermill-style."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("runt: %(levelname)s: %(message)s"))
    root = logging.getLogger("runtimed")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


async def _interruptible(body: Callable[[], Awaitable[int]]) -> int:
    """Run ``body``; SIGINT/SIGTERM cancel it (a run then interrupts its cell, saves the
    output and stops) and the exit status is 130.

    The signal receiver stays open until ``body`` has finished: a second Ctrl-C while the
    run is stopping is absorbed (said on stderr), so it cannot kill the save of what ran.
    """
    import anyio

    outcome: list[int | BaseException] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                stopping = False
                async for _ in signals:
                    if stopping:
                        _err("runt run: already stopping; saving what ran")
                        continue
                    stopping = True
                    _err("runt run: interrupted; stopping the kernel and saving the output")
                    body_scope.cancel()

        body_scope = anyio.CancelScope()
        tg.start_soon(watch)
        with body_scope:
            try:
                outcome.append(await body())
            except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                outcome.append(exc)
        tg.cancel_scope.cancel()
    if not outcome:
        return 130
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _read(path: str) -> dict[str, Any]:
    from runtimed.storage.ipynb import read_notebook

    return read_notebook(Path(path))


# ------------------------------------------------------------------------------ run


def _parameters(args: argparse.Namespace) -> dict[str, object]:
    from runtimed.automation.parameters import collect_parameters

    injected: dict[str, object] = {}
    positional = args.notebooks
    if (args.inject_input_path or args.inject_paths) and positional:
        injected["PAPERMILL_INPUT_PATH"] = positional[0]
    if (args.inject_output_path or args.inject_paths) and len(positional) > 1:
        injected["PAPERMILL_OUTPUT_PATH"] = positional[1]
    collected = collect_parameters(
        params=[tuple(p) for p in args.parameters],
        raw=[tuple(p) for p in args.parameters_raw],
        yaml_text=args.parameters_yaml,
        yaml_file=args.parameters_file,
        b64_yaml=args.parameters_base64,
    )
    return {**injected, **collected}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kernel_name": args.kernel,
        "cwd": args.cwd,
        "execution_timeout": args.execution_timeout,
        "start_timeout": args.start_timeout,
        "report_mode": args.report_mode,
        "autosave_cell_every": args.autosave_cell_every,
        "request_save_on_cell_execute": args.request_save_on_cell_execute,
        "prepare_only": args.prepare_only,
        "keep_open": args.keep_open,
        "inherit_env": args.inherit_env,
        "language": args.language,
        "engine_name": args.engine,
        "env": _gateway_env(args),
    }


def _gateway_env(args: argparse.Namespace) -> dict[str, str] | None:
    """``--gateway-url``/``--gateway-token``: the run's context the daemon reads (in the
    kernel environment of the run; never written to the notebook)."""
    if not args.gateway_url:
        if args.gateway_token:
            raise _UsageError("--gateway-token needs --gateway-url")
        return None
    if not args.gateway_url.startswith(("http://", "https://")):
        raise _UsageError(
            f"--gateway-url must be an http:// or https:// URL, not {args.gateway_url!r}"
        )
    env = {"RUNTIMED_RUN_GATEWAY_URL": args.gateway_url}
    token = args.gateway_token or os.environ.get("RUNTIMED_GATEWAY_TOKEN")
    if token:
        env["RUNTIMED_RUN_GATEWAY_TOKEN"] = token
    return env


async def _run(args: argparse.Namespace) -> int:
    notebooks: list[str] = args.notebooks
    if args.help_notebook:
        if len(notebooks) < 1:
            raise _UsageError("--help-notebook needs the notebook path")
        return _print_help(notebooks[0])
    parameters = _parameters(args)
    if args.batch or args.output_dir:
        return await _run_many(args, parameters)
    if args.cluster:
        raise _UsageError("--cluster runs batches: give --batch SPEC.yaml or --output-dir DIR")
    if len(notebooks) != 2:
        raise _UsageError(
            "give INPUT and OUTPUT notebook paths ('-' for stdin/stdout), or several inputs "
            "with --output-dir DIR, or --batch SPEC.yaml"
        )
    if notebooks[1] == "-" and args.json:
        raise _UsageError("--json and the output notebook cannot both go to stdout ('-')")
    from runtimed.automation import phases
    from runtimed.automation.progress import is_tty
    from runtimed.automation.run import execute_notebook_async

    phases.stamp("imported")

    tty = is_tty(sys.stderr) and not os.environ.get("NO_COLOR")  # no-color.org
    sinks = [_open_sink(path) for path in (args.stdout_file, args.stderr_file)]
    try:
        result = await execute_notebook_async(
            notebooks[0],
            notebooks[1],
            parameters,
            **_options(args),
            log_output=args.log_output,
            stdout_file=sinks[0],
            stderr_file=sinks[1],
            progress_bar=args.progress_bar
            if args.progress_bar is not None
            else not args.log_output,
            observer=_announcer(),
            socket=args.socket,
            autostart=not args.no_autostart,
        )
    finally:
        for sink in sinks:
            if sink is not None:
                sink.close()
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), default=str, indent=2) + "\n")
    if args.prepare_only:
        _err(f"runt run: wrote the parameterized notebook to {result.output_path}")
        return 0
    if result.failed_cell is not None:
        _err(format_failure(result.failed_cell, color=tty))
        _err(f"runt run: FAILED; the output notebook was written to {result.output_path}")
        return 1
    _err(
        f"runt run: {result.cells_executed} cells ran in {result.duration:.1f} s; "
        f"output written to {result.output_path}"
    )
    return 0


def _open_sink(path: str | None) -> IO[str] | None:
    if not path:
        return None
    try:
        return open(path, "w", encoding="utf-8")  # closed by the caller
    except OSError as exc:
        raise _UsageError(f"cannot write {path}: {exc}") from exc


def _announcer() -> Any:
    """An observer saying where a single run can be watched (stderr)."""
    from runtimed.automation.progress import RunObserver

    class Announcer(RunObserver):
        def run_started(
            self, *, input_path: str, output_path: str, notebook_id: str, link: str, total: int
        ) -> None:
            _err(f"runt run: {input_path} -> {output_path}  (notebook {notebook_id}, {link})")

        def environment_progress(self, line: str) -> None:
            _err(f"runt run: building the environment: {line}")

    return Announcer()


async def _run_many(args: argparse.Namespace, parameters: dict[str, object]) -> int:
    from runtimed.automation.batch import (
        BatchProgress,
        default_jobs,
        load_spec,
        run_batch,
        runs_for_inputs,
    )

    jobs: int | None = args.jobs
    if args.batch:
        if args.notebooks or args.output_dir:
            raise _UsageError("--batch takes no NOTEBOOK arguments nor --output-dir")
        runs, spec_jobs = load_spec(args.batch, parameters=parameters)
        jobs = jobs or spec_jobs
    else:
        if not args.notebooks:
            raise _UsageError("--output-dir needs at least one input NOTEBOOK")
        runs = runs_for_inputs(args.notebooks, args.output_dir, parameters=parameters)
    if args.log_output or args.stdout_file or args.stderr_file:
        raise _UsageError("--log-output, --stdout-file and --stderr-file need a single run")
    if jobs is not None and jobs < 1:
        raise _UsageError("--jobs must be at least 1")
    lines = BatchProgress(len(runs), _err)
    options = _options(args)
    if args.cluster:
        from runtimed.automation.cluster import run_cluster_batch

        _err(f"runt run: {len(runs)} notebooks on the Dask cluster {args.cluster}")
        results = await run_cluster_batch(
            runs,
            cluster=args.cluster,
            jobs=jobs,
            observer=lines.observer,
            on_done=lines.done,
            announce=lambda line: _err(f"runt run: {line}"),
            **{k: v for k, v in options.items() if v is not None},
        )
        return _summarize(args, results)
    jobs = jobs or default_jobs()
    from runtimed.client import AsyncClient

    async with await AsyncClient.connect(args.socket, autostart=not args.no_autostart) as client:
        _err(f"runt run: {len(runs)} notebooks, {jobs} at a time")
        results = await run_batch(
            runs,
            client=client,
            jobs=jobs,
            observer=lines.observer,
            on_done=lines.done,
            **{k: v for k, v in options.items() if v is not None},
        )
    return _summarize(args, results)


def _summarize(args: argparse.Namespace, results: list[Any]) -> int:
    from runtimed.automation.batch import format_summary

    if args.json:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], default=str, indent=2) + "\n")
    else:
        sys.stdout.write(format_summary(results))
    return 0 if all(r.ok for r in results) else 1


# ------------------------------------------------------------------------------ inspect, scraps


def _print_help(path: str) -> int:
    from runtimed.automation.inspect import (
        format_parameters_help,
        has_parameters_cell,
        inspect_parameters,
    )

    nb = _read(path)
    params = inspect_parameters(nb) if has_parameters_cell(nb) else None
    usage = f"Usage: runt run {path} OUTPUT [-p NAME VALUE]..."
    sys.stdout.write(format_parameters_help(path, params, usage=usage))
    return 0


async def _inspect(args: argparse.Namespace) -> int:
    if not args.json:
        return _print_help(args.notebook)
    from runtimed.automation.inspect import has_parameters_cell, inspect_parameters

    nb = _read(args.notebook)
    params = [p._asdict() for p in inspect_parameters(nb)] if has_parameters_cell(nb) else None
    sys.stdout.write(json.dumps({"notebook": args.notebook, "parameters": params}, indent=2) + "\n")
    return 0


async def _scraps(args: argparse.Namespace) -> int:
    from runtimed.glue import read_scraps

    found = {path: read_scraps(_read(path)) for path in args.notebooks}
    if args.json:
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
        return 0
    rows = [
        [path, name, json.dumps(value)]
        for path, scraps in found.items()
        for name, value in scraps.items()
    ]
    if not rows:
        _err("runt scraps: no recorded values (record them with runtimed.glue.glue)")
        return 0
    header = ["NOTEBOOK", "NAME", "VALUE"]
    if len(found) == 1:
        rows, header = [row[1:] for row in rows], header[1:]
    rows = [[*row[:-1], row[-1] if len(row[-1]) <= 60 else row[-1][:57] + "..."] for row in rows]
    from runtimed.automation.progress import format_table

    sys.stdout.write(format_table(header, rows))
    return 0


# ------------------------------------------------------------------------------ reports


def format_failure(
    failed: FailedCell, *, color: bool, max_source_lines: int = 8, max_traceback_lines: int = 30
) -> str:
    """One screen about the failed cell: where, its source, the traceback, the error.

    Args:
        color: keep the kernel's ANSI colours (only when writing to a terminal).
    """
    from runtimed.automation.progress import strip_ansi

    said: dict[str, str] = {
        ExecutionStatus.TIMEOUT: "timed out",
        ExecutionStatus.DIED: "killed the kernel",
    }
    what = said.get(failed.status, "failed")
    if failed.ename == "DaemonDied":
        what = "was running when the daemon exited"
    lines = [f"{failed.name} {what}:"]
    source = failed.source.splitlines() or [""]
    width = len(str(min(len(source), max_source_lines)))
    lines += [
        f"  {n:>{width}} | {line}" for n, line in enumerate(source[:max_source_lines], start=1)
    ]
    if len(source) > max_source_lines:
        lines.append(f"  {'':>{width}} | ... ({len(source) - max_source_lines} more lines)")
    traceback = "\n".join(failed.traceback).splitlines()
    if not color:
        traceback = [strip_ansi(line) for line in traceback]
    if len(traceback) > max_traceback_lines:
        cut = len(traceback) - max_traceback_lines
        traceback = [f"... ({cut} traceback lines omitted)", *traceback[cut:]]
    lines += traceback
    summary = f"{failed.ename}: {failed.evalue}" if failed.evalue else failed.ename
    if not traceback or strip_ansi(traceback[-1]).strip() != summary.strip():
        lines.append(summary)
    return "\n".join(lines) + "\n"
