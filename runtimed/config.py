"""The daemon's configuration file: one TOML file, every key overridable by a variable.

Where: ``$RUNTIMED_CONFIG`` if set, else ``platformdirs.user_config_dir("runtimed") /
"config.toml"`` (``~/.config/runtimed/config.toml`` on Linux). A missing file means all
defaults. Precedence, lowest first: built-in default, the file, the environment variable.
Every key is documented in :data:`KEYS` (and docs/runtimes.md); ``runt config show`` prints
the effective values and where each came from.

Bad input is refused with a :class:`ConfigError` naming the file, key or variable: a TOML
syntax error, an unknown section or key (a typo would otherwise be silently ignored), a
value of the wrong type or out of range.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from protocol.framing import DEFAULT_MAX_CONTROL_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE
from runtimed.errors import RuntimedError

__all__ = [
    "CONFIG_ENV",
    "KEYS",
    "ConfigError",
    "ConfigKey",
    "DaemonConfig",
    "LoadedConfig",
    "RuntimesConfig",
    "config_path",
    "load_config",
]

CONFIG_ENV = "RUNTIMED_CONFIG"

Scalar = str | int | float | bool | None


class ConfigError(RuntimedError):
    """The configuration file or an overriding environment variable is invalid."""


@dataclass(frozen=True, slots=True)
class RuntimesConfig:
    """Runtime management tunables (the ``[kernels]``, ``[pool]`` and ``[envs]`` sections)."""

    default_runtime: str = "python3"
    """Runtime for notebooks that select none; the pool keeps kernels of this one warm."""
    max_kernels: int = 16
    """Concurrent kernel processes, pooled ones included (0: no limit)."""
    pool_size: int = 1
    """Idle kernels kept started for the default runtime (0: no pool, no start on open)."""
    persist_history: bool = False
    """ipykernel runtimes write their input history to the user's IPython history.sqlite
    (Jupyter's default); off, each kernel keeps its session's history in memory only."""
    env_max_bytes: int = 10 * 1024**3
    """Size limit of the environment cache (0: none)."""
    env_max_age_days: float = 30.0
    """Environments unused this many days are removed (0: never)."""
    env_build_timeout: float = 600.0
    env_compile_bytecode: bool = True
    """Compile .pyc when building (a slower build, faster kernel starts ever after)."""
    uv: str = ""
    """The uv executable ("": the one the ``uv`` package installed)."""
    gateway_url: str = ""
    """The default kernel gateway (runtime ``gateway``; "": none)."""
    gateway_token: str = field(default="", repr=False)
    gateway_kernel_name: str = "python3"
    """The kernel started on a gateway when the notebook names none."""
    gateway_connect_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """One documented key: ``[section] name``, its type, default, variable and target."""

    section: str
    name: str
    kind: type
    default: Scalar
    doc: str
    target: str
    """``DaemonConfig`` attribute it sets (``runtimes.x``: an attribute of RuntimesConfig)."""
    minimum: float | None = 0
    to_config: Callable[[Any], Any] | None = None
    """Converts the file's value to the attribute's (e.g. MiB to bytes)."""
    from_config: Callable[[Any], Scalar] | None = None

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return _ENV_NAMES.get(self.key, f"RUNTIMED_{self.name.upper()}")


def _port_in(value: int) -> int | None:
    return None if value < 0 else value


def _port_out(value: int | None) -> int:
    return -1 if value is None else value


KEYS: tuple[ConfigKey, ...] = (
    ConfigKey(
        "daemon",
        "idle_timeout",
        float,
        900.0,
        "close a notebook nobody has open (and stop its kernel) after this many idle seconds",
        "idle_timeout",
    ),
    ConfigKey(
        "daemon",
        "warm_runner",
        bool,
        True,
        "keep a process with runt run's code loaded and fork each runt run from it (a small "
        "run then skips the interpreter's start and its imports)",
        "warm_runner",
        minimum=None,
    ),
    ConfigKey(
        "daemon",
        "shutdown_timeout",
        float,
        10.0,
        "seconds a clean shutdown may take (checkpoints, kernels)",
        "shutdown_timeout",
    ),
    ConfigKey(
        "daemon",
        "http_port",
        int,
        0,
        "127.0.0.1 port of the HTTP endpoint (0: any free port, -1: disabled)",
        "http_port",
        minimum=-1,
        to_config=_port_in,
        from_config=_port_out,
    ),
    ConfigKey(
        "daemon",
        "max_connections",
        int,
        256,
        "socket connections served at once; more are refused with a clear handshake error",
        "max_connections",
        minimum=1,
    ),
    ConfigKey(
        "daemon",
        "gc_grace_seconds",
        float,
        3600.0,
        "runt gc only deletes unreferenced blobs older than this",
        "gc_grace_seconds",
    ),
    ConfigKey(
        "kernels",
        "default_runtime",
        str,
        "python3",
        "runtime for notebooks that select none (runt runtimes lists them)",
        "runtimes.default_runtime",
        minimum=None,
    ),
    ConfigKey(
        "kernels",
        "max_kernels",
        int,
        16,
        "limit on concurrent kernel processes, pooled ones included (0: no limit)",
        "runtimes.max_kernels",
    ),
    ConfigKey(
        "kernels",
        "startup_timeout",
        float,
        60.0,
        "seconds a kernel may take to answer kernel_info after launch",
        "kernel_startup_timeout",
    ),
    ConfigKey(
        "kernels",
        "persist_history",
        bool,
        False,
        "ipykernel runtimes write every input to the user's IPython history.sqlite, as "
        "Jupyter does (off: history of the kernel's own session, in memory; a committed "
        "sqlite write per cell is most of a trivial cell's cost)",
        "runtimes.persist_history",
        minimum=None,
    ),
    ConfigKey(
        "pool",
        "size",
        int,
        1,
        "idle kernels of the default runtime kept started; opening a notebook takes one "
        "(0: no pool, kernels start on the first execution)",
        "runtimes.pool_size",
    ),
    ConfigKey(
        "envs",
        "max_size_mb",
        int,
        10240,
        "size limit of the environment cache in MiB (0: none)",
        "runtimes.env_max_bytes",
        to_config=lambda mib: int(mib) * 1024**2,
        from_config=lambda b: int(b) // 1024**2,
    ),
    ConfigKey(
        "envs",
        "max_age_days",
        float,
        30.0,
        "remove environments unused for this many days (0: never)",
        "runtimes.env_max_age_days",
    ),
    ConfigKey(
        "envs",
        "build_timeout",
        float,
        600.0,
        "seconds an environment build may take",
        "runtimes.env_build_timeout",
    ),
    ConfigKey(
        "envs",
        "compile_bytecode",
        bool,
        True,
        "compile bytecode while building (slower build, faster kernel starts)",
        "runtimes.env_compile_bytecode",
        minimum=None,
    ),
    ConfigKey(
        "envs",
        "uv",
        str,
        "",
        "path of the uv executable (empty: the one the uv package installed)",
        "runtimes.uv",
        minimum=None,
    ),
    ConfigKey(
        "gateway",
        "url",
        str,
        "",
        "base URL of the default Jupyter Kernel/Enterprise Gateway (runtime 'gateway')",
        "runtimes.gateway_url",
        minimum=None,
    ),
    ConfigKey(
        "gateway",
        "token",
        str,
        "",
        "the gateway's token (sent as 'Authorization: token ...'; shown masked)",
        "runtimes.gateway_token",
        minimum=None,
        from_config=lambda token: "********" if token else "",
    ),
    ConfigKey(
        "gateway",
        "kernel_name",
        str,
        "python3",
        "kernel started on the gateway when the notebook names none",
        "runtimes.gateway_kernel_name",
        minimum=None,
    ),
    ConfigKey(
        "gateway",
        "connect_timeout",
        float,
        10.0,
        "seconds to wait for the gateway to accept a connection",
        "runtimes.gateway_connect_timeout",
    ),
)

_ENV_NAMES = {
    "daemon.idle_timeout": "RUNTIMED_IDLE_TIMEOUT",
    "daemon.warm_runner": "RUNTIMED_WARM_RUNNER",
    "daemon.shutdown_timeout": "RUNTIMED_SHUTDOWN_TIMEOUT",
    "daemon.http_port": "RUNTIMED_HTTP_PORT",
    "daemon.gc_grace_seconds": "RUNTIMED_GC_GRACE_SECONDS",
    "kernels.default_runtime": "RUNTIMED_DEFAULT_RUNTIME",
    "kernels.max_kernels": "RUNTIMED_MAX_KERNELS",
    "kernels.startup_timeout": "RUNTIMED_KERNEL_STARTUP_TIMEOUT",
    "kernels.persist_history": "RUNTIMED_PERSIST_HISTORY",
    "pool.size": "RUNTIMED_POOL_SIZE",
    "envs.max_size_mb": "RUNTIMED_ENV_MAX_SIZE_MB",
    "envs.max_age_days": "RUNTIMED_ENV_MAX_AGE_DAYS",
    "envs.build_timeout": "RUNTIMED_ENV_BUILD_TIMEOUT",
    "envs.compile_bytecode": "RUNTIMED_ENV_COMPILE_BYTECODE",
    "envs.uv": "RUNTIMED_UV",
    "gateway.url": "RUNTIMED_GATEWAY_URL",
    "gateway.token": "RUNTIMED_GATEWAY_TOKEN",
    "gateway.kernel_name": "RUNTIMED_GATEWAY_KERNEL_NAME",
    "gateway.connect_timeout": "RUNTIMED_GATEWAY_CONNECT_TIMEOUT",
}


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$RUNTIMED_CONFIG``, else ``<platformdirs user config dir>/runtimed/config.toml``."""
    env = os.environ if environ is None else environ
    override = env.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir("runtimed", appauthor=False)) / "config.toml"


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """Effective values (in the file's units) with their origin, ready for DaemonConfig."""

    path: Path
    exists: bool
    values: dict[str, Scalar] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    """key -> ``default``, ``file`` or the name of the environment variable."""

    def runtimes(self) -> RuntimesConfig:
        return RuntimesConfig(**self._targets("runtimes."))

    def daemon_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DaemonConfig`` (runtimes included)."""
        kwargs = self._targets("")
        kwargs["runtimes"] = self.runtimes()
        kwargs["config_path"] = str(self.path)
        kwargs["config_origins"] = dict(self.origins)
        return kwargs

    def _targets(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec in KEYS:
            if prefix and not spec.target.startswith(prefix):
                continue
            if not prefix and "." in spec.target:
                continue
            value = self.values[spec.key]
            out[spec.target.removeprefix(prefix)] = (
                spec.to_config(value) if spec.to_config else value
            )
        return out


def effective_value(spec: ConfigKey, config: object) -> Scalar:
    """``spec``'s value as a ``DaemonConfig`` holds it, in the file's units."""
    target: Any = config
    for part in spec.target.split("."):
        target = getattr(target, part)
    return spec.from_config(target) if spec.from_config else target


def load_config(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Read the configuration file (if it exists) and apply environment overrides.

    Raises:
        ConfigError: invalid TOML, unknown key, wrong type or out-of-range value; the
            message names the file and key, or the variable.
    """
    env = os.environ if environ is None else environ
    path = path or config_path(env)
    data: dict[str, Any] = {}
    exists = path.is_file()
    if exists:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the configuration file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    _check_known(data, path)
    values: dict[str, Scalar] = {}
    origins: dict[str, str] = {}
    for spec in KEYS:
        value, origin = spec.default, "default"
        section = data.get(spec.section, {})
        if spec.name in section:
            value = _coerce(spec, section[spec.name], where=f"{spec.key} in {path}")
            origin = "file"
        raw = env.get(spec.env)
        if raw is not None and raw != "":
            value = _coerce(spec, _parse_env(spec, raw), where=f"${spec.env}")
            origin = spec.env
        values[spec.key], origins[spec.key] = value, origin
    return LoadedConfig(path=path, exists=exists, values=values, origins=origins)


def _check_known(data: dict[str, Any], path: Path) -> None:
    sections: dict[str, set[str]] = {}
    for spec in KEYS:
        sections.setdefault(spec.section, set()).add(spec.name)
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(
                f"{path}: unknown section [{section}]; known: {', '.join(sorted(sections))}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
        for name in table:
            if name not in sections[section]:
                known = ", ".join(sorted(sections[section]))
                raise ConfigError(
                    f"{path}: unknown key {name!r} in [{section}]; known keys: {known}"
                )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_env(spec: ConfigKey, raw: str) -> Scalar:
    if spec.kind is str:
        return raw
    if spec.kind is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"${spec.env} must be true or false (1/0, yes/no), not {raw!r}")
    try:
        return int(raw) if spec.kind is int else float(raw)
    except ValueError:
        kind = "an integer" if spec.kind is int else "a number"
        raise ConfigError(f"${spec.env} must be {kind}, not {raw!r}") from None


def _coerce(spec: ConfigKey, value: object, *, where: str) -> Scalar:
    kind = spec.kind
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    # TOML booleans are not numbers here, even though bool subclasses int in Python.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, not {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, not {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(f"{where} must be >= {spec.minimum:g}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Tunables (see docs/running.md)."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    """Largest frame a client may send (sync frames carry whole documents)."""
    max_control_frame_size: int = DEFAULT_MAX_CONTROL_FRAME_SIZE
    """Largest CONTROL frame a client may send (64 KiB, as the Rust runtimed)."""
    max_receive_buffer_total: int = 128 * 1024 * 1024
    """Bytes of partly received frames all connections together may hold; the connection
    that would go over is closed with a protocol error."""
    max_connections: int = 256
    """Socket connections served at once; more are refused at the handshake."""
    heads_timeout: float = 10.0
    persist_debounce: float = 0.2
    kernel_startup_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    keep_executions: int = 200
    http_port: int | None = 0
    """Loopback port for the HTTP endpoint (0: any free port; None: disabled)."""
    gc_grace_seconds: float = 3600.0
    runtime_persist_interval: float = 2.0
    """Runtime-only changes (outputs, kernel state) are persisted at most this often."""
    idle_timeout: float = 900.0
    """Close a notebook nobody has open (stopping its kernel) after this many idle seconds."""
    warm_runner: bool = True
    """Keep a process with ``runt run`` imported to fork runs from (runtimed.cli.runner)."""
    runtimes: RuntimesConfig = field(default_factory=RuntimesConfig)
    """Pool, kernel limit, default runtime, environment cache (docs/runtimes.md)."""
    config_path: str = ""
    """The config.toml these values were loaded from ("" if built in code)."""
    config_origins: dict[str, str] = field(default_factory=dict)
    """Config key -> where its value came from (``runt config show``)."""
    extra: dict[str, Any] = field(default_factory=dict)
