"""Reading and checkpointing ``.ipynb`` files. Blocking: call from a worker thread.

A notebook that fails to read or validate is refused with :class:`NotebookInvalid` and the
file is never written. Checkpoints are atomic: a temp file in the same directory, fsync,
rename over the target, fsync of the directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from nbformat.validator import ValidationError

from runtimed.errors import NotebookInvalid, NotebookIOError, NotebookNotFound

__all__ = ["read_notebook", "write_notebook_atomic"]

MAX_NOTEBOOK_BYTES = 512 * 1024 * 1024


def read_notebook(path: Path) -> dict[str, Any]:
    """Read and validate an nbformat v4 notebook; returns it as plain dicts.

    Raises:
        NotebookNotFound: no such file.
        NotebookIOError: it cannot be read (permissions, a directory, ...).
        NotebookInvalid: not JSON, not a notebook, or fails nbformat validation.
    """
    try:
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            raise NotebookInvalid(
                f"{path}: {size} bytes is larger than the {MAX_NOTEBOOK_BYTES} byte limit"
            )
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotebookNotFound(f"{path}: no such notebook file") from exc
    except IsADirectoryError as exc:
        raise NotebookIOError(f"{path}: is a directory, not a notebook file") from exc
    except OSError as exc:
        raise NotebookIOError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotebookInvalid(f"{path}: not a notebook: invalid JSON ({exc})") from exc
    if not isinstance(data, dict) or "cells" not in data or "nbformat" not in data:
        raise NotebookInvalid(f"{path}: not a notebook: no 'nbformat' and 'cells' at top level")
    if data.get("nbformat") != 4:
        raise NotebookInvalid(
            f"{path}: nbformat {data.get('nbformat')!r} notebooks are not supported; "
            "convert it to nbformat 4 (jupyter nbconvert --to notebook)"
        )
    # reads() validates (once; a second validate() of ours cost as much again on a big
    # notebook) and hands the error back through capture_validation_error.
    invalid: dict[str, ValidationError] = {}
    try:
        node = nbformat.reads(text, as_version=4, capture_validation_error=invalid)
    except Exception as exc:  # nbformat raises assorted types for malformed input
        raise NotebookInvalid(f"{path}: invalid notebook: {exc}") from exc
    if invalid:
        error = invalid["ValidationError"]
        raise NotebookInvalid(f"{path}: invalid notebook: {_first_line(error)}") from error
    plain: dict[str, Any] = _plain(node)
    return plain


def write_notebook_atomic(path: Path, nb: dict[str, Any]) -> None:
    """Validate ``nb`` and write it to ``path`` atomically.

    Raises:
        NotebookInvalid: the notebook would not validate (nothing is written).
        NotebookIOError: the write failed (full disk, permissions); the old file is intact
            and no temp file is left behind.
    """
    node = nbformat.from_dict(nb)
    invalid: dict[str, ValidationError] = {}  # writes() validates once, as reads() does
    text = nbformat.writes(node, capture_validation_error=invalid)
    if invalid:
        error = invalid["ValidationError"]
        raise NotebookInvalid(
            f"refusing to write an invalid notebook: {_first_line(error)}"
        ) from error
    data = text.encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\n"
    directory = path.parent
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
        tmp_name = None
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        hint = " (disk full)" if exc.errno == errno.ENOSPC else ""
        raise NotebookIOError(f"{path}: cannot write: {exc.strerror or exc}{hint}") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _first_line(exc: Exception) -> str:
    return str(getattr(exc, "message", exc)).splitlines()[0]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
