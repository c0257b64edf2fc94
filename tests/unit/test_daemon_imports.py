"""What a daemon loads to start: the first ``runt run`` waits for that start
(bench/bench_run.py's cold run), so what only some notebooks need is imported on use."""

from __future__ import annotations

from .test_quickread import modules_after

_ON_USE = ("httpx", "websockets", "packaging.requirements", "packaging.specifiers")


def _loaded_after(code: str) -> list[str]:
    return modules_after(code, _ON_USE)


def test_the_daemon_starts_without_the_gateway_clients_or_the_requirement_parsers() -> None:
    assert _loaded_after("import runtimed.daemon.main, runtimed.daemon.app") == []


def test_a_gateway_or_a_dependency_loads_them_when_used() -> None:
    code = (
        "from runtimed.config import RuntimesConfig\n"
        "from runtimed.runtimes.gateway import gateway_target_for\n"
        "from runtimed.runtimes.selection import normalize_requirements\n"
        "t = gateway_target_for(None, 'http://127.0.0.1:1', 'python3', env={}, "
        "config=RuntimesConfig())\n"
        "assert t is not None and t.kernel_name == 'python3'\n"
        "assert normalize_requirements(['Six>=1'], where='x') == ('six>=1',)"
    )
    assert set(_loaded_after(code)) == set(_ON_USE)
