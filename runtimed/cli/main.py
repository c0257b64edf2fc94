"""``runt``'s entry point: ``ps`` and ``daemon status`` are answered by
:mod:`runtimed.cli.quick` without importing every command, a ``runt run`` goes to the
daemon's warm runner when it has one (:mod:`runtimed.cli.runner`), the rest runs here, in
:mod:`runtimed.cli.commands`.

Run as a command (``argv`` None: the ``runt`` script, ``python -m runtimed.cli``), the
process ends with :func:`os._exit` once the command is done and its output flushed: the
interpreter's teardown (finalising every module, thread and object the command loaded) took
10 to 15 ms of a 70 ms ``runt ps`` and of a 200 ms ``runt run`` (``bench/bench_run.py``'s
``exit``). Nothing is left for it to do: files are closed by the commands, a daemon started
on the way is its own process, and no command registers ``atexit`` work. Under a profiler,
tracer or coverage (``sys.getprofile``/``sys.gettrace`` set), or with
``RUNTIMED_NORMAL_EXIT=1``, the process exits normally so they can write their results.
"""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    status = _dispatch(argv)
    if argv is None and _may_exit_early():
        _exit_now(status)
    return status


def _dispatch(argv: list[str] | None) -> int:
    from runtimed.cli.quick import quick_command

    quick = quick_command(sys.argv[1:] if argv is None else argv)
    if quick is not None:
        return quick()
    if argv is None:
        from runtimed.cli.runner import hand_over

        status = hand_over(sys.argv[1:])
        if status is not None:
            return status
        return run_here(sys.argv[1:])
    from runtimed.cli.commands import main as full

    return full(argv)


def run_here(argv: list[str]) -> int:
    """Run the command line ``argv`` in this process (the ``runt`` process, or the warm
    runner's child that took it over: :mod:`runtimed.cli.runner`)."""
    _start_daemon_early(argv)
    from runtimed.cli.commands import main as full

    return full(None)


# A 'runt run' given any of these starts no daemon before its arguments are parsed.
_NOT_EARLY = frozenset({"-h", "--help", "--help-notebook", "--prepare-only", "--no-autostart"})


def _start_daemon_early(argv: list[str]) -> None:
    """``runt run`` with no daemon on its socket: start the daemon now, before the imports
    and the notebook's preparation, which its start-up then overlaps (the first run ever
    waited for the two one after the other: ``bench/bench_run.py``'s cold run). The
    connection takes that process over (:mod:`runtimed.client.spawn`)."""
    from runtimed.cli.quick import split_socket

    split = split_socket(argv)
    if split is None or split[1][:1] != ["run"]:
        return
    socket, rest = split
    if any(word in _NOT_EARLY or word.startswith("--cluster") for word in rest):
        return
    from pathlib import Path

    from runtimed.client.spawn import start_early
    from runtimed.paths import default_socket_path

    start_early(Path(socket) if socket else default_socket_path())


def _may_exit_early() -> bool:
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return False
    return os.environ.get("RUNTIMED_NORMAL_EXIT", "") in ("", "0")


def _exit_now(status: int) -> None:
    """Flush what the command wrote and end the process with ``status`` at once."""
    if "logging" in sys.modules:
        import logging

        logging.shutdown()  # flushes runt's own log handlers (stderr)
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (runt ps | head): nothing more can reach it.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
