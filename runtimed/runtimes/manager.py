"""The runtime manager: every kernel process and environment build the daemon runs.

Owned by the daemon and started in its task group (``await tg.start(manager.run)``), the
manager hosts, in its own task group, the pool's kernels, the notebooks' kernels and the
environment builds. A notebook's executor asks it for a kernel::

    lease = await manager.acquire(request, notebook_id=..., cwd=..., env=..., progress=...)
    ... lease.kernel.execute(...) ...
    await lease.release()          # the kernel is shut down, never reused

How a request is served (see :mod:`runtimed.runtimes.selection` for the request itself):
declared dependencies → the cached or newly built environment's Python; otherwise the named
runtime (or the configured default). A default-runtime request takes a pooled kernel when
there is one — waiting for one being started rather than launching a second — and the
manager points it at the notebook with a silent, daemon-authored ``execute_request``
(chdir, ``RUNTIMED_NOTEBOOK_ID``/``RUNTIMED_NOTEBOOK_PATH``; silent so the notebook's first
cell still gets execution count 1). Anything else is launched for the notebook, within
``max_kernels`` (pooled kernels count, and are shut down to make room for a notebook).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus

from protocol.runtimes import EnvInfo, KernelHealth, PoolInfo, RuntimeInfo
from protocol.states import ExecutionStatus
from runtimed.config import RuntimesConfig
from runtimed.errors import KernelError, KernelLimitReached, ShuttingDown
from runtimed.kernels.session import KernelSession
from runtimed.runtimes.envs import BuiltEnv, EnvStore, Progress
from runtimed.runtimes.gateway import (
    configured_gateway,
    gateway_runtime,
    gateway_target_for,
    is_gateway_name,
)
from runtimed.runtimes.hosting import ManagedKernel
from runtimed.runtimes.pool import KernelPool
from runtimed.runtimes.registry import RuntimeRegistry, RuntimeSpec, env_runtime
from runtimed.runtimes.selection import RuntimeRequest

__all__ = ["KernelLease", "RuntimeManager"]

log = logging.getLogger(__name__)

_SETUP_TIMEOUT = 10.0  # a pooled kernel that cannot chdir within this is discarded


class KernelLease:
    """A kernel handed to one notebook; :meth:`release` shuts it down."""

    def __init__(self, managed: ManagedKernel, request: RuntimeRequest) -> None:
        self._managed = managed
        self.request = request
        """What the notebook asked for when the kernel was acquired."""

    @property
    def kernel(self) -> KernelSession:
        return self._managed.session

    @property
    def runtime(self) -> RuntimeSpec:
        return self._managed.runtime

    @property
    def from_pool(self) -> bool:
        return self._managed.from_pool

    async def release(self) -> None:
        """Shut the kernel down (bounded, shielded); it is never handed out again."""
        await self._managed.stop()


class RuntimeManager:
    """Registry, pool, environment cache and kernel limit. Run :meth:`run` in a task group."""

    def __init__(
        self, config: RuntimesConfig, *, home: Path, startup_timeout: float = 60.0
    ) -> None:
        self.config = config
        self.startup_timeout = startup_timeout
        self.registry = RuntimeRegistry(default=config.default_runtime)
        self.envs = EnvStore(
            home / "envs",
            uv=config.uv,
            build_timeout=config.env_build_timeout,
            max_bytes=config.env_max_bytes,
            max_age_days=config.env_max_age_days,
            compile_bytecode=config.env_compile_bytecode,
        )
        self.pool = KernelPool(
            size=config.pool_size,
            registry=self.registry,
            launch=self._launch_pooled,
            has_capacity=self._pool_has_room,
        )
        if is_gateway_name(config.default_runtime):
            self.pool.disabled_reason = (
                f"the default runtime {config.default_runtime!r} starts kernels on a gateway,"
                " for their notebook; pool disabled"
            )
        self._pool_dir = home / "pool"
        self._kernels: dict[str, ManagedKernel] = {}
        self._demand = 0  # notebooks acquiring now: capacity the pool must leave them
        self._tg: TaskGroup | None = None
        self._stop = anyio.Event()
        self._finished = anyio.Event()
        self._changed = anyio.Event()

    @property
    def prewarm_on_open(self) -> bool:
        """Opening a notebook starts getting its kernel (on when the pool is)."""
        return self.config.pool_size > 0

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host kernels and builds until :meth:`aclose` or cancellation; then every kernel
        is shut down (each bounded by the kernel layer's close deadline)."""
        try:
            # An empty directory pooled kernels start in: nothing there to import by accident.
            await anyio.Path(self._pool_dir).mkdir(parents=True, exist_ok=True)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self.pool.run, tg)
                tg.start_soon(self._prune_quietly)
                task_status.started()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self._finished.set()

    async def aclose(self) -> None:
        """Stop: pooled and remaining kernels shut down, builds are killed."""
        self._stop.set()
        if self._tg is not None:
            await self._finished.wait()

    def _task_group(self) -> TaskGroup:
        if self._tg is None or self._stop.is_set():
            raise ShuttingDown("the daemon is shutting down; no new kernels")
        return self._tg

    # ------------------------------------------------------------ acquiring

    async def acquire(
        self,
        request: RuntimeRequest,
        *,
        notebook_id: str,
        cwd: Path,
        env: dict[str, str],
        progress: Progress | None = None,
    ) -> KernelLease:
        """A ready kernel for a notebook: pooled if possible, else launched for it.

        ``env`` (e.g. RUNTIMED_NOTEBOOK_ID) and ``cwd`` apply to the kernel however it was
        started, and to its restarts. ``progress`` receives environment build lines.

        Raises:
            RuntimeNotFound, EnvBuildFailed, KernelStartFailed, KernelLimitReached,
            ShuttingDown.
        """
        tg = self._task_group()
        runtime = await self._runtime_for(request, tg, progress, env=env)
        self._demand += 1
        try:
            if self.pool.serves(runtime) and not needs_fresh_process(env):
                while (pooled := await self.pool.take_or_wait()) is not None:
                    if await self._hand_over(pooled, notebook_id, cwd=cwd, env=env):
                        return KernelLease(pooled, request)
            kernel = await self._launch(runtime, cwd=cwd, env=env, notebook_id=notebook_id)
            return KernelLease(kernel, request)
        finally:
            self._demand -= 1
            self.pool.wake()

    def describe(self, request: RuntimeRequest) -> str:
        """A short name for what ``request`` will run (before it is resolved)."""
        if request.dependencies is not None:
            return f"env-{self.envs.key_for(request.dependencies)}"
        return request.runtime or self.config.default_runtime

    async def _runtime_for(
        self,
        request: RuntimeRequest,
        tg: TaskGroup,
        progress: Progress | None,
        *,
        env: Mapping[str, str],
    ) -> RuntimeSpec:
        # A gateway (a run's, the notebook's, or the runtime "gateway") comes first: the
        # environment of a remote kernel is the gateway's business (docs/runtimes.md).
        runtime = request.runtime or self.config.default_runtime
        target = gateway_target_for(
            runtime, request.gateway, request.gateway_kernel, env=env, config=self.config
        )
        if target is not None:
            if request.dependencies is not None:
                log.warning("declared dependencies are not installed on a gateway's kernel")
            return gateway_runtime(target)
        if request.dependencies is None:
            return await self.registry.resolve(request.runtime)
        built_before = self.envs.builds_started
        built = await self.envs.ensure(request.dependencies, tg=tg, progress=progress)
        if self.envs.builds_started != built_before:
            tg.start_soon(self._prune_quietly)
        return env_runtime(built.key, built.interpreter, built.requirements)

    async def _hand_over(
        self, kernel: ManagedKernel, notebook_id: str, *, cwd: Path, env: dict[str, str]
    ) -> bool:
        """Point a pooled kernel at its notebook; False (kernel stopped) if it cannot be."""
        ok = False
        try:
            await kernel.take(notebook_id, cwd=cwd, env=env)
            code = kernel.runtime.handler.setup_code(kernel.runtime, cwd=cwd, env=env)
            if code is not None:
                outcome = await kernel.session.execute(code, silent=True, timeout=_SETUP_TIMEOUT)
                ok = outcome.status == ExecutionStatus.OK
                if not ok:
                    why = outcome.error.evalue if outcome.error else outcome.status
                    log.warning("pooled kernel %s: setup failed (%s)", kernel.id, why)
        except KernelError as exc:
            log.warning("pooled kernel %s: setup failed (%s)", kernel.id, exc)
        finally:
            if not ok:  # also when cancelled: a taken kernel must never be left running
                await kernel.stop()
        return ok

    async def _launch(
        self, runtime: RuntimeSpec, *, cwd: Path, env: dict[str, str], notebook_id: str
    ) -> ManagedKernel:
        limit = self.config.max_kernels
        while limit and len(self._kernels) >= limit:
            victim = self.pool.take()
            if victim is not None:  # pooled kernels are spare capacity: make room
                await victim.stop()
            elif any(k.stopping for k in self._kernels.values()):
                await self._wait_changed()  # a released kernel is on its way out
            elif self.pool.starting:
                await self.pool.wait_changed()
            else:
                raise KernelLimitReached(
                    f"cannot start a {runtime.name} kernel: {len(self._kernels)} kernels are "
                    f"running and the limit is {limit} (kernels.max_kernels, "
                    "RUNTIMED_MAX_KERNELS); close a notebook (runt ps lists them) or raise "
                    "the limit"
                )
        kernel = self._new_kernel(runtime, cwd=cwd, env=env, pooled=False)
        kernel.notebook_id = notebook_id
        await self._task_group().start(kernel.host)
        return kernel

    async def _launch_pooled(self, runtime: RuntimeSpec) -> ManagedKernel:
        kernel = self._new_kernel(runtime, cwd=self._pool_dir, env={}, pooled=True)
        await self._task_group().start(kernel.host)
        return kernel

    def _new_kernel(
        self, runtime: RuntimeSpec, *, cwd: Path, env: dict[str, str], pooled: bool
    ) -> ManagedKernel:
        runtime = runtime.tuned(persist_history=self.config.persist_history)
        session = runtime.handler.session(
            runtime, cwd=cwd, env=env, startup_timeout=self.startup_timeout
        )
        kernel = ManagedKernel(runtime, session, pooled=pooled, on_gone=self._gone)
        self._kernels[kernel.id] = kernel  # counted from now on (the limit)
        return kernel

    def _gone(self, kernel: ManagedKernel) -> None:
        self._kernels.pop(kernel.id, None)
        self.pool.discard(kernel)
        self.pool.wake()
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _pool_has_room(self) -> bool:
        limit = self.config.max_kernels
        return not limit or len(self._kernels) + self._demand < limit

    # ------------------------------------------------------------ status

    def kernels(self) -> list[KernelHealth]:
        """Health of every kernel, pooled ones included."""
        return [k.health() for k in self._kernels.values()]

    def health_for(self, notebook_id: str) -> KernelHealth | None:
        for kernel in self._kernels.values():
            if kernel.notebook_id == notebook_id and not kernel.gone.is_set():
                return kernel.health()
        return None

    def from_pool(self, notebook_id: str) -> bool:
        return any(k.from_pool for k in self._kernels.values() if k.notebook_id == notebook_id)

    def pool_info(self) -> PoolInfo:
        return self.pool.info()

    async def runtimes(self) -> list[RuntimeInfo]:
        """Built-in, kernelspec and built-environment runtimes."""
        specs = await self.registry.all()
        if self.config.gateway_url:
            specs.append(gateway_runtime(configured_gateway(self.config)))
        specs += [
            env_runtime(e.key, e.interpreter, e.requirements)
            for e in await self.envs.list_envs(sizes=False)
        ]
        return [s.info(default=self.registry.is_default(s)) for s in specs]

    def _in_use(self) -> set[str]:
        return {k.runtime.env_key for k in self._kernels.values() if k.runtime.env_key}

    async def env_infos(self) -> list[EnvInfo]:
        in_use = self._in_use()
        return [_env_info(e, in_use=e.key in in_use) for e in await self.envs.list_envs()]

    async def clean_envs(
        self, *, remove_all: bool = False, older_than_days: float | None = None
    ) -> list[BuiltEnv]:
        """Remove environments no kernel uses (all, older than, or over the limits)."""
        return await self.envs.prune(
            in_use=self._in_use(), remove_all=remove_all, older_than_days=older_than_days
        )

    async def _prune_quietly(self) -> None:
        try:
            removed = await self.clean_envs()
        except OSError as exc:
            log.warning("could not prune the environment cache: %s", exc)
            return
        if removed:
            log.info("pruned %d environments: %s", len(removed), [e.key for e in removed])


def _env_info(env: BuiltEnv, *, in_use: bool) -> EnvInfo:
    return EnvInfo(
        key=env.key,
        path=str(env.path),
        requirements=list(env.requirements),
        requires_python=env.requires_python,
        python=env.python,
        size_bytes=env.size_bytes,
        created_at=env.created_at,
        last_used=env.last_used,
        in_use=in_use,
    )


# Variables an interpreter reads only when it starts (sys.path, hash seed, the dynamic
# loader): a pooled kernel, already running, cannot take a new value of these.
_STARTUP_PREFIXES = ("PYTHON", "LD_")


def needs_fresh_process(env: Mapping[str, str]) -> bool:
    """True when ``env`` sets a startup variable (``PYTHON*``, ``LD_*``) to another value
    than the daemon's own (which pooled kernels were started with): then only a kernel
    launched with ``env`` behaves as asked, and the pool is not used."""
    return any(
        name.startswith(_STARTUP_PREFIXES) and os.environ.get(name) != value
        for name, value in env.items()
    )
