"""``runt diff``, ``runt log`` and ``runt nb tools|call`` as a user runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon

from .conftest import write_notebook
from .test_mcp_support import REPO, code, server_env

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def runt(daemon_or_none: Daemon | None, tmp: Path, *args: str) -> tuple[int, str, str]:
    env = None
    if daemon_or_none is not None:
        env = server_env(daemon_or_none.paths, tmp)
    else:
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [sys.executable, "-m", "runtimed.cli", *args], env=env, check=False, cwd=tmp
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_diff_of_two_files(short_tmp: Path) -> None:
    a = write_notebook(short_tmp / "a.ipynb", [code("x = 1\n", "one"), code("y", "two")])
    b = write_notebook(
        short_tmp / "b.ipynb", [code("y", "two"), code("x = 2\n", "one"), code("new", "three")]
    )
    rc, out, err = await runt(None, short_tmp, "diff", str(a), str(b))
    assert rc == 0, err
    assert "added code cell three at 2" in out
    assert "modified cell one" in out
    assert "-x = 1" in out
    assert "+x = 2" in out
    assert "moved cell" in out
    rc, out, _ = await runt(None, short_tmp, "diff", str(a), str(b), "--json")
    diff = json.loads(out)
    assert [c["cell_id"] for c in diff["added"]] == ["three"]
    assert diff["jep8"][0]["key"] == "cells"
    rc, out, err = await runt(None, short_tmp, "diff", str(a), str(a), "--since", "v1::0")
    assert rc == 2
    assert "not two files" in err


async def test_diff_since_a_version_and_log_of_the_daemons_document(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "hist.ipynb", [code("a = 1", "a")])
    async with await AsyncClient.connect(daemon.paths.socket) as client:
        nb = await client.open(path)
        looked = nb.version
        await nb.set_source("a", "a = 2")
        added = await nb.add_cell("markdown", "# later")
        await nb.save()
        await nb.close()
    rc, out, err = await runt(daemon, short_tmp, "diff", str(path), "--since", looked)
    assert rc == 0, err
    assert f"added markdown cell {added}" in out
    assert "+a = 2" in out
    rc, out, err = await runt(daemon, short_tmp, "log", str(path), "--json")
    assert rc == 0, err
    versions = [e for e in json.loads(out) if e["kind"] == "version"]  # and one checkpoint
    assert len(versions) >= 2
    assert all(v["version"].startswith("v1:") for v in versions)
    assert added in versions[-1]["cells"]
    rc, out, err = await runt(daemon, short_tmp, "log", str(path))
    assert rc == 0, err
    assert added in out.splitlines()[-4]  # the last version, then the save after it
    rc, out, err = await runt(
        daemon, short_tmp, "diff", str(path), "--since", versions[0]["version"], "--to",
        versions[-1]["version"], "--json",
    )  # fmt: skip
    assert rc == 0, err
    assert [c["cell_id"] for c in json.loads(out)["added"]] == [added]


async def test_nb_tools_and_call_are_what_agents_get(daemon: Daemon, short_tmp: Path) -> None:
    path = write_notebook(short_tmp / "call.ipynb", [code("6 * 7", "c")])
    rc, out, _ = await runt(daemon, short_tmp, "nb", "tools", "--json")
    assert rc == 0
    assert "execute_cell" in [t["name"] for t in json.loads(out)]
    rc, out, err = await runt(
        daemon, short_tmp, "nb", "call", "execute_cell", "--args",
        json.dumps({"notebook": str(path), "cell_id": "c", "timeout": 60}),
    )  # fmt: skip
    assert rc == 0, err
    result = json.loads(out)
    assert result["status"] == "ok"
    assert result["outputs"][0]["text"] == "42"
    rc, out, _ = await runt(
        daemon, short_tmp, "nb", "call", "get_cell", "--args",
        json.dumps({"notebook": str(path), "cell_id": "missing"}),
    )  # fmt: skip
    assert rc == 1
    assert "cell 'missing' is not in" in json.loads(out)["error"]
