"""Which gateway a notebook's kernel starts on (pure: metadata, run context, configuration),
and the gateway token never shown back by ``runt config show``."""

from __future__ import annotations

import inspect
import re

import pytest

from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.handlers.runtimes import config_reply
from runtimed.errors import KernelStartFailed, RuntimeNotFound
from runtimed.kernels.gateway import GatewayKernel
from runtimed.kernels.gateway_rest import GatewayTarget, decode_binary
from runtimed.kernels.process import KernelProcess
from runtimed.runtimes.gateway import gateway_runtime, gateway_target_for
from runtimed.runtimes.selection import runtime_request_for

CONFIGURED = RuntimesConfig(
    gateway_url="http://gw:8888", gateway_token="tok", gateway_kernel_name="python3"
)


def target(metadata: dict[str, object], env: dict[str, str] | None = None) -> GatewayTarget | None:
    request = runtime_request_for(metadata, None)
    return gateway_target_for(
        request.runtime or "python3",
        request.gateway,
        request.gateway_kernel,
        env=env or {},
        config=CONFIGURED,
    )


def test_local_notebooks_select_no_gateway() -> None:
    assert target({"kernelspec": {"name": "python3"}}) is None
    assert target({}) is None


def test_the_runtime_gateway_uses_the_configured_one() -> None:
    assert target({"runtimed": {"runtime": "gateway"}}) == GatewayTarget(
        "http://gw:8888", "python3", "tok"
    )
    found = target({"runtimed": {"runtime": "gateway:ir"}})
    assert found is not None
    assert (found.kernel_name, found.token) == ("ir", "tok")


def test_metadata_names_a_gateway_and_its_kernel() -> None:
    found = target({"runtimed": {"gateway": {"url": "http://other:1", "kernel_name": "ir"}}})
    assert found == GatewayTarget("http://other:1", "ir", "")  # not the configured token
    found = target({"kernelspec": {"name": "julia"}, "runtimed": {"gateway": "http://gw:8888"}})
    assert found == GatewayTarget("http://gw:8888", "julia", "tok")


def test_a_runs_context_sends_the_notebook_to_its_gateway_with_its_token() -> None:
    env = {"RUNTIMED_RUN_GATEWAY_URL": "http://run:2", "RUNTIMED_RUN_GATEWAY_TOKEN": "t2"}
    found = target({"kernelspec": {"name": "python3"}}, env)
    assert found == GatewayTarget("http://run:2", "python3", "t2")


def test_a_gateway_url_that_is_not_http_is_refused_clearly() -> None:
    with pytest.raises(KernelStartFailed, match=r"'gw:8888' \(metadata.runtimed.gateway\)"):
        target({"runtimed": {"gateway": "gw:8888"}})


def test_gateway_without_a_configured_one_is_runtime_not_found() -> None:
    with pytest.raises(RuntimeNotFound, match="no gateway configured"):
        gateway_target_for("gateway", None, None, env={}, config=RuntimesConfig())


def test_the_gateway_runtime_is_not_poolable_and_hides_the_token() -> None:
    runtime = gateway_runtime(GatewayTarget("http://gw:8888", "python3", "secret-token"))
    assert (runtime.name, runtime.kind, runtime.poolable) == ("gateway:python3", "gateway", False)
    assert "secret-token" not in repr(runtime) + repr(runtime.handler.__dict__)


def test_config_show_masks_the_token() -> None:
    reply = config_reply(DaemonConfig(runtimes=CONFIGURED))
    shown = {entry.key: entry.value for entry in reply.entries}
    assert shown["gateway.token"] == "********"
    assert shown["gateway.url"] == "http://gw:8888"


def test_binary_messages_decode_to_json_and_buffers() -> None:
    body = b'{"channel": "iopub", "header": {}}'
    extra = b"\x00\x01\x02"
    count = 2
    offsets = [4 * (count + 1), 4 * (count + 1) + len(body)]
    data = b"".join(n.to_bytes(4, "big") for n in [count, *offsets]) + body + extra
    msg = decode_binary(data)
    assert msg["channel"] == "iopub"
    assert [bytes(b) for b in msg["buffers"]] == [extra]
    with pytest.raises(ValueError, match="malformed"):
        decode_binary(b"\x00\x00\x00\x05")


def _assigned(init: object) -> set[str]:
    return set(re.findall(r"self\.(\w+)\s*(?::[^=]*)?=", inspect.getsource(init)))  # type: ignore[arg-type]


def test_a_gateway_kernel_sets_all_the_state_a_kernel_process_has() -> None:
    """GatewayKernel replaces KernelProcess.__init__ (no process, no ZeroMQ): a field added
    there must be added to the gateway kernel too, or the shared dispatcher breaks on it."""
    process_only = {"process", "_stdin_monitor"}
    assert {"executions", "replies", "exited", "_run_scope"} <= _assigned(KernelProcess.__init__)
    missing = _assigned(KernelProcess.__init__) - process_only - _assigned(GatewayKernel.__init__)
    assert not missing, f"GatewayKernel.__init__ does not set {sorted(missing)}"
