"""Where a run reads its notebook and writes the result: local paths, ``-`` and URLs.

papermill accepts ``-`` for stdin (input) / stdout (output) and remote paths (its own I/O
handlers). runtimed does the same through fsspec (``pip install 'runtimed[remote]'`` plus
fsspec's backend for the protocol: s3fs, gcsfs, aiohttp for http(s), ...). The daemon
executes local files only, so a remote or ``-`` notebook is staged: the input is copied
into a private temporary folder, the run writes its output there (checkpoints included),
and the output is copied to its destination when the run ends — on failure too, as the
output notebook always is. Blocking functions: call them from a worker thread.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimed.errors import InvalidRequest, NotebookIOError, NotebookNotFound

__all__ = ["STDIO", "Staged", "is_url", "stage"]

#: The path meaning stdin (as input) or stdout (as output), as papermill's.
STDIO = "-"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path: str) -> bool:
    """``scheme://...``: a location fsspec opens."""
    return bool(_URL.match(path))


@dataclass
class Staged:
    """Local files standing for a run's input and output (see :func:`stage`)."""

    input_path: Path
    output_path: Path
    input_name: str
    output_name: str
    folder: Path | None = None

    @property
    def staged_output(self) -> bool:
        return self.output_name == STDIO or is_url(self.output_name)

    def publish(self) -> None:
        """Copy the output to stdout or its URL (when the run wrote one), then remove the
        temporary folder.

        Raises:
            NotebookIOError: the destination refused it.
        """
        try:
            if self.staged_output and self.output_path.exists():
                data = self.output_path.read_bytes()
                if self.output_name == STDIO:
                    sys.stdout.buffer.write(data)
                    sys.stdout.flush()
                else:
                    _write_url(self.output_name, data)
        finally:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None


def stage(input_name: str, output_name: str) -> Staged:
    """Local paths for a run of ``input_name`` to ``output_name``: those paths themselves,
    or files in a new temporary folder for ``-`` and URLs (the input is read now).

    Raises:
        NotebookNotFound: the input URL names nothing.
        InvalidRequest: no fsspec backend for the URL's protocol (the message names it).
        NotebookIOError: the input cannot be read.
    """
    input_remote = input_name == STDIO or is_url(input_name)
    output_remote = output_name == STDIO or is_url(output_name)
    if not (input_remote or output_remote):
        return Staged(Path(input_name), Path(output_name), input_name, output_name)
    folder = Path(tempfile.mkdtemp(prefix="runt-run-"))
    try:
        input_path = Path(input_name)
        if input_remote:
            input_path = folder / "input" / _basename(input_name, "input.ipynb")
            input_path.parent.mkdir()
            data = sys.stdin.buffer.read() if input_name == STDIO else _read_url(input_name)
            input_path.write_bytes(data)
        output_path = Path(output_name)
        if output_remote:
            output_path = folder / "output" / _basename(output_name, "output.ipynb")
            output_path.parent.mkdir()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Staged(input_path, output_path, input_name, output_name, folder)


def _basename(name: str, default: str) -> str:
    if name == STDIO:
        return default
    tail = name.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return tail if tail and tail not in (".", "..") else default


def _fsspec(url: str) -> Any:
    try:
        import fsspec
    except ImportError as exc:
        raise InvalidRequest(
            f"{url}: remote notebook paths need fsspec (pip install 'runtimed[remote]')"
        ) from exc
    return fsspec


def _open(url: str, mode: str) -> Any:
    fsspec = _fsspec(url)
    try:
        return fsspec.open(url, mode)
    except ImportError as exc:  # fsspec: "Install s3fs to access S3", ...
        raise InvalidRequest(f"{url}: the backend for this protocol is missing: {exc}") from exc
    except ValueError as exc:  # "Protocol not known: ..."
        raise InvalidRequest(f"{url}: {exc}") from exc


def _read_url(url: str) -> bytes:
    opened = _open(url, "rb")
    try:
        with opened as f:
            data: bytes = f.read()
    except FileNotFoundError as exc:
        raise NotebookNotFound(f"{url}: no such notebook") from exc
    except ImportError as exc:
        raise InvalidRequest(f"{url}: the backend for this protocol is missing: {exc}") from exc
    except OSError as exc:
        raise NotebookIOError(f"{url}: cannot read: {exc}") from exc
    return data


def _write_url(url: str, data: bytes) -> None:
    opened = _open(url, "wb")
    try:
        with opened as f:
            f.write(data)
    except ImportError as exc:
        raise InvalidRequest(f"{url}: the backend for this protocol is missing: {exc}") from exc
    except OSError as exc:
        raise NotebookIOError(f"{url}: cannot write: {exc}") from exc
