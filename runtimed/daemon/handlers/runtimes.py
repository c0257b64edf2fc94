"""Answers to the runtime requests (``ListRuntimes``, ``ListEnvs``, ``CleanEnvs``,
``GetConfig``) and the runtime parts of the daemon's status — the wire side of the manager,
kept out of the daemon's dispatcher."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from protocol.messages import (
    CleanEnvs,
    ConfigReply,
    EnvList,
    EnvsCleaned,
    GetConfig,
    KernelInfo,
    ListEnvs,
    ListRuntimes,
    RuntimeList,
)
from protocol.runtimes import ConfigEntry
from runtimed.config import KEYS, config_path, effective_value
from runtimed.errors import InvalidRequest
from runtimed.runtimes.manager import RuntimeManager

if TYPE_CHECKING:
    from runtimed.config import DaemonConfig

__all__ = ["RuntimeRequestKind", "answer", "kernel_info"]

RuntimeRequestKind = ListRuntimes | ListEnvs | CleanEnvs | GetConfig


async def answer(
    manager: RuntimeManager, config: DaemonConfig, request: RuntimeRequestKind
) -> RuntimeList | EnvList | EnvsCleaned | ConfigReply:
    """The reply to one runtime request.

    Raises:
        InvalidRequest: a negative ``older_than_days``.
    """
    match request:
        case ListRuntimes():
            return RuntimeList(id=request.id, runtimes=await manager.runtimes())
        case ListEnvs():
            envs = await manager.env_infos()
            return EnvList(
                id=request.id,
                envs=envs,
                root=str(manager.envs.root),
                total_bytes=sum(e.size_bytes for e in envs),
                max_bytes=manager.envs.max_bytes,
                max_age_days=manager.envs.max_age_days,
            )
        case CleanEnvs(remove_all=remove_all, older_than_days=older):
            if older is not None and older < 0:
                raise InvalidRequest("older_than_days must be >= 0")
            removed = await manager.clean_envs(remove_all=remove_all, older_than_days=older)
            return EnvsCleaned(
                id=request.id,
                removed=[e.key for e in removed],
                bytes_freed=sum(e.size_bytes for e in removed),
            )
        case GetConfig():
            # It looks at the configuration file: a worker thread.
            return await anyio.to_thread.run_sync(
                functools.partial(config_reply, config, request_id=request.id)
            )


def config_reply(config: DaemonConfig, *, request_id: int = 0) -> ConfigReply:
    """The effective configuration of a daemon built from ``config``."""
    path = config.config_path or str(config_path())
    entries = [
        ConfigEntry(
            key=spec.key,
            value=effective_value(spec, config),
            origin=config.config_origins.get(spec.key, "default"),
            env=spec.env,
            doc=spec.doc,
        )
        for spec in KEYS
    ]
    return ConfigReply(id=request_id, path=path, exists=Path(path).is_file(), entries=entries)


def kernel_info(
    manager: RuntimeManager, notebook_id: str, *, state: str, name: str, pid: int | None
) -> KernelInfo:
    """A notebook's kernel as the runtime document shows it, plus the manager's health."""
    health = manager.health_for(notebook_id)
    if health is None:
        return KernelInfo(state=state, name=name, pid=pid)
    return KernelInfo(
        state=state,
        name=name,
        pid=pid,
        runtime=health.runtime,
        rss_bytes=health.rss_bytes,
        last_activity=health.last_activity,
        started_at=health.started_at,
        from_pool=manager.from_pool(notebook_id),
    )
