"""kill -9 battery: what the daemon acknowledged survives a crash (issue 10 §2).

    python bench/bench_crash.py [TRIALS] [--no-kernel]     # default: 40 trials

One home and one notebook for the whole run. Each trial starts a daemon on it; a client
adds cells (one at a time) and, at random, asks for ``flush()``, ``save()`` or queues a cell
(every one of those requests carries the client's heads, so its answer acknowledges every
cell added before it); a timer kills the daemon with SIGKILL at a random moment (0.05 to
1.5 s in). The next trial's daemon then opens the notebook, and the bench counts:

* acknowledged edits lost — cells whose adding was acknowledged but that are gone (must be 0);
* documents set aside (``*.stale.automerge``: "changed outside the daemon");
* processes left — descendants of the killed daemon (kernels, their children) still alive 5 s
  after the kill (killed by the bench afterwards);
* temp files left in the documents folder or beside the notebook after the restart.

Nothing is asserted; the figures are printed.
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
import threading
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, wait_listening, write_notebook
from runtimed.client import Client


def start(sock: Path, home: Path, config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RUNTIMED_POOL_SIZE="0")
    env["RUNTIMED_CONFIG"] = str(config)
    # Kernels are not kept for adoption here (bench_adopt.py measures that): "processes
    # left" counts what outlives its daemon by more than 5 s.
    env["RUNTIMED_KERNEL_ORPHAN_TIMEOUT"] = "0"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "runtimed.daemon.main", "--socket", str(sock)),
            *("--home", str(home), "--log-level", "ERROR"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(sock, proc)
    return proc


def descendants(pid: int) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        found = psutil.Process(pid).children(recursive=True)
    return found


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    trials = int(args[0]) if args else 40
    with_kernel = "--no-kernel" not in sys.argv
    rng = random.Random(int(os.environ.get("BENCH_SEED", "10")))
    work = Path(tempfile.mkdtemp(prefix="rtc-", dir="/tmp"))
    sock, home, config = work / "rt.sock", work / "home", work / "no-config.toml"
    path = write_notebook(work / "n.ipynb", ["x = 1"])
    acked: set[str] = set()
    lost = aside = left = temps = acks = 0
    counter = 0
    proc = start(sock, home, config)
    try:
        for trial in range(trials):
            acked_now: set[str] = set()
            pending: list[str] = []
            delay = rng.uniform(0.05, 1.5)
            children: list[psutil.Process] = []

            def kill(
                victim: subprocess.Popen[bytes] = proc, seen: list[psutil.Process] = children
            ) -> None:
                seen.extend(descendants(victim.pid))
                victim.send_signal(signal.SIGKILL)

            timer = threading.Timer(delay, kill)
            try:
                with Client.connect(sock) as client:
                    nb = client.open(path)
                    present = {c.id for c in nb.cells()}
                    missing = acked - present
                    lost += len(missing)
                    if missing:
                        print(f"trial {trial}: lost {sorted(missing)}")
                    timer.start()
                    while proc.poll() is None:  # edit calls may not notice the kill
                        counter += 1
                        cell_id = f"t{trial}e{counter}"
                        nb.add_cell("code", f"v = {counter}", cell_id=cell_id)
                        pending.append(cell_id)
                        roll = rng.random()
                        if roll < 0.3:
                            nb.flush()
                        elif roll < 0.4:
                            nb.save()
                        elif roll < 0.45 and with_kernel:
                            nb.queue(cell_id)
                        else:
                            continue
                        acks += 1
                        acked_now.update(pending)
                        pending.clear()
            except Exception:  # the daemon was killed under the client
                pass
            timer.cancel()
            if proc.poll() is None:  # the kill came after the client gave up
                kill(proc)
            proc.wait(timeout=30)
            acked |= acked_now
            # Give a kernel up to 5 s to notice its parent died.
            _, alive = psutil.wait_procs(children, timeout=5)
            left += len(alive)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc = start(sock, home, config)
            documents = home / "documents"
            aside = len(list(documents.glob("*.stale.automerge")))
            with Client.connect(sock) as client:  # opening removes temp files beside it
                client.open(path).close()
            temps += len(list(documents.glob(".*.tmp"))) + len(list(work.glob(".*.tmp")))
        with Client.connect(sock) as client:  # the last trial's acknowledged edits
            present = {c.id for c in client.open(path).cells()}
            lost += len(acked - present)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "trials": trials,
                "acknowledging_requests": acks,
                "acknowledged_edits": len(acked),
                "acknowledged_edits_lost": lost,
                "documents_set_aside": aside,
                "processes_left": left,
                "temp_files_left": temps,
            }
        )
    )


if __name__ == "__main__":
    main()
