"""Payload structs describing runtime resources: runtimes, the kernel pool, kernels'
health, built environments and the effective configuration.

Plain (untagged) structs carried inside replies of :mod:`protocol.messages`. Evolution rules
as for messages: new fields get defaults; names and types never change.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ConfigEntry",
    "ConfigScalar",
    "EnvInfo",
    "KernelHealth",
    "PoolInfo",
    "RuntimeInfo",
]

ConfigScalar = str | int | float | bool | None


class RuntimeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One runtime the daemon can start: configuration of how to launch it."""

    name: str
    display_name: str
    language: str
    kind: str
    """``builtin`` (the daemon's own Python), ``kernelspec`` or ``env`` (built from
    dependencies)."""
    argv: list[str] = msgspec.field(default_factory=list)
    capabilities: list[str] = msgspec.field(default_factory=list)
    interrupt_mode: str = "signal"
    default: bool = False
    """The configured default runtime (the one the pool keeps warm)."""


class KernelHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One kernel process the daemon manages."""

    kernel_id: str
    runtime: str
    state: str
    """``starting``, ``idle``, ``busy`` or ``dead``."""
    pid: int | None = None
    notebook_id: str | None = None
    """The notebook using it; None for a pooled kernel waiting to be taken."""
    pooled: bool = False
    """True while it waits in the pool (it has never run a notebook's code)."""
    rss_bytes: int | None = None
    """Resident memory of the kernel process (``/proc/<pid>/status`` VmRSS)."""
    started_at: float = 0.0
    """Unix time the kernel was launched."""
    last_activity: float | None = None
    """Unix time an execution last started or finished on it."""


class PoolInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The pre-warmed kernel pool."""

    runtime: str
    size: int
    """Target number of idle kernels (0: the pool is disabled)."""
    ready: int = 0
    starting: int = 0
    enabled: bool = True
    last_error: str = ""
    """Why the last pooled kernel failed to start (empty if it did not)."""
    kernels: list[KernelHealth] = msgspec.field(default_factory=list)


class EnvInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A cached environment built from declared dependencies."""

    key: str
    path: str
    requirements: list[str] = msgspec.field(default_factory=list)
    requires_python: str | None = None
    python: str = ""
    size_bytes: int = 0
    created_at: float = 0.0
    last_used: float = 0.0
    in_use: bool = False


class ConfigEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One configuration key, its effective value and where the value came from."""

    key: str
    """``section.name`` as in config.toml."""
    value: ConfigScalar
    origin: str
    """``default``, ``file`` or the environment variable that set it."""
    env: str = ""
    """The environment variable overriding it."""
    doc: str = ""
