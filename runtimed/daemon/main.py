"""``runtimed``: run the daemon in the foreground (for systemd, tests and ``runt daemon start``)."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys
from pathlib import Path

import anyio

from runtimed.config import ConfigError, DaemonConfig, load_config
from runtimed.daemon.app import Daemon
from runtimed.errors import DaemonAlreadyRunning
from runtimed.paths import UnsafeDirectory, resolve_paths
from runtimed.storage.ipynb import skip_unused_format_checkers
from runtimed.version import __version__

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runtimed", description="The runtimed notebook daemon.")
    parser.add_argument(
        "--socket", help="Unix socket path (default: $RUNTIMED_SOCKET or the user runtime dir)"
    )
    parser.add_argument(
        "--home", help="state directory (default: $RUNTIMED_HOME or the user data dir)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-file", help="also log to this file (default: <home>/logs/runtimed.log)"
    )
    parser.add_argument(
        "--config",
        help="configuration file (default: $RUNTIMED_CONFIG or "
        "<user config dir>/runtimed/config.toml; see docs/runtimes.md)",
    )
    parser.add_argument("--version", action="version", version=f"runtimed {__version__}")
    return parser


async def _run(daemon: Daemon) -> None:
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for signum in sigs:
                    logging.getLogger("runtimed").info("signal %d: stopping", signum)
                    daemon.request_stop()
                    return

        tg.start_soon(on_signals)
        await daemon.run()
        tg.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    skip_unused_format_checkers()  # 1.5 s off the first notebook's open
    args = build_parser().parse_args(argv)
    paths = resolve_paths(socket=args.socket, home=args.home)
    try:
        paths.ensure()
    except UnsafeDirectory as exc:
        print(f"runtimed: {exc}", file=sys.stderr)
        return 1
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers.append(
        logging.handlers.RotatingFileHandler(
            args.log_file or paths.log_file, maxBytes=10 * 1024 * 1024, backupCount=3
        )
    )
    logging.basicConfig(
        level=args.log_level,
        handlers=handlers,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        loaded = load_config(Path(args.config) if args.config else None)
    except ConfigError as exc:
        # Logged (to the log file too: the reason must be there) and said on stderr.
        logging.getLogger("runtimed").error("invalid configuration: %s", exc)
        print(f"runtimed: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("runtimed").info(
        "configuration: %s%s", loaded.path, "" if loaded.exists else " (absent: defaults)"
    )
    daemon = Daemon(paths, config=DaemonConfig(**loaded.daemon_kwargs()))
    status = 0
    try:
        anyio.run(_run, daemon, backend="asyncio", backend_options={"use_uvloop": True})
    except* (DaemonAlreadyRunning, UnsafeDirectory) as group:  # inside _run's task group
        print(f"runtimed: {group.exceptions[0]}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
