"""The ``gateway`` runtime: kernels on a Jupyter Kernel Gateway or Enterprise Gateway.

Configuration plus an execution handler, like every runtime: a :class:`RuntimeSpec` of kind
``gateway`` whose :class:`GatewayHandler` gives a :class:`KernelSession` that starts its
kernel on the gateway (:mod:`runtimed.kernels.gateway`) instead of as a local process.

Which gateway (docs/runtimes.md, "Remote kernels on a gateway"):

* a run's context — ``RUNTIMED_RUN_GATEWAY_URL`` (and ``RUNTIMED_RUN_GATEWAY_TOKEN``) in the
  notebook's kernel environment (``runt run --gateway-url URL --gateway-token TOKEN``): the
  kernel name is the one the notebook selects (``-k NAME``, its kernelspec), else the
  configured ``gateway.kernel_name``;
* ``metadata.runtimed.gateway``: a URL, or ``{"url": ..., "kernel_name": ...}``;
* the runtime names ``gateway`` and ``gateway:<kernel name>`` (``metadata.runtimed.runtime``,
  ``kernels.default_runtime``): the configured ``[gateway] url``.

The token comes from the run's context, else the configuration; never from a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from runtimed.config import RuntimesConfig
from runtimed.errors import KernelStartFailed, RuntimeNotFound
from runtimed.kernels.session import KernelSession
from runtimed.runtimes.registry import RuntimeSpec

if TYPE_CHECKING:
    from runtimed.kernels.gateway_rest import GatewayTarget

# The gateway's HTTP and WebSocket clients (httpx, websockets, through
# runtimed.kernels.gateway and gateway_rest) are imported where a gateway is first used, not
# with this module: at start-up they were a fifth of a daemon's imports, which the first
# 'runt run' waits for (bench/bench_run.py, the cold run).

__all__ = [
    "GATEWAY_NAME",
    "RUN_GATEWAY_TOKEN",
    "RUN_GATEWAY_URL",
    "GatewayHandler",
    "configured_gateway",
    "gateway_runtime",
    "gateway_target_for",
    "is_gateway_name",
]

GATEWAY_NAME = "gateway"
RUN_GATEWAY_URL = "RUNTIMED_RUN_GATEWAY_URL"
RUN_GATEWAY_TOKEN = "RUNTIMED_RUN_GATEWAY_TOKEN"
_RUN_KEYS = (RUN_GATEWAY_URL, RUN_GATEWAY_TOKEN)


def is_gateway_name(name: str | None) -> bool:
    return name is not None and (name == GATEWAY_NAME or name.startswith(GATEWAY_NAME + ":"))


class GatewayHandler:
    """Sessions whose kernels start on one gateway; never poolable (a gateway kernel is
    started for its notebook)."""

    def __init__(self, target: GatewayTarget) -> None:
        self.target = target

    def session(
        self, runtime: RuntimeSpec, *, cwd: Path, env: Mapping[str, str], startup_timeout: float
    ) -> KernelSession:
        # The local cwd and environment mean nothing on the gateway's machine: not sent.
        local_env = {k: v for k, v in env.items() if k not in _RUN_KEYS}
        from runtimed.kernels.gateway import GatewayConnector  # lazily: see the top

        return KernelSession(
            spec=runtime.launch_spec(),
            cwd=cwd,
            env=local_env,
            startup_timeout=startup_timeout,
            connect=GatewayConnector(self.target).connect,
        )

    def setup_code(self, runtime: RuntimeSpec, *, cwd: Path, env: Mapping[str, str]) -> str | None:
        return None


def gateway_runtime(target: GatewayTarget) -> RuntimeSpec:
    """The runtime of ``target.kernel_name`` on ``target.url``."""
    return RuntimeSpec(
        name=f"{GATEWAY_NAME}:{target.kernel_name}",
        display_name=f"{target.kernel_name} on the kernel gateway at {target.base}",
        language="",
        kind="gateway",
        argv=(),
        capabilities=frozenset({"interrupt", "restart"}),
        handler=GatewayHandler(target),
    )


def configured_gateway(
    config: RuntimesConfig, *, name: str = GATEWAY_NAME, kernel_name: str | None = None
) -> GatewayTarget:
    """The ``[gateway]`` table's gateway (``kernel_name``: instead of its kernel name).

    Raises:
        RuntimeNotFound: no ``gateway.url`` configured (``name``: the runtime asked for).
    """
    if not config.gateway_url:
        raise RuntimeNotFound(
            name, ["(no gateway configured: set [gateway] url or RUNTIMED_GATEWAY_URL)"]
        )
    from runtimed.kernels.gateway_rest import GatewayTarget  # lazily: see the top

    return GatewayTarget(
        url=config.gateway_url,
        kernel_name=kernel_name or config.gateway_kernel_name,
        token=config.gateway_token,
        connect_timeout=config.gateway_connect_timeout,
    )


def gateway_target_for(
    runtime: str | None,
    gateway_url: str | None,
    gateway_kernel: str | None,
    *,
    env: Mapping[str, str],
    config: RuntimesConfig,
) -> GatewayTarget | None:
    """The gateway a notebook's kernel should start on, or None (a local runtime).

    ``runtime``: the runtime name the notebook selects; ``gateway_url``/``gateway_kernel``:
    its ``metadata.runtimed.gateway``; ``env``: its kernel environment (a run's context).

    Raises:
        RuntimeNotFound: ``gateway`` selected but no gateway configured.
        KernelStartFailed: the URL is not http(s).
    """
    run_url = env.get(RUN_GATEWAY_URL)
    named = runtime if is_gateway_name(runtime) else None
    kernel_from_name = named.partition(":")[2] if named else None
    if run_url or gateway_url:
        url = run_url or gateway_url or ""
        if not url.startswith(("http://", "https://")):
            where = RUN_GATEWAY_URL if run_url else "metadata.runtimed.gateway"
            raise KernelStartFailed(
                f"the gateway URL {url!r} ({where}) must start with http:// or https://"
            )
        kernel = gateway_kernel or kernel_from_name
        if kernel is None and runtime and not named:
            kernel = runtime  # the notebook's kernelspec name, on the gateway
        from runtimed.kernels.gateway_rest import GatewayTarget  # lazily: see the top

        target = GatewayTarget(
            url=url,
            kernel_name=kernel or config.gateway_kernel_name,
            token=config.gateway_token if url == config.gateway_url else "",
            connect_timeout=config.gateway_connect_timeout,
        )
        token = env.get(RUN_GATEWAY_TOKEN)
        return replace(target, token=token) if token else target
    if named is not None:
        return configured_gateway(config, name=named, kernel_name=kernel_from_name)
    return None
