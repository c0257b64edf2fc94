"""The door in front of every route (ASGI middleware): Host check, Origin check for
WebSockets and POSTs, then the token — from the URL (traded for a cookie), the cookie, or an
``Authorization: token …`` header. The rules are auth.py's; this module applies them."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from runtimed.daemon.web import pages
from runtimed.daemon.web.auth import TokenStore, cookie_name, host_allowed, origin_allowed

__all__ = ["COMMON_HEADERS", "Guard"]

COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # no-referrer would make form POSTs send "Origin: null"
    "cross-origin-opener-policy": "same-origin",
}
_REFUSAL_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


class Guard:
    """ASGI middleware in front of every route: Host check, token, Origin (auth.py)."""

    def __init__(self, app: ASGIApp, *, tokens: TokenStore, port: Callable[[], int]) -> None:
        self.app = app
        self.tokens = tokens
        self._port = port  # callable: the port is known only once bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        is_ws = scope["type"] == "websocket"
        if not host_allowed(headers):
            await self._refuse(
                scope,
                receive,
                send,
                403,
                "bad host",
                "This server answers only to localhost names (Host header).",
            )
            return
        if (is_ws or scope.get("method") == "POST") and not origin_allowed(headers):
            await self._refuse(
                scope,
                receive,
                send,
                403,
                "bad origin",
                "Requests that change things must come from this server's pages.",
            )
            return
        query = scope.get("query_string", b"").decode("latin-1")
        params = parse_qsl(query, keep_blank_values=True)
        url_token = next((v for k, v in params if k == "token"), None)
        name = cookie_name(self._port())
        cookie_token = _cookie(headers.get("cookie", ""), name)
        header_token = _authorization(headers.get("authorization", ""))
        if url_token is not None and self.tokens.matches(url_token):
            # A blob link (handed to agents and scripts, e.g. by `runt mcp`) is served as it
            # is: its fetcher may keep no cookies. Pages trade the token for a cookie.
            is_blob = str(scope.get("path", "")).startswith("/blob/")
            if not is_ws and not is_blob and scope.get("method") in ("GET", "HEAD"):
                # Trade the URL token for a cookie, and drop it from the address bar.
                rest = urlencode([(k, v) for k, v in params if k != "token"])
                location = scope["path"] + (f"?{rest}" if rest else "")
                response = RedirectResponse(location, status_code=303)
                response.set_cookie(
                    name, self.tokens.token, httponly=True, samesite="strict", path="/"
                )
                await response(scope, receive, send)
                return
        elif not (self.tokens.matches(cookie_token) or self.tokens.matches(header_token)):
            stale = url_token is not None or cookie_token is not None
            await self._refuse(
                scope,
                receive,
                send,
                401,
                "Stale link" if stale else "Token needed",
                pages.STALE_TOKEN_MESSAGE if stale else pages.NO_TOKEN_MESSAGE,
            )
            return
        await self.app(scope, receive, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, title: str, message: str
    ) -> None:
        if scope["type"] == "websocket":
            # Before accept: uvicorn answers the handshake with 403.
            await receive()
            await send({"type": "websocket.close", "code": 1008, "reason": title})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if "text/html" in headers.get("accept", ""):
            response: Response = HTMLResponse(
                pages.refusal_page(title, message),
                status_code=status,
                headers={**COMMON_HEADERS, "content-security-policy": _REFUSAL_CSP},
            )
        else:
            text = message.replace("<code>", "`").replace("</code>", "`")
            response = PlainTextResponse(f"{title}: {text}\n", status_code=status)
        await response(scope, receive, send)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _authorization(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() in ("token", "bearer") and value else None
