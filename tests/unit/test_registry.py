"""Runtime selection from metadata, dependency normalization, the registry, the setup code
for pooled kernels, uv failure parsing and the environment cache policy."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from runtimed.errors import EnvBuildFailed, KernelNotFound, RuntimeNotFound
from runtimed.runtimes.env_cache import BuiltEnv, describe_uv_failure, select_for_removal
from runtimed.runtimes.registry import (
    MEMORY_HISTORY_ARG,
    NO_EXECUTE_SLEEP_ARG,
    RuntimeRegistry,
    env_runtime,
    setup_code,
)
from runtimed.runtimes.selection import (
    Dependencies,
    RuntimeRequest,
    parse_script_block,
    runtime_request_for,
)

SCRIPT = """# /// script
# requires-python = ">=3.9"
# dependencies = [
#   "Requests<3",
#   "rich",
# ]
# ///
import requests
"""


# ------------------------------------------------------------------ selection


def test_kernelspec_name_selects_the_runtime() -> None:
    assert runtime_request_for({"kernelspec": {"name": "ir"}}, None) == RuntimeRequest("ir")
    assert runtime_request_for({}, "1 + 1") == RuntimeRequest(None)
    # metadata.runtimed.runtime wins over the kernelspec.
    meta = {"kernelspec": {"name": "python3"}, "runtimed": {"runtime": "other"}}
    assert runtime_request_for(meta, None).runtime == "other"


def test_dependencies_are_normalized_sorted_and_deduplicated() -> None:
    meta = {"runtimed": {"dependencies": ["NumPy>=2", "six", "numpy >= 2", "Zope.Interface"]}}
    request = runtime_request_for(meta, None)
    assert request.dependencies == Dependencies(("numpy>=2", "six", "zope-interface"))
    # Same spec in another order and spelling: same request, same cache key.
    other = runtime_request_for(
        {"runtimed": {"dependencies": ["six", "numpy>=2", "zope.interface"]}}, None
    )
    assert other == request
    assert other.dependencies is not None
    assert request.dependencies is not None
    assert other.dependencies.key("cpython-3.11.7") == request.dependencies.key("cpython-3.11.7")
    assert request.dependencies.key("cpython-3.11.7") != request.dependencies.key("cpython-3.12.1")


def test_a_pep723_block_in_the_first_code_cell_declares_dependencies() -> None:
    assert parse_script_block(SCRIPT) == {
        "requires-python": ">=3.9",
        "dependencies": ["Requests<3", "rich"],
    }
    request = runtime_request_for({"runtimed": {"dependencies": ["six"]}}, SCRIPT)
    assert request.dependencies == Dependencies(("requests<3", "rich", "six"), ">=3.9")
    assert parse_script_block("# /// other\n# x = 1\n# ///\n") is None
    assert runtime_request_for({}, "print('no block')").dependencies is None
    # An empty list still asks for an environment (ipykernel only).
    assert runtime_request_for(
        {"runtimed": {"dependencies": []}}, None
    ).dependencies == Dependencies(())


@pytest.mark.parametrize(
    ("metadata", "source", "message"),
    [
        (
            {"runtimed": {"dependencies": ["numpy>>2"]}},
            None,
            "dependency 'numpy>>2' in the notebook's dependencies is not a valid requirement",
        ),
        ({"runtimed": {"dependencies": "numpy"}}, None, "must be a list of strings"),
        ({"runtimed": {"dependencies": [3]}}, None, "3 is not one"),
        ({}, "# /// script\n# dependencies = [\n# ///\n", "not valid TOML"),
        ({}, "# /// script\n# requires-python = 'nope'\n# ///\n", "not a valid specifier"),
        ({}, "# /// script\n# dependencies = 'x'\n# ///\n", "must be a list"),
    ],
)
def test_malformed_dependencies_are_a_clear_error(
    metadata: dict[str, object], source: str | None, message: str
) -> None:
    with pytest.raises(EnvBuildFailed, match=message):
        runtime_request_for(metadata, source)


# ------------------------------------------------------------------ registry


@pytest.fixture
def jupyter_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    spec_dir = tmp_path / "kernels" / "unit-spec"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Unit Spec",
                "language": "python",
                "env": {"A": "1"},
                "interrupt_mode": "message",
            }
        )
    )
    r_dir = tmp_path / "kernels" / "fake-r"
    r_dir.mkdir(parents=True)
    (r_dir / "kernel.json").write_text(
        json.dumps({"argv": ["R", "{connection_file}"], "display_name": "R", "language": "R"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return tmp_path


@pytest.mark.anyio
async def test_the_registry_discovers_kernelspecs_and_resolves_names(jupyter_path: Path) -> None:
    registry = RuntimeRegistry()
    names = {spec.name: spec for spec in await registry.all()}
    assert {"python3", "unit-spec", "fake-r"} <= set(names)
    assert names["python3"].kind == "builtin"
    assert names["python3"].argv[0] == sys.executable
    spec = await registry.resolve("unit-spec")
    assert (spec.kind, spec.display_name, spec.interrupt_mode) == (
        "kernelspec",
        "Unit Spec",
        "message",
    )
    assert dict(spec.env) == {"A": "1"}
    assert spec.poolable
    assert spec.resource_dir == str(jupyter_path / "kernels" / "unit-spec")
    assert not (await registry.resolve("fake-r")).poolable  # no setup code for R
    for alias in ("python", "python3", None):
        assert (await registry.resolve(alias)).kind == "builtin"


@pytest.mark.anyio
async def test_an_unknown_runtime_lists_what_exists(jupyter_path: Path) -> None:
    with pytest.raises(RuntimeNotFound) as caught:
        await RuntimeRegistry().resolve("nope")
    message = str(caught.value)
    assert "no runtime or kernelspec named 'nope'" in message
    assert "python3" in message
    assert "unit-spec" in message
    assert "fake-r" in message
    assert isinstance(caught.value, KernelNotFound)  # still a KernelNotFound for callers


@pytest.mark.anyio
async def test_the_default_runtime_is_configurable(jupyter_path: Path) -> None:
    registry = RuntimeRegistry(default="unit-spec")
    spec = await registry.resolve(None)
    assert spec.name == "unit-spec"
    assert registry.is_default(spec)
    assert not registry.is_default(registry.builtin)


def test_env_runtimes_run_the_environments_interpreter(tmp_path: Path) -> None:
    spec = env_runtime("abc123", tmp_path / "bin" / "python", ("six",))
    assert spec.name == "env-abc123"
    assert spec.kind == "env"
    assert spec.env_key == "abc123"
    assert spec.argv[:3] == (str(tmp_path / "bin" / "python"), "-m", "ipykernel_launcher")
    assert spec.launch_spec().argv == list(spec.argv)
    info = spec.info()
    assert "poolable" in info.capabilities
    assert "six" in info.display_name


def test_setup_code_moves_the_kernel_and_leaves_no_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path.cwd())  # restored afterwards
    odd = tmp_path / 'it\'s "quoted"'
    odd.mkdir()
    env = {"RUNTIMED_NOTEBOOK_ID": "nb'1", "RUNTIMED_NOTEBOOK_PATH": str(odd / "x.ipynb")}
    namespace: dict[str, object] = {}
    try:
        exec(setup_code(odd, env), namespace)
        assert os.getcwd() == str(odd)
        assert os.environ["RUNTIMED_NOTEBOOK_ID"] == "nb'1"
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert set(namespace) == {"__builtins__"}


# ------------------------------------------------------------------ uv failures


def test_uv_resolution_failures_name_the_package() -> None:
    output = (
        "Using Python 3.11.7 environment at: /x\n"
        "  \u00d7 No solution found when resolving dependencies:\n"
        "  \u2570\u2500\u25b6 Because this-package-does-not-exist-runtimed was not found in "
        "the package registry and you require\n"
        "      this-package-does-not-exist-runtimed==1.0, we can conclude that your "
        "requirements are unsatisfiable.\n"
    )
    package, reason = describe_uv_failure(
        output, ("six", "this-package-does-not-exist-runtimed==1.0")
    )
    assert package == "this-package-does-not-exist-runtimed"
    assert reason.startswith("Because this-package-does-not-exist-runtimed was not found")
    no_version = (
        "  \u2570\u2500\u25b6 Because there is no version of six==99.0 and you "
        "require six==99.0, we can conclude that your requirements are unsatisfiable."
    )
    assert describe_uv_failure(no_version, ("idna", "six==99.0"))[0] == "six"
    assert describe_uv_failure("error: network unreachable", ("six",)) == (
        None,
        "error: network unreachable",
    )


# ------------------------------------------------------------------ cache policy


def env(key: str, *, used_days_ago: float, size: int) -> BuiltEnv:
    now = 1_000_000_000.0
    return BuiltEnv(
        key=key,
        path=Path(key),
        requirements=(),
        requires_python=None,
        python="p",
        created_at=0.0,
        last_used=now - used_days_ago * 86400,
        size_bytes=size,
    )


def test_the_cache_drops_old_then_least_recently_used_environments() -> None:
    envs = [
        env("new", used_days_ago=0, size=40),
        env("mid", used_days_ago=5, size=40),
        env("old", used_days_ago=40, size=40),
        env("busy", used_days_ago=90, size=40),
    ]
    now = 1_000_000_000.0

    def chosen(**kw: object) -> list[str]:
        picked = select_for_removal(envs, now=now, keep={"busy"}, **kw)  # type: ignore[arg-type]
        return [e.key for e in picked]

    assert chosen(max_bytes=0, max_age_days=30) == ["old"]  # "busy" is in use
    assert chosen(max_bytes=0, max_age_days=0) == []
    # Over the size limit: least recently used first, never one in use.
    assert chosen(max_bytes=80, max_age_days=0) == ["old", "mid"]
    assert chosen(max_bytes=100, max_age_days=30) == ["old", "mid"]


def test_ipykernel_runtimes_are_tuned_for_the_daemon(tmp_path: Path) -> None:
    spec = env_runtime("abc123", tmp_path / "bin" / "python", ())
    tuned = spec.tuned(persist_history=False)
    assert tuned.argv == (*spec.argv, NO_EXECUTE_SLEEP_ARG, MEMORY_HISTORY_ARG)
    assert tuned.launch_spec().argv[-2:] == [
        "--Kernel._execute_sleep=0",
        "--HistoryManager.hist_file=:memory:",
    ]
    assert tuned.tuned(persist_history=False) is tuned  # added once
    assert (tuned.name, tuned.env_key) == (spec.name, spec.env_key)
    assert spec.tuned(persist_history=True).argv == (*spec.argv, NO_EXECUTE_SLEEP_ARG)
    # A kernel that is not ipykernel gets no IPython options.
    other = replace(spec, argv=("R", "--slave", "-e", "IRkernel::main()", "{connection_file}"))
    assert not other.runs_ipykernel
    assert other.tuned(persist_history=False) is other
