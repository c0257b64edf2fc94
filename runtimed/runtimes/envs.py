"""Python environments built with uv from notebooks' declared dependencies, cached by key.

Layout: ``<RUNTIMED_HOME>/envs/<key>/`` is a virtual environment (made by ``uv venv``, then
``uv pip install ipykernel <requirements>``); ``<key>/runtimed-env.json`` is written last, so
an environment is complete exactly when that marker exists, and its mtime is the last use.
The key hashes the normalized requirements and the target interpreter
(:meth:`Dependencies.key`), so a second notebook with the same dependencies, in any order or
spelling, reuses the environment without a build.

Builds of one key are serialised: concurrent requesters share the running build and its
progress. Builds run as tasks of the runtime manager's task group, so a build outlives the
notebook that asked for it (its result is cached for the next one). uv runs as a subprocess
(never on the event loop); its stderr lines are forwarded as progress and, on failure, parsed
to name the package at fault (:func:`~runtimed.runtimes.env_cache.describe_uv_failure`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from runtimed.errors import EnvBuildFailed
from runtimed.kernels.launch import signal_group
from runtimed.runtimes.env_cache import (
    MARKER,
    BuiltEnv,
    describe_uv_failure,
    read_lines,
    read_marker,
    select_for_removal,
    tree_size,
    write_marker,
)
from runtimed.runtimes.selection import Dependencies

# packaging's parsers are imported where they are used: at module level they were ~10 ms of
# every daemon's start, and most notebooks declare no dependencies.

__all__ = ["BuiltEnv", "EnvStore", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
"""Called (synchronously, must not block) with each line of a build's progress."""

_TAIL_LINES = 20


@dataclass(eq=False)
class _Build:
    key: str
    done: anyio.Event = field(default_factory=anyio.Event)
    building: bool = False  # not a cache hit: uv is running
    env: BuiltEnv | None = None
    error: EnvBuildFailed | None = None
    listeners: list[Progress] = field(default_factory=list)

    def emit(self, line: str) -> None:
        for listener in list(self.listeners):
            listener(line)


def target_python(deps: Dependencies) -> tuple[str, str]:
    """(uv's ``--python`` argument, the interpreter tag in the cache key).

    The daemon's own interpreter unless the spec's ``requires-python`` excludes it; then the
    specifier itself (uv finds, or downloads, a matching Python).
    """
    from packaging.specifiers import SpecifierSet

    version = platform.python_version()
    if deps.requires_python and not SpecifierSet(deps.requires_python).contains(version):
        return deps.requires_python, f"requires{deps.requires_python}"
    return sys.executable, f"{sys.implementation.name}-{version}"


class EnvStore:
    """The environment cache under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        uv: str = "",
        build_timeout: float = 600.0,
        max_bytes: int = 0,
        max_age_days: float = 0.0,
        compile_bytecode: bool = True,
    ) -> None:
        self.root = root
        self.compile_bytecode = compile_bytecode
        self._uv_exe = uv
        self.build_timeout = build_timeout
        self.max_bytes = max_bytes
        self.max_age_days = max_age_days
        self._builds: dict[str, _Build] = {}
        self.builds_started = 0
        """Builds run by this store (not cache hits): what tests and benchmarks check."""

    def key_for(self, deps: Dependencies) -> str:
        return deps.key(target_python(deps)[1])

    def building(self) -> set[str]:
        return set(self._builds)

    # ------------------------------------------------------------ ensure

    async def ensure(
        self, deps: Dependencies, *, tg: TaskGroup, progress: Progress | None = None
    ) -> BuiltEnv:
        """The environment for ``deps``: from the cache, or built now (in ``tg``).

        Raises:
            EnvBuildFailed: uv failed; the message names the package when uv does.
        """
        key = self.key_for(deps)
        build = self._builds.get(key)
        if build is None:
            # Registered before any await: concurrent requests for one key share this task
            # (which looks in the cache first), so a key is never built twice at once.
            build = self._builds[key] = _Build(key)
            tg.start_soon(self._run_build, build, deps)
        elif progress is not None and build.building:
            progress(f"waiting for the environment {key}, already being built")
        if progress is not None:
            build.listeners.append(progress)
        try:
            await build.done.wait()
        finally:
            if progress is not None and progress in build.listeners:
                build.listeners.remove(progress)
        if build.error is not None:
            raise build.error
        assert build.env is not None
        return build.env

    async def _run_build(self, build: _Build, deps: Dependencies) -> None:
        """The cached environment, or a build; never raises (it runs in the manager's task
        group: a failure is the requesters' error, not the daemon's)."""
        try:
            build.env = await anyio.to_thread.run_sync(self._load_and_touch, build.key)
            if build.env is None:
                build.building = True
                self.builds_started += 1
                with anyio.fail_after(self.build_timeout):
                    build.env = await self._build(build, deps)
        except EnvBuildFailed as exc:
            build.error = exc
        except TimeoutError:
            build.error = EnvBuildFailed(
                f"building the environment for {', '.join(deps.requirements)} took longer "
                f"than {self.build_timeout:g} s (envs.build_timeout)"
            )
        except OSError as exc:  # the cache directory: permissions, a full disk, ...
            build.error = EnvBuildFailed(
                f"could not write the environment under {self.root}: {exc}"
            )
        except Exception as exc:
            log.exception("environment %s: unexpected failure", build.key)
            build.error = EnvBuildFailed(f"building the environment failed: {exc!r}")
        finally:
            if build.env is None and build.building:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(
                        lambda: shutil.rmtree(self.root / build.key, ignore_errors=True)
                    )
            if self._builds.get(build.key) is build:
                del self._builds[build.key]
            build.done.set()
        if build.error is not None:
            log.warning("environment %s failed: %s", build.key, build.error)

    async def _build(self, build: _Build, deps: Dependencies) -> BuiltEnv:
        uv = await anyio.to_thread.run_sync(self.uv_path)  # looks for the file: a thread
        python_arg, python_tag = target_python(deps)
        path = self.root / build.key
        started = time.monotonic()
        await anyio.to_thread.run_sync(self._prepare_dir, path)
        build.emit(f"building environment {build.key}: {', '.join(deps.requirements) or '-'}")
        await self._uv(
            build, deps, [uv, "venv", "--no-config", "--quiet", "--python", python_arg, str(path)]
        )
        packages = list(deps.requirements)
        if "ipykernel" not in deps.names():
            packages.insert(0, "ipykernel")
        # Compiled bytecode makes every kernel start fast, also where kernels cannot write
        # it themselves (PYTHONDONTWRITEBYTECODE, read-only environments).
        compile_flag = ["--compile-bytecode"] if self.compile_bytecode else []
        await self._uv(
            build,
            deps,
            [
                uv,
                "pip",
                "install",
                "--no-config",
                *compile_flag,
                "--python",
                str(path / "bin" / "python"),
                *packages,
            ],
        )
        now = time.time()
        env = BuiltEnv(
            key=build.key,
            path=path,
            requirements=deps.requirements,
            requires_python=deps.requires_python,
            python=python_tag,
            created_at=now,
            last_used=now,
        )
        await anyio.to_thread.run_sync(write_marker, env)
        build.emit(f"environment {build.key} ready in {time.monotonic() - started:.1f} s")
        log.info("built environment %s (%s)", build.key, ", ".join(deps.requirements))
        return env

    def uv_path(self) -> str:
        """The uv executable: configured, else the one the ``uv`` package ships."""
        if self._uv_exe:
            return self._uv_exe
        try:
            import uv
        except ImportError as exc:
            raise EnvBuildFailed(
                "uv is not installed: install the 'uv' package or set envs.uv "
                "(RUNTIMED_UV) to a uv executable"
            ) from exc
        return str(uv.find_uv_bin())

    async def _uv(self, build: _Build, deps: Dependencies, argv: list[str]) -> None:
        env = dict(os.environ)
        for var in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "UV_PYTHON"):
            env.pop(var, None)  # the daemon's environment must not leak into the build
        env["NO_COLOR"] = "1"
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        try:
            process = await anyio.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise EnvBuildFailed(f"could not run uv ({argv[0]}): {exc}") from exc
        try:
            assert process.stdout is not None
            async for line in read_lines(process.stdout):
                tail.append(line)
                if line.strip():
                    build.emit(line.strip())
            code = await process.wait()
        finally:
            # Killed with its process group on cancellation (the daemon stops, a timeout):
            # uv may be running a build backend.
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    signal_group(process.pid, signal.SIGKILL)
                await process.aclose()
        if code != 0:
            output = "\n".join(tail)
            package, reason = describe_uv_failure(output, deps.requirements)
            what = (
                f"dependency {package!r} could not be installed"
                if package
                else ("the environment could not be built")
            )
            raise EnvBuildFailed(f"{what}: {reason}", package=package, output_tail=output)

    @staticmethod
    def _prepare_dir(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # an interrupted build (no marker): start over
            shutil.rmtree(path)

    def _load_and_touch(self, key: str) -> BuiltEnv | None:
        env = read_marker(self.root / key)
        if env is not None:
            os.utime(self.root / key / MARKER)  # last use, for the age limit
        return env

    # ------------------------------------------------------------ listing and pruning

    async def list_envs(self, *, sizes: bool = True) -> list[BuiltEnv]:
        """Complete environments in the cache, most recently used first."""
        return await anyio.to_thread.run_sync(self._list_sync, sizes)

    def _list_sync(self, sizes: bool) -> list[BuiltEnv]:
        if not self.root.is_dir():
            return []
        envs = []
        for path in self.root.iterdir():
            env = read_marker(path)
            if env is not None:
                if sizes:
                    env = dataclasses.replace(env, size_bytes=tree_size(path))
                envs.append(env)
        return sorted(envs, key=lambda e: e.last_used, reverse=True)

    async def prune(
        self, *, in_use: set[str], remove_all: bool = False, older_than_days: float | None = None
    ) -> list[BuiltEnv]:
        """Remove environments no kernel uses and no build holds: all of them, those unused
        for ``older_than_days``, or (by default) whatever the configured limits exclude."""
        envs = await self.list_envs()
        keep = in_use | self.building()
        if remove_all:
            doomed = [e for e in envs if e.key not in keep]
        else:
            max_age = self.max_age_days if older_than_days is None else older_than_days
            max_bytes = self.max_bytes if older_than_days is None else 0
            doomed = select_for_removal(
                envs, now=time.time(), max_bytes=max_bytes, max_age_days=max_age, keep=keep
            )
        for env in doomed:
            log.info("removing environment %s (%s)", env.key, ", ".join(env.requirements))
            await anyio.to_thread.run_sync(self._remove, env.path)
        return doomed

    @staticmethod
    def _remove(path: Path) -> None:
        # The marker goes first: a half-removed directory is an incomplete environment.
        (path / MARKER).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
