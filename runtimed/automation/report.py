"""Papermill-format bookkeeping for ``runt run``, and the results a run returns.

Pure functions (no daemon) prepare a notebook the way papermill does before it executes
one, build the ``metadata.papermill`` records papermill writes while it runs and the error
marker cells it inserts on failure; :func:`materialize` is the one blocking function (it
reads the input and writes the prepared output file: call it from a worker thread).

Why match papermill byte for byte: tools that post-process papermill output (report
builders, dashboards, scrapbook-style collectors) read ``metadata.papermill`` on the
notebook and on every cell, and look for the ``papermill-error-cell-tag`` cells. The
semantics followed are those of papermill 2.x ``execute.py`` (``prepare_notebook_metadata``,
``remove_error_markers``, ``raise_for_execution_errors``), ``iorw.load_notebook_node`` and
``engines.NotebookExecutionManager``.
"""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from runtimed.automation import nodes
from runtimed.automation.inspect import PAPERMILL_TRANSLATOR_KEYS, unknown_parameters
from runtimed.automation.parameters import ParameterError, parameterize_notebook
from runtimed.errors import InvalidRequest, RuntimedError

__all__ = [
    "ERROR_ANCHOR_MSG",
    "ERROR_MARKER_TAG",
    "ERROR_MESSAGE_TEMPLATE",
    "CellTimeline",
    "FailedCell",
    "NotebookExecutionError",
    "Prepared",
    "RunResult",
    "cell_record",
    "cell_tags",
    "describe_cell",
    "error_marker_cells",
    "error_output",
    "format_path",
    "is_clean_exit",
    "materialize",
    "notebook_link",
    "now_iso",
    "prepare_notebook",
    "read_input_notebook",
    "start_notebook",
]

# papermill's marker cells (papermill/execute.py), reproduced verbatim so readers that look for
# the tag or the anchor id keep working on runtimed output.
ERROR_MARKER_TAG = "papermill-error-cell-tag"
_ERROR_STYLE = (
    'style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;"'
)
ERROR_MESSAGE_TEMPLATE = (
    f"<span {_ERROR_STYLE}>An Exception was encountered at "
    "'<a href=\"#papermill-error-cell\">In [%s]</a>'.</span>"
)
ERROR_ANCHOR_MSG = (
    f'<span id="papermill-error-cell" {_ERROR_STYLE}>'
    "Execution using papermill encountered an exception here and stopped:"
    "</span>"
)


_from_dict: Callable[[object], Any] = nodes.from_dict
_upgrade: Callable[[Any], Any] = nodes.upgrade


def now_iso() -> str:
    """The current UTC time as papermill writes it (``datetime.isoformat``, ``+00:00``)."""
    return datetime.datetime.now(datetime.UTC).isoformat()


def format_path(path: str, parameters: Mapping[str, object]) -> str:
    """Fill ``{name}`` fields of a path from the parameters, as ``papermill.parameterize_path``.

    Papermill also offers ``pm`` (``{pm[run_uuid]}``, ``{pm[current_datetime_utc]}``, ...).

    Raises:
        ParameterError: the path names a parameter that was not given, or is malformed.
    """
    if "{" not in path and "}" not in path:
        return path
    import uuid

    now = datetime.datetime.now()
    values: dict[str, object] = {
        "pm": {
            "run_uuid": str(uuid.uuid4()),
            "current_datetime_local": now,
            "current_datetime_utc": datetime.datetime.now(datetime.UTC),
        },
        **parameters,
    }
    try:
        return path.format(**values)
    except KeyError as exc:
        raise ParameterError(
            f"path {path!r} refers to parameter {exc} which was not given"
        ) from exc
    except (IndexError, ValueError, AttributeError) as exc:
        raise ParameterError(f"path {path!r} is not a valid template: {exc}") from exc


def _translator_key(nb: Any, kernel_name: str | None) -> str:
    # papermill's translators.find_translator: kernel name first, then language.
    metadata = nb.get("metadata") or {}
    name = kernel_name or (metadata.get("kernelspec") or {}).get("name")
    if name in PAPERMILL_TRANSLATOR_KEYS:
        return str(name)
    language = (metadata.get("language_info") or {}).get("name") or (
        metadata.get("kernelspec") or {}
    ).get("language")
    return str(language) if language else "python"


def prepare_notebook(
    nb: Any,
    *,
    parameters: Mapping[str, object] | None,
    input_path: str,
    output_path: str,
    kernel_name: str | None = None,
    report_mode: bool = False,
) -> tuple[Any, list[str]]:
    """The notebook papermill would write with ``--prepare-only``.

    In papermill's order: upgrade to nbformat 4.5; seed ``metadata.papermill`` (papermill's
    loader also writes its own ``version``, which runtimed does not claim) and give every
    cell ``metadata.tags`` and ``metadata.papermill`` when missing; inject the parameters
    (only when some were given, like papermill); hide code inputs in report mode; record
    ``input_path``/``output_path``; drop error marker cells of an earlier failed run.

    Returns:
        ``(notebook, unknown)``: a new ``NotebookNode`` (``nb`` is not modified) and the names
        of given parameters the ``parameters`` cell does not declare (papermill warns).

    Raises:
        ParameterError: a parameter cannot be rendered, or the language is not Python.
    """
    out = _upgrade(_from_dict(copy.deepcopy(nb)))
    if not isinstance(out.metadata.get("papermill"), dict):
        out.metadata["papermill"] = _from_dict(
            {"default_parameters": {}, "parameters": {}, "environment_variables": {}}
        )
    for cell in out.cells:
        cell.metadata.setdefault("tags", [])
        cell.metadata.setdefault("papermill", _from_dict({}))
    unknown: list[str] = []
    if parameters:
        unknown = unknown_parameters(out, parameters)
        key = _translator_key(out, kernel_name)
        out = parameterize_notebook(out, parameters, kernel_language=key, report_mode=report_mode)
    if report_mode:
        for cell in out.cells:
            if cell.cell_type == "code":
                # papermill reads the (always absent) cell-level "jupyter" key, so this
                # replaces any existing metadata.jupyter.
                cell.metadata["jupyter"] = _from_dict({"source_hidden": True})
    out.metadata.papermill["input_path"] = input_path
    out.metadata.papermill["output_path"] = output_path
    out.cells = [c for c in out.cells if ERROR_MARKER_TAG not in c.metadata.get("tags", [])]
    return out, unknown


@dataclass(frozen=True, slots=True)
class Prepared:
    """A notebook written to its output path, ready to run (see :func:`materialize`)."""

    nb: Any
    input_path: str
    output_path: str
    output: Path
    unknown_parameters: list[str]
    kernel_cwd: Path | None = None
    """Where the kernel runs (sent with OpenNotebook, never recorded in the notebook)."""
    warnings: list[str] = field(default_factory=list)
    checked: bool = True
    """False: read and written without nbformat (:mod:`runtimed.automation.quickread`);
    the daemon validates it when it opens it (a refusal retries with ``checked``)."""


def materialize(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    parameters: Mapping[str, object],
    *,
    kernel_name: str | None,
    report_mode: bool,
    prepare_only: bool,
    cwd: str | os.PathLike[str] | None,
    names: tuple[str, str] | None = None,
    checked: bool = True,
) -> Prepared:
    """Read the input, prepare it as papermill does and write it to the output path (its
    folder is created). Unless ``prepare_only``, also reset it for a run
    (:func:`start_notebook`); the kernel's working directory (``cwd``, else the current
    directory: papermill runs kernels where it is started) is returned, not recorded in the
    notebook (a path is machine-specific). Blocking.

    ``names``: the input and output as the caller named them (``-``, a URL), recorded
    instead of the (staged, already formatted) local paths. ``checked=False``: a plain
    nbformat 4.5 input is read and the output written without nbformat (no validation
    here: the daemon validates the file it opens); any other input is read as with
    ``checked`` (see ``Prepared.checked``).

    Raises:
        ParameterError, NotebookNotFound, NotebookInvalid, NotebookIOError, InvalidRequest.
    """
    from runtimed.storage.ipynb import write_notebook_atomic

    if names is None:
        input_str = format_path(os.fspath(input_path), parameters)
        output_str = format_path(os.fspath(output_path), parameters)
        local_input, local_output = input_str, output_str
    else:
        input_str, output_str = names
        local_input, local_output = os.fspath(input_path), os.fspath(output_path)
    output = Path(local_output).expanduser().resolve()
    plain: dict[str, Any] | None = None
    read_warnings: list[str] = []
    if not checked:
        from runtimed.automation.quickread import plain_bytes, read_plain

        plain = read_plain(Path(local_input).expanduser())
    if plain is not None:
        source = plain
    else:
        source, read_warnings = read_input_notebook(Path(local_input).expanduser())
    nb, unknown = prepare_notebook(
        source,
        parameters=parameters,
        input_path=input_str,
        output_path=output_str,
        kernel_name=kernel_name,
        report_mode=report_mode,
    )
    warnings = [*read_warnings, *_drop_stale_cwd(nb, output.parent)]
    kernel_cwd: Path | None = None
    if not prepare_only:
        kernel_cwd = Path(cwd).expanduser().resolve() if cwd is not None else Path.cwd()
        if not kernel_cwd.is_dir():
            raise InvalidRequest(f"the working directory {os.fspath(kernel_cwd)!r} is not a folder")
        nb = start_notebook(nb, start_time=now_iso(), kernel_name=kernel_name, cwd=None)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot create the output folder {output.parent}: {exc}") from exc
    if plain is not None:
        from runtimed.storage.ipynb import write_bytes_atomic

        write_bytes_atomic(output, plain_bytes(nb))
    else:
        write_notebook_atomic(output, nb)
    return Prepared(nb, input_str, output_str, output, unknown, kernel_cwd, warnings, plain is None)


def read_input_notebook(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Read a run's input. A notebook that fails nbformat validation only in its metadata
    (nbclient's ``Output.ipynb``: a kernelspec without ``name``) is run as papermill runs
    it, with a warning: the invalid metadata is dropped (nbformat's ``normalize``).

    Returns:
        The notebook and the warnings to show.

    Raises:
        NotebookNotFound, NotebookIOError, NotebookInvalid (not a notebook at all, or
        invalid beyond its metadata).
    """
    import json

    import nbformat
    from nbformat.validator import ValidationError, normalize

    from runtimed.errors import NotebookInvalid
    from runtimed.storage.ipynb import read_notebook

    try:
        return read_notebook(path), []
    except NotebookInvalid as exc:
        if not isinstance(exc.__cause__, ValidationError):
            raise
        refused = exc
    data = json.loads(path.read_text(encoding="utf-8"))  # read_notebook parsed it already
    _changes, fixed = normalize(data, strip_invalid_metadata=True)
    try:
        nbformat.validate(_from_dict(fixed))
    except ValidationError:
        raise refused from None
    why = str(refused).split(": invalid notebook: ", 1)[-1]
    return fixed, [f"invalid notebook ({why}); its invalid metadata was dropped to run it"]


def _drop_stale_cwd(nb: Any, folder: Path) -> list[str]:
    """A ``metadata.runtimed.cwd`` that names no folder here (a notebook from another
    machine) is dropped with a warning; the run's own working directory is used."""
    meta = nb.metadata.get("runtimed")
    if not isinstance(meta, dict) or "cwd" not in meta:
        return []
    value = meta.get("cwd")
    if isinstance(value, str) and value and (folder / value).expanduser().is_dir():
        return []
    del meta["cwd"]
    if not meta:
        del nb.metadata["runtimed"]
    return [f"metadata.runtimed.cwd {value!r} names no folder on this machine; it was removed"]


def cell_record(
    status: str,
    *,
    start_time: str | None = None,
    end_time: str | None = None,
    duration: float | None = None,
    exception: bool | None = None,
) -> dict[str, Any]:
    """A cell's ``metadata.papermill`` (status: pending, running, completed or failed)."""
    return {
        "exception": exception,
        "start_time": start_time,
        "end_time": end_time,
        "duration": duration,
        "status": status,
    }


def start_notebook(nb: Any, *, start_time: str, kernel_name: str | None, cwd: str | None) -> Any:
    """``NotebookExecutionManager.notebook_start``: reset counts, outputs and cell records.

    Also records what the daemon needs to run it: the kernelspec for ``--kernel`` and
    ``metadata.runtimed.cwd`` (where the daemon starts the kernel). Returns a copy.
    """
    out = _from_dict(copy.deepcopy(nb))
    meta = out.metadata.papermill
    meta.update(start_time=start_time, end_time=None, duration=None, exception=None)
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.execution_count = None
            cell.outputs = []
        cell.metadata["papermill"] = _from_dict(cell_record("pending"))
    if kernel_name:
        spec = out.metadata.get("kernelspec") or {}
        if spec.get("name") != kernel_name:
            out.metadata["kernelspec"] = _from_dict(
                {"name": kernel_name, "display_name": kernel_name}
            )
    if cwd is not None:
        runtimed_meta = out.metadata.get("runtimed")
        if not isinstance(runtimed_meta, dict):
            runtimed_meta = out.metadata["runtimed"] = _from_dict({})
        runtimed_meta["cwd"] = cwd
    return out


def error_marker_cells(
    execution_count: int | None, *, status: str = "error", timeout: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """papermill's two markdown cells for a failed run: ``(top message, anchor)``.

    The message goes first in the notebook; the anchor right before the failed cell. A
    failure with ``status`` ``timeout`` (the cell hit ``--execution-timeout``, ``timeout``
    seconds) says so after papermill's words; otherwise the text is papermill's exactly.
    """
    tags = {"tags": [ERROR_MARKER_TAG]}
    message = ERROR_MESSAGE_TEMPLATE % str(execution_count)
    if status == "timeout":
        after = "" if timeout is None else f" after {timeout:g} s"
        message += (
            f"\n\n<span {_ERROR_STYLE}>The cell timed out{after} "
            "(execution timeout) and was interrupted.</span>"
        )
    return (
        {
            "cell_type": "markdown",
            "source": message,
            "metadata": copy.deepcopy(tags),
        },
        {"cell_type": "markdown", "source": ERROR_ANCHOR_MSG, "metadata": copy.deepcopy(tags)},
    )


def is_clean_exit(ename: str | None, evalue: str | None) -> bool:
    """``sys.exit()``/``sys.exit(0)``: papermill stops there and still calls it a success."""
    return ename == "SystemExit" and (evalue or "") in ("", "0")


@dataclass(frozen=True, slots=True)
class FailedCell:
    """The cell that stopped a run.

    Attributes:
        index: position in the executed notebook (before papermill's marker cells are added,
            as papermill's ``PapermillExecutionError.cell_index``).
        status: ``error``, ``timeout``, ``died`` (the kernel exited), ``cancelled``.
    """

    index: int
    cell_id: str
    source: str
    ename: str
    evalue: str
    traceback: list[str] = field(default_factory=list)
    execution_count: int | None = None
    status: str = "error"

    @property
    def name(self) -> str:
        """How every message and summary names the cell: ``cell 3 (id 'abc', In [2])``
        (``index`` is 0-based, as papermill's ``cell_index``)."""
        return describe_cell(self.index, self.cell_id, self.execution_count)


def describe_cell(index: int, cell_id: str, execution_count: int | None = None) -> str:
    """``cell 3 (id 'abc', In [2])``: the one way runtimed names a cell in its messages."""
    count = "" if execution_count is None else f", In [{execution_count}]"
    return f"cell {index} (id {cell_id!r}{count})"


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended.

    Attributes:
        status: ``ok``; ``failed`` (a cell failed; the output notebook is written); ``error``
            (batch runs only: the run could not start, see ``error``).
        duration: seconds, from reading the input to saving the output.
        cells_executed: code cells the kernel ran.
        notebook_id, notebook_link: the output notebook in the daemon (None: prepare-only).
        scraps: values recorded with :func:`runtimed.glue.glue`, by name.
    """

    status: Literal["ok", "failed", "error"]
    input_path: str
    output_path: str
    duration: float
    cells_executed: int = 0
    failed_cell: FailedCell | None = None
    notebook_id: str | None = None
    notebook_link: str | None = None
    scraps: dict[str, object] = field(default_factory=dict)
    parameters: dict[str, object] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``runt run --json``)."""
        return asdict(self)


class CellTimeline:
    """papermill's per-cell records as a run passes over the cells, in order.

    Pure bookkeeping (times are passed in): each method returns the ``(index, record)``
    pairs to write as ``metadata.papermill`` of those cells. Cells the kernel does not run
    (markdown, empty, ``skip-execution``) are marked completed when the run reaches them, as
    papermill does; cells after a failure stay pending.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.reached = 0  # cells before this index are accounted for
        self._started: dict[int, tuple[str, float]] = {}

    def passed_over(self, end: int, when: str) -> list[tuple[int, dict[str, Any]]]:
        """Cells from the last one reached up to (excluding) ``end`` were not run."""
        edits = [
            (
                i,
                cell_record(
                    "completed", start_time=when, end_time=when, duration=0.0, exception=False
                ),
            )
            for i in range(self.reached, end)
        ]
        self.reached = max(self.reached, end)
        return edits

    def started(self, index: int, when: str, clock: float) -> list[tuple[int, dict[str, Any]]]:
        edits = self.passed_over(index, when)
        self._started[index] = (when, clock)
        return [*edits, (index, cell_record("running", start_time=when, exception=False))]

    def is_started(self, index: int) -> bool:
        return index in self._started

    def finished(
        self, index: int, when: str, clock: float, *, failed: bool, timed: bool = True
    ) -> list[tuple[int, dict[str, Any]]]:
        edits = [] if index in self._started else self.started(index, when, clock)
        start_iso, start_clock = self._started[index]
        self.reached = index + 1
        duration = round(clock - start_clock, 6) if timed else None
        return [
            *edits,
            (
                index,
                cell_record(
                    "failed" if failed else "completed",
                    start_time=start_iso,
                    end_time=when,
                    duration=duration,
                    exception=failed,
                ),
            ),
        ]


#: Scheme of run links. A ``runtimed://notebook/<id>`` names an open notebook of the local
#: daemon (``runt ps`` shows the same id); the web UI resolves it to its page.
LINK_PREFIX = "runtimed://notebook/"


def notebook_link(notebook_id: str) -> str:
    """The link of a notebook open in the local daemon."""
    return f"{LINK_PREFIX}{notebook_id}"


class NotebookExecutionError(RuntimedError):
    """Raised by ``execute_notebook`` (``raise_on_error``) when a cell failed: the
    counterpart of papermill's ``PapermillExecutionError``, with the same attributes
    (``cell_index``, ``exec_count``, ``source``, ``ename``, ``evalue``, ``traceback``) and
    ``result``, the whole :class:`RunResult`."""

    def __init__(self, result: RunResult) -> None:
        failed = result.failed_cell
        where = "a cell failed"
        if failed is not None:
            where = f"{failed.name} failed: {failed.ename}: {failed.evalue}"
        super().__init__(f"{result.input_path}: {where}; see {result.output_path}")
        self.result = result
        self.failed_cell = failed
        self.cell_index = failed.index if failed else None
        self.exec_count = failed.execution_count if failed else None
        self.source = failed.source if failed else ""
        self.ename = failed.ename if failed else ""
        self.evalue = failed.evalue if failed else ""
        self.traceback = list(failed.traceback) if failed else []


def cell_tags(cell: Any) -> frozenset[str]:
    """A cell's tags (``metadata.tags``), ignoring malformed entries."""
    tags = (cell.get("metadata") or {}).get("tags") or []
    if not isinstance(tags, list):
        return frozenset()
    return frozenset(t for t in tags if isinstance(t, str))


def error_output(outputs: list[dict[str, Any]], ename: str | None) -> dict[str, Any] | None:
    """The error output named ``ename`` (else the last error output) of a cell."""
    errors = [o for o in outputs if o.get("output_type") == "error"]
    matching = [o for o in errors if o.get("ename") == ename]
    found = matching or errors
    return found[-1] if found else None
