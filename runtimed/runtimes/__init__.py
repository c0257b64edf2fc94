"""Runtime management: which kernels exist, how they start, and who owns them.

* :mod:`~runtimed.runtimes.selection` — what a notebook's metadata asks for (pure);
* :mod:`~runtimed.runtimes.registry` — runtimes as configuration plus an execution handler;
* :mod:`~runtimed.runtimes.envs` — uv-built environments for declared dependencies;
* :mod:`~runtimed.runtimes.pool` — pre-warmed kernels of the default runtime;
* :mod:`~runtimed.runtimes.manager` — the owner of all of it, and of the kernel limit.

See docs/runtimes.md.
"""

from __future__ import annotations

from runtimed.runtimes.manager import KernelLease, RuntimeManager
from runtimed.runtimes.registry import RuntimeRegistry, RuntimeSpec
from runtimed.runtimes.selection import Dependencies, RuntimeRequest, runtime_request_for

__all__ = [
    "Dependencies",
    "KernelLease",
    "RuntimeManager",
    "RuntimeRegistry",
    "RuntimeRequest",
    "RuntimeSpec",
    "runtime_request_for",
]
