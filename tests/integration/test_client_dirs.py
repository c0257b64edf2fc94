"""The client refuses a socket or state directory it does not safely own (issue 10 §5): a
symlink, a directory of another user, or one that others can write. Nothing is connected to,
nothing is started, and ``runt`` says why in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtimed.client import AsyncClient
from runtimed.daemon.app import Daemon
from runtimed.paths import UnsafeDirectory

from .runtime_helpers import runt

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def open_dir(short_tmp: Path) -> Path:
    directory = short_tmp / "open"
    directory.mkdir(mode=0o700)
    directory.chmod(0o777)
    return directory


async def test_a_world_writable_socket_directory_is_refused(
    daemon: Daemon, short_tmp: Path
) -> None:
    # A daemon really listens there: another user could have swapped it in.
    socket_dir = daemon.paths.socket.parent
    socket_dir.chmod(0o777)
    try:
        with pytest.raises(UnsafeDirectory, match=r"mode 0777 lets other users write"):
            await AsyncClient.connect(daemon.paths.socket)
    finally:
        socket_dir.chmod(0o700)
    async with await AsyncClient.connect(daemon.paths.socket) as client:  # ours again: fine
        await client.ping()


async def test_a_symlinked_socket_directory_is_refused(daemon: Daemon, short_tmp: Path) -> None:
    link = short_tmp / "link"
    link.symlink_to(daemon.paths.socket.parent)
    with pytest.raises(UnsafeDirectory, match="it is a symlink"):
        await AsyncClient.connect(link / daemon.paths.socket.name)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory of another user")
async def test_a_socket_directory_of_another_user_is_refused(short_tmp: Path) -> None:
    other = short_tmp / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    with pytest.raises(UnsafeDirectory, match=r"owned by .*uid 65534.*not by you"):
        await AsyncClient.connect(other / "rt.sock", autostart=True)
    assert list(other.iterdir()) == []  # no daemon was started there


async def test_an_unsafe_state_directory_for_autostart_is_refused(short_tmp: Path) -> None:
    home = open_dir(short_tmp)
    with pytest.raises(UnsafeDirectory, match="refusing the state directory"):
        await AsyncClient.connect(short_tmp / "run" / "rt.sock", autostart=True, home=home)
    assert not (short_tmp / "run").exists()  # nothing was started


async def test_runt_says_why_in_one_line(short_tmp: Path) -> None:
    socket_dir = open_dir(short_tmp)
    code, _out, err = await runt(socket_dir / "rt.sock", "daemon", "status", check=False)
    assert code == 2
    assert err.startswith("runt: refusing the socket directory")
    assert "chmod 700" in err
    assert "Traceback" not in err
