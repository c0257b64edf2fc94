"""Reading and checkpointing ``.ipynb`` files. Blocking: call from a worker thread.

A notebook that fails to read or validate is refused with :class:`NotebookInvalid` and the
file is never written. Checkpoints are atomic: a temp file in the same directory, fsync,
rename over the target, fsync of the directory.

Reads are bounded: only a regular file is read (opened with ``O_NONBLOCK``, so a FIFO with no
writer cannot block the worker thread, then checked with ``fstat``: a FIFO, a device such as
``/dev/zero``, a socket or a directory is refused by name), and at most
``MAX_NOTEBOOK_BYTES + 1`` bytes are read whatever size the file claims. A saved file keeps the
permission bits of the file it replaces; a new one gets ``0666`` less the umask, as any file
the user creates.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtimed.errors import NotebookInvalid, NotebookIOError, NotebookNotFound

if TYPE_CHECKING:
    from nbformat.validator import ValidationError

# nbformat (and its jsonschema, >1 s to import where jupyter_server is installed) is imported
# by the functions that validate, not here: reading and writing bytes need neither.

__all__ = [
    "WIDGET_STATE_MIME",
    "notebook_bytes",
    "parse_notebook",
    "read_notebook",
    "read_notebook_bytes",
    "read_notebook_with_digest",
    "remove_interrupted_temps",
    "set_widget_state",
    "skip_unused_format_checkers",
    "write_bytes_atomic",
    "write_notebook_atomic",
]

MAX_NOTEBOOK_BYTES = 512 * 1024 * 1024


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def read_notebook_bytes(path: Path, *, limit: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises:
        NotebookNotFound: no such file.
        NotebookIOError: not a regular file (FIFO, device, socket, directory) or unreadable.
        NotebookInvalid: larger than ``limit``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError as exc:
        raise NotebookNotFound(f"{path}: no such notebook file") from exc
    except OSError as exc:
        raise NotebookIOError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise NotebookIOError(f"{path}: is {kind}, not a notebook file; open a .ipynb file")
        if info.st_size > limit:
            raise NotebookInvalid(
                f"{path}: {info.st_size} bytes is larger than the {limit} byte limit"
            )
        # The size fstat reports is a hint (a file can grow while read): read to EOF, but
        # never more than the limit + 1 bytes.
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise NotebookInvalid(f"{path}: larger than the {limit} byte limit")
        return b"".join(chunks)
    except OSError as exc:
        raise NotebookIOError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def read_notebook(path: Path) -> dict[str, Any]:
    """Read and validate an nbformat v4 notebook; returns it as plain dicts.

    Raises:
        NotebookNotFound: no such file.
        NotebookIOError: it cannot be read (permissions, a directory, a FIFO, a device, ...).
        NotebookInvalid: too large, not JSON, not a notebook, or fails nbformat validation.
    """
    return parse_notebook(read_notebook_bytes(path), path)


def read_notebook_with_digest(path: Path) -> tuple[dict[str, Any], str]:
    """:func:`read_notebook` plus the sha256 of the bytes it parsed (one read)."""
    raw = read_notebook_bytes(path)
    return parse_notebook(raw, path), hashlib.sha256(raw).hexdigest()


def parse_notebook(raw: bytes, path: Path) -> dict[str, Any]:
    """Validate ``raw`` (the bytes of ``path``) as an nbformat v4 notebook.

    Raises:
        NotebookInvalid: not JSON, not a notebook, or fails nbformat validation.
    """
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
    import nbformat

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
    write_bytes_atomic(path, notebook_bytes(nb))


def notebook_bytes(nb: dict[str, Any]) -> bytes:
    """``nb`` validated and serialised exactly as :func:`write_notebook_atomic` writes it
    (so a checkpoint can record the file's sha256 before writing it).

    Raises:
        NotebookInvalid: the notebook would not validate.
    """
    import nbformat

    node = nbformat.from_dict(nb)
    invalid: dict[str, ValidationError] = {}  # writes() validates once, as reads() does
    text = nbformat.writes(node, capture_validation_error=invalid)
    if invalid:
        error = invalid["ValidationError"]
        raise NotebookInvalid(
            f"refusing to write an invalid notebook: {_first_line(error)}"
        ) from error
    data: bytes = text.encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\n"
    return data


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file beside it, fsync,
    rename, fsync of the directory), keeping the replaced file's mode.

    Raises:
        NotebookIOError: the write failed; the old file is intact, no temp file is left.
    """
    directory = path.parent
    try:
        mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None  # a new file: 0666 less the umask, applied by the kernel at creation
    tmp_name: str | None = None
    try:
        fd, tmp_name = _create_temp(directory, path.name)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)  # the mode of the file it replaces
            os.fsync(handle.fileno())
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


def remove_interrupted_temps(path: Path) -> int:
    """Delete the temp files a checkpoint of ``path`` interrupted by a crash left beside it
    (only names :func:`_create_temp` makes for this file); returns how many."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[0-9a-f]{12}\.tmp")
    removed = 0
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return 0
    for candidate in candidates:
        if pattern.fullmatch(candidate.name):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed += 1
    return removed


def _create_temp(directory: Path, name: str) -> tuple[int, str]:
    """A new temp file beside the target: O_EXCL|O_NOFOLLOW (never an existing file or a
    planted symlink), mode 0666 filtered by the umask (mkstemp would force 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp_name = str(directory / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp_name, flags, 0o666), tmp_name
        except FileExistsError:
            continue


def _first_line(exc: Exception) -> str:
    return str(getattr(exc, "message", exc)).splitlines()[0]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"


def set_widget_state(nb: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Put the kernel's widget state into ``nb["metadata"]["widgets"]`` (the Jupyter widgets
    "widget state" schema, as nbclient's ``set_widgets_metadata`` writes it), replacing the
    state read from the file; other keys of ``metadata.widgets`` are kept.  ``state`` None
    (no widgets in this session) leaves the metadata as it is, as nbclient does."""
    if state is None:
        return
    metadata = nb.setdefault("metadata", {})
    widgets = metadata.get("widgets")
    kept = widgets if isinstance(widgets, dict) else {}
    metadata["widgets"] = {**kept, WIDGET_STATE_MIME: state}


def skip_unused_format_checkers() -> None:
    """Keep jsonschema from importing ``rfc3987_syntax`` in this process: a process's entry
    point calls this before anything imports jsonschema (nbformat imports it).

    jsonschema registers an ``iri`` format checker when ``rfc3987_syntax`` is importable
    (jupyter_server's dependencies install it), and that module builds a lark grammar at
    import: 1.5 of the 1.7 s ``import nbformat`` took here, paid by the daemon's first open
    (a cold ``runt run`` was no faster than papermill). Nothing this process runs checks
    formats: nbformat's schemas use no ``format`` keyword and it validates with
    fastjsonschema. Marked absent in ``sys.modules``, the import fails the way jsonschema
    expects of an uninstalled optional checker (it skips that format). Not for library
    code running in someone else's process.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
