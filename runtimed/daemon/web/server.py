"""The web notebook's server: a Starlette app on uvicorn, inside the daemon's event loop.

Routes (docs/web.md): ``/`` home, ``/notebooks/{id}`` a notebook, ``/notebooks/{id}/ws`` its
WebSocket (sync.py), ``POST /open`` open a file by path, ``/blob/{sha256}`` an output blob,
``/frame`` the sandboxed host for HTML/SVG outputs, ``/static/*`` the built bundle,
``/healthz``. Every one of them goes through :class:`Guard` first (auth.py).

uvicorn is started with its signal handling disabled: the daemon owns SIGTERM/SIGINT and
stops the server as part of its own shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Scope
from starlette.websockets import WebSocket

from blobstore import BlobCorrupt, BlobError, BlobNotFound, BlobStore, InvalidBlobHash
from protocol.messages import ListNotebooks, NotebookList, NotebookOpened, OpenNotebook
from runtimed.daemon.web import pages
from runtimed.daemon.web.accept import HttpAcceptor, default_max_connections
from runtimed.daemon.web.auth import TokenStore
from runtimed.daemon.web.guard import COMMON_HEADERS, Guard
from runtimed.daemon.web.link import one_request
from runtimed.daemon.web.presence import PresenceRegistry
from runtimed.daemon.web.recent import read_records
from runtimed.daemon.web.sync import NotebookSocket
from runtimed.errors import RuntimedError

if TYPE_CHECKING:
    from runtimed.daemon.room import NotebookRoom

__all__ = ["STATIC_DIR", "WebServer"]

_BACKLOG = 128
PREVIEW_CELLS = 40  # cells of a notebook's page rendered by the server (first paint)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
FRAME_HTML = STATIC_DIR / "frame.html"

# The notebook page: its own scripts only (plus wasm compilation for Automerge), styles from
# /static plus CodeMirror's generated <style> elements (nonce), images from us and blob: URLs,
# connections to us only, frames only our /frame.
_PAGE_CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; "
    "style-src 'self' 'nonce-{nonce}'; img-src 'self' data: blob:; connect-src 'self'; "
    "frame-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# The output host: notebook HTML may run its scripts, in a sandboxed frame (opaque origin: no
# cookie, no access to the page) that may fetch nothing.
_FRAME_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; media-src data: blob:; "
    "frame-ancestors 'self'"
)
# A blob is data, never a page: no scripts, sandboxed, downloaded unless it is an image.
_BLOB_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
_INLINE_BLOB_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def _asset_version() -> str:
    digest = hashlib.sha256()
    for name in ("app.js", "editor.js", "app.css"):
        with contextlib.suppress(OSError):
            digest.update((STATIC_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the daemon owns SIGTERM/SIGINT) and without its
    listener: ``accept.HttpAcceptor`` accepts, with limits, into :attr:`protocol_factory`."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.protocol_factory: Callable[[], asyncio.Protocol] | None = None
        self.ready = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # What uvicorn's startup does for a server, minus create_server (lifespan is off).
        await self.lifespan.startup()
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        self.servers = []
        self.protocol_factory = create_protocol
        self.started = True
        self.ready.set()


class WebServer:
    """The web notebook on ``host:port`` for the daemon whose socket is ``socket``.

    Args:
        socket: the daemon's Unix socket (each page is bridged to a connection on it).
        home: the daemon's state directory (token file, persisted-notebook records).
        blobs: the blob store ``/blob/{sha256}`` serves.
        rooms: the loaded notebook with an id, if any. Read only, for two shortcuts: the
            first screen of a notebook's page is rendered here (painted before the
            bundle has loaded the document), and a page with an empty replica gets the
            saved document to load (much faster than syncing a long history change by
            change). Edits and execution always go through the page's own connection.
    """

    def __init__(
        self,
        *,
        socket: Path,
        home: Path,
        blobs: BlobStore,
        host: str = "127.0.0.1",
        port: int = 0,
        rooms: Callable[[str], NotebookRoom | None] | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.socket = socket
        self.rooms = rooms
        self.home = home
        self.blobs = blobs
        self.host = host
        self.port = port
        self.tokens = TokenStore(home)
        self.presence = PresenceRegistry()
        self.asset_version = ""  # read in run(): file work, off the event loop
        self.app = self._build_app()
        self.max_connections = max_connections or default_max_connections()
        self.acceptor: HttpAcceptor | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, serve until cancelled, then close every connection (bounded)."""
        await anyio.to_thread.run_sync(self.tokens.refresh)  # made on first start
        self.asset_version = await anyio.to_thread.run_sync(_asset_version)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(_BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",  # accept.py's header deadline reads h11's state
            ws="websockets-sansio",
            ws_max_size=64 * 1024 * 1024,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = _Server(config)
        done = anyio.Event()
        log.info("web notebook on http://%s:%d/", self.host, self.port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._serve, server, done)
            tg.start_soon(self._accept, server, sock)
            tg.start_soon(self._follow_token)
            tg.start_soon(self._follow_clients)
            task_status.started(self.port)
            try:
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(4):
                        await done.wait()
                    if not done.is_set():
                        server.force_exit = True
                        with anyio.move_on_after(2):
                            await done.wait()
                sock.close()

    async def _follow_token(self) -> None:
        """A rotated token (``runt web rotate-token`` rewrites the file) takes effect within a
        second; the file is read in a worker thread, never on a request's path."""
        while True:
            await anyio.sleep(1.0)
            try:
                await anyio.to_thread.run_sync(self.tokens.refresh)
            except OSError as exc:
                log.warning("could not re-read the web token %s: %s", self.tokens.path, exc)

    async def _follow_clients(self) -> None:
        """Socket clients (the Python client, ``runt``) on a notebook someone views are
        listed in its presence: the room's peers less the pages' own links. Read from memory
        once a second (the room has no join/leave callback for the web server)."""
        while True:
            await anyio.sleep(1.0)
            for notebook_id in self.presence.watched():
                room = self.rooms(notebook_id) if self.rooms else None
                if room is not None:
                    others = len(room.peers) - self.presence.browsers(notebook_id)
                    self.presence.set_clients(notebook_id, others)

    @staticmethod
    async def _serve(server: _Server, done: anyio.Event) -> None:
        # Shielded: it ends when run() sets should_exit, after closing its connections.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve()
            finally:
                done.set()

    async def _accept(self, server: _Server, sock: socket.socket) -> None:
        await server.ready.wait()
        assert server.protocol_factory is not None
        self.acceptor = HttpAcceptor(
            sock,
            protocol_factory=server.protocol_factory,
            connections=server.server_state.connections,
            max_connections=self.max_connections,
        )
        await self.acceptor.run()

    def url(self, path: str = "/", *, with_token: bool = True) -> str:
        base = f"http://{self.host}:{self.port}{path}"
        return f"{base}?token={self.tokens.token}" if with_token else base

    # ------------------------------------------------------------ app

    def _build_app(self) -> ASGIApp:
        app = Starlette(
            routes=[
                Route("/", self.home_page, methods=["GET", "HEAD"]),
                Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
                Route("/open", self.open_form, methods=["POST"]),
                Route("/notebooks/{notebook_id}", self.notebook_page, methods=["GET", "HEAD"]),
                WebSocketRoute("/notebooks/{notebook_id}/ws", self.notebook_socket),
                Route("/blob/{blob_hash:path}", self.blob, methods=["GET", "HEAD"]),
                Route("/frame", self.frame, methods=["GET", "HEAD"]),
                # check_dir=False: no stat on the event loop (the folder is package data).
                Mount("/static", app=_Static(directory=STATIC_DIR, check_dir=False), name="static"),
            ],
        )
        return Guard(app, tokens=self.tokens, port=lambda: self.port)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def home_page(self, request: Request, *, error: str | None = None) -> Response:
        try:
            listed = await one_request(self.socket, ListNotebooks(id=1))
            notebooks = listed.notebooks if isinstance(listed, NotebookList) else []
        except RuntimedError as exc:
            notebooks, error = [], error or f"cannot list notebooks: {exc}"
        recent = await anyio.to_thread.run_sync(read_records, self.home / "documents")
        viewers = {info.notebook_id: self.presence.viewers(info.notebook_id) for info in notebooks}
        html = pages.home_page(
            open_notebooks=notebooks,
            viewers=viewers,
            recent=recent,
            asset_version=self.asset_version,
            error=error,
        )
        return self._page(html, status=400 if error else 200)

    async def open_form(self, request: Request) -> Response:
        # A plain urlencoded form (no multipart parser needed); a path is short.
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > 64 * 1024:
                return PlainTextResponse("form too large\n", status_code=413)
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        path = form.get("path", "").strip()
        if not path:
            return await self.home_page(request, error="give the path of an .ipynb file")
        try:
            opened = await one_request(self.socket, OpenNotebook(id=1, path=path))
        except RuntimedError as exc:
            return await self.home_page(request, error=f"cannot open {path}: {exc}")
        assert isinstance(opened, NotebookOpened)
        return RedirectResponse(f"/notebooks/{opened.notebook_id}", status_code=303)

    async def notebook_page(self, request: Request) -> Response:
        notebook_id = request.path_params["notebook_id"]
        nonce = secrets.token_urlsafe(16)
        room = self.rooms(notebook_id) if self.rooms else None
        title, preview = "notebook", []
        if room is not None:
            title = Path(room.path).name if room.path else f"untitled {notebook_id[:8]}"
            try:
                doc = room.notebook
                first = [doc.cell(i) for i in doc.cell_ids()[:PREVIEW_CELLS]]
                preview = [(c.id, c.cell_type, c.source) for c in first]
            except Exception:  # a first paint is a nicety: the page renders from its replica
                log.exception("could not pre-render notebook %s", notebook_id)
        html = pages.notebook_shell(
            notebook_id=notebook_id,
            title=title,
            nonce=nonce,
            asset_version=self.asset_version,
            preview=preview[:PREVIEW_CELLS],
        )
        return self._page(html, nonce=nonce)

    async def notebook_socket(self, websocket: WebSocket) -> None:
        session = NotebookSocket(
            websocket,
            notebook_id=websocket.path_params["notebook_id"],
            socket=self.socket,
            documents=self.home / "documents",
            presence=self.presence,
            snapshot=self._snapshot if websocket.query_params.get("fresh") == "1" else None,
        )
        await session.run()

    def _snapshot(self, notebook_id: str) -> bytes | None:
        room = self.rooms(notebook_id) if self.rooms else None
        if room is None:
            return None
        try:
            return bytes(room.notebook.save())
        except Exception:  # the page then syncs the document the usual way
            log.exception("could not snapshot notebook %s", notebook_id)
            return None

    async def frame(self, request: Request) -> Response:
        html = await anyio.Path(FRAME_HTML).read_text()
        return HTMLResponse(
            html,
            headers={
                **COMMON_HEADERS,
                "content-security-policy": _FRAME_CSP,
                "cache-control": "no-cache",
            },
        )

    async def blob(self, request: Request) -> Response:
        blob_hash = request.path_params["blob_hash"]
        try:
            data = await self.blobs.get(blob_hash)
            media_type = await self.blobs.media_type(blob_hash)
        except InvalidBlobHash as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        except BlobNotFound:
            return PlainTextResponse(f"no blob {blob_hash}\n", status_code=404)
        except BlobCorrupt as exc:
            log.error("refusing to serve corrupt blob: %s", exc)
            return PlainTextResponse(
                f"blob {blob_hash} is corrupt on disk and was not served\n", status_code=500
            )
        except BlobError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=500)
        disposition = "inline" if media_type in _INLINE_BLOB_TYPES else "attachment"
        headers = {
            "cache-control": "public, max-age=31536000, immutable",
            "etag": f'"{blob_hash}"',
            "x-content-type-options": "nosniff",
            "content-security-policy": _BLOB_CSP,
            "content-disposition": f'{disposition}; filename="{blob_hash[:16]}"',
            "cross-origin-resource-policy": "same-origin",
        }
        if request.method == "HEAD":
            headers["content-length"] = str(len(data))
            return Response(b"", media_type=media_type, headers=headers)
        return Response(data, media_type=media_type, headers=headers)

    def _page(self, html: str, *, status: int = 200, nonce: str | None = None) -> Response:
        csp = _PAGE_CSP.format(nonce=nonce or secrets.token_urlsafe(16))
        return HTMLResponse(
            html,
            status_code=status,
            headers={
                **COMMON_HEADERS,
                "content-security-policy": csp,
                "cache-control": "no-store",
            },
        )


class _Static(StaticFiles):
    """The built bundle: revalidated (ETag) unless asked for by version, then cached."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        versioned = b"v=" in scope.get("query_string", b"")
        response.headers["cache-control"] = (
            "public, max-age=31536000, immutable" if versioned else "no-cache"
        )
        response.headers["x-content-type-options"] = "nosniff"
        return response
