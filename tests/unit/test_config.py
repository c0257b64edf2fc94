"""The configuration file: defaults, file values, environment overrides, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtimed.config import (
    KEYS,
    ConfigError,
    DaemonConfig,
    RuntimesConfig,
    config_path,
    effective_value,
    load_config,
)
from runtimed.daemon.handlers.runtimes import config_reply

FULL = """
[daemon]
idle_timeout = 30
shutdown_timeout = 5.5
http_port = -1
gc_grace_seconds = 60
max_connections = 32
warm_runner = false

[kernels]
default_runtime = "myspec"
max_kernels = 4
startup_timeout = 20
persist_history = true

[pool]
size = 3

[envs]
max_size_mb = 512
max_age_days = 7
build_timeout = 120
compile_bytecode = false
uv = "/opt/uv"

[gateway]
url = "http://gw.example:8888"
token = "s3cret"
kernel_name = "ir"
connect_timeout = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_no_file_means_the_documented_defaults(tmp_path: Path) -> None:
    loaded = load_config(tmp_path / "absent.toml", environ={})
    assert not loaded.exists
    assert set(loaded.origins.values()) == {"default"}
    config = DaemonConfig(**loaded.daemon_kwargs())
    # The key table's defaults and the dataclasses' defaults agree.
    plain = DaemonConfig()
    for spec in KEYS:
        assert effective_value(spec, config) == effective_value(spec, plain) == spec.default
    assert config.runtimes == RuntimesConfig()


def test_every_key_is_read_from_the_file(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, FULL), environ={})
    config = DaemonConfig(**loaded.daemon_kwargs())
    assert (config.idle_timeout, config.shutdown_timeout, config.http_port) == (30.0, 5.5, None)
    assert (config.gc_grace_seconds, config.kernel_startup_timeout) == (60.0, 20.0)
    assert config.max_connections == 32
    assert config.warm_runner is False
    assert config.runtimes == RuntimesConfig(
        default_runtime="myspec",
        max_kernels=4,
        pool_size=3,
        persist_history=True,
        env_max_bytes=512 * 1024**2,
        env_max_age_days=7.0,
        env_build_timeout=120.0,
        env_compile_bytecode=False,
        uv="/opt/uv",
        gateway_url="http://gw.example:8888",
        gateway_token="s3cret",
        gateway_kernel_name="ir",
        gateway_connect_timeout=3.0,
    )
    assert set(loaded.origins.values()) == {"file"}
    assert config.config_path == str(tmp_path / "config.toml")
    # Values shown back in the file's units.
    shown = {e.key: e.value for e in config_reply(config).entries}
    assert shown["envs.max_size_mb"] == 512
    assert shown["daemon.http_port"] == -1


def test_environment_variables_override_the_file(tmp_path: Path) -> None:
    environ = {
        "RUNTIMED_POOL_SIZE": "0",
        "RUNTIMED_IDLE_TIMEOUT": "1.5",
        "RUNTIMED_MAX_KERNELS": "2",
        "RUNTIMED_DEFAULT_RUNTIME": "other",
    }
    loaded = load_config(write(tmp_path, FULL), environ=environ)
    runtimes = loaded.runtimes()
    assert (runtimes.pool_size, runtimes.max_kernels, runtimes.default_runtime) == (0, 2, "other")
    assert loaded.values["daemon.idle_timeout"] == 1.5
    assert loaded.origins["pool.size"] == "RUNTIMED_POOL_SIZE"
    assert loaded.origins["envs.uv"] == "file"
    # An empty variable does not override.
    assert (
        load_config(write(tmp_path, FULL), environ={"RUNTIMED_POOL_SIZE": ""}).values["pool.size"]
        == 3
    )
    flag = load_config(write(tmp_path, FULL), environ={"RUNTIMED_ENV_COMPILE_BYTECODE": "Yes"})
    assert flag.values["envs.compile_bytecode"] is True


def test_every_key_has_a_distinct_documented_variable() -> None:
    envs = [spec.env for spec in KEYS]
    assert len(set(envs)) == len(envs)
    assert all(env.startswith("RUNTIMED_") for env in envs)
    assert all(spec.doc for spec in KEYS)
    assert {"RUNTIMED_POOL_SIZE", "RUNTIMED_IDLE_TIMEOUT", "RUNTIMED_MAX_KERNELS"} <= set(envs)


def test_runtimed_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[pool]\nsize = 2\n")
    assert config_path({"RUNTIMED_CONFIG": str(path)}) == path
    assert load_config(environ={"RUNTIMED_CONFIG": str(path)}).values["pool.size"] == 2
    default = config_path({})
    assert default.name == "config.toml"
    assert default.parent.name == "runtimed"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[pool\nsize = 1", "not valid TOML"),
        ("[pool]\nsise = 1", r"unknown key 'sise' in \[pool\]; known keys: size"),
        ("[pools]\nsize = 1", r"unknown section \[pools\]"),
        ("pool = 3", "pool must be a table"),
        ("[pool]\nsize = 'two'", "pool.size in .* must be a number"),
        ("[pool]\nsize = true", "pool.size in .* must be a number"),
        ("[pool]\nsize = 1.5", "must be a whole number"),
        ("[pool]\nsize = -1", "pool.size in .* must be >= 0"),
        ("[daemon]\nidle_timeout = nan", "must be a finite number"),
        ("[kernels]\ndefault_runtime = 3", "kernels.default_runtime in .* must be a string"),
        ("[envs]\ncompile_bytecode = 1", "must be true or false"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path, environ={})
    assert "config.toml" in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RUNTIMED_POOL_SIZE": "many"}, r"\$RUNTIMED_POOL_SIZE must be an integer"),
        ({"RUNTIMED_IDLE_TIMEOUT": "soon"}, r"\$RUNTIMED_IDLE_TIMEOUT must be a number"),
        ({"RUNTIMED_MAX_KERNELS": "-2"}, r"\$RUNTIMED_MAX_KERNELS must be >= 0"),
        ({"RUNTIMED_ENV_COMPILE_BYTECODE": "maybe"}, "must be true or false"),
    ],
)
def test_bad_variables_are_refused_naming_them(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "absent.toml", environ=environ)


def test_the_config_reply_reports_origins(tmp_path: Path) -> None:
    loaded = load_config(
        write(tmp_path, "[pool]\nsize = 2\n"), environ={"RUNTIMED_MAX_KERNELS": "5"}
    )
    reply = config_reply(DaemonConfig(**loaded.daemon_kwargs()))
    origins = {e.key: e.origin for e in reply.entries}
    assert origins["pool.size"] == "file"
    assert origins["kernels.max_kernels"] == "RUNTIMED_MAX_KERNELS"
    assert origins["daemon.idle_timeout"] == "default"
    assert reply.exists
    assert reply.path.endswith("config.toml")
    assert [e.key for e in reply.entries] == [spec.key for spec in KEYS]


def test_daemon_config_without_a_file_reports_defaults() -> None:
    config = dataclasses.replace(DaemonConfig(), idle_timeout=5.0)
    shown = {e.key: (e.value, e.origin) for e in config_reply(config).entries}
    assert shown["daemon.idle_timeout"] == (5.0, "default")
