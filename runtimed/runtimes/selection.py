"""Which runtime a notebook asks for: pure functions of its metadata and first code cell.

A notebook selects a runtime, in order of precedence:

1. ``metadata.runtimed.dependencies`` (a list of PEP 508 requirement strings) and/or a
   PEP 723 ``# /// script`` block in its first code cell (``dependencies`` and
   ``requires-python``; https://peps.python.org/pep-0723/): a Python environment built
   with uv holding ipykernel and those packages;
2. ``metadata.runtimed.runtime``: a runtime name (``runt runtimes``);
3. ``metadata.kernelspec.name`` (nbformat): a kernelspec name, ``python3`` being the
   daemon's own Python;
4. nothing: the configured default runtime.

No I/O here: the daemon resolves the request (:mod:`runtimed.runtimes.registry`).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runtimed.errors import EnvBuildFailed

# packaging's parsers are imported where they are used: at module level they were ~10 ms of
# every daemon's start, and most notebooks declare no dependencies.

__all__ = [
    "Dependencies",
    "RuntimeRequest",
    "normalize_requirements",
    "parse_script_block",
    "runtime_request_for",
]

# The reference regular expression of PEP 723.
_SCRIPT_BLOCK = re.compile(
    r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$"
)
_KEY_VERSION = 1  # bump to invalidate every cached environment (layout change)


@dataclass(frozen=True, slots=True)
class Dependencies:
    """A normalized dependency spec: sorted, de-duplicated PEP 508 strings."""

    requirements: tuple[str, ...]
    requires_python: str | None = None

    def names(self) -> set[str]:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        return {canonicalize_name(Requirement(r).name) for r in self.requirements}

    def key(self, python: str) -> str:
        """The cache key: a hash of the normalized spec and the interpreter it targets."""
        blob = json.dumps(
            {
                "v": _KEY_VERSION,
                "requirements": list(self.requirements),
                "requires_python": self.requires_python,
                "python": python,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class RuntimeRequest:
    """What a notebook asks for; equal requests get the same kind of kernel."""

    runtime: str | None = None
    """A runtime or kernelspec name; None: the configured default."""
    dependencies: Dependencies | None = None
    gateway: str | None = None
    """``metadata.runtimed.gateway``'s URL: the kernel starts on that kernel gateway."""
    gateway_kernel: str | None = None
    """``metadata.runtimed.gateway.kernel_name``: the kernel to start there."""


def normalize_requirements(items: Iterable[object], *, where: str) -> tuple[str, ...]:
    """PEP 508 strings in canonical form (lower-case normalized names), sorted, unique.

    Raises:
        EnvBuildFailed: an item is not a string or not a valid requirement.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    out: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise EnvBuildFailed(f"{where} must be a list of strings; {item!r} is not one")
        try:
            req = Requirement(item)
        except InvalidRequirement as exc:
            raise EnvBuildFailed(
                f"dependency {item!r} in {where} is not a valid requirement: {exc}",
                package=item,
            ) from exc
        req.name = canonicalize_name(req.name)
        out.add(str(req))
    return tuple(sorted(out))


def parse_script_block(source: str) -> dict[str, Any] | None:
    """The PEP 723 ``script`` metadata in ``source`` (None if there is none).

    Raises:
        EnvBuildFailed: more than one script block, or its TOML is invalid.
    """
    blocks = [m for m in _SCRIPT_BLOCK.finditer(source) if m.group("type") == "script"]
    if not blocks:
        return None
    if len(blocks) > 1:
        raise EnvBuildFailed("the first code cell has more than one '# /// script' block")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        return tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise EnvBuildFailed(
            f"the '# /// script' block in the first code cell is not valid TOML: {exc}"
        ) from exc


def runtime_request_for(
    metadata: Mapping[str, Any], first_code_source: str | None
) -> RuntimeRequest:
    """The runtime a notebook selects (see the module docstring for the precedence).

    Raises:
        EnvBuildFailed: the declared dependencies are malformed (named in the message).
    """
    runtimed_meta = metadata.get("runtimed")
    runtimed_meta = runtimed_meta if isinstance(runtimed_meta, Mapping) else {}
    requirements: list[object] = []
    requires_python: str | None = None
    declared = False
    meta_deps = runtimed_meta.get("dependencies")
    if meta_deps is not None:
        if not isinstance(meta_deps, list):
            raise EnvBuildFailed("metadata.runtimed.dependencies must be a list of strings")
        requirements.extend(meta_deps)
        declared = True
    script = parse_script_block(first_code_source) if first_code_source else None
    if script is not None:
        script_deps = script.get("dependencies", [])
        if not isinstance(script_deps, list):
            raise EnvBuildFailed("'dependencies' in the '# /// script' block must be a list")
        requirements.extend(script_deps)
        requires_python = _requires_python(script.get("requires-python"))
        declared = declared or "dependencies" in script
    dependencies = None
    if declared:
        dependencies = Dependencies(
            normalize_requirements(requirements, where="the notebook's dependencies"),
            requires_python,
        )
    name = runtimed_meta.get("runtime")
    if not isinstance(name, str) or not name:
        spec = metadata.get("kernelspec")
        name = spec.get("name") if isinstance(spec, Mapping) else None
    gateway, gateway_kernel = _gateway(runtimed_meta.get("gateway"))
    return RuntimeRequest(
        runtime=str(name) if name else None,
        dependencies=dependencies,
        gateway=gateway,
        gateway_kernel=gateway_kernel,
    )


def _gateway(value: object) -> tuple[str | None, str | None]:
    """``metadata.runtimed.gateway``: a URL, or ``{"url": ..., "kernel_name": ...}``."""
    if isinstance(value, str) and value:
        return value, None
    if isinstance(value, Mapping):
        url, kernel = value.get("url"), value.get("kernel_name")
        return (
            url if isinstance(url, str) and url else None,
            kernel if isinstance(kernel, str) and kernel else None,
        )
    return None, None


def _requires_python(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EnvBuildFailed(f"requires-python must be a string, not {value!r}")
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return str(SpecifierSet(value))
    except InvalidSpecifier as exc:
        raise EnvBuildFailed(f"requires-python {value!r} is not a valid specifier") from exc
