"""kill -9 in the middle of a cell: the kernel is adopted and no output is lost (issue 10 §3).

    python bench/bench_adopt.py [TRIALS]      # default: 5 trials per mode

Each trial starts a daemon on a fresh home, opens a notebook, runs ``x = 41``, then queues
a cell printing 40 numbered lines 50 ms apart; at a random moment 0.1 to 1.5 s into that cell
the daemon is killed with SIGKILL, stays down for a random 0 to 0.5 s (the cell keeps printing)
and a new daemon starts on the same home. The client (which reconnects on its own) waits for
the same execution to finish, then the bench counts:

* outputs lost — printed lines missing from the cell's outputs (must be 0 when adopted);
* adopted — the kernel's process group is the same after the restart, and ``x`` is still 41;
* processes left — members of the kernels' process groups alive after the new daemon was
  stopped cleanly (must be 0).

Two modes in the same run: ``adopt`` (the default) and ``no-adopt``
(``RUNTIMED_KERNEL_ORPHAN_TIMEOUT=0``: the kernel dies with its daemon, as before adoption
— the peer here, since papermill and Jupyter Server lose a kernel with their process).
Nothing is asserted; the figures are printed with the load.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, wait_listening, write_notebook
from runtimed.client import AsyncClient, ConnectionState

LINES = 40
CELL = f"import time\nfor i in range({LINES}):\n    print(i, flush=True)\n    time.sleep(0.05)\n"


def start(sock: Path, home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = dict(os.environ, PYTHONPATH=str(ROOT), RUNTIMED_POOL_SIZE="0", **env)
    full["RUNTIMED_CONFIG"] = str(home.parent / "no-config.toml")
    argv = [sys.executable, "-m", "runtimed.daemon.main", "--socket", str(sock)]
    proc = subprocess.Popen(
        [*argv, "--home", str(home), "--log-level", "ERROR"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(sock, proc)
    return proc


def group_members(pgid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z" and int(fields[2]) == pgid:
                    count += 1
    return count


async def trial(rng: random.Random, env: dict[str, str]) -> dict[str, int]:
    work = Path(tempfile.mkdtemp(prefix="rta-", dir="/tmp"))
    sock, home = work / "rt.sock", work / "home"
    path = write_notebook(work / "n.ipynb", ["x = 41", CELL])
    proc = start(sock, home, env)
    result = {"lost": LINES, "adopted": 0, "state_kept": 0, "left": 0}
    groups: set[int] = set()
    try:
        async with await AsyncClient.connect(sock) as client:
            nb = await client.open(path)
            first, cell = nb.cell_ids()
            await nb.execute(first, timeout=60)
            execution = await nb.queue(cell)
            await client.wait_until(
                lambda: nb.runtime.execution_status(execution) == "running", timeout=60
            )
            before = nb.runtime.kernel().get("pid")
            if isinstance(before, int):
                groups.add(before)
            await anyio.sleep(rng.uniform(0.1, 1.5))
            proc.send_signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(proc.wait)
            await anyio.sleep(rng.uniform(0.0, 0.5))
            proc = await anyio.to_thread.run_sync(start, sock, home, env)
            await client.wait_state(ConnectionState.CONNECTED, timeout=60)
            with contextlib.suppress(Exception):
                done = await nb.wait_execution(execution, timeout=10)
                text = "".join(str(o.get("text", "")) for o in done.outputs)
                got = {line for line in text.split("\n") if line}
                result["lost"] = len({str(i) for i in range(LINES)} - got)
            after = nb.runtime.kernel().get("pid")
            if isinstance(after, int):
                groups.add(after)
            result["adopted"] = int(before == after and before is not None)
            check = await nb.add_cell("code", "x")
            with contextlib.suppress(Exception):
                value = await nb.execute(check, timeout=60)
                data = value.outputs[0].get("data", {}) if value.outputs else {}
                result["state_kept"] = int(data.get("text/plain") == "41")
            await nb.close(unload=True)
    finally:
        if proc.poll() is None:
            proc.terminate()
            await anyio.to_thread.run_sync(proc.wait)
        result["left"] = sum(group_members(g) for g in groups)
        for g in groups:
            with contextlib.suppress(OSError):
                os.killpg(g, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    return result


async def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rng = random.Random(int(os.environ.get("BENCH_SEED", "10")))
    report: dict[str, object] = {"load": os.getloadavg()[0], "trials": trials, "lines": LINES}
    for mode, env in (("adopt", {}), ("no-adopt", {"RUNTIMED_KERNEL_ORPHAN_TIMEOUT": "0"})):
        totals = {"lost": 0, "adopted": 0, "state_kept": 0, "left": 0}
        started = time.monotonic()
        for _ in range(trials):
            for key, value in (await trial(rng, env)).items():
                totals[key] += value
        report[mode] = {
            "outputs_lost": totals["lost"],
            "kernels_adopted": totals["adopted"],
            "state_kept": totals["state_kept"],
            "processes_left": totals["left"],
            "seconds": round(time.monotonic() - started, 1),
        }
    report["load_after"] = os.getloadavg()[0]
    print(json.dumps(report))


if __name__ == "__main__":
    anyio.run(main)
