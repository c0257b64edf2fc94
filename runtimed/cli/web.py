"""``runt open [PATH]``: a notebook (or the list of notebooks) in the browser, and
``runt web rotate-token``: invalidate every web link and cookie handed out so far."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runtimed.errors import InvalidRequest

__all__ = ["COMMANDS", "add_parsers"]


def _described(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def add_parsers(sub: Any) -> None:
    """Add ``open`` and ``web`` to ``runt``'s subparsers."""
    op = sub.add_parser(
        "open",
        help="open a notebook in the browser (starts the daemon if needed)",
        description=_described("open a notebook in the browser (starts the daemon if needed)"),
    )
    op.add_argument("path", nargs="?", help=".ipynb to open (none: the list of notebooks)")
    op.add_argument(
        "--no-browser", action="store_true", help="only print the link (it carries the token)"
    )
    web = sub.add_parser(
        "web",
        help="the web notebook's access token",
        description=_described("the web notebook's access token"),
    )
    wsub = web.add_subparsers(dest="action", required=True)
    wsub.add_parser(
        "rotate-token",
        help="new token: every link and cookie so far stops working",
        description=_described("new token: every link and cookie so far stops working"),
    )


def _web(status: Any) -> tuple[int, Path]:
    if not status.http_port:
        raise InvalidRequest(
            "the daemon serves no web notebook (daemon.http_port is off in its configuration)"
        )
    return int(status.http_port), Path(status.home)


async def _open(args: argparse.Namespace) -> int:
    from runtimed.client.async_client import AsyncClient

    async with await AsyncClient.connect(autostart=True) as client:
        port, home = _web(await client.status())
        if args.path:
            nb = await client.open(args.path)
            url = nb.url
            assert url is not None
        else:
            token = (home / "web-token").read_text(encoding="ascii").strip()
            url = f"http://127.0.0.1:{port}/?token={token}"
    sys.stdout.write(url + "\n")
    if not args.no_browser:
        import webbrowser  # only when a browser is opened (shlex, subprocess, ...)

        webbrowser.open(url)
    return 0


async def _rotate(args: argparse.Namespace) -> int:
    from runtimed.client.async_client import AsyncClient
    from runtimed.daemon.web.auth import TokenStore

    async with await AsyncClient.connect() as client:
        _, home = _web(await client.status())
    TokenStore(home).rotate()
    sys.stderr.write("runt: web token rotated; old links and cookies no longer work\n")
    return 0


COMMANDS = {("open", None): _open, ("web", "rotate-token"): _rotate}
