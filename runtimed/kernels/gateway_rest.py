"""The REST half of a Jupyter Kernel Gateway / Enterprise Gateway: one boundary for HTTP.

The gateway speaks Jupyter Server's REST API (https://jupyter-server.readthedocs.io/en/latest/
developers/rest-api.html): ``GET /api/kernelspecs``, ``POST /api/kernels``,
``GET /api/kernels/{id}``, ``POST /api/kernels/{id}/interrupt``, ``DELETE /api/kernels/{id}``,
authenticated with ``Authorization: token <token>``. Every httpx and websockets exception is
turned into one of ours here (:func:`gateway_errors`), naming the gateway's address, so a
caller sees "cannot reach", "refused the token (401)" or the gateway's own answer.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from runtimed.errors import KernelError, KernelNotRunning, KernelStartFailed

__all__ = ["GatewayRest", "GatewayTarget", "decode_binary", "gateway_errors", "refusal"]

log = logging.getLogger(__name__)

_MAX_WS_MESSAGE = 256 * 1024 * 1024  # one message may carry a large output (an image)
_DELETE_ATTEMPTS = 6
_DELETE_RETRY = 0.5  # s between DELETE attempts answered with a server error
_REQUEST_TIMEOUT = 60.0  # a kernel start on a cluster gateway can take a while


@dataclass(frozen=True, slots=True)
class GatewayTarget:
    """Where remote kernels live: a gateway's base URL, the kernel name to start there,
    the token (never shown in ``repr``) and how long connecting may take."""

    url: str
    kernel_name: str
    token: str = field(default="", repr=False)
    connect_timeout: float = 10.0

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


def refusal(
    target: GatewayTarget,
    what: str,
    status: int,
    reason: str,
    *,
    error: type[KernelError] = KernelStartFailed,
) -> KernelError:
    """The error for a gateway answering ``status`` when asked to do ``what``."""
    if status in (401, 403):
        return error(
            f"the kernel gateway at {target.base} refused the token ({status} "
            f"{'Unauthorized' if status == 401 else 'Forbidden'}) when asked to {what};"
            " set the right one (gateway.token, RUNTIMED_GATEWAY_TOKEN, --gateway-token)"
        )
    return error(
        f"the kernel gateway at {target.base} answered {status} when asked to {what}: {reason}"
    )


@contextmanager
def gateway_errors(
    target: GatewayTarget, what: str, *, error: type[KernelError] = KernelStartFailed
) -> Iterator[None]:
    """Turn httpx/websockets failures while doing ``what`` into ``error`` naming the gateway."""
    where = target.base
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, OSError, TimeoutError) as exc:
        raise error(
            f"cannot reach the kernel gateway at {where} (within {target.connect_timeout:g} s)"
            f" to {what}: {exc or type(exc).__name__}"
        ) from exc
    except (httpx.HTTPError, WebSocketException, msgspec.DecodeError) as exc:
        raise error(f"the kernel gateway at {where} failed to {what}: {exc!r}") from exc


def _check(
    response: httpx.Response,
    target: GatewayTarget,
    what: str,
    *,
    error: type[KernelError] = KernelStartFailed,
) -> None:
    """Raise ``error`` (see :func:`refusal`) unless ``response`` is a success."""
    if response.is_success:
        return
    reason = response.reason_phrase
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("message"):
            reason = str(body["message"])
        elif isinstance(body, dict) and body.get("reason"):
            reason = str(body["reason"])
    except ValueError:
        pass
    raise refusal(target, what, response.status_code, reason, error=error)


class GatewayRest:
    """An HTTP client for one gateway. ``async with GatewayRest(target) as rest: ...``"""

    def __init__(self, target: GatewayTarget) -> None:
        self.target = target
        self._http: httpx.AsyncClient | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.target.token}"} if self.target.token else {}

    async def __aenter__(self) -> GatewayRest:
        timeout = httpx.Timeout(_REQUEST_TIMEOUT, connect=self.target.connect_timeout)
        # Building the client loads CA certificates from disk: not on the event loop.
        self._http = await anyio.to_thread.run_sync(
            lambda: httpx.AsyncClient(
                base_url=self.target.base, headers=self._headers(), timeout=timeout
            )
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        http, self._http = self._http, None
        if http is not None:
            with anyio.CancelScope(shield=True):
                await http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "enter the GatewayRest first"
        return self._http

    async def kernel_names(self) -> list[str]:
        """The kernelspec names the gateway offers (``GET /api/kernelspecs``)."""
        what = "list its kernelspecs"
        with gateway_errors(self.target, what):
            response = await self.http.get("/api/kernelspecs")
            _check(response, self.target, what)
            specs = response.json().get("kernelspecs", {})
        return sorted(str(name) for name in specs) if isinstance(specs, dict) else []

    async def start_kernel(self, name: str, *, timeout: float = _REQUEST_TIMEOUT) -> str:
        """Start a kernel called ``name``; its id (``POST /api/kernels``, which a gateway
        answers once the kernel has started: bounded by ``timeout``).

        Raises:
            KernelStartFailed: unreachable, a refused token, or a name the gateway does not
                offer (the message lists the names it does).
        """
        names = await self.kernel_names()
        if name not in names:
            offered = ", ".join(names) or "none"
            raise KernelStartFailed(
                f"the kernel gateway at {self.target.base} offers no kernel named {name!r}; "
                f"it offers: {offered} (choose one with -k NAME, gateway.kernel_name or the "
                "notebook's kernelspec)"
            )
        what = f"start a {name!r} kernel"
        with gateway_errors(self.target, what):
            limit = httpx.Timeout(timeout, connect=self.target.connect_timeout)
            response = await self.http.post("/api/kernels", json={"name": name}, timeout=limit)
            _check(response, self.target, what)
            kernel_id = response.json().get("id")
        if not isinstance(kernel_id, str) or not kernel_id:
            raise KernelStartFailed(f"the kernel gateway at {self.target.base} gave no kernel id")
        return kernel_id

    async def kernel_exists(self, kernel_id: str) -> bool:
        """Whether ``GET /api/kernels/{id}`` still finds the kernel (False on 404)."""
        what = "look up its kernel"
        with gateway_errors(self.target, what, error=KernelNotRunning):
            response = await self.http.get(f"/api/kernels/{quote(kernel_id)}")
            if response.status_code == 404:
                return False
            _check(response, self.target, what, error=KernelNotRunning)
        return True

    async def interrupt(self, kernel_id: str) -> None:
        what = "interrupt its kernel"
        with gateway_errors(self.target, what, error=KernelNotRunning):
            response = await self.http.post(f"/api/kernels/{quote(kernel_id)}/interrupt")
            _check(response, self.target, what, error=KernelNotRunning)

    async def restart(self, kernel_id: str, *, timeout: float = _REQUEST_TIMEOUT) -> None:
        """``POST /api/kernels/{id}/restart`` (answered once the kernel is back)."""
        what = "restart its kernel"
        with gateway_errors(self.target, what):
            limit = httpx.Timeout(timeout, connect=self.target.connect_timeout)
            url = f"/api/kernels/{quote(kernel_id)}/restart"
            _check(await self.http.post(url, timeout=limit), self.target, what)

    async def delete(self, kernel_id: str) -> None:
        """Shut the kernel down (``DELETE``); a kernel already gone is fine.

        A server error is retried a few times: a gateway whose restarter is bringing a dead
        kernel back answers 500 until it is done (Jupyter Server 2.x)."""
        what = "shut its kernel down"
        with gateway_errors(self.target, what, error=KernelNotRunning):
            for attempt in range(_DELETE_ATTEMPTS):
                response = await self.http.delete(f"/api/kernels/{quote(kernel_id)}")
                if response.status_code < 500 or attempt == _DELETE_ATTEMPTS - 1:
                    break
                await anyio.sleep(_DELETE_RETRY)
            if response.status_code != 404:
                _check(response, self.target, what, error=KernelNotRunning)

    async def channels(self, kernel_id: str) -> ClientConnection:
        """The kernel's ``/api/kernels/{id}/channels`` WebSocket (JSON messages)."""
        base = self.target.base
        scheme = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
        url = f"{scheme}/api/kernels/{quote(kernel_id)}/channels"
        what = "open its kernel's channels"
        with gateway_errors(self.target, what):
            try:
                return await connect(
                    url,
                    additional_headers=self._headers(),
                    open_timeout=self.target.connect_timeout,
                    max_size=_MAX_WS_MESSAGE,
                    ping_interval=20,
                    ping_timeout=20,
                )
            except InvalidStatus as exc:
                response = exc.response
                raise refusal(
                    self.target, what, response.status_code, response.reason_phrase
                ) from exc
            except InvalidURI as exc:
                raise KernelStartFailed(f"{base} is not a usable gateway URL: {exc}") from exc


def decode_binary(data: bytes) -> dict[str, Any]:
    """A message the gateway sent as binary (it has buffers): Jupyter Server's legacy
    binary framing — a count n, n offsets (big-endian uint32), the JSON, then the buffers."""
    count = int.from_bytes(data[:4], "big")
    if count < 1 or len(data) < 4 * (count + 1):
        raise ValueError("malformed binary message")
    offsets = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(count)]
    offsets.append(len(data))
    parts = [data[start:stop] for start, stop in itertools.pairwise(offsets)]
    msg = msgspec.json.decode(parts[0])
    if not isinstance(msg, dict):
        raise ValueError("malformed binary message: not an object")
    msg["buffers"] = [memoryview(part) for part in parts[1:]]
    return msg
