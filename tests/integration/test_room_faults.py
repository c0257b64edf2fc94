"""A fault in one notebook's background work closes that notebook, never the daemon.

Each test injects a failure into the in-process daemon (persister, output flusher, a sync
message that makes the Automerge binding panic) and checks that the failed notebook's clients
are told, its kernel is stopped and its last good state persisted, while another notebook and
a new client are served on. The daemon runs on its own event-loop thread (uvloop, as in
production): if the fault escaped, the daemon would be gone and teardown re-raises its error.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from automerge.core import Message, SyncState

from blobstore import PinSet
from protocol.errors import ErrorCode
from protocol.framing import FrameDecoder, FrameKind
from protocol.messages import (
    DaemonEvent,
    ErrorReply,
    ExecutionStarted,
    NotebookFailed,
    NotebookOpened,
    OpenNotebook,
    Ping,
    Pong,
    SyncEnvelope,
    decode_daemon_message,
    encode,
)
from runtimed.client import AsyncClient, AsyncNotebook
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.daemon.handlers import runtimes as runtime_handlers
from runtimed.daemon.manifests import ManifestWriter
from runtimed.documents.boundary import is_panic
from runtimed.documents.notebook import NotebookDoc
from runtimed.errors import ConnectionClosed, NotebookNotFound
from runtimed.paths import RuntimedPaths
from runtimed.storage.documents import DocumentStore

from .conftest import write_notebook
from .test_daemon_bad_input import RawPeer

pytestmark = pytest.mark.anyio

TIMEOUT = 30
# A sync message whose bloom filter has 0 bits per entry: Automerge accepts it, and the next
# generate_sync_message panics ("remainder with a divisor of zero").
PANIC_SYNC = bytes.fromhex("42000001000301000700")


@dataclass
class Running:
    daemon: Daemon
    portal: BlockingPortal


@pytest.fixture
def running(paths: RuntimedPaths) -> Iterator[Running]:
    config = DaemonConfig(heads_timeout=5.0, http_port=None, runtimes=RuntimesConfig(pool_size=0))
    instance = Daemon(paths, config=config)
    with start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        task, _ = portal.start_task(instance.run)
        try:
            yield Running(instance, portal)
        finally:
            portal.call(instance.request_stop)
            task.result(timeout=60)  # re-raises whatever stopped the daemon


@pytest.fixture
async def client(running: Running) -> AsyncIterator[AsyncClient]:
    async with await AsyncClient.connect(running.daemon.paths.socket) as connected:
        yield connected


def two_notebooks(root: Path) -> tuple[Path, Path]:
    a = write_notebook(root / "a.ipynb", [{"cell_type": "code", "source": "a = 1"}])
    b = write_notebook(root / "b.ipynb", [{"cell_type": "code", "source": "1 + 1"}])
    return a, b


class EventWatch:
    """Every event a client receives from now on."""

    def __init__(self) -> None:
        self.events: list[DaemonEvent] = []
        self._arrived = anyio.Event()

    async def run(self, client: AsyncClient) -> None:
        async for event in client.events():
            self.events.append(event)
            self._arrived.set()
            self._arrived = anyio.Event()

    async def failed(self, notebook_id: str) -> NotebookFailed:
        with anyio.fail_after(TIMEOUT):
            while True:
                for event in self.events:
                    if isinstance(event, NotebookFailed) and event.notebook_id == notebook_id:
                        return event
                await self._arrived.wait()

    async def started(self) -> ExecutionStarted:
        with anyio.fail_after(TIMEOUT):
            while True:
                for event in self.events:
                    if isinstance(event, ExecutionStarted):
                        return event
                await self._arrived.wait()


async def serves_on(daemon: Daemon, other: AsyncNotebook, other_path: Path, tag: str) -> None:
    """The other notebook still syncs between two clients, and a new client is served."""
    async with await AsyncClient.connect(daemon.paths.socket) as fresh:
        await fresh.ping()
        nb = await fresh.open(other_path)
        await other.splice_source(other.cell_ids()[0], 0, 0, f"# {tag}\n")
        await fresh.wait_until(lambda: f"# {tag}" in nb.doc.source(nb.cell_ids()[0]), timeout=10)


def panic_exception() -> type[BaseException]:
    """pyo3's PanicException (a BaseException, not importable by name), from a real panic."""
    doc, state = NotebookDoc.new(metadata={}).doc, SyncState()
    doc.generate_sync_message(state)
    doc.receive_sync_message(state, Message.decode(PANIC_SYNC))
    with pytest.raises(BaseException) as raised:  # noqa: PT011 (the class is what we want)
        doc.generate_sync_message(state)
    assert is_panic(raised.value)
    return raised.type


@pytest.mark.parametrize("kind", ["RuntimeError", "PanicException"])
async def test_a_persister_failure_closes_only_that_notebook(
    running: Running,
    client: AsyncClient,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    fault = RuntimeError if kind == "RuntimeError" else panic_exception()
    path_a, path_b = two_notebooks(short_tmp)
    nb_a = await client.open(path_a)
    async with await AsyncClient.connect(running.daemon.paths.socket) as other:
        nb_b = await other.open(path_b)
        key_a = DocumentStore.key_for(path_a.resolve(), "")
        real_save = DocumentStore.save
        injected: list[str] = []

        def failing_save(self: DocumentStore, key: str, **parts: Any) -> None:
            if key == key_a and not injected:
                injected.append(key)
                raise fault("injected persist failure")
            real_save(self, key, **parts)

        monkeypatch.setattr(DocumentStore, "save", failing_save)
        watch = EventWatch()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, client)
            await anyio.wait_all_tasks_blocked()  # subscribed before the fault
            await nb_a.splice_source("cell0", 0, 0, "# the last edit\n")
            failed = await watch.failed(nb_a.id)
            tg.cancel_scope.cancel()
        assert injected == [key_a]
        assert failed.path == str(path_a.resolve())
        assert f"{kind}: injected persist failure" in failed.reason
        # The notebook is closed for its clients, and for the daemon.
        with pytest.raises(NotebookNotFound):
            await nb_a.save()
        assert nb_a.id not in [n.notebook_id for n in await client.list_notebooks()]
        await serves_on(running.daemon, nb_b, path_b, "after-persist-fault")
        # Its last good state was persisted: opening the file again finds the edit.
        async with await AsyncClient.connect(running.daemon.paths.socket) as again:
            reopened = await again.open(path_a)
            assert reopened.doc.source("cell0") == "# the last edit\na = 1"


async def test_an_output_flusher_failure_closes_only_that_notebook_and_stops_its_kernel(
    running: Running, client: AsyncClient, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path_a, path_b = two_notebooks(short_tmp)
    gate = short_tmp / "gate"
    nb_a = await client.open(path_a)
    await nb_a.set_source(
        "cell0",
        "import os, time\nprint('partial output', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n",
    )
    real_build_all = ManifestWriter.build_all

    async def failing_build_all(
        self: ManifestWriter,
        outputs: list[dict[str, Any]],
        *,
        final: bool = True,
        pins: PinSet | None = None,
    ) -> list[dict[str, Any]]:
        if not final:  # only the flusher builds manifests of a running cell
            raise RuntimeError("injected flusher failure")
        return await real_build_all(self, outputs, final=final, pins=pins)

    monkeypatch.setattr(ManifestWriter, "build_all", failing_build_all)
    async with await AsyncClient.connect(running.daemon.paths.socket) as other:
        nb_b = await other.open(path_b)
        watch = EventWatch()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch.run, client)
                await anyio.wait_all_tasks_blocked()
                await nb_a.queue("cell0")
                await watch.started()
                [info] = [n for n in await client.list_notebooks() if n.notebook_id == nb_a.id]
                failed = await watch.failed(nb_a.id)
                tg.cancel_scope.cancel()
        finally:
            gate.touch()  # whatever happened, let a kernel still running finish the cell
        assert "RuntimeError: injected flusher failure" in failed.reason
        # Its kernel was stopped before the clients were told.
        status = await client.status()
        assert status.kernels == []
        assert nb_a.id not in [n.notebook_id for n in status.notebooks]
        pid = info.kernel.pid if info.kernel else None
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        # The other notebook edits and runs code.
        await serves_on(running.daemon, nb_b, path_b, "after-flusher-fault")
        monkeypatch.undo()
        result = await nb_b.execute(nb_b.cell_ids()[0])
        assert result.ok
        assert nb_b.execution_count(nb_b.cell_ids()[0]) == 1


# ---------------------------------------------------------------- a sync message that panics


def daemon_heads(running: Running, notebook_id: str, doc: str) -> list[bytes]:
    def read() -> list[bytes]:
        entry = running.daemon.rooms.get(notebook_id)
        assert entry is not None
        target = entry.room.notebook.doc if doc == "notebook" else entry.room.runtime.doc
        return list(target.get_heads())

    return running.portal.call(read)


@pytest.mark.parametrize("doc", ["notebook", "runtime"])
async def test_a_sync_message_that_panics_is_refused_and_closes_only_that_connection(
    running: Running, client: AsyncClient, short_tmp: Path, doc: str
) -> None:
    path_a, path_b = two_notebooks(short_tmp)
    witness = await client.open(path_a)
    async with await anyio.connect_unix(running.daemon.paths.socket) as stream:
        raw = RawPeer(stream)
        assert (await raw.hello()).accepted
        assert await raw.request(Ping(id=1)) == Pong(id=1)
        await raw.send_control(OpenNotebook(id=2, path=str(path_a)))
        opened = await raw.next_control()
        assert isinstance(opened, NotebookOpened)
        assert opened.notebook_id == witness.id
        before = daemon_heads(running, witness.id, doc)
        envelope = SyncEnvelope(notebook_id=witness.id, doc=doc, data=PANIC_SYNC)  # type: ignore[arg-type]
        await raw.send_frame(FrameKind.SYNC, encode(envelope))
        rest = await raw.read_until_closed()
    # One clear error, then the daemon closed the connection.
    frames = raw.frames + FrameDecoder().feed(rest)
    replies = [decode_daemon_message(f.payload) for f in frames if f.kind is FrameKind.CONTROL]
    errors = [r for r in replies if isinstance(r, ErrorReply)]
    assert len(errors) == 1, replies
    assert errors[0].code == ErrorCode.DOCUMENT_ERROR
    assert "sync message" in errors[0].message
    assert "refused" in errors[0].message
    assert "panicked" in errors[0].message
    # The document is exactly as before, the witness keeps editing, others are served.
    assert daemon_heads(running, witness.id, doc) == before
    await serves_on(running.daemon, witness, path_a, f"after-panic-{doc}")
    async with await AsyncClient.connect(running.daemon.paths.socket) as other:
        nb_b = await other.open(path_b)
        await serves_on(running.daemon, nb_b, path_b, f"b-after-panic-{doc}")
    assert len(await client.list_notebooks()) == 2


async def test_a_panic_in_a_request_handler_closes_only_that_connection(
    running: Running, client: AsyncClient, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path_a, _ = two_notebooks(short_tmp)
    witness = await client.open(path_a)
    panic = panic_exception()

    def panicking_config_reply(*args: Any, **kwargs: Any) -> Any:
        raise panic("injected handler panic")

    monkeypatch.setattr(runtime_handlers, "config_reply", panicking_config_reply)
    async with await AsyncClient.connect(running.daemon.paths.socket) as victim:
        with pytest.raises(ConnectionClosed):
            await victim.get_config()
    monkeypatch.undo()
    await serves_on(running.daemon, witness, path_a, "after-handler-panic")
    assert (await client.get_config()).entries
