"""The web server's door: token, cookie, Host, Origin, CSP — against a real daemon (in
process) on real sockets, with httpx and a real WebSocket client."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Origin

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.daemon.web.auth import TokenStore, cookie_name

from .conftest import write_notebook

pytestmark = pytest.mark.anyio

ROUTES = [
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/notebooks/abc"),
    ("GET", "/frame"),
    ("GET", "/static/app.js"),
    ("GET", "/static/automerge.wasm"),
    ("GET", "/blob/" + "0" * 64),
    ("HEAD", "/blob/" + "0" * 64),
    ("POST", "/open"),
]


def token_of(daemon: Daemon) -> str:
    return (daemon.paths.home / "web-token").read_text().strip()


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    assert daemon.http_port is not None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{daemon.http_port}", follow_redirects=False
    ) as client:
        yield client


async def test_the_token_file_is_owner_only(daemon: Daemon) -> None:
    path = daemon.paths.home / "web-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token_of(daemon)) >= 40


@pytest.mark.parametrize(("method", "route"), ROUTES)
async def test_every_route_refuses_without_the_token(
    http: httpx.AsyncClient, method: str, route: str
) -> None:
    response = await http.request(method, route, headers={"origin": str(http.base_url)})
    assert response.status_code == 401, (route, response.text)


async def test_a_refused_page_says_how_to_get_a_link(http: httpx.AsyncClient) -> None:
    response = await http.get("/notebooks/abc", headers={"accept": "text/html"})
    assert response.status_code == 401
    assert "runt open" in response.text
    assert "Traceback" not in response.text
    stale = await http.get("/?token=not-the-token", headers={"accept": "text/html"})
    assert stale.status_code == 401
    assert "Stale link" in stale.text
    assert "runt open" in stale.text


async def test_the_url_token_becomes_a_strict_httponly_cookie(
    daemon: Daemon, http: httpx.AsyncClient
) -> None:
    response = await http.get(f"/notebooks/abc?token={token_of(daemon)}&x=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/notebooks/abc?x=1"  # token gone from the URL
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{cookie_name(daemon.http_port or 0)}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie.replace("Strict", "strict")
    page = await http.get("/notebooks/abc?x=1")  # httpx kept the cookie
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp


async def test_an_authorization_header_works_for_scripts(
    daemon: Daemon, http: httpx.AsyncClient
) -> None:
    response = await http.get("/healthz", headers={"authorization": f"token {token_of(daemon)}"})
    assert response.status_code == 200


async def test_a_foreign_host_header_is_refused_even_with_the_token(
    daemon: Daemon, http: httpx.AsyncClient
) -> None:
    # DNS rebinding: evil.example resolving to 127.0.0.1 still sends its own name.
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
        response = await http.get(
            "/healthz",
            headers={"host": host, "authorization": f"token {token_of(daemon)}"},
        )
        assert response.status_code == 403, host
    for host in ("localhost", f"127.0.0.1:{daemon.http_port}", "[::1]:1234"):
        response = await http.get(
            "/healthz", headers={"host": host, "authorization": f"token {token_of(daemon)}"}
        )
        assert response.status_code == 200, host


async def test_a_rotated_token_invalidates_old_links(
    daemon: Daemon, http: httpx.AsyncClient
) -> None:
    old = token_of(daemon)
    assert (await http.get(f"/healthz?token={old}")).status_code == 303
    await anyio.to_thread.run_sync(TokenStore(daemon.paths.home).rotate)
    http.cookies.clear()

    # The server re-reads the file at most once a second: wait for that, not a fixed sleep.
    async def old_refused() -> bool:
        response = await http.get("/healthz", headers={"authorization": f"token {old}"})
        return response.status_code == 401

    with anyio.fail_after(10):
        while not await old_refused():
            await anyio.sleep(0.02)
    new = token_of(daemon)
    assert (
        await http.get("/healthz", headers={"authorization": f"token {new}"})
    ).status_code == 200


async def test_post_open_needs_our_origin(
    daemon: Daemon, http: httpx.AsyncClient, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "o.ipynb", [{"cell_type": "code", "source": "1"}])
    auth = {"authorization": f"token {token_of(daemon)}"}
    foreign = await http.post(
        "/open", data={"path": str(path)}, headers={**auth, "origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    ours = await http.post(
        "/open", data={"path": str(path)}, headers={**auth, "origin": str(http.base_url)}
    )
    assert ours.status_code == 303
    assert ours.headers["location"].startswith("/notebooks/")


async def test_blobs_are_served_as_data_never_as_pages(
    daemon: Daemon, http: httpx.AsyncClient
) -> None:
    html = b"<script>alert(document.cookie)</script>"
    ref = await daemon.blobs.put(html, media_type="text/html")
    auth = {"authorization": f"token {token_of(daemon)}"}
    response = await http.get(f"/blob/{ref.hash}", headers=auth)
    assert response.status_code == 200
    assert response.content == html
    assert "sandbox" in response.headers["content-security-policy"]
    assert response.headers["content-disposition"].startswith("attachment")
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["etag"] == f'"{ref.hash}"'
    assert response.headers["x-content-type-options"] == "nosniff"
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 10
    ref = await daemon.blobs.put(png, media_type="image/png")
    response = await http.get(f"/blob/{ref.hash}", headers=auth)
    assert response.headers["content-disposition"].startswith("inline")
    assert hashlib.sha256(response.content).hexdigest() == ref.hash
    head = await http.head(f"/blob/{ref.hash}", headers=auth)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(png))
    assert (await http.get("/blob/NOT-A-HASH", headers=auth)).status_code == 400


async def test_a_blob_link_with_the_token_is_served_without_a_redirect(
    daemon: Daemon, http: httpx.AsyncClient
) -> None:
    ref = await daemon.blobs.put(b"\x89PNG\r\n\x1a\n" + b"\1" * 10, media_type="image/png")
    token = token_of(daemon)
    linked = await http.get(f"/blob/{ref.hash}?token={token}")  # no cookie, no header
    assert linked.status_code == 200
    assert hashlib.sha256(linked.content).hexdigest() == ref.hash
    assert "set-cookie" not in linked.headers
    assert (await http.get(f"/blob/{ref.hash}?token=stale")).status_code == 401
    assert (await http.get(f"/blob/{ref.hash}")).status_code == 401


async def drain_until_closed(ws: ClientConnection) -> None:
    """Read until the server closes the WebSocket (bounded)."""
    with anyio.fail_after(20):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            return


def ws_url(daemon: Daemon, notebook_id: str) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}/notebooks/{notebook_id}/ws"


async def test_websocket_refuses_without_cookie_bad_origin_or_no_origin(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb = await client.open(
        write_notebook(short_tmp / "w.ipynb", [{"cell_type": "code", "source": "1"}])
    )
    origin = Origin(f"http://127.0.0.1:{daemon.http_port}")
    cookie = f"{cookie_name(daemon.http_port or 0)}={token_of(daemon)}"
    cases = [
        ({}, origin),  # no cookie
        ({"cookie": cookie}, Origin("http://evil.example")),  # cross-site page
        ({"cookie": f"{cookie_name(daemon.http_port or 0)}=stale"}, origin),
    ]
    for headers, org in cases:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with ws_connect(ws_url(daemon, nb.id), additional_headers=headers, origin=org):
                pass
        assert info.value.response.status_code == 403, (headers, org)
    with pytest.raises(websockets.InvalidStatus):
        async with ws_connect(ws_url(daemon, nb.id), additional_headers={"cookie": cookie}):
            pass
    async with ws_connect(
        ws_url(daemon, nb.id),
        additional_headers={"cookie": cookie},
        origin=origin,
    ) as ws:
        while isinstance(message := await ws.recv(), bytes):
            pass  # sync messages may come first
        hello = json.loads(message)
        assert hello["type"] == "hello"
        assert hello["notebook_id"] == nb.id


async def test_a_websocket_sending_garbage_is_closed_alone(
    daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb = await client.open(
        write_notebook(short_tmp / "g.ipynb", [{"cell_type": "code", "source": "1"}])
    )
    origin = Origin(f"http://127.0.0.1:{daemon.http_port}")
    cookie = {"cookie": f"{cookie_name(daemon.http_port or 0)}={token_of(daemon)}"}
    for garbage in (
        b"\x07nonsense",
        b"\x00" + b"\xff" * 40,
        "not json",
        '{"type": "shutdown", "id": 1}',
        '{"type": "execute_cell", "id": 1, "notebook_id": "other", "cell_id": "c"}',
    ):
        async with ws_connect(
            ws_url(daemon, nb.id), additional_headers=cookie, origin=origin
        ) as ws:
            await ws.send(garbage)
            await drain_until_closed(ws)
    # Flood: thousands of messages at once close that socket, not the daemon.
    async with ws_connect(ws_url(daemon, nb.id), additional_headers=cookie, origin=origin) as ws:
        try:
            for _ in range(20_000):
                await ws.send('{"type": "ping", "id": 7}')
        except websockets.ConnectionClosed:
            pass
        await drain_until_closed(ws)
    await client.ping()  # the daemon is fine
    assert nb.cell_ids() == ["cell0"]
