"""Fuzz the wire for seconds (``bench/fuzz_daemon.py`` runs the same engine for minutes).

A real daemon (uvloop, its own thread) and a real client recorded through a proxy give the
corpus: real control requests and real Automerge sync messages. Each hypothesis example is
one session: a valid handshake, the notebook opened, then mutations of those frames (inside
valid envelopes so they reach Automerge, of the envelopes, of control requests, of a frame
header). After each session a well-behaved client pings, edits and reads back; the daemon
must still serve it, and its document must still save as a valid notebook.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_daemon import (
    MUTATIONS,
    Mutation,
    Witness,
    _bloom,
    capture_corpus,
    fuzz_frames,
    run_session,
)
from protocol.messages import OpenNotebook, encode
from runtimed.config import DaemonConfig, RuntimesConfig
from runtimed.daemon.app import Daemon
from runtimed.paths import RuntimedPaths

from .conftest import write_notebook

FRAMES_PER_SESSION = 30


@pytest.fixture
def fuzz_daemon(paths: RuntimedPaths) -> Iterator[Daemon]:
    """The daemon on its own uvloop thread: whatever stops it fails the test with its
    traceback at teardown."""
    instance = Daemon(
        paths,
        config=DaemonConfig(
            heads_timeout=2.0, http_port=None, runtimes=RuntimesConfig(pool_size=0)
        ),
    )
    with start_blocking_portal("asyncio", backend_options={"use_uvloop": True}) as portal:
        running, _ = portal.start_task(instance.run)
        try:
            yield instance
        finally:
            portal.call(instance.request_stop)
            running.result(timeout=30)


def _fuzz(daemon: Daemon, short_tmp: Path, mutations: tuple[Mutation, ...], examples: int) -> None:
    notebook = write_notebook(
        short_tmp / "fuzzed.ipynb",
        [{"cell_type": "code", "source": "x = 1"}, {"cell_type": "markdown", "source": "# t"}],
    )
    corpus = capture_corpus(daemon.paths.socket, notebook)
    witness = Witness(daemon.paths.socket, notebook)
    open_request = encode(OpenNotebook(id=1, path=str(notebook.resolve())))
    sent: list[int] = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same sessions every run: a CI failure reproduces
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.randoms(use_true_random=False))
    def session(rng: random.Random) -> None:
        frames = fuzz_frames(rng, corpus, witness.notebook_id, FRAMES_PER_SESSION, mutations)
        sent.append(run_session(daemon.paths.socket, open_request, frames))
        assert witness.check(), witness.errors

    try:
        session()
        witness.nb.save()
    finally:
        witness.close()
    assert sum(sent) > examples  # the sessions really sent frames
    saved = json.loads(notebook.read_text())
    nbformat.validate(nbformat.from_dict(saved))
    assert "witness" in [c["id"] for c in saved["cells"]]


def test_fuzzed_frames_never_stop_the_daemon(fuzz_daemon: Daemon, short_tmp: Path) -> None:
    _fuzz(fuzz_daemon, short_tmp, tuple(m for m in MUTATIONS if m is not _bloom), examples=60)


def test_fuzzed_bloom_filters_never_stop_the_daemon(fuzz_daemon: Daemon, short_tmp: Path) -> None:
    _fuzz(fuzz_daemon, short_tmp, MUTATIONS, examples=40)
