"""Many notebooks in one command, run in parallel, each on its own kernel.

Two ways to ask for a batch::

    runt run --batch SPEC.yaml [--jobs N] [-p NAME VALUE]...
    runt run A.ipynb B.ipynb C.ipynb --output-dir OUT/ [--jobs N] [-p NAME VALUE]...

Every run writes its own output notebook, which is its own notebook in the daemon and so gets
its own kernel; all runs share one connection to the daemon. At most ``--jobs`` run at once
(default: the number of CPUs). One failing run does not stop the others; the command exits 1
if any run failed (2 if the spec itself is invalid) and prints a summary table.

The spec file (YAML)::

    jobs: 4                      # optional; --jobs overrides it
    defaults:                    # optional; applies to every run
      parameters: {seed: 1}
      kernel: python3            # like --kernel
      cwd: data                  # like --cwd
      execution_timeout: 600     # like --execution-timeout (seconds per cell)
      start_timeout: 60
      report_mode: false
    notebooks:                   # explicit runs
      - input: clean.ipynb
        output: out/clean.ipynb
        parameters: {day: "2024-01-02"}
      - input: plot.ipynb
        output: out/plot.ipynb
        kernel: python3          # any key of `defaults` may be set per run
    grid:                        # one mapping, or a list of them
      input: train.ipynb
      output: "out/train-{name}-{alpha}.ipynb"
      parameters:
        alpha: [0.1, 0.2]        # a list is swept: one run per combination (cartesian
        name: [a, b]             #   product, in the order written: 4 runs here)
        epochs: 10               # a scalar is passed to every run; to pass a list as
                                 #   one value, nest it: [[1, 2]]

Relative paths (``input``, ``output``, ``cwd``) are relative to the spec file's folder.
``output`` (in ``notebooks`` too) may use ``{name}`` fields, filled from the run's
parameters (``{pm[run_uuid]}`` also works, as in papermill). Parameters merge in this order,
later winning: command line ``-p``/``-r``/``-y``/``-f``/``-b``, ``defaults.parameters``, the
run's own ``parameters``. Two runs may not write the same output file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from runtimed.automation.parameters import ParameterError
from runtimed.automation.progress import RunObserver, format_table, strip_ansi
from runtimed.automation.report import RunResult, format_path
from runtimed.errors import InvalidRequest, RuntimedError

if TYPE_CHECKING:
    from runtimed.client import AsyncClient

__all__ = [
    "BatchProgress",
    "BatchRun",
    "BatchSpecError",
    "default_jobs",
    "format_summary",
    "load_spec",
    "run_batch",
    "runs_for_inputs",
]

_OPTION_KEYS: dict[str, type | tuple[type, ...]] = {
    "kernel": str,
    "cwd": str,
    "execution_timeout": (int, float),
    "start_timeout": (int, float),
    "report_mode": bool,
}
_RUN_KEYS = {"input", "output", "parameters", *_OPTION_KEYS}


class BatchSpecError(InvalidRequest):
    """The batch spec (or the list of inputs) is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class BatchRun:
    """One notebook run of a batch (paths as given; ``options`` as in ``defaults``)."""

    input: str
    output: str
    parameters: dict[str, object] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def default_jobs() -> int:
    return max(os.cpu_count() or 1, 1)


def _yaml_load(text: str, where: str) -> Any:
    import yaml

    # As papermill's NoDatesSafeLoader: "2024-01-02" stays a string (a date could not be
    # injected as Python source nor recorded in notebook metadata).
    resolvers = {
        first: [r for r in entries if r[0] != "tag:yaml.org,2002:timestamp"]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader = type("_NoDatesLoader", (yaml.SafeLoader,), {"yaml_implicit_resolvers": resolvers})
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise BatchSpecError(f"{where}: invalid YAML: {exc}") from exc


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise BatchSpecError(f"{where}: expected a mapping with string keys")
    return dict(value)


def _options(entry: Mapping[str, Any], where: str, base: Path) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, kind in _OPTION_KEYS.items():
        if key not in entry or entry[key] is None:
            continue
        value = entry[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise BatchSpecError(f"{where}: {key!r} has the wrong type ({value!r})")
        options[key] = str(base / str(value)) if key == "cwd" else value
    return options


def _check_keys(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise BatchSpecError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _path(entry: Mapping[str, Any], key: str, where: str, base: Path) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise BatchSpecError(f"{where}: {key!r} must be a path")
    return str(base / value)


def _escape(path: str) -> str:
    # Outputs are formatted here; the run formats its paths again (papermill's templating),
    # so braces that came from parameter values must survive that second pass.
    return path.replace("{", "{{").replace("}", "}}")


def load_spec(
    path: str | os.PathLike[str], *, parameters: Mapping[str, object] | None = None
) -> tuple[list[BatchRun], int | None]:
    """Read a batch spec (format in the module docstring).

    Args:
        parameters: command line parameters, applied to every run beneath the spec's own.

    Returns:
        The runs in spec order (``notebooks`` first, then each ``grid``) and the spec's
        ``jobs`` (None if unset).

    Raises:
        BatchSpecError: unreadable file, bad YAML, unknown keys, wrong types, missing paths,
            an output template naming a missing parameter, or two runs with one output.
    """
    spec_path = Path(path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchSpecError(f"cannot read the batch spec {os.fspath(path)!r}: {exc}") from exc
    spec = _mapping(_yaml_load(text, str(path)), str(path))
    _check_keys(spec, {"jobs", "defaults", "notebooks", "grid"}, str(path))
    base = spec_path.parent
    jobs = spec.get("jobs")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise BatchSpecError(f"{path}: 'jobs' must be a positive integer")
    defaults = _mapping(spec.get("defaults"), f"{path}: defaults")
    _check_keys(defaults, _RUN_KEYS - {"input", "output"}, f"{path}: defaults")
    common = {
        **(parameters or {}),
        **_mapping(defaults.get("parameters"), f"{path}: defaults.parameters"),
    }
    common_options = _options(defaults, f"{path}: defaults", base)

    runs: list[BatchRun] = []

    def add(entry: Mapping[str, Any], params: dict[str, object], where: str) -> None:
        merged = {**common, **params}
        try:
            output = format_path(_path(entry, "output", where, base), merged)
        except ParameterError as exc:
            raise BatchSpecError(f"{where}: {exc}") from exc
        runs.append(
            BatchRun(
                _path(entry, "input", where, base),
                _escape(output),
                merged,
                {**common_options, **_options(entry, where, base)},
            )
        )

    notebooks = spec.get("notebooks") or []
    if not isinstance(notebooks, list):
        raise BatchSpecError(f"{path}: 'notebooks' must be a list")
    for number, entry in enumerate(notebooks, start=1):
        where = f"{path}: notebooks[{number}]"
        entry = _mapping(entry, where)
        _check_keys(entry, _RUN_KEYS, where)
        add(entry, _mapping(entry.get("parameters"), f"{where}.parameters"), where)
    grids = spec.get("grid") or []
    for number, grid in enumerate(grids if isinstance(grids, list) else [grids], start=1):
        where = f"{path}: grid[{number}]"
        grid = _mapping(grid, where)
        _check_keys(grid, _RUN_KEYS, where)
        axes = _mapping(grid.get("parameters"), f"{where}.parameters")
        values = [v if isinstance(v, list) else [v] for v in axes.values()]
        for combination in itertools.product(*values):
            add(grid, dict(zip(axes, combination, strict=True)), where)
    if not runs:
        raise BatchSpecError(f"{path}: no runs: add 'notebooks' or 'grid' entries")
    _check_outputs(runs)
    return runs, jobs


def runs_for_inputs(
    inputs: Sequence[str], output_dir: str, *, parameters: Mapping[str, object] | None = None
) -> list[BatchRun]:
    """``runt run A.ipynb B.ipynb --output-dir OUT``: each output is ``OUT/<input name>``.

    Raises:
        BatchSpecError: two inputs share a file name.
    """
    runs = [
        BatchRun(i, str(Path(output_dir) / Path(i).name), dict(parameters or {})) for i in inputs
    ]
    _check_outputs(runs)
    return runs


def _check_outputs(runs: Sequence[BatchRun]) -> None:
    seen: dict[Path, int] = {}
    for number, run in enumerate(runs, start=1):
        key = Path(run.output).expanduser().resolve()
        if key in seen:
            raise BatchSpecError(
                f"runs {seen[key]} and {number} would both write {run.output}; "
                "give them different outputs"
            )
        seen[key] = number


async def run_batch(
    runs: Sequence[BatchRun],
    *,
    client: AsyncClient,
    jobs: int | None = None,
    observer: Callable[[int, BatchRun], RunObserver] | None = None,
    on_done: Callable[[int, RunResult], None] | None = None,
    **options: Any,
) -> list[RunResult]:
    """Run ``runs`` with at most ``jobs`` at once on one shared client.

    Args:
        observer: makes the :class:`RunObserver` of run ``i``.
        on_done: called with each result as runs finish.
        options: passed to every :func:`~runtimed.automation.run.execute_notebook_async`
            call, beneath each run's own options.

    Returns:
        One result per run, in ``runs`` order. A run that could not start (unreadable input,
        bad parameters, daemon error) has status ``error`` and says why in ``error``.
    """
    from runtimed.automation.run import execute_notebook_async

    limiter = anyio.CapacityLimiter(max(jobs or default_jobs(), 1))
    results: list[RunResult | None] = [None] * len(runs)

    async def one(index: int, run: BatchRun) -> None:
        async with limiter:
            started = anyio.current_time()
            try:
                result = await execute_notebook_async(
                    run.input,
                    run.output,
                    run.parameters,
                    client=client,
                    observer=observer(index, run) if observer else None,
                    **{"progress_bar": False, **options, **run.options},
                )
            except (ParameterError, RuntimedError) as exc:
                result = RunResult(
                    status="error",
                    input_path=run.input,
                    output_path=run.output,
                    duration=anyio.current_time() - started,
                    parameters=run.parameters,
                    error=str(exc),
                )
            results[index] = result
            if on_done is not None:
                on_done(index, result)

    async with anyio.create_task_group() as tg:
        for index, run in enumerate(runs):
            tg.start_soon(one, index, run)
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------ terminal output


class BatchProgress:
    """One line per run as it starts and as it ends, written with ``write``."""

    def __init__(self, total: int, write: Callable[[str], None]) -> None:
        self.total, self.write = total, write
        self.finished = 0

    def observer(self, index: int, run: BatchRun) -> RunObserver:
        """The :class:`RunObserver` of run ``index`` (for :func:`run_batch`)."""
        progress = self

        class Started(RunObserver):
            def run_started(
                self, *, input_path: str, output_path: str, notebook_id: str, link: str, total: int
            ) -> None:
                progress.write(
                    f"[{index + 1}/{progress.total}] started {input_path} -> "
                    f"{output_path}  ({link})"
                )

        return Started()

    def done(self, index: int, result: RunResult) -> None:
        self.finished += 1
        detail = ""
        if result.failed_cell is not None:
            f = result.failed_cell
            detail = f"  {f.name}: {f.ename}: {strip_ansi(f.evalue)}".splitlines()[0]
        elif result.error:
            detail = f"  {result.error}".splitlines()[0]
        self.write(
            f"[{index + 1}/{self.total}] {result.status:<6} {result.output_path} "
            f"({result.duration:.1f} s){detail}   [{self.finished}/{self.total} done]"
        )


def format_summary(results: Sequence[RunResult]) -> str:
    """The end-of-batch table: input, output, status, duration and the failed cell."""
    rows = []
    for r in results:
        failed = ""
        if r.failed_cell is not None:
            f = r.failed_cell
            failed = f"{f.name} {f.ename}: {strip_ansi(f.evalue)}".splitlines()[0][:80]
        elif r.error:
            failed = r.error.splitlines()[0][:60]
        rows.append([r.input_path, r.output_path, r.status, f"{r.duration:.1f}s", failed])
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "error")}
    tally = f"{counts['ok']} ok, {counts['failed']} failed"
    if counts["error"]:
        tally += f", {counts['error']} could not run"
    header = ["INPUT", "OUTPUT", "STATUS", "TIME", "FAILED CELL"]
    return format_table(header, rows) + f"{tally}, {len(results)} notebooks\n"
