"""``runt runtimes``, ``runt pool``, ``runt env list|clean``, ``runt config show``, and the
kernel columns of ``runt ps`` (memory, last activity)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from protocol.messages import ConfigReply
from protocol.runtimes import KernelHealth
from runtimed.cli.quick import ago as _ago
from runtimed.cli.quick import describe_kernel, human_bytes
from runtimed.cli.quick import err as _err
from runtimed.cli.quick import out as _out
from runtimed.errors import DaemonNotRunning

__all__ = ["COMMANDS", "add_parsers", "describe_kernel", "human_bytes"]

Handler = Callable[[argparse.Namespace], Awaitable[int]]


def _json(value: Any) -> None:
    _out(json.dumps(msgspec.to_builtins(value), indent=2))


def add_parsers(sub: Any) -> None:
    """Add the runtime commands to ``runt``'s subparsers."""

    def parser(into: Any, name: str, text: str) -> Any:
        made = into.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        return made

    def json_flag(p: Any) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")

    json_flag(parser(sub, "runtimes", "runtimes the daemon can start"))
    json_flag(parser(sub, "pool", "the pre-warmed kernel pool and every kernel"))
    env = parser(sub, "env", "environments built from notebooks' dependencies")
    esub = env.add_subparsers(dest="action", required=True)
    json_flag(parser(esub, "list", "cached environments, sizes, last use"))
    clean = parser(esub, "clean", "remove cached environments no kernel uses")
    clean.add_argument(
        "--all",
        action="store_true",
        dest="remove_all",
        help="every environment not in use (default: those over the limits)",
    )
    clean.add_argument(
        "--older-than", type=float, default=None, metavar="DAYS", help="those unused for DAYS days"
    )
    json_flag(clean)
    config = parser(sub, "config", "the daemon's configuration")
    csub = config.add_subparsers(dest="action", required=True)
    json_flag(parser(csub, "show", "effective values and where each came from"))


async def _runtimes(args: argparse.Namespace) -> int:
    from runtimed.client.async_client import AsyncClient

    async with await AsyncClient.connect() as client:
        runtimes = await client.list_runtimes()
    if args.json:
        _json(runtimes)
        return 0
    width = max((len(r.name) for r in runtimes), default=4)
    _out(f"{'NAME':<{width}}  {'KIND':<10}  {'LANGUAGE':<8}  DISPLAY NAME")
    for r in runtimes:
        mark = "  (default)" if r.default else ""
        _out(f"{r.name:<{width}}  {r.kind:<10}  {r.language:<8}  {r.display_name}{mark}")
    return 0


def _kernel_line(k: KernelHealth) -> str:
    owner = "pool" if k.pooled else (k.notebook_id or "-")[:12]
    return (
        f"  {k.kernel_id:<5} {k.runtime:<18} {k.state:<8} pid {k.pid or '-':<8} "
        f"{owner:<12}  {describe_kernel(k.rss_bytes, k.last_activity)}"
    )


async def _pool(args: argparse.Namespace) -> int:
    from runtimed.client.async_client import AsyncClient

    async with await AsyncClient.connect() as client:
        status = await client.status()
    if args.json:
        _json({"pool": status.pool, "kernels": status.kernels, "max_kernels": status.max_kernels})
        return 0
    pool = status.pool
    if pool is None:
        _out("this daemon has no pool")
    elif not pool.enabled:
        _out(f"pool: disabled ({pool.last_error or 'pool.size = 0'})")
    else:
        _out(f"pool: {pool.runtime}, {pool.ready}/{pool.size} ready, {pool.starting} starting")
        if pool.last_error:
            _out(f"last error: {pool.last_error}")
    limit = status.max_kernels or "no limit"
    _out(f"kernels: {len(status.kernels)} (max {limit})")
    for kernel in status.kernels:
        _out(_kernel_line(kernel))
    return 0


async def _env_list(args: argparse.Namespace) -> int:
    from runtimed.client.async_client import AsyncClient

    async with await AsyncClient.connect() as client:
        reply = await client.list_envs()
    if args.json:
        _json(reply)
        return 0
    limit = human_bytes(reply.max_bytes) if reply.max_bytes else "no limit"
    age = f"{reply.max_age_days:g} days" if reply.max_age_days else "no limit"
    _out(
        f"{len(reply.envs)} environments in {reply.root}: {human_bytes(reply.total_bytes)} "
        f"(limits: {limit}, unused {age})"
    )
    for env in reply.envs:
        use = "  in use" if env.in_use else ""
        _out(
            f"  {env.key}  {human_bytes(env.size_bytes):>10}  used {_ago(env.last_used):<9}"
            f"  {', '.join(env.requirements) or '-'}{use}"
        )
    return 0


async def _env_clean(args: argparse.Namespace) -> int:
    from runtimed.client.async_client import AsyncClient

    async with await AsyncClient.connect() as client:
        reply = await client.clean_envs(remove_all=args.remove_all, older_than_days=args.older_than)
    if args.json:
        _json(reply)
    else:
        _out(f"removed {len(reply.removed)} environments, freed {human_bytes(reply.bytes_freed)}")
    return 0


async def _config_show(args: argparse.Namespace) -> int:
    from runtimed.config import ConfigError, DaemonConfig, load_config
    from runtimed.daemon.handlers.runtimes import config_reply

    note = ""
    differs: list[tuple[str, object, object]] = []
    try:
        from runtimed.client.async_client import AsyncClient

        async with await AsyncClient.connect() as client:
            reply: ConfigReply = await client.get_config()
        differs = _differences(reply)
    except DaemonNotRunning:
        try:
            loaded = load_config()
        except ConfigError as exc:
            _err(f"runt: {exc}")
            return 2
        reply = config_reply(DaemonConfig(**loaded.daemon_kwargs()))
        note = " (daemon not running: what a daemon started now would use)"
    if args.json:
        data = msgspec.to_builtins(reply)
        data.pop("id", None)
        data["daemon_running"] = not note
        data["differs_from_file"] = [
            {"key": key, "daemon": running, "file": wanted} for key, running, wanted in differs
        ]
        _out(json.dumps(data, indent=2))
        return 0
    _out(f"# {reply.path}{'' if reply.exists else ' (absent)'}{note}")
    if differs:
        _out(
            "# the running daemon's configuration differs from the file now (it is read at "
            "start; restart the daemon to apply it):"
        )
        for key, running, wanted in differs:
            _out(f"#   {key}: daemon {json.dumps(running)}, file {json.dumps(wanted)}")
    section = ""
    for entry in reply.entries:
        head, name = entry.key.split(".", 1)
        if head != section:
            section = head
            _out(f"\n[{section}]")
        value = json.dumps(entry.value)
        origin = "" if entry.origin == "default" else f"  # from {entry.origin}"
        _out(f"{name} = {value}{origin}")
    return 0


def _differences(reply: ConfigReply) -> list[tuple[str, object, object]]:
    """Keys whose running value is not what the configuration file (read now) gives."""
    from pathlib import Path

    from runtimed.config import ConfigError, DaemonConfig, load_config
    from runtimed.daemon.handlers.runtimes import config_reply

    try:
        fresh = config_reply(DaemonConfig(**load_config(Path(reply.path)).daemon_kwargs()))
    except ConfigError as exc:
        return [("(file)", "valid", f"invalid: {exc}")]
    now = {entry.key: entry.value for entry in fresh.entries}
    return [
        (e.key, e.value, now[e.key]) for e in reply.entries if now.get(e.key, e.value) != e.value
    ]


COMMANDS: dict[tuple[str, str | None], Handler] = {
    ("runtimes", None): _runtimes,
    ("pool", None): _pool,
    ("env", "list"): _env_list,
    ("env", "clean"): _env_clean,
    ("config", "show"): _config_show,
}
