"""The kernel's nanny: a small process between the daemon and one kernel, so kernels outlive
a daemon crash (issue 10 §3) and the next daemon can adopt them.

Why a process of its own. ZMQ IOPub is PUB/SUB: what a kernel publishes while no daemon is
subscribed is dropped, and a shell reply goes to the DEALER identity of the daemon that sent
the request, which died with it. Something outside the daemon must therefore be subscribed
the whole time and keep what it heard. The nanny is that, and nothing more:

* It is the kernel's parent. The daemon starts ``python -m runtimed.kernels.nanny`` in a new
  session (its pid is the process group id the records name); the nanny starts the kernel in
  that group with ``JPY_PARENT_PID`` set to its own pid, so ipykernel's parent poller keeps
  the kernel alive when the daemon dies and ends it if the nanny dies. SIGINT (the daemon's
  interrupt, sent to the group) is ignored here; the nanny exits when the kernel exits, with
  its status (re-raising the signal that killed it), so the daemon's process watcher sees the
  kernel's own exit.
* It journals IOPub: a SUB socket of its own, connected before the kernel starts, keeps every
  message (the signed frames as the kernel sent them) in a bounded in-memory journal
  (``JOURNAL_BYTES``, oldest dropped first). Memory, not a file: the journal is only useful
  while the kernel lives, and the kernel dies with the nanny. While no adopter is linked it
  takes IOPub in bursts (``_BATCH_WINDOW`` after a message), so a cell costs this process
  one wake-up rather than one per message.
* It forwards the kernel's console (stdout/stderr) to its own, the daemon's pipe; once that
  pipe is gone (the daemon died) to ``console.log`` in the kernel's 0700 directory, so the
  kernel never writes into a broken pipe.
* It bounds orphans. The daemon that started it holds its stdin (a pipe); an adopting daemon
  holds a connection to ``nanny.sock`` in the kernel's directory. With no daemon linked for
  ``--orphan-timeout`` seconds it SIGKILLs the process group (the kernel, what its cells
  started, and itself). A daemon that does not want it simply stops it as any kernel.

An adopting daemon connects to ``nanny.sock`` and receives, in order and without gaps, the
whole journal and then every new IOPub message, as records: ``b"M"`` + frames, and a last
``b"X"`` + the kernel's exit status. A record is ``kind(1) count(u32) (len(u32) bytes)*``.
The shell reply of a request the dead daemon sent is not recovered; the adopter infers the
outcome from IOPub (``execute_input``, ``error``, ``status: idle``), which ipykernel always
publishes (Jupyter messaging protocol: every execute_request is bracketed by busy/idle).

Only the standard library and pyzmq are imported: it starts in tens of milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence

__all__ = [
    "JOURNAL_BYTES",
    "SOCKET_NAME",
    "encode_record",
    "main",
    "nanny_argv",
    "parse_records",
]

SOCKET_NAME = "nanny.sock"
JOURNAL_BYTES = 32 * 1024 * 1024
_HEADER = struct.Struct("!cI")
_LEN = struct.Struct("!I")
_STATUS = struct.Struct("!i")
_DRAIN_MAX = 4096  # IOPub messages journaled per wake-up, at most
_BATCH_WINDOW = 0.02  # s the journal waits to take a burst of IOPub in one wake-up


def nanny_argv(
    kernel_argv: Sequence[str], *, directory: str, connection_file: str, orphan_timeout: float
) -> list[str]:
    """The command that runs ``kernel_argv`` under a nanny."""
    # -P: the kernel's cwd (the notebook's folder) does not shadow our imports; PYTHONPATH
    # is kept (a source checkout may rely on it).
    return [
        sys.executable,
        "-P",
        "-m",
        "runtimed.kernels.nanny",
        "--dir",
        directory,
        "--connection-file",
        connection_file,
        "--orphan-timeout",
        f"{orphan_timeout:g}",
        "--",
        *kernel_argv,
    ]


def encode_record(kind: bytes, frames: Iterable[bytes]) -> bytes:
    parts = list(frames)
    out = [_HEADER.pack(kind, len(parts))]
    for part in parts:
        out.append(_LEN.pack(len(part)))
        out.append(part)
    return b"".join(out)


def parse_records(buffer: bytearray) -> list[tuple[bytes, list[bytes]]]:
    """Complete records at the start of ``buffer`` (removed from it); the rest stays."""
    records: list[tuple[bytes, list[bytes]]] = []
    while True:
        if len(buffer) < _HEADER.size:
            return records
        kind, count = _HEADER.unpack_from(buffer)
        offset = _HEADER.size
        frames: list[bytes] = []
        for _ in range(count):
            if len(buffer) < offset + _LEN.size:
                return records
            (length,) = _LEN.unpack_from(buffer, offset)
            offset += _LEN.size
            if len(buffer) < offset + length:
                return records
            frames.append(bytes(buffer[offset : offset + length]))
            offset += length
        del buffer[:offset]
        records.append((kind, frames))


def exit_status(frames: list[bytes]) -> int | None:
    """The kernel's exit status from an ``X`` record (negative: killed by that signal)."""
    if len(frames) != 1 or len(frames[0]) != _STATUS.size:
        return None
    return int(_STATUS.unpack(frames[0])[0])


class _Nanny:
    def __init__(self, directory: str, orphan_timeout: float) -> None:
        self.directory = directory
        self.orphan_timeout = orphan_timeout
        self.lock = threading.Lock()
        self.journal: deque[bytes] = deque()
        self.journal_size = 0
        self.adopters: list[socket.socket] = []
        self.links = 1  # the starting daemon's stdin pipe
        self.unlinked_since: float | None = None
        self.changed = threading.Condition(self.lock)
        self.console_file: int | None = None

    # -- IOPub journal ------------------------------------------------------------------

    def journal_messages(self, messages: list[list[bytes]]) -> None:
        """Keep ``messages`` (as they arrived) and pass them to every adopter, in one go."""
        records = [encode_record(b"M", frames) for frames in messages]
        with self.lock:
            self.journal.extend(records)
            self.journal_size += sum(map(len, records))
            while self.journal_size > JOURNAL_BYTES and len(self.journal) > 1:
                self.journal_size -= len(self.journal.popleft())
            if self.adopters:
                self._send_all(b"".join(records))

    def _send_all(self, record: bytes) -> None:
        for conn in list(self.adopters):
            try:
                conn.sendall(record)
            except OSError:
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if conn in self.adopters:
            self.adopters.remove(conn)
            self._unlink()
        with contextlib.suppress(OSError):
            conn.close()

    def _unlink(self) -> None:
        self.links -= 1
        if self.links == 0:
            self.unlinked_since = time.monotonic()
        self.changed.notify_all()

    # -- links --------------------------------------------------------------------------

    def watch_stdin(self) -> None:
        # EOF on stdin: the daemon that started us is gone (or let go of us).
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        with self.lock:
            self._unlink()

    def serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with self.lock:
                try:
                    # The journal so far, then (same lock) every new message: no gap, no repeat.
                    conn.sendall(b"".join(self.journal))
                except OSError:
                    conn.close()
                    continue
                self.adopters.append(conn)
                self.links += 1
                self.unlinked_since = None
                self.changed.notify_all()
            threading.Thread(target=self._watch_adopter, args=(conn,), daemon=True).start()

    def _watch_adopter(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
        with self.lock:
            self._drop(conn)

    # -- console ------------------------------------------------------------------------

    def forward_console(self, stream: int) -> None:
        out = 1
        while True:
            try:
                chunk = os.read(stream, 65536)
            except OSError:
                return
            if not chunk:
                return
            if out == 1:
                try:
                    os.write(1, chunk)
                    continue
                except OSError:  # the daemon's pipe is gone: keep the rest in a file
                    path = os.path.join(self.directory, "console.log")
                    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                    out = os.open(path, flags, 0o600)
            with contextlib.suppress(OSError):
                os.write(out, chunk)


def _iopub_address(connection_file: str) -> tuple[str, bytes]:
    with open(connection_file, "rb") as f:
        info = json.load(f)
    transport, ip, port = info["transport"], info["ip"], info["iopub_port"]
    address = f"ipc://{ip}-{port}" if transport == "ipc" else f"tcp://{ip}:{port}"
    return address, str(info.get("key", "")).encode()


def _subscribe(address: str) -> object:
    import zmq

    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    # No receive high-water mark: what arrives while the journal waits for a burst
    # (_BATCH_WINDOW) is queued, not dropped; the journal itself is bounded by bytes.
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(address)
    return sub


def _journal_iopub(nanny: _Nanny, sub: object) -> None:
    import zmq

    assert isinstance(sub, zmq.Socket)
    # Block for one message, then take every one waiting without blocking. While no adopter
    # listens, wait _BATCH_WINDOW first: nobody reads the journal live, and each wake-up of
    # this process competes with the kernel and the daemon for a CPU (two on small machines;
    # one trivial cell is ~5 messages). With an adopter linked every message goes on at once.
    while True:
        try:
            batch = [sub.recv_multipart(copy=True)]
        except zmq.ZMQError:
            return
        if not nanny.adopters:
            time.sleep(_BATCH_WINDOW)
        closed = False
        while len(batch) < _DRAIN_MAX:
            try:
                batch.append(sub.recv_multipart(zmq.NOBLOCK, copy=True))
            except zmq.Again:
                break
            except zmq.ZMQError:
                closed = True
                break
        nanny.journal_messages(batch)
        if closed:
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runtimed.kernels.nanny", description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--connection-file", required=True)
    parser.add_argument("--orphan-timeout", type=float, default=60.0)
    parser.add_argument("kernel", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    kernel_argv = args.kernel[1:] if args.kernel[:1] == ["--"] else args.kernel
    nanny = _Nanny(args.dir, args.orphan_timeout)
    address, _key = _iopub_address(args.connection_file)
    # Subscribed before the kernel binds: zmq connects as soon as it can, nothing is missed.
    sub = _subscribe(address)
    path = os.path.join(args.dir, SOCKET_NAME)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(4)
    read_end, write_end = os.pipe()
    env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()))
    try:
        kernel = subprocess.Popen(
            kernel_argv, stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end, env=env
        )
    except OSError as exc:  # the daemon reports our exit with this console tail
        print(f"could not launch kernel ({kernel_argv!r}): {exc}", file=sys.stderr, flush=True)
        return 127
    os.close(write_end)
    # After the spawn (ignored signals are inherited): the group gets the daemon's SIGINT
    # (an interrupt) and SIGTERM (a stop) for the kernel; we go when it goes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_journal_iopub, args=(nanny, sub), daemon=True).start()
    threading.Thread(target=nanny.serve, args=(server,), daemon=True).start()
    console = threading.Thread(target=nanny.forward_console, args=(read_end,), daemon=True)
    console.start()
    threading.Thread(target=nanny.watch_stdin, daemon=True).start()
    threading.Thread(target=_wait_kernel, args=(nanny, kernel), daemon=True).start()
    with nanny.lock:
        while kernel.returncode is None:
            since = nanny.unlinked_since
            if since is not None and time.monotonic() - since >= nanny.orphan_timeout:
                # No daemon came back for it: the whole group goes (cells' children too).
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgid(0), signal.SIGKILL)
            left = None if since is None else since + nanny.orphan_timeout - time.monotonic()
            nanny.changed.wait(None if left is None else max(0.05, left))
        status = kernel.returncode
        nanny._send_all(encode_record(b"X", [_STATUS.pack(status)]))
    # Briefly: a process the kernel started may hold the console pipe open for ever.
    console.join(timeout=0.1)
    with contextlib.suppress(OSError):
        os.unlink(path)
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _wait_kernel(nanny: _Nanny, kernel: subprocess.Popen[bytes]) -> None:
    kernel.wait()
    with nanny.lock:
        nanny.changed.notify_all()


if __name__ == "__main__":
    sys.exit(main())
