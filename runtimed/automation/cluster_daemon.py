"""The runtimed daemon of one Dask worker, tied to that worker's life.

``python -m runtimed.automation.cluster_daemon --lifeline FD -- RUNTIMED-ARGS...`` runs the
daemon (:func:`runtimed.daemon.main.main`) and a thread that reads the pipe ``FD``. The worker
holds the other end and never writes to it: when the worker closes it (its plugin's
teardown) or dies (even by SIGKILL — the kernel closes the worker's descriptors), the read
returns end-of-file and the daemon is sent SIGTERM, its clean stop: notebooks checkpointed,
kernels stopped. So no daemon outlives its worker, however the worker ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

__all__ = ["main"]


def _watch(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass  # nothing is ever written; only the end of the pipe matters
    except OSError:
        pass  # a broken lifeline means the same as a closed one
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtimed.automation.cluster_daemon",
        description="A runtimed daemon that stops when the pipe FD reaches end-of-file.",
    )
    parser.add_argument("--lifeline", type=int, required=True, metavar="FD")
    parser.add_argument("daemon_args", nargs=argparse.REMAINDER, help="runtimed's arguments")
    args = parser.parse_args(argv)
    rest = args.daemon_args[1:] if args.daemon_args[:1] == ["--"] else args.daemon_args
    threading.Thread(target=_watch, args=(args.lifeline,), daemon=True).start()
    from runtimed.daemon.main import main as daemon_main

    return daemon_main(rest)


if __name__ == "__main__":
    sys.exit(main())
