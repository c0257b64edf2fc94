"""The environment cache's pure parts and files: :class:`BuiltEnv`, the marker file that
makes an environment complete, the size/age policy, and reading uv's output (naming the
package a failed resolution blames). Used by :mod:`runtimed.runtimes.envs`."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

# packaging's parsers are imported where they are used: at module level they were ~10 ms of
# every daemon's start, and most notebooks declare no dependencies.

__all__ = [
    "MARKER",
    "BuiltEnv",
    "describe_uv_failure",
    "read_lines",
    "read_marker",
    "select_for_removal",
    "tree_size",
    "write_marker",
]

log = logging.getLogger(__name__)

MARKER = "runtimed-env.json"
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class BuiltEnv:
    """A complete environment in the cache."""

    key: str
    path: Path
    requirements: tuple[str, ...]
    requires_python: str | None
    python: str
    created_at: float
    last_used: float
    size_bytes: int = 0

    @property
    def interpreter(self) -> Path:
        return self.path / "bin" / "python"


def select_for_removal(
    envs: list[BuiltEnv], *, now: float, max_bytes: int, max_age_days: float, keep: set[str]
) -> list[BuiltEnv]:
    """The cache policy: drop environments unused for ``max_age_days`` (0: no age limit),
    then the least recently used until the total is within ``max_bytes`` (0: no size
    limit). Keys in ``keep`` (in use, being built) are never chosen."""
    doomed: list[BuiltEnv] = []
    alive = []
    for env in envs:
        if env.key not in keep and max_age_days > 0 and now - env.last_used > max_age_days * _DAY:
            doomed.append(env)
        else:
            alive.append(env)
    total = sum(e.size_bytes for e in alive)
    if max_bytes > 0:
        for env in sorted(alive, key=lambda e: e.last_used):
            if total <= max_bytes:
                break
            if env.key not in keep:
                doomed.append(env)
                total -= env.size_bytes
    return doomed


_UV_CULPRIT = (
    re.compile(r"Because ([A-Za-z0-9][A-Za-z0-9._-]*) was not found in the package registry"),
    re.compile(r"Because there (?:is|are) no versions? of ([A-Za-z0-9][A-Za-z0-9._-]*)"),
    re.compile(r"Because only ([A-Za-z0-9][A-Za-z0-9._-]*)\s*[<>=!~]"),
    re.compile(r"Failed to (?:download and )?build `([A-Za-z0-9][A-Za-z0-9._-]*)"),
    re.compile(r"Failed to (?:download|fetch|prepare)[^`]*`([A-Za-z0-9][A-Za-z0-9._-]*)"),
    re.compile(r"(?:requires|you require) ([A-Za-z0-9][A-Za-z0-9._-]*)"),
)


_UV_DECORATION = " \u00d7\u2570\u2500\u25b6\u2502|"  # uv's error tree: cross, corner, arrow, bar


def describe_uv_failure(output: str, requirements: tuple[str, ...]) -> tuple[str | None, str]:
    """(the requested package uv blames, or None; the sentence explaining why)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted = {canonicalize_name(Requirement(r).name): r for r in requirements}
    text = " ".join(line.strip(_UV_DECORATION) for line in output.splitlines())
    package = None
    for pattern in _UV_CULPRIT:
        for match in pattern.finditer(text):
            name = canonicalize_name(match.group(1))
            if name in wanted:
                package = name
                break
        if package:
            break
    if package is None:  # uv named no requested package outright: any one it mentions
        package = next((n for n in wanted if re.search(rf"\b{re.escape(n)}\b", text.lower())), None)
    because = re.search(r"\b(Because .*?[.])(?=\s|$)", text)
    if because:
        return package, because.group(1)
    lines = [line.strip(_UV_DECORATION) for line in output.splitlines() if line.strip()]
    flagged = [line for line in lines if line.startswith(("error", "Failed", "Caused by"))]
    return package, (flagged or lines or ["uv failed"])[-1 if not flagged else 0]


async def read_lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", "replace").rstrip("\r")
    if buffer:
        yield buffer.decode("utf-8", "replace")


def write_marker(env: BuiltEnv) -> None:
    data = {
        "key": env.key,
        "requirements": list(env.requirements),
        "requires_python": env.requires_python,
        "python": env.python,
        "created_at": env.created_at,
    }
    tmp = env.path / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, env.path / MARKER)


def read_marker(path: Path) -> BuiltEnv | None:
    marker = path / MARKER
    try:
        data = json.loads(marker.read_text())
        return BuiltEnv(
            key=str(data["key"]),
            path=path,
            requirements=tuple(data["requirements"]),
            requires_python=data.get("requires_python"),
            python=str(data.get("python", "")),
            created_at=float(data.get("created_at", 0.0)),
            last_used=marker.stat().st_mtime,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring environment %s: unreadable marker (%s)", path, exc)
        return None


def tree_size(path: Path) -> int:
    """Apparent size of the files under ``path`` (hard links to uv's cache count fully)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
