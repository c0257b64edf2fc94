"""Fuzz the daemon's wire protocol while a well-behaved client keeps working.

Every fuzz session speaks a valid handshake, opens the notebook the witness has open, then
sends mutated frames: mutations of real frames recorded from a real client (a recording proxy
between the blocking ``Client`` and the daemon captures its control requests and its
Automerge sync messages), re-wrapped in valid sync envelopes so that the mutated bytes reach
Automerge, or mutated whole (envelope, msgpack, frame header). After each session the witness
pings, edits and reads back through its own connection; a daemon that stops is a crash (the
bench restarts it and counts; the test fails).

    python -m bench.fuzz_daemon --seconds 180 [--seed N]

prints frames sent, sessions, daemon crashes (with the last lines of its stderr) and the good
client's errors. ``tests/integration/test_fuzz_wire.py`` runs the same engine for seconds under
hypothesis.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import wait_listening
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, FrameKind, encode_frame
from protocol.handshake import CLIENT_HELLO_SIZE, decode_daemon_hello, encode_client_hello
from protocol.messages import (
    DocKind,
    ErrorReply,
    NotebookOpened,
    OpenNotebook,
    Ping,
    Pong,
    SyncEnvelope,
    decode_daemon_message,
    decode_sync,
    encode,
)

ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "Corpus",
    "Witness",
    "capture_corpus",
    "fuzz_frames",
    "mutate",
    "run_session",
]

INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x42, 0x43)
BIG_ULEBS = (b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x01", b"\x00", b"\x7f")


# ---------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    """Real frames a real client sent: control payloads and sync messages by document."""

    control: list[bytes] = field(default_factory=list)
    sync: list[tuple[DocKind, bytes]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    """Whole frames (header included) as they crossed the socket."""


class _RecordingProxy:
    """A Unix-socket proxy that records what its one client sends to the daemon."""

    def __init__(self, listen: Path, daemon: Path) -> None:
        self.listen, self.daemon = listen, daemon
        self.sent = bytearray()
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(listen))
        self._server.listen(1)
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        client, _ = self._server.accept()
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(str(self.daemon))
        for src, dst, record in ((client, upstream, True), (upstream, client, False)):
            thread = threading.Thread(target=self._pump, args=(src, dst, record), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                if record:
                    self.sent += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=5)


def capture_corpus(daemon_socket: Path, notebook: Path, *, execute: bool = False) -> Corpus:
    """Drive a real blocking client through a recording proxy; return what it sent."""
    from runtimed.client import Client

    work = Path(tempfile.mkdtemp(prefix="rtf-", dir="/tmp"))
    proxy = _RecordingProxy(work / "p.sock", daemon_socket)
    try:
        with Client.connect(work / "p.sock") as client:
            client.ping()
            nb = client.open(notebook)
            first = nb.cell_ids()[0]
            nb.splice_source(first, 0, 0, "# fuzz é😀\n")
            new = nb.add_cell("markdown", "*written* by the corpus client")
            nb.set_cell_metadata(new, "tags", ["a", "b"])
            nb.move_cell(new, 0)
            nb.set_cell_metadata(first, "fuzz", {"n": 1, "list": [1.5, None, True]})
            if execute:
                nb.execute(first)
            nb.save()
            nb.delete_cell(new)
            nb.save()
            client.list_notebooks()
            client.status()
    finally:
        proxy.close()
        shutil.rmtree(work, ignore_errors=True)
    corpus = Corpus()
    stream = bytes(proxy.sent[CLIENT_HELLO_SIZE:])
    offset = 0
    for frame in FrameDecoder().feed(stream):
        size = 5 + len(frame.payload)
        corpus.frames.append(stream[offset : offset + size])
        offset += size
        if frame.kind is FrameKind.CONTROL:
            corpus.control.append(frame.payload)
        else:
            envelope = decode_sync(frame.payload)
            corpus.sync.append((envelope.doc, envelope.data))
    if not corpus.sync or not corpus.control:
        raise RuntimeError("the corpus client sent no sync or control frames")
    return corpus


# ---------------------------------------------------------------- mutations


def _flip(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    if data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _interesting(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice(INTERESTING)


def _insert(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    at = rng.randrange(len(data) + 1)
    data[at:at] = rng.randbytes(rng.randint(1, 16))


def _delete(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    if data:
        at = rng.randrange(len(data))
        del data[at : at + rng.randint(1, 16)]


def _truncate(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    if data:
        del data[rng.randrange(len(data)) :]


def _duplicate(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    if data:
        at = rng.randrange(len(data))
        chunk = data[at : at + rng.randint(1, 64)]
        where = rng.randrange(len(data) + 1)
        data[where:where] = chunk


def _uleb(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    at = rng.randrange(len(data) + 1)
    value = rng.choice(BIG_ULEBS)
    data[at : at + len(value)] = value


def _splice(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    other = rng.choice(corpus.sync)[1] if corpus.sync else b""
    if data and other:
        at, cut = rng.randrange(len(data)), rng.randrange(len(other))
        data[at:] = other[cut:]


def _uleb_at(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise IndexError(pos)
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _bloom(rng: random.Random, data: bytearray, corpus: Corpus) -> None:
    """Structure-aware: give the message one ``have`` whose bloom filter has odd parameters
    (entries, bits per entry, probes: small values, zero included) -- the Automerge sync
    layout: type, heads, need, haves (last_sync hashes + length-prefixed bloom), changes."""
    try:
        if not data or data[0] not in (0x42, 0x43):
            return
        pos = 1
        for _ in range(2):  # heads, need
            count, pos = _uleb_at(data, pos)
            pos += 32 * count
        _, after = _uleb_at(data, pos)
        for _ in range(_uleb_at(data, pos)[0]):
            count, after = _uleb_at(data, after)
            after += 32 * count
            size, after = _uleb_at(data, after)
            after += size
    except IndexError:
        return
    params = bytes(rng.choice((0, 1, 2, 7, 10, 127)) for _ in range(3))
    bits = rng.randbytes(rng.choice((0, 1, 4)))
    bloom = params + bits
    have = b"\x00" + bytes([len(bloom)]) + bloom  # no last_sync hashes, then the filter
    data[pos:after] = b"\x01" + have


MUTATIONS: tuple[Callable[[random.Random, bytearray, Corpus], None], ...] = (
    _flip,
    _interesting,
    _insert,
    _delete,
    _truncate,
    _duplicate,
    _uleb,
    _splice,
    _bloom,
)


Mutation = Callable[[random.Random, bytearray, Corpus], None]


def mutate(
    rng: random.Random, data: bytes, corpus: Corpus, mutations: tuple[Mutation, ...] = MUTATIONS
) -> bytes:
    """One to four random mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        rng.choice(mutations)(rng, out, corpus)
    return bytes(out)


def fuzz_frames(
    rng: random.Random,
    corpus: Corpus,
    notebook_id: str,
    count: int,
    mutations: tuple[Mutation, ...] = MUTATIONS,
) -> list[bytes]:
    """``count`` frames, each a mutation of a real one, at the envelope's Automerge data, the
    msgpack envelope or a control request; sometimes a last frame with a mutated header
    (last: a broken length prefix ends the session, and what followed would be lost)."""
    frames = []
    for _ in range(count):
        layer = rng.random()
        if layer < 0.6:  # the Automerge sync message inside a valid envelope
            doc, data = rng.choice(corpus.sync)
            if rng.random() < 0.3:
                doc = "runtime" if doc == "notebook" else "notebook"
            envelope = SyncEnvelope(
                notebook_id=notebook_id, doc=doc, data=mutate(rng, data, corpus, mutations)
            )
            frames.append(encode_frame(FrameKind.SYNC, encode(envelope)))
        elif layer < 0.75:  # the msgpack envelope
            doc, data = rng.choice(corpus.sync)
            payload = encode(SyncEnvelope(notebook_id=notebook_id, doc=doc, data=data))
            frames.append(encode_frame(FrameKind.SYNC, mutate(rng, payload, corpus, mutations)))
        else:  # a control request
            payload = mutate(rng, rng.choice(corpus.control), corpus, mutations)
            frames.append(encode_frame(FrameKind.CONTROL, payload))
    if rng.random() < 0.25:  # the frame header too (may close the connection: its right)
        frames.append(mutate(rng, rng.choice(corpus.frames), corpus, mutations))
    return frames


# ---------------------------------------------------------------- one session


def _read_hello(sock: socket.socket) -> bytes:
    buffer = b""
    while True:
        parsed = decode_daemon_hello(buffer)
        if parsed is not None:
            reply, used = parsed
            if not reply.accepted:
                raise ConnectionError(f"refused: {reply.message}")
            return buffer[used:]
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        buffer += chunk


def run_session(
    socket_path: Path,
    open_request: bytes,
    frames: list[bytes],
    *,
    timeout: float = 5.0,
    replies: collections.Counter[str] | None = None,
) -> int:
    """Handshake, open the notebook, send ``frames`` (reading whatever comes back); returns
    how many frames were sent before the daemon closed the connection (its right)."""
    sent = 0
    tally = _Tally(replies)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(encode_client_hello())
        _read_hello(sock)
        sock.sendall(encode_frame(FrameKind.CONTROL, open_request))
        # Sync frames count only once the notebook is open on this connection.
        if not _await_reply(sock, timeout, lambda m: isinstance(m, NotebookOpened)):
            raise ConnectionError("the notebook did not open")
        sock.setblocking(False)
        for frame in frames:
            try:
                _drain(sock, tally)
                _send_all(sock, frame, timeout, tally)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        # A ping last: the daemon flushes pending sync messages before a control frame, so
        # once the pong is in, it has generated its answer to every message above.
        with contextlib.suppress(OSError):
            _send_all(sock, encode_frame(FrameKind.CONTROL, encode(Ping(id=_LAST_PING))), timeout)
            # A mutated length prefix may leave the daemon waiting for the rest of a frame
            # (the ping then completes it): do not wait long for that pong.
            _await_pong(sock, min(timeout, 0.5), tally)
    return sent


_LAST_PING = 2**31


def _await_pong(sock: socket.socket, timeout: float, tally: _Tally) -> None:
    _await_reply(sock, timeout, lambda m: isinstance(m, Pong) and m.id == _LAST_PING, tally)


def _await_reply(
    sock: socket.socket,
    timeout: float,
    wanted: Callable[[object], bool],
    tally: _Tally | None = None,
) -> bool:
    """Read (blocking, within ``timeout``) until a control message ``wanted`` arrives."""
    decoder = FrameDecoder()
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    with contextlib.suppress(ProtocolError, TimeoutError):
        while time.monotonic() < deadline:
            data = sock.recv(1 << 16)
            if not data:
                return False
            if tally is not None:
                tally.feed(data)
            for frame in decoder.feed(data):
                if frame.kind is FrameKind.CONTROL:
                    with contextlib.suppress(ProtocolError):
                        if wanted(decode_daemon_message(frame.payload)):
                            return True
    return False


class _Tally:
    """What the daemon answered during a session, by error code (for the bench's figures)."""

    def __init__(self, replies: collections.Counter[str] | None) -> None:
        self.replies = replies
        self.decoder = FrameDecoder()

    def feed(self, data: bytes) -> None:
        if self.replies is None:
            return
        try:
            frames = self.decoder.feed(data)
        except ProtocolError:
            self.replies = None  # cannot happen with a sane daemon; stop counting
            return
        for frame in frames:
            if frame.kind is FrameKind.SYNC:
                self.replies["sync frame from the daemon"] += 1
                continue
            try:
                message = decode_daemon_message(frame.payload)
            except ProtocolError:
                self.replies["undecodable daemon message"] += 1
                continue
            if isinstance(message, ErrorReply):
                self.replies[f"error {message.code}: {_gist(message.message)}"] += 1
            else:
                self.replies[type(message).__name__] += 1


def _gist(message: str) -> str:
    return re.sub(r"'[^']*'|\d+", "…", message)[:60]


_NO_TALLY = _Tally(None)


def _drain(sock: socket.socket, tally: _Tally = _NO_TALLY) -> None:
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            raise BrokenPipeError("closed by the daemon")
        tally.feed(data)


def _send_all(sock: socket.socket, data: bytes, timeout: float, tally: _Tally = _NO_TALLY) -> None:
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise BrokenPipeError("the daemon stopped reading") from None
            _drain(sock, tally)
            time.sleep(0.001)


# ---------------------------------------------------------------- the witness


class Witness:
    """A well-behaved client on the fuzzed notebook: pings, edits and reads back."""

    def __init__(self, socket_path: Path, notebook: Path) -> None:
        from runtimed.client import Client

        self.client = Client.connect(socket_path)
        self.nb = self.client.open(notebook)
        self.cell = "witness"
        if self.cell not in self.nb.cell_ids():  # a restarted daemon still has it
            self.nb.add_cell("code", "", cell_id=self.cell)
        self.rounds = 0
        self.errors: list[str] = []

    @property
    def notebook_id(self) -> str:
        return str(self.nb.id)

    def check(self) -> bool:
        """One round; False (and the error recorded) when the daemon failed the witness."""
        self.rounds += 1
        try:
            self.client.ping()
            text = f"round = {self.rounds}"
            self.nb.set_source(self.cell, text)
            if self.rounds % 10 == 0:
                self.nb.save()
            if self.nb.cell(self.cell).source != text:
                raise AssertionError(f"the witness read back {self.nb.cell(self.cell).source!r}")
        except Exception as exc:
            self.errors.append(f"round {self.rounds}: {type(exc).__name__}: {exc}")
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


# ---------------------------------------------------------------- the bench


@contextlib.contextmanager
def _daemon(work: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    run = work / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    sock = run / "rt.sock"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        RUNTIMED_CONFIG=str(work / "no-config.toml"),
        RUNTIMED_POOL_SIZE="0",
        RUNTIMED_HTTP_PORT="-1",
        RUST_BACKTRACE="0",
    )
    log = (work / "daemon.stderr").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtimed.daemon.main",
            "--socket",
            str(sock),
            "--home",
            str(work / "home"),
            "--log-level",
            "WARNING",
            "--log-file",
            str(work / "daemon.log"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_listening(sock, proc, timeout=30)
        yield sock, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _write_notebook(path: Path) -> Path:
    import json

    cells = [
        {
            "id": "c0",
            "cell_type": "code",
            "source": "x = 1\n",
            "metadata": {},
            "outputs": [],
            "execution_count": None,
        },
        {"id": "m0", "cell_type": "markdown", "source": "# fuzzed", "metadata": {}},
    ]
    path.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "cells": cells,
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
            }
        )
    )
    return path


def _crash_signature(work: Path) -> str:
    """Where the last crash in the daemon's stderr was raised, and what it was."""
    lines = (work / "daemon.stderr").read_text(errors="replace").splitlines()
    where = ""
    for line in reversed(lines):
        text = line.strip(" |+-")
        if not where and re.match(r"\w+(\.\w+)*(Error|Exception)\b", text):
            where = text
        elif where and text.startswith("File ") and "/runtimed/" in text:
            return f"{where} (at {text.split('/runtimed/')[-1]})"
    return where or "no traceback on stderr"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames-per-session", type=int, default=40)
    parser.add_argument(
        "--no-bloom",
        action="store_true",
        help="leave out the bloom-filter mutation (to look past that known crash class)",
    )
    args = parser.parse_args(argv)
    mutations = tuple(m for m in MUTATIONS if not (args.no_bloom and m is _bloom))
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rtfz-", dir="/tmp"))
    notebook = _write_notebook(work / "fuzzed.ipynb")
    frames_sent = sessions = crashes = 0
    signatures: collections.Counter[str] = collections.Counter()
    witness_errors: list[str] = []
    witness_rounds = 0
    replies: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.seconds:
            with _daemon(work) as (sock, proc):
                corpus = capture_corpus(sock, notebook)
                witness = Witness(sock, notebook)
                open_request = encode(OpenNotebook(id=1, path=str(notebook.resolve())))
                try:
                    while time.monotonic() - started < args.seconds:
                        frames = fuzz_frames(
                            rng, corpus, witness.notebook_id, args.frames_per_session, mutations
                        )
                        with contextlib.suppress(OSError):  # refused or reset: see below
                            frames_sent += run_session(sock, open_request, frames, replies=replies)
                        sessions += 1
                        if witness.check() and proc.poll() is None:
                            continue
                        # The witness failed: a crash if the daemon is exiting, else an error
                        # of the daemon's that a good client saw (then reconnect it).
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            proc.wait(timeout=20)
                        if proc.poll() is not None:
                            crashes += 1
                            witness.errors.clear()  # they are the crash's, counted there
                            signatures[_crash_signature(work)] += 1
                            break
                        witness.close()
                        witness_errors += witness.errors
                        witness_rounds += witness.rounds
                        witness = Witness(sock, notebook)
                finally:
                    witness_rounds += witness.rounds
                    witness_errors += witness.errors
                    witness.close()
    finally:
        elapsed = time.monotonic() - started
        print(
            f"fuzz_daemon: {elapsed:.0f} s, seed {args.seed}, "
            f"mutations: {', '.join(m.__name__.strip('_') for m in mutations)}"
        )
        print(f"  frames sent          {frames_sent} ({frames_sent / elapsed:.0f}/s)")
        print(f"  fuzz sessions        {sessions}")
        print(f"  daemon crashes       {crashes}")
        for signature, count in signatures.most_common():
            print(f"    {count:>4} x {signature}")
        print("  daemon answers to the fuzz (most common):")
        for what, count in replies.most_common(12):
            print(f"    {count:>8}  {what}")
        print(f"  witness rounds       {witness_rounds}")
        print(f"  witness errors       {len(witness_errors)}")
        for error in witness_errors[:5]:
            print(f"    - {error}")
        shutil.rmtree(work, ignore_errors=True)
    return 1 if crashes or witness_errors else 0


if __name__ == "__main__":
    sys.exit(main())
