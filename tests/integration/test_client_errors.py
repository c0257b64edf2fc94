"""Errors as a client sees them, through a real daemon on a real socket: rebuilt with their
structured attributes, typed replies, the handshake's refusal, and errors raised inside
``async with`` coming out as themselves."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import anyio
import pytest

from blobstore import BlobCorrupt, BlobError, shard_path
from protocol.errors import ProtocolError, VersionMismatch
from protocol.handshake import ClientHandshake
from protocol.messages import CellQueued, DaemonStatus, ExecuteCell, Ok, Ping, Pong, StatusReply
from runtimed.client import AsyncClient, Client
from runtimed.daemon.app import Daemon
from runtimed.documents.manifests import manifest_hashes
from runtimed.errors import (
    CellNotFound,
    ConnectionClosed,
    KernelStartFailed,
    NotebookNotFound,
    RuntimedError,
    RuntimeNotFound,
)

from .conftest import write_notebook
from .runtime_helpers import DEADLINE, KERNELS, code, ipykernel_argv, write_kernelspec

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def kernelspecs(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working kernelspec and one that dies on start, writing to stderr."""
    root = short_tmp / "jupyter"
    write_kernelspec(root, "rt-ok", ipykernel_argv())
    write_kernelspec(
        root, "boom", [sys.executable, str(KERNELS / "boom_kernel.py"), "-f", "{connection_file}"]
    )
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    return root


def kernelspec(name: str) -> dict[str, object]:
    return {"name": name, "display_name": name, "language": "python"}


# ---------------------------------------------------------------- structured attributes


async def test_a_restart_into_an_unknown_runtime_raises_runtime_not_found_with_its_lists(
    kernelspecs: Path, daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb = await client.open(write_notebook(short_tmp / "a.ipynb", [code("1 + 1")]))
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
    await nb.set_metadata("kernelspec", kernelspec("no-such-kernel"))
    await nb.save()  # returns once the daemon's document has the edit

    with pytest.raises(RuntimeNotFound) as caught:
        await nb.restart()

    err = caught.value
    assert type(err) is RuntimeNotFound
    assert err.name == "no-such-kernel"
    assert {"python3", "rt-ok", "boom"} <= set(err.available)
    assert "no runtime or kernelspec named 'no-such-kernel'" in str(err)
    assert err.remote_code == "runtime_not_found"
    await client.ping()  # the session stays open


async def test_a_restart_into_a_failing_kernelspec_raises_kernel_start_failed_with_its_stderr(
    kernelspecs: Path, daemon: Daemon, client: AsyncClient, short_tmp: Path
) -> None:
    nb = await client.open(write_notebook(short_tmp / "b.ipynb", [code("1 + 1")]))
    assert (await nb.execute("cell0", timeout=DEADLINE)).status == "ok"
    await nb.set_metadata("kernelspec", kernelspec("boom"))
    await nb.save()

    with pytest.raises(KernelStartFailed) as caught, anyio.fail_after(DEADLINE):
        await nb.restart()

    err = caught.value
    assert "boom: this kernel refuses to start" in err.stderr_tail
    assert "exited (code 3)" in err.reason
    assert "boom: this kernel refuses to start" not in err.reason
    assert str(err) == f"{err.reason}\n--- kernel stderr (tail) ---\n{err.stderr_tail}"
    await client.ping()


# ---------------------------------------------------------------- typed replies


async def test_a_reply_of_another_type_is_a_protocol_error_and_the_connection_goes_on(
    client: AsyncClient,
) -> None:
    mismatch = r"answered Ping \(id \d+\) with Pong; expected StatusReply"
    with pytest.raises(ProtocolError, match=mismatch):
        await client.request(lambda i: Ping(id=i), StatusReply)
    assert isinstance(await client.request(lambda i: Ping(id=i), Pong), Pong)
    status = await client.request(lambda i: DaemonStatus(id=i), StatusReply)
    assert status.pid > 0
    with pytest.raises(ProtocolError, match="expected Ok"):
        await client.request(lambda i: DaemonStatus(id=i), Ok)


# ---------------------------------------------------------------- the handshake


async def test_a_real_daemon_refuses_another_version_through_the_sans_io_client(
    daemon: Daemon,
) -> None:
    shake = ClientHandshake(version=2)

    async def handshake() -> None:
        async with await anyio.connect_unix(daemon.paths.socket) as stream:
            await stream.send(shake.hello)
            with anyio.fail_after(DEADLINE):
                while not shake.done:
                    shake.receive(await stream.receive())

    with pytest.raises(VersionMismatch) as caught:
        await handshake()
    assert not shake.done
    assert "protocol version 2 is not supported" in str(caught.value)
    assert "this daemon speaks version 1" in str(caught.value)


# ---------------------------------------------------------------- errors out of async with


async def test_an_error_inside_async_with_comes_out_as_itself(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "c.ipynb", [code("1")])

    async def queue_a_missing_cell() -> None:
        async with await AsyncClient.connect(daemon.paths.socket) as client:
            nb = await client.open(path)
            await nb.queue("no-such-cell")

    async def raise_in_the_body() -> None:
        async with await AsyncClient.connect(daemon.paths.socket):
            raise LookupError("the caller's own error")

    with pytest.raises(CellNotFound) as caught:
        await queue_a_missing_cell()
    assert type(caught.value) is CellNotFound  # not an ExceptionGroup around it
    with pytest.raises(LookupError, match="the caller's own"):
        await raise_in_the_body()

    # A cancelled body stays a cancellation (the scope catches it), not an error.
    with anyio.move_on_after(0.01) as scope:
        async with await AsyncClient.connect(daemon.paths.socket):
            await anyio.sleep_forever()
    assert scope.cancelled_caught


async def test_the_blocking_client_raises_the_error_itself(daemon: Daemon, short_tmp: Path) -> None:
    def use_blocking() -> None:
        with Client.connect(daemon.paths.socket) as client:
            client.open(short_tmp / "missing.ipynb")

    # The blocking client drives its own loop in a thread; keep this loop (the daemon's) free.
    with pytest.raises(NotebookNotFound) as caught:
        await anyio.to_thread.run_sync(use_blocking)
    assert type(caught.value) is NotebookNotFound


# ---------------------------------------------------------------- blobs read off the loop


async def test_outputs_with_blobs_are_read_in_a_worker_thread_and_verified(
    client: AsyncClient, short_tmp: Path
) -> None:
    big = "x" * 5000  # over the inline threshold: the stream goes to the blob store
    nb = await client.open(write_notebook(short_tmp / "d.ipynb", [code(f"print({big!r})")]))
    result = await nb.execute("cell0", timeout=DEADLINE)
    assert result.outputs == [{"output_type": "stream", "name": "stdout", "text": big + "\n"}]

    loop_thread = threading.get_ident()
    readers: list[int] = []
    original = client._read_blob

    def recording(blob_hash: str) -> bytes:
        readers.append(threading.get_ident())
        return original(blob_hash)

    client._read_blob = recording  # type: ignore[method-assign]
    assert await nb.read_outputs("cell0") == result.outputs
    assert readers
    assert loop_thread not in readers

    # What it reads is checked against the hash; a bad blob is a BlobError, not garbage.
    status = await client.status()
    [blob_hash] = {h for m in nb.runtime.cell_state("cell0")[1] for h in manifest_hashes(m)}
    blob = Path(status.blob_dir, *shard_path(blob_hash))
    assert blob.is_file()
    blob.chmod(0o600)
    blob.write_bytes(b"not the bytes of that hash")
    with pytest.raises(BlobCorrupt) as caught:
        await nb.read_outputs("cell0")
    assert isinstance(caught.value, BlobError)
    assert isinstance(caught.value, RuntimedError)


async def test_a_request_waiting_when_the_client_closes_ends_with_connection_closed(
    daemon: Daemon, short_tmp: Path
) -> None:
    path = write_notebook(short_tmp / "e.ipynb", [code("1")])
    outcome: list[BaseException] = []

    async def wait_for_a_reply(client: AsyncClient, nb_id: str) -> None:
        # Heads the daemon never gets: it waits (heads_timeout) before answering.
        unknown = ["ab" * 32]
        try:
            await client.request(
                lambda i: ExecuteCell(id=i, notebook_id=nb_id, cell_id="cell0", heads=unknown),
                CellQueued,
            )
        except ConnectionClosed as exc:
            outcome.append(exc)

    client = await AsyncClient.connect(daemon.paths.socket)
    async with anyio.create_task_group() as tg, client:
        nb = await client.open(path)
        tg.start_soon(wait_for_a_reply, client, nb.id)
        await anyio.wait_all_tasks_blocked()
    assert len(outcome) == 1
    assert "closed by this client" in str(outcome[0])
