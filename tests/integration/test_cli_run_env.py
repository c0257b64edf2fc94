"""Issue 13 point 1 with the kernel pool on: a pooled kernel gets the caller's environment
before the first cell; a caller whose startup variables differ gets a freshly launched one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import nbformat
import pytest

from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon

from .conftest import write_notebook

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]

PROBE = (
    "import os\n"
    "initial = open('/proc/self/environ', 'rb').read().split(b'\\0')\n"
    "print(os.environ.get('MYVAR'), any(v.startswith(b'MYVAR=') for v in initial))\n"
)


@pytest.fixture
def daemon_config() -> DaemonConfig:
    return DaemonConfig(heads_timeout=5.0, runtimes=RuntimesConfig(pool_size=1))


async def _run(daemon: Daemon, src: Path, out: Path, env: dict[str, str]) -> str:
    done = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "runtimed.cli",
            "--socket",
            str(daemon.paths.socket),
            "run",
            str(src),
            str(out),
            "--no-autostart",
        ],
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    nb = nbformat.read(out, as_version=4)
    return str(nb.cells[0].outputs[0]["text"])


async def test_pooled_and_fresh_kernels_get_the_callers_environment(
    daemon: Daemon, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_notebook(short_tmp / "env.ipynb", [{"cell_type": "code", "source": PROBE}])
    pythonpath = os.environ.get("PYTHONPATH")
    env = {**os.environ, "MYVAR": "hello"}
    if pythonpath is None:
        env.pop("PYTHONPATH", None)
    # Same startup variables as the daemon: a pooled kernel (the open waits for the one the
    # pool is starting), set up before the first cell; its process started without MYVAR.
    assert await _run(daemon, src, short_tmp / "a.ipynb", env) == "hello False\n"
    # A PYTHONPATH the daemon does not have: launched with the environment.
    env2 = {**env, "PYTHONPATH": str(REPO)}
    if pythonpath == str(REPO):
        env2["PYTHONPATH"] = f"{REPO}{os.pathsep}{short_tmp}"
    assert await _run(daemon, src, short_tmp / "b.ipynb", env2) == "hello True\n"
