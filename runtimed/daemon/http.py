"""A small HTTP/1.1 endpoint on 127.0.0.1 for thin UIs: ``GET /blob/{sha256}``.

Parsing is h11's (no I/O inside it); this module only moves bytes. Blobs are immutable
(content-addressed), so responses carry ``Cache-Control: public, max-age=31536000,
immutable`` and the hash as ETag. Unknown hash → 404; malformed hash → 400; a blob whose
bytes no longer match its hash → 500 and it is not served.
"""

from __future__ import annotations

import logging

import anyio
import h11
from anyio.abc import SocketStream, TaskStatus

from blobstore import BlobCorrupt, BlobError, BlobNotFound, BlobStore, InvalidBlobHash

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT = 30.0

Response = tuple[int, list[tuple[bytes, bytes]], bytes]


def _plain(status: int, text: str) -> Response:
    return status, [(b"content-type", b"text/plain; charset=utf-8")], text.encode() + b"\n"


class HttpServer:
    """Serves blobs (and, later, the web UI) on a loopback TCP port."""

    def __init__(self, blobs: BlobStore, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.blobs = blobs
        self.host = host
        self.port = port

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        log.info("HTTP endpoint on http://%s:%d/", self.host, self.port)
        task_status.started(self.port)
        async with listener:
            await listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            async with stream:
                while True:
                    with anyio.move_on_after(REQUEST_TIMEOUT) as scope:
                        request = await self._next_request(conn, stream)
                    if scope.cancelled_caught or request is None:
                        return
                    status, headers, body = await self._respond(request)
                    is_head = request.method == b"HEAD"
                    headers = [*headers, (b"content-length", str(len(body)).encode())]
                    await stream.send(conn.send(h11.Response(status_code=status, headers=headers)))
                    if body and not is_head:
                        await stream.send(conn.send(h11.Data(data=body)))
                    await stream.send(conn.send(h11.EndOfMessage()))
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
        except (
            h11.RemoteProtocolError,
            anyio.BrokenResourceError,
            anyio.EndOfStream,
            ConnectionError,
        ) as exc:
            log.debug("http connection ended: %s", exc)

    async def _next_request(self, conn: h11.Connection, stream: SocketStream) -> h11.Request | None:
        request: h11.Request | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(65536)
                except anyio.EndOfStream:
                    data = b""
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(self, request: h11.Request) -> Response:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace").split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _plain(405, f"method {method} not allowed; use GET")
        if target.startswith("/blob/"):
            return await self._blob(target[len("/blob/") :])
        if target == "/healthz":
            return _plain(200, "ok")
        return _plain(404, f"no such resource: {target}")

    async def _blob(self, blob_hash: str) -> Response:
        try:
            data = await self.blobs.get(blob_hash)
            media_type = await self.blobs.media_type(blob_hash)
        except InvalidBlobHash as exc:
            return _plain(400, str(exc))
        except BlobNotFound:
            return _plain(404, f"no blob {blob_hash}")
        except BlobCorrupt as exc:
            log.error("refusing to serve corrupt blob: %s", exc)
            return _plain(500, f"blob {blob_hash} is corrupt on disk and was not served")
        except BlobError as exc:
            return _plain(500, str(exc))
        headers = [
            (b"content-type", media_type.encode("latin-1", "replace")),
            (b"cache-control", b"public, max-age=31536000, immutable"),
            (b"etag", f'"{blob_hash}"'.encode()),
            (b"x-content-type-options", b"nosniff"),
        ]
        return 200, headers, data
