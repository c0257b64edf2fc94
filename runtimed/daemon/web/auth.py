"""Who may use the web notebook: a token, the Host header, the Origin of WebSockets.

127.0.0.1 is reachable by every user of the machine, so, as Jupyter's server does, every
route needs a secret token: a random string kept in ``<home>/web-token`` (mode 0600, made on
first start, replaced by :meth:`TokenStore.rotate`). A link carries it once as
``?token=…``; the server answers with an HttpOnly, SameSite=Strict cookie and a redirect to
the same URL without it, so the token does not stay in the address bar or the history.

The Host header must name this machine by a loopback name (``localhost``, ``127.0.0.1``,
``[::1]``): a DNS-rebinding page whose host resolves to 127.0.0.1 still sends its own name.
A WebSocket (and a form POST) must also come from our own origin, since browsers attach the
cookie to cross-site WebSocket handshakes.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "LOOPBACK_HOSTS",
    "TokenStore",
    "cookie_name",
    "host_allowed",
    "origin_allowed",
]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
TOKEN_FILE = "web-token"


def cookie_name(port: int) -> str:
    """Cookies are per host, not per port: two daemons on one machine need two names."""
    return f"runtimed-token-{port}"


class TokenStore:
    """The web token, read from (or created in) ``<home>/web-token``."""

    def __init__(self, home: Path) -> None:
        self.path = home / TOKEN_FILE
        self._token = ""
        self._stamp: tuple[int, int] | None = None

    @property
    def token(self) -> str:
        """The current token. Reads the file only while none is known yet (outside a server:
        the CLI); a server keeps it fresh with :meth:`refresh` in a worker thread, so the
        request path never touches the file system."""
        if not self._token:
            self.refresh()
        return self._token

    def refresh(self) -> None:
        """Re-read the token if the file changed (``runt web rotate-token``). Blocking: a
        server calls it in a worker thread, about once a second."""
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if not self._token or stamp != self._stamp:
            self._token = self.load_or_create()
            st = self.path.stat()
            self._stamp = (st.st_mtime_ns, st.st_ino)

    def load_or_create(self) -> str:
        """The token in the file, or a new one written there (0600) if it is absent or empty."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            text = ""
        if text:
            # Someone loosened the file's mode: tighten it again (the token is a password).
            if self.path.stat().st_mode & 0o077:
                os.chmod(self.path, 0o600)
            return text
        return self._write(secrets.token_urlsafe(32))

    def rotate(self) -> str:
        """Replace the token: every link and cookie issued so far stops working (a running
        server notices within a second)."""
        self._token = self._write(secrets.token_urlsafe(32))
        return self._token

    def _write(self, token: str) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, token.encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._token = token
        return token

    def matches(self, candidate: str | None) -> bool:
        """Constant-time comparison (a timing side channel must not reveal the token)."""
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def host_allowed(headers: Mapping[str, str]) -> bool:
    """The request's Host names this machine by a loopback name (DNS-rebinding defence)."""
    host = headers.get("host")
    return host is not None and _hostname(host) in LOOPBACK_HOSTS


def origin_allowed(headers: Mapping[str, str]) -> bool:
    """The request comes from a page we served: its Origin is ``http://<our Host>``."""
    origin = headers.get("origin")
    host = headers.get("host")
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return (
        parts.scheme == "http"
        and parts.netloc.lower() == host.strip().lower()
        and _hostname(parts.netloc) in LOOPBACK_HOSTS
    )
