"""Runtimes: configuration (name, language, how to launch, capabilities) plus an execution
handler — composition, not a class hierarchy.

A :class:`RuntimeSpec` is plain data; its ``handler`` knows how to turn it into a running
kernel (:class:`JupyterHandler`: a :class:`~runtimed.kernels.session.KernelSession` speaking the
Jupyter messaging protocol) and whether a pre-started kernel can be pointed at a notebook
afterwards (what makes a runtime poolable). :class:`RuntimeRegistry` discovers them:

* ``python3`` (aliases ``python``, ``python<major>``): the daemon's own interpreter with
  ipykernel; it shadows an installed kernelspec of the same name;
* every installed Jupyter kernelspec (``jupyter_client``'s KernelSpecManager, which reads
  ``JUPYTER_PATH`` and the data directories on every call, so new ones appear at once);
* environments built from notebooks' declared dependencies (``env-<key>``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import anyio
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from protocol.runtimes import RuntimeInfo
from runtimed.errors import RuntimeNotFound
from runtimed.kernels.launch import LaunchSpec
from runtimed.kernels.session import KernelSession

__all__ = [
    "BUILTIN_NAME",
    "ExecutionHandler",
    "JupyterHandler",
    "RuntimeKind",
    "RuntimeRegistry",
    "RuntimeSpec",
    "setup_code",
]

log = logging.getLogger(__name__)

RuntimeKind = Literal["builtin", "kernelspec", "env", "gateway"]
BUILTIN_NAME = "python3"
_BUILTIN_ALIASES = frozenset({"python", BUILTIN_NAME, f"python{sys.version_info.major}"})
IPYKERNEL_ARGV = ("-m", "ipykernel_launcher", "-f", "{connection_file}")
# IPython's session history in an in-memory sqlite database: In, _i<n> and %history keep
# working for the kernel's own session; nothing is committed to disk after every cell.
MEMORY_HISTORY_ARG = "--HistoryManager.hist_file=:memory:"
# ipykernel sleeps 0.5 ms before every execute_reply so that clients which stop reading at
# the reply see the cell's last output first.  We wait for the IOPub idle status as the
# messaging spec says (outputs may follow the reply), so the sleep only costs time.
NO_EXECUTE_SLEEP_ARG = "--Kernel._execute_sleep=0"


class ExecutionHandler(Protocol):
    """Turns a runtime's configuration into a running kernel."""

    def session(
        self, runtime: RuntimeSpec, *, cwd: Path, env: Mapping[str, str], startup_timeout: float
    ) -> KernelSession:
        """An unstarted session for ``runtime`` (enter it to launch the kernel)."""
        ...

    def setup_code(self, runtime: RuntimeSpec, *, cwd: Path, env: Mapping[str, str]) -> str | None:
        """Code that points an already running kernel at ``cwd`` and ``env``; None if the
        handler cannot do that for this runtime (then it cannot be pooled)."""
        ...


def setup_code(cwd: Path, env: Mapping[str, str]) -> str:
    """Python that moves a pre-started kernel to its notebook: chdir and environment.

    Run by the daemon as a silent execute_request (no output, no history, execution count
    unchanged); everything happens in a function deleted afterwards, so the user namespace
    is left as a fresh kernel has it.
    """
    return (
        "def __runtimed_setup(cwd, env):\n"
        "    import os\n"
        "    os.chdir(cwd)\n"
        "    os.environ.update(env)\n"
        f"__runtimed_setup({str(cwd)!r}, {dict(env)!r})\n"
        "del __runtimed_setup\n"
    )


class JupyterHandler:
    """Jupyter kernels launched from argv, driven by
    :class:`runtimed.kernels.session.KernelSession`."""

    def session(
        self, runtime: RuntimeSpec, *, cwd: Path, env: Mapping[str, str], startup_timeout: float
    ) -> KernelSession:
        return KernelSession(
            spec=runtime.launch_spec(), cwd=cwd, env=dict(env), startup_timeout=startup_timeout
        )

    def setup_code(self, runtime: RuntimeSpec, *, cwd: Path, env: Mapping[str, str]) -> str | None:
        return setup_code(cwd, env) if runtime.language == "python" else None


JUPYTER = JupyterHandler()


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """One runtime: what to launch and what it can do, plus the handler that runs it."""

    name: str
    display_name: str
    language: str
    kind: RuntimeKind
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    interrupt_mode: Literal["signal", "message"] = "signal"
    resource_dir: str = ""
    capabilities: frozenset[str] = frozenset()
    """``poolable`` (can be pre-started for a notebook not yet known), ``dependencies``
    (hosts declared Python dependencies), ``interrupt``, ``restart``."""
    env_key: str | None = None
    """For ``env`` runtimes: the cache key of the environment."""
    handler: ExecutionHandler = field(default=JUPYTER, compare=False)

    @property
    def poolable(self) -> bool:
        return "poolable" in self.capabilities

    @property
    def runs_ipykernel(self) -> bool:
        """Whether argv starts ipykernel (so IPython's traitlets options apply)."""
        return any(arg in ("ipykernel_launcher", "ipykernel") for arg in self.argv)

    def tuned(self, *, persist_history: bool) -> RuntimeSpec:
        """This runtime as the daemon launches it: ipykernel gets no pre-reply sleep and,
        unless ``persist_history``, IPython's history in memory; other kernels as they are."""
        if not self.runs_ipykernel:
            return self
        wanted = [NO_EXECUTE_SLEEP_ARG] + ([] if persist_history else [MEMORY_HISTORY_ARG])
        extra = tuple(arg for arg in wanted if arg not in self.argv)
        return replace(self, argv=(*self.argv, *extra)) if extra else self

    def launch_spec(self) -> LaunchSpec:
        return LaunchSpec(
            name=self.name,
            argv=list(self.argv),
            env=dict(self.env),
            interrupt_mode=self.interrupt_mode,
            resource_dir=self.resource_dir,
        )

    def info(self, *, default: bool = False) -> RuntimeInfo:
        return RuntimeInfo(
            name=self.name,
            display_name=self.display_name,
            language=self.language,
            kind=self.kind,
            argv=list(self.argv),
            capabilities=sorted(self.capabilities),
            interrupt_mode=self.interrupt_mode,
            default=default,
        )


def _capabilities(language: str) -> frozenset[str]:
    caps = {"interrupt", "restart"}
    if language == "python":
        caps |= {"poolable", "dependencies"}
    return frozenset(caps)


def builtin_runtime() -> RuntimeSpec:
    """The daemon's own interpreter running ipykernel, independent of installed kernelspecs."""
    return RuntimeSpec(
        name=BUILTIN_NAME,
        display_name=f"Python {sys.version.split()[0]} (runtimed)",
        language="python",
        kind="builtin",
        argv=(sys.executable, *IPYKERNEL_ARGV),
        capabilities=_capabilities("python"),
    )


def env_runtime(key: str, python: Path, requirements: tuple[str, ...]) -> RuntimeSpec:
    """The runtime of a built environment (its interpreter running ipykernel)."""
    shown = ", ".join(requirements) or "no packages"
    return RuntimeSpec(
        name=f"env-{key}",
        display_name=f"Python with {shown}",
        language="python",
        kind="env",
        argv=(str(python), *IPYKERNEL_ARGV),
        capabilities=_capabilities("python"),
        env_key=key,
    )


def _from_kernelspec(name: str, resource_dir: str, spec: Mapping[str, object]) -> RuntimeSpec:
    language = str(spec.get("language") or "")
    env = spec.get("env") or {}
    argv = spec.get("argv") or []
    return RuntimeSpec(
        name=name,
        display_name=str(spec.get("display_name") or name),
        language=language,
        kind="kernelspec",
        argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
        env=tuple(sorted((str(k), str(v)) for k, v in env.items()))
        if isinstance(env, dict)
        else (),
        interrupt_mode="message" if spec.get("interrupt_mode") == "message" else "signal",
        resource_dir=resource_dir,
        capabilities=_capabilities(language),
    )


def _kernelspecs_sync() -> list[RuntimeSpec]:
    manager = KernelSpecManager()  # re-reads JUPYTER_PATH & co. on every call
    found = []
    for name, entry in sorted(manager.get_all_specs().items()):
        if name in _BUILTIN_ALIASES:
            continue  # shadowed by the built-in runtime
        found.append(
            _from_kernelspec(name, str(entry.get("resource_dir", "")), entry.get("spec", {}))
        )
    return found


def _kernelspec_sync(name: str) -> RuntimeSpec | None:
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return None
    except (OSError, ValueError) as exc:  # unreadable or invalid kernel.json
        log.warning("kernelspec %r is unusable: %s", name, exc)
        return None
    return _from_kernelspec(name, spec.resource_dir or "", spec.to_dict())


class RuntimeRegistry:
    """Discovers runtimes and resolves a notebook's selection to one."""

    def __init__(self, *, default: str = BUILTIN_NAME) -> None:
        self.default = default
        self.builtin = builtin_runtime()

    def is_default(self, runtime: RuntimeSpec) -> bool:
        return runtime.name == self.default or (
            runtime.kind == "builtin" and self.default in _BUILTIN_ALIASES
        )

    async def kernelspecs(self) -> list[RuntimeSpec]:
        """Installed kernelspecs (discovery walks the data directories: off the loop)."""
        return await anyio.to_thread.run_sync(_kernelspecs_sync)

    async def all(self) -> list[RuntimeSpec]:
        """The built-in runtime and every installed kernelspec (built envs: see EnvStore)."""
        return [self.builtin, *await self.kernelspecs()]

    async def resolve(self, name: str | None) -> RuntimeSpec:
        """The runtime called ``name`` (None: the configured default).

        Raises:
            RuntimeNotFound: no such runtime; the message lists the available ones.
        """
        wanted = name or self.default
        if wanted in _BUILTIN_ALIASES:
            return self.builtin
        found = await anyio.to_thread.run_sync(_kernelspec_sync, wanted)
        if found is not None:
            return found
        available = [self.builtin.name] + [s.name for s in await self.kernelspecs()]
        raise RuntimeNotFound(wanted, available)
