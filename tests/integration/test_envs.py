"""Environments built with uv from declared dependencies: built once and cached by spec,
progress visible to clients, a bad dependency named in a clear error, ``runt env``.

Uses a small pure-Python package (``six``) from PyPI through uv's cache; the first build in a
fresh uv cache needs the network.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from protocol.messages import KernelStatusChanged
from runtimed.client import AsyncClient, AsyncNotebook
from runtimed.daemon.app import Daemon

from .conftest import write_notebook
from .runtime_helpers import Events, code, runt, runt_json, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

BUILD_DEADLINE = 240  # a cold uv cache downloads ipykernel and its dependencies
MISSING = "this-package-does-not-exist-runtimed"
PROBE = "import sys, six\nprint(sys.prefix)\nprint(six.__name__)"


def deps_metadata(*requirements: str) -> dict[str, object]:
    return {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "runtimed": {"dependencies": list(requirements)},
    }


def building(events: Events, notebook_id: str) -> list[str]:
    return [
        e.message
        for e in events.seen
        if isinstance(e, KernelStatusChanged)
        and e.notebook_id == notebook_id
        and e.state == "building_env"
    ]


async def test_a_dependency_notebook_builds_an_environment_once_and_reuses_it(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    envs_root = daemon.paths.home / "envs"
    first = write_notebook(short_tmp / "first.ipynb", [code(PROBE)], metadata=deps_metadata("six"))
    # The same spec declared another way: a PEP 723 block in the first code cell.
    second = write_notebook(
        short_tmp / "second.ipynb",
        [
            code('# /// script\n# dependencies = ["SIX"]\n# ///\n' + PROBE),
        ],
    )
    twin = write_notebook(short_tmp / "twin.ipynb", [code(PROBE)], metadata=deps_metadata("six"))
    async with anyio.create_task_group() as tg:
        events = await Events(client).start(tg)
        a = await client.open(first)
        t = await client.open(twin)
        # Both ask at once: one build, shared (its progress goes to both notebooks).
        results = {}

        async def run(nb: AsyncNotebook) -> None:
            results[nb.id] = await nb.execute("cell0", timeout=BUILD_DEADLINE)

        async with anyio.create_task_group() as both:
            both.start_soon(run, a)
            both.start_soon(run, t)
        result = results[a.id]
        assert result.status == "ok", result
        assert results[t.id].outputs == result.outputs
        prefix, name = result.outputs[0]["text"].splitlines()
        assert name == "six"
        assert Path(prefix).parent == envs_root  # the kernel runs in the built environment
        assert daemon.runtimes.envs.builds_started == 1
        progress = building(events, a.id)
        assert building(events, t.id)
        assert progress[0].startswith(("building environment", "waiting for the environment"))
        assert any("six" in line for line in progress)  # uv's own lines, e.g. " + six==1.x"
        assert progress[-1].startswith(f"environment {Path(prefix).name} ready")

        b = await client.open(second)
        again = await b.execute("cell0", timeout=60)
        assert again.status == "ok"
        assert again.outputs[0]["text"].splitlines()[0] == prefix
        await client.ping()
        tg.cancel_scope.cancel()
    assert daemon.runtimes.envs.builds_started == 1  # the second open did no build
    assert building(events, b.id) == []
    assert b.runtime.kernel()["name"] == f"env-{Path(prefix).name}"

    listing = await client.list_envs()
    [env] = listing.envs
    assert (env.key, env.requirements, env.in_use) == (Path(prefix).name, ["six"], True)
    assert env.size_bytes > 1_000_000
    assert listing.total_bytes == env.size_bytes
    runtimes = {r.name: r for r in await client.list_runtimes()}
    assert runtimes[f"env-{env.key}"].kind == "env"

    # In use: never removed, not even by --all.
    assert (await client.clean_envs(remove_all=True)).removed == []
    pids = [nb.runtime.kernel()["pid"] for nb in (a, b, t)]
    for nb in (a, b, t):
        await nb.close(unload=True)
    await wait_gone(*[p for p in pids if isinstance(p, int)])
    data = await runt_json(daemon.paths.socket, "env", "list")
    assert [e["key"] for e in data["envs"]] == [env.key]
    assert data["envs"][0]["in_use"] is False
    _, text, _ = await runt(daemon.paths.socket, "env", "clean", "--all")
    assert "removed 1 environments" in text
    assert not (envs_root / env.key).exists()
    assert (await client.list_envs()).envs == []


async def test_a_bad_dependency_is_a_clear_error_and_the_notebook_stays_usable(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(
        short_tmp / "bad.ipynb", [code(PROBE)], metadata=deps_metadata("six", f"{MISSING}==1.0")
    )
    nb = await client.open(path)
    failed = await nb.execute("cell0", timeout=BUILD_DEADLINE)
    assert (failed.status, failed.ename) == ("error", "EnvBuildFailed")
    evalue = failed.evalue or ""
    assert f"dependency '{MISSING}' could not be installed" in evalue
    assert "not found in the package registry" in evalue
    assert "--- uv output (tail) ---" in evalue
    kernel = nb.runtime.kernel()
    assert kernel["state"] == "dead"
    assert MISSING in str(kernel["message"])
    assert (await client.list_envs()).envs == []  # no half-built environment left
    assert not any((daemon.paths.home / "envs").iterdir())

    # Fix the metadata: the same notebook now runs.
    await nb.set_metadata("runtimed", {"dependencies": ["six"]})
    fixed = await nb.execute("cell0", timeout=BUILD_DEADLINE)
    assert fixed.status == "ok", fixed
    assert fixed.outputs[0]["text"].splitlines()[1] == "six"
