"""The web server's auth helpers, without a server: Host/Origin rules and the token file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from runtimed.daemon.web.auth import TokenStore, host_allowed, origin_allowed


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8888", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:8080", "LOCALHOST"],
)
def test_loopback_hosts_are_allowed(host: str) -> None:
    assert host_allowed({"host": host})


@pytest.mark.parametrize(
    "host",
    ["", "evil.example", "127.0.0.1.evil.example", "localhost.evil", "10.0.0.1:80", "[::2]:1"],
)
def test_other_hosts_are_refused(host: str) -> None:
    assert not host_allowed({"host": host})


def test_a_missing_host_is_refused() -> None:
    assert not host_allowed({})


def test_origin_must_be_our_own_page() -> None:
    host = {"host": "127.0.0.1:5000"}
    assert origin_allowed({**host, "origin": "http://127.0.0.1:5000"})
    for origin in (
        "http://127.0.0.1:5001",
        "https://127.0.0.1:5000",
        "http://evil.example",
        "null",
        "",
    ):
        assert not origin_allowed({**host, "origin": origin}), origin
    assert not origin_allowed(host)
    # Our own origin under a name that is not loopback is still refused.
    assert not origin_allowed({"host": "evil.example", "origin": "http://evil.example"})


def test_the_token_is_made_once_0600_and_kept(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.token
    assert len(token) >= 40
    assert stat.S_IMODE((tmp_path / "web-token").stat().st_mode) == 0o600
    assert TokenStore(tmp_path).token == token  # a restarted daemon keeps its links working
    assert store.matches(token)
    assert not store.matches(token + "x")
    assert not store.matches("")
    assert not store.matches(None)


def test_rotation_replaces_the_token(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    old = store.token
    new = TokenStore(tmp_path).rotate()
    assert new != old
    reader = TokenStore(tmp_path)
    assert reader.matches(new)
    assert not reader.matches(old)


def test_a_loosened_token_file_is_tightened(tmp_path: Path) -> None:
    TokenStore(tmp_path).rotate()
    (tmp_path / "web-token").chmod(0o644)
    TokenStore(tmp_path).token  # noqa: B018
    assert stat.S_IMODE((tmp_path / "web-token").stat().st_mode) == 0o600
