"""The connection handshake, without I/O (in the manner of h11).

Both ends are plain objects fed bytes; they say what to send and what was decided. The I/O
shells (``runtimed.daemon.connection`` and ``runtimed.client.connection``) only move bytes.

Wire layout (all integers big-endian):

* Client hello, exactly :data:`CLIENT_HELLO_SIZE` (10) bytes: ``MAGIC`` (8 bytes) + protocol
  version (u16).
* Daemon hello: ``MAGIC`` + the daemon's protocol version (u16) + status (u8: 0 accepted,
  1 refused) + message length (u16) + UTF-8 message (empty when accepted). On refusal the
  daemon closes the connection.

There is no negotiation: a version other than the daemon's own, older or newer, is refused
with a message naming both versions and what to do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocol.errors import ProtocolError, VersionMismatch

__all__ = [
    "CLIENT_HELLO_SIZE",
    "MAGIC",
    "MAX_HELLO_MESSAGE",
    "PROTOCOL_VERSION",
    "ClientHandshake",
    "DaemonHello",
    "HelloVerdict",
    "answer_client_hello",
    "decode_client_hello",
    "decode_daemon_hello",
    "encode_client_hello",
    "encode_daemon_hello",
    "version_mismatch_message",
]

MAGIC = b"RUNTIMED"
PROTOCOL_VERSION = 1
MAX_HELLO_MESSAGE = 0xFFFF

_CLIENT_HELLO = struct.Struct(">8sH")
CLIENT_HELLO_SIZE = _CLIENT_HELLO.size
_DAEMON_HELLO_HEAD = struct.Struct(">8sHBH")
_ACCEPTED, _REFUSED = 0, 1


@dataclass(frozen=True, slots=True)
class DaemonHello:
    """The daemon's answer to a client hello."""

    version: int
    """The daemon's protocol version."""
    accepted: bool
    message: str
    """Why the connection was refused (empty when accepted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloVerdict:
    """What the daemon decided about a client hello: the bytes to send back, and whether the
    connection goes on (``accepted``) or is closed once ``reply`` is sent."""

    accepted: bool
    reply: bytes
    client_version: int | None
    """The version the client asked for (None when its hello was unreadable)."""
    message: str
    """Why the client was refused (empty when accepted), for the daemon's log."""


# ---------------------------------------------------------------- client hello


def encode_client_hello(version: int = PROTOCOL_VERSION) -> bytes:
    """The client's hello for protocol ``version``."""
    return _CLIENT_HELLO.pack(MAGIC, version)


def decode_client_hello(data: bytes) -> int:
    """Return the client's protocol version from exactly :data:`CLIENT_HELLO_SIZE` bytes.

    Raises:
        ProtocolError: wrong length or wrong magic (not a runtimed client).
    """
    if len(data) != CLIENT_HELLO_SIZE:
        raise ProtocolError(
            f"handshake: expected {CLIENT_HELLO_SIZE} bytes, got {len(data)} "
            "(connection closed early?)"
        )
    magic, version = _CLIENT_HELLO.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(
            f"handshake: bad magic {magic!r}; this socket speaks the runtimed protocol"
        )
    return int(version)


def version_mismatch_message(client_version: int, daemon_version: int = PROTOCOL_VERSION) -> str:
    """What the daemon tells a client speaking another protocol version."""
    return (
        f"protocol version {client_version} is not supported; this daemon speaks version "
        f"{daemon_version} (upgrade the client or restart the daemon)"
    )


def answer_client_hello(data: bytes, *, version: int = PROTOCOL_VERSION) -> HelloVerdict:
    """Decide on the bytes a client sent as its hello (all of them, or all that arrived
    before the daemon stopped waiting) and build the daemon's answer.

    Never raises for bad input: a short or foreign hello, or another version, is a refusal
    whose message names the problem.
    """
    try:
        client_version = decode_client_hello(data)
    except ProtocolError as exc:
        message = str(exc)
        reply = encode_daemon_hello(accepted=False, message=message, version=version)
        return HelloVerdict(accepted=False, reply=reply, client_version=None, message=message)
    if client_version != version:
        message = version_mismatch_message(client_version, version)
        reply = encode_daemon_hello(accepted=False, message=message, version=version)
        return HelloVerdict(
            accepted=False, reply=reply, client_version=client_version, message=message
        )
    reply = encode_daemon_hello(accepted=True, version=version)
    return HelloVerdict(accepted=True, reply=reply, client_version=client_version, message="")


# ---------------------------------------------------------------- daemon hello


def encode_daemon_hello(
    *, accepted: bool, message: str = "", version: int = PROTOCOL_VERSION
) -> bytes:
    """The daemon's hello; ``message`` (why it refuses) is cut to 65535 bytes of UTF-8."""
    text = message.encode("utf-8")[:MAX_HELLO_MESSAGE]
    # A cut may split a character: drop the partial one so the peer can decode the rest.
    text = text.decode("utf-8", errors="ignore").encode("utf-8")
    status = _ACCEPTED if accepted else _REFUSED
    return _DAEMON_HELLO_HEAD.pack(MAGIC, version, status, len(text)) + text


def decode_daemon_hello(buffer: bytes | bytearray) -> tuple[DaemonHello, int] | None:
    """Parse the daemon's hello from the start of ``buffer``.

    Returns ``(hello, bytes_consumed)``, or None when more bytes are needed.

    Raises:
        ProtocolError: wrong magic (as soon as a byte differs), a status byte that is neither
            0 nor 1, or a message that is not UTF-8.
    """
    head = _DAEMON_HELLO_HEAD.size
    if len(buffer) < head:
        if not MAGIC.startswith(bytes(buffer[: len(MAGIC)])):
            raise ProtocolError("handshake: the peer is not a runtimed daemon (bad magic)")
        return None
    magic, version, status, length = _DAEMON_HELLO_HEAD.unpack_from(buffer)
    if magic != MAGIC:
        raise ProtocolError("handshake: the peer is not a runtimed daemon (bad magic)")
    if status not in (_ACCEPTED, _REFUSED):
        raise ProtocolError(f"handshake: invalid status byte {status}")
    if len(buffer) < head + length:
        return None
    try:
        message = bytes(buffer[head : head + length]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("handshake: message is not UTF-8") from exc
    return DaemonHello(int(version), status == _ACCEPTED, message), head + length


class ClientHandshake:
    """The client's side: send :attr:`hello`, then :meth:`receive` what the daemon sends
    until it returns the accepted :class:`DaemonHello`.

    Bytes after the daemon's hello (the first frames) are kept in :attr:`leftover` for the
    frame decoder.
    """

    def __init__(self, *, version: int = PROTOCOL_VERSION) -> None:
        self.version = version
        self.hello = encode_client_hello(version)
        self.leftover = b""
        self._buffer = bytearray()
        self._done: DaemonHello | None = None

    @property
    def done(self) -> bool:
        return self._done is not None

    def receive(self, data: bytes) -> DaemonHello | None:
        """Feed bytes from the daemon; the daemon's hello once complete, else None.

        Raises:
            VersionMismatch: the daemon refused this client's protocol version (or refused
                it for another reason); the message is the daemon's.
            ProtocolError: the peer is not a runtimed daemon (or its hello is malformed).
        """
        if self._done is not None:
            raise ProtocolError("handshake: already complete")
        self._buffer += data
        parsed = decode_daemon_hello(self._buffer)
        if parsed is None:
            return None
        hello, used = parsed
        if not hello.accepted:
            refusal = hello.message or "no reason given"
            if hello.version != self.version:
                raise VersionMismatch(refusal)
            raise ProtocolError(f"handshake: the daemon refused the connection: {refusal}")
        if hello.version != self.version:
            # A daemon must refuse another version; one that accepts is broken or hostile.
            raise VersionMismatch(
                f"the daemon accepted protocol version {self.version} but speaks version "
                f"{hello.version}; restart the daemon"
            )
        self.leftover = bytes(self._buffer[used:])
        self._buffer.clear()
        self._done = hello
        return hello

    def closed_early(self) -> ProtocolError:
        """The error to raise when the daemon closed the connection before its hello was
        complete (it says how many bytes had arrived)."""
        return ProtocolError(
            "handshake: the daemon closed the connection "
            f"after {len(self._buffer)} of its hello's bytes"
        )
