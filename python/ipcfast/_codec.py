"""Wire protocol v1 in pure Python, without I/O (docs/protocol.md).

The same codec as the C core's (``csrc/ipc.h``, "codec" section), function
for function, with the same verdicts decided by the same rules in the same
order, so both paths can be checked against ``tests/vectors/protocol_v1.json``
and against each other:

* :func:`encode_handshake_request` / :func:`check_handshake_request`: the
  client's 9 handshake bytes, and the server's verdict on the bytes
  received so far;
* :func:`encode_handshake_reply` / :func:`check_handshake_reply`: the
  server's 9 reply bytes, and the client's verdict on them;
* :func:`encode_header` / :func:`parse_header`: a packet header (5 bytes,
  or 6 with the extended form);
* :class:`PacketDecoder`: an incremental decoder. Feed it bytes split
  anywhere; it hands out whole packets in order and stops at the first bad
  header with that header's verdict;
* :func:`encode_command` / :func:`decode_command`,
  :func:`encode_console_write` / :func:`decode_console_write`,
  :func:`encode_exit` / :func:`decode_exit`: the server-node payloads
  (docs/protocol.md section 10), like ``ipc_command_encode`` & co. A
  malformed payload raises :class:`MalformedPayload`;
* :class:`ServerConnection` / :class:`ClientConnection`: the protocol's
  state machines (AWAIT_HANDSHAKE -> READY -> CLOSED), h11-style: bytes in,
  events out, bytes to send. The pure backend wraps them in sockets.

Nothing here reads, writes, sleeps or logs.
"""

from __future__ import annotations

import collections
import enum
import struct
from typing import Deque, List, NamedTuple, Optional, Tuple, Union

from ._errors import Result

__all__ = [
    "NEED_DATA",
    "ClientConnection",
    "ConnectionState",
    "HandshakeDone",
    "HandshakeRejected",
    "ProtocolFailure",
    "Refuse",
    "RemoteFailure",
    "Request",
    "Response",
    "ServerConnection",
    "DEFAULT_HANDSHAKE",
    "DEFAULT_MAX_MESSAGE",
    "FOREIGN_REPLY",
    "HANDSHAKE_MESSAGE_SIZE",
    "HANDSHAKE_REPLY_XOR",
    "HANDSHAKE_SIZE",
    "MAX_HEADER_SIZE",
    "PROTOCOL_VERSION",
    "TOO_LARGE_PREFIX",
    "PROTOCOL_ERROR_PREFIX",
    "TYPE_EXTENDED",
    "TYPE_MASK",
    "TYPE_RESERVED",
    "Command",
    "ExitType",
    "Header",
    "MalformedPayload",
    "NodeSignal",
    "Packet",
    "PacketDecoder",
    "PacketType",
    "Verdict",
    "check_handshake_reply",
    "check_handshake_request",
    "decode_command",
    "decode_console_write",
    "decode_cancel",
    "decode_exit",
    "encode_command",
    "encode_console_write",
    "encode_cancel",
    "encode_exit",
    "ShmSetup",
    "decode_shm_setup",
    "encode_shm_setup",
    "shm_region_size",
    "encode_handshake_reply",
    "encode_handshake_request",
    "encode_header",
    "parse_header",
]

BytesLike = Union[bytes, bytearray, memoryview]

#: Highest packet version this codec speaks.
PROTOCOL_VERSION = 1
#: Size of the handshake value; its first byte is always 0x00.
HANDSHAKE_SIZE = 8
#: What travels in each direction during the handshake: value + version byte.
HANDSHAKE_MESSAGE_SIZE = HANDSHAKE_SIZE + 1
#: The server's reply is the value XOR this, byte by byte.
HANDSHAKE_REPLY_XOR = 0x5A
#: The single byte a server sends to a client whose first byte is not 0x00.
FOREIGN_REPLY = 0xFF
#: Type byte + version byte + 4-byte length.
MAX_HEADER_SIZE = 6
#: Default largest payload, both sides (64 MiB).
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: The handshake value for ``key=None`` (``IPC_DEFAULT_HANDSHAKE``).
DEFAULT_HANDSHAKE = bytes.fromhex("00f783ca2a317e38")

TYPE_MASK = 0x3F
TYPE_EXTENDED = 0x40
TYPE_RESERVED = 0x80

#: ERROR payloads starting with these 20 bytes mean "refused as too large"
#: (sent by the transport, not by a failing handler).
TOO_LARGE_PREFIX = b"ipcfast: too large: "
#: Starts the ERROR a server sends just before it closes for a protocol error (docs/protocol.md 6.2).
PROTOCOL_ERROR_PREFIX = b"ipcfast: protocol error: "
_PROTOCOL_ERROR = PROTOCOL_ERROR_PREFIX.decode()
#: A server sends at most this much of a handler's failure text (docs/protocol.md 5).
MAX_ERROR_TEXT = 64 * 1024

_MAX_UINT32 = 0xFFFFFFFF
_U32 = struct.Struct("<I")


class PacketType(enum.IntEnum):
    """Bits 0-5 of the type byte."""

    REQUEST = 1
    RESPONSE = 2
    ERROR = 3
    COMMAND = 4
    CONSOLE_WRITE = 5
    EXIT = 6
    CANCEL = 7
    #: Version 2 only (docs/protocol.md 11): the shared-memory data path.
    #: This codec parses them; the pure backend never offers or accepts it
    #: (it speaks version 1, so a conforming peer never sends them to it).
    SHM_SETUP = 8
    SHM_ACCEPT = 9
    SHM_DECLINE = 10


_LAST_TYPE = int(PacketType.SHM_DECLINE)
_LAST_V1_TYPE = int(PacketType.CANCEL)
#: The first packet version with the shared-memory packets.
SHM_PROTOCOL_VERSION = 2


class Verdict(enum.IntEnum):
    """The verdicts of the C enum ``ipc_verdict`` (same numbers; the names
    without the ``IPC_VERDICT_`` prefix)."""

    OK = 0
    NEED_MORE = 1  #: not enough bytes yet; nothing is wrong
    FOREIGN = 2  #: a handshake that does not start as expected
    MISMATCH = 3  #: a handshake value that differs
    RESERVED_BIT = 4  #: bit 7 of the type byte is set
    UNKNOWN_TYPE = 5  #: type 0 or above CANCEL
    BAD_VERSION = 6  #: packet/handshake version 0 or above the allowed one
    TOO_LARGE = 7  #: payload length above max_message

    @property
    def c_name(self) -> str:
        """The C name, e.g. ``"IPC_VERDICT_TOO_LARGE"`` (``ipc_verdict_name()``)."""
        return "IPC_VERDICT_" + self.name


class Header(NamedTuple):
    """A packet header, as ``ipc_packet_header``.

    ``version`` is 0 for the short form. Like the C parser, fields that a
    verdict was decided before are left 0 (only OK and TOO_LARGE headers
    are complete).
    """

    type: int
    version: int
    length: int
    header_size: int


class Packet(NamedTuple):
    """One decoded packet: its type, version (0: short header) and payload."""

    type: int
    version: int
    payload: bytes


_EMPTY_HEADER = Header(0, 0, 0, 0)


def _check_value(value: BytesLike, what: str) -> bytes:
    value = bytes(value)
    if len(value) != HANDSHAKE_SIZE:
        raise ValueError(f"{what} must be {HANDSHAKE_SIZE} bytes, got {len(value)}")
    return value


def _check_version(version: int, what: str = "version") -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= 255:
        raise ValueError(f"{what} must be an int in 0..255, got {version!r}")
    return version


# ---- handshake ----------------------------------------------------------------


def encode_handshake_request(value: BytesLike, version: int = PROTOCOL_VERSION) -> bytes:
    """The client's 9 handshake bytes: the 8-byte value, then its version."""
    return _check_value(value, "value") + bytes([_check_version(version)])


def encode_handshake_reply(client_value: BytesLike, version: int = PROTOCOL_VERSION) -> bytes:
    """The server's 9 reply bytes: ``client_value`` XOR 0x5A, then its version."""
    value = _check_value(client_value, "client_value")
    return bytes(b ^ HANDSHAKE_REPLY_XOR for b in value) + bytes([_check_version(version)])


def _check_against(data: bytes, expected: bytes) -> Tuple[Verdict, Optional[int]]:
    """Shared tail of both checks: compare what arrived, then the version byte."""
    compare = min(len(data), HANDSHAKE_SIZE)
    if data[:compare] != expected[:compare]:
        return Verdict.MISMATCH, None
    if len(data) < HANDSHAKE_MESSAGE_SIZE:
        return Verdict.NEED_MORE, None
    version = data[HANDSHAKE_SIZE]
    if version == 0:
        return Verdict.BAD_VERSION, None
    return Verdict.OK, version


def check_handshake_request(data: BytesLike, expected: BytesLike) -> Tuple[Verdict, Optional[int]]:
    """Server side: the verdict on the client's handshake bytes received so far.

    Returns ``(verdict, client_version)``; the version is set only for OK.
    FOREIGN is decided from the first byte alone (anything but 0x00). Bytes
    after the 9th are not looked at.
    """
    data = bytes(data[:HANDSHAKE_MESSAGE_SIZE])
    expected = _check_value(expected, "expected")
    if not data:
        return Verdict.NEED_MORE, None
    if data[0] != 0x00:
        return Verdict.FOREIGN, None
    return _check_against(data, expected)


def check_handshake_reply(data: BytesLike, client_value: BytesLike) -> Tuple[Verdict, Optional[int]]:
    """Client side: the verdict on the server's reply bytes received so far.

    Returns ``(verdict, server_version)``; the version is set only for OK.
    A first byte of 0xFF is FOREIGN (the server took us for a foreign client).
    """
    data = bytes(data[:HANDSHAKE_MESSAGE_SIZE])
    value = _check_value(client_value, "client_value")
    if not data:
        return Verdict.NEED_MORE, None
    if data[0] == FOREIGN_REPLY:
        return Verdict.FOREIGN, None
    return _check_against(data, bytes(b ^ HANDSHAKE_REPLY_XOR for b in value))


# ---- packet headers -------------------------------------------------------------


def encode_header(type: int, length: int, version: int = 0) -> bytes:
    """A packet header: the short form for ``version`` 0, else the extended one.

    As in C, only bits 0-5 of ``type`` are used.
    """
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= _MAX_UINT32:
        raise ValueError(f"length must be an int in 0..{_MAX_UINT32}, got {length!r}")
    _check_version(version)
    if version:
        return bytes([(type & TYPE_MASK) | TYPE_EXTENDED, version]) + _U32.pack(length)
    return bytes([type & TYPE_MASK]) + _U32.pack(length)


def parse_header(data: BytesLike, max_message: int, max_version: int) -> Tuple[Verdict, Header]:
    """Parse a packet header from the bytes received so far.

    The checks, in order (docs/protocol.md 4.4): no byte yet: NEED_MORE;
    bit 7 set: RESERVED_BIT; type 0, above 10, or 8..10 (the shared-memory
    packets) while ``max_version`` is 1: UNKNOWN_TYPE; extended with
    one byte: NEED_MORE; extended version 0 or above ``max_version``:
    BAD_VERSION; short of the header size: NEED_MORE; length above
    ``max_message``: TOO_LARGE (the header holds the length); else OK.
    Bytes after the header are not looked at.
    """
    size = len(data)
    if size == 0:
        return Verdict.NEED_MORE, _EMPTY_HEADER
    first = data[0]
    if first & TYPE_RESERVED:
        return Verdict.RESERVED_BIT, _EMPTY_HEADER
    type_ = first & TYPE_MASK
    if type_ < 1 or type_ > _LAST_TYPE or (type_ > _LAST_V1_TYPE and max_version < SHM_PROTOCOL_VERSION):
        return Verdict.UNKNOWN_TYPE, _EMPTY_HEADER
    version = 0
    at = 1
    if first & TYPE_EXTENDED:
        if size < 2:
            return Verdict.NEED_MORE, Header(type_, 0, 0, 0)
        version = data[1]
        if version == 0 or version > max_version:
            return Verdict.BAD_VERSION, Header(type_, 0, 0, 0)
        at = 2
    header_size = at + 4
    if size < header_size:
        return Verdict.NEED_MORE, Header(type_, version, 0, header_size)
    (length,) = _U32.unpack_from(data, at)
    header = Header(type_, version, length, header_size)
    if length > max_message:
        return Verdict.TOO_LARGE, header
    return Verdict.OK, header


# ---- incremental decoding ---------------------------------------------------------


class PacketDecoder:
    """Splits a byte stream into packets, whatever pieces it arrives in.

    ::

        decoder = PacketDecoder(max_message=4096, max_version=1)
        for chunk in chunks:
            for packet in decoder.feed(chunk):
                ...
            if decoder.error is not None:
                ...  # decoder.verdict says why; decoder.header is the bad header

    ``max_version`` is the negotiated version (extended headers must carry
    1..max_version). A header whose length is above ``max_message`` stops
    decoding with TOO_LARGE as soon as the header is complete: no room is
    made for its payload. After a bad header the decoder keeps its verdict
    and ignores further input.
    """

    __slots__ = ("_buf", "_header", "error", "error_header", "max_message", "max_version")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE, max_version: int = PROTOCOL_VERSION) -> None:
        self.max_message = max_message
        self.max_version = max_version
        self._buf = bytearray()
        #: The header of the packet being assembled (its payload is incomplete).
        self._header: Optional[Header] = None
        #: The verdict of the bad header that stopped decoding, or None.
        self.error: Optional[Verdict] = None
        #: That header as far as it was parsed (for TOO_LARGE: its length).
        self.error_header: Optional[Header] = None

    @property
    def verdict(self) -> Verdict:
        """Where the stream stands: OK at a packet boundary, NEED_MORE inside
        a packet, or the verdict of the bad header that stopped decoding."""
        if self.error is not None:
            return self.error
        return Verdict.NEED_MORE if self._buf else Verdict.OK

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as a packet."""
        return len(self._buf)

    @property
    def needed(self) -> int:
        """At least how many more bytes the current packet needs (0 at a
        boundary or after an error): readers can size their next read."""
        if self.error is not None:
            return 0
        header = self._header
        if header is not None:
            return header.header_size + header.length - len(self._buf)
        if not self._buf:
            return 0
        _, partial = parse_header(bytes(self._buf[:MAX_HEADER_SIZE]), self.max_message, self.max_version)
        size = partial.header_size or (MAX_HEADER_SIZE if self._buf[0] & TYPE_EXTENDED else 5)
        return max(size - len(self._buf), 1)

    def peek(self, size: int) -> bytes:
        """The first ``size`` buffered bytes, left in place (e.g. the first
        byte of a bad header, for an error message)."""
        return bytes(self._buf[:size])

    def take_buffered(self) -> bytes:
        """Remove and return the bytes not handed out yet (e.g. after a
        handshake, or for another decoder)."""
        data = bytes(self._buf)
        self._buf.clear()
        self._header = None
        return data

    def feed(self, data: BytesLike) -> List[Packet]:
        """Add received bytes; return the packets they complete, in order."""
        if self.error is not None:
            return []
        buf = self._buf
        buf += data
        packets: List[Packet] = []
        while buf:
            header = self._header
            if header is None:
                verdict, header = parse_header(bytes(buf[:MAX_HEADER_SIZE]), self.max_message, self.max_version)
                if verdict == Verdict.NEED_MORE:
                    break
                if verdict != Verdict.OK:
                    self.error = verdict
                    self.error_header = header
                    break
                self._header = header
            end = header.header_size + header.length
            if len(buf) < end:
                break
            with memoryview(buf) as view:
                payload = bytes(view[header.header_size : end])
            del buf[:end]
            self._header = None
            packets.append(Packet(header.type, header.version, payload))
        return packets


# ---- server-node payloads (docs/protocol.md section 10) ---------------------

#: Bits of Command.flags: which of the client's streams are terminals.
COMMAND_STDIN_TTY = 0x1
COMMAND_STDOUT_TTY = 0x2
COMMAND_STDERR_TTY = 0x4
#: Command.flags: the client's stdin, stdout and stderr travel with the COMMAND
#: packet as descriptors (SCM_RIGHTS, attached to its first byte).
COMMAND_FDS = 0x8
#: Command.flags: bits 16-27 hold the client's umask.
COMMAND_UMASK = 0x10
COMMAND_UMASK_SHIFT = 16
#: CONSOLE_WRITE stream numbers.
STDOUT = 1
STDERR = 2
EXIT_PAYLOAD_SIZE = 5


class ExitType(enum.IntEnum):
    """How a command ended (EXIT packet); ``ipc_exit_type`` in C."""

    COMPLETED = 0  #: ran to its end; the exit code is its status
    CANCELLED = 1  #: stopped by CANCEL, or its client vanished
    CRASHED = 2  #: the command, or the server running it, failed
    BUSY = 3  #: not run: the node runs another command
    STALE = 4  #: not run: the node's code changed on disk; it is exiting
    REFUSED = 5  #: not run: the node cannot run it (the reason went to stderr)
    KILLED = 6  #: the command died of a signal; the exit code is the signal number


class NodeSignal(enum.IntEnum):
    """CANCEL's payload (docs/protocol.md 10.5): the signal a node client got,
    by its traditional POSIX number on every platform; ``ipc_node_signal``
    in C. An empty CANCEL is INTERRUPT."""

    HANGUP = 1  #: SIGHUP: the client's terminal went away
    INTERRUPT = 2  #: SIGINT: Ctrl-C
    QUIT = 3  #: SIGQUIT: Ctrl-backslash
    TERMINATE = 15  #: SIGTERM: kill, timeout, a CI runner
    WINDOW_CHANGED = 28  #: SIGWINCH: the client's terminal was resized


class MalformedPayload(ValueError):
    """A node payload that does not follow docs/protocol.md section 10."""


class Command(NamedTuple):
    """A decoded COMMAND: what a node client asks its server to run."""

    argv: List[bytes]
    cwd: bytes
    env: List[bytes]  #: b"NAME=value" entries
    locale: bytes  #: the client's LC_CTYPE locale name, may be empty
    flags: int = 0  #: COMMAND_*_TTY bits, COMMAND_FDS, COMMAND_UMASK and the umask


def _check_string(value: bytes, what: str) -> bytes:
    value = bytes(value)
    if b"\0" in value:
        raise ValueError(f"{what} contains a NUL byte, which a command cannot carry")
    return value


def encode_command(command: Command) -> bytes:
    """The COMMAND payload for ``command`` (the C ``ipc_command_encode``)."""
    if not command.argv:
        raise ValueError("a command needs at least one argv entry")
    if not 0 <= command.flags <= 0xFFFFFFFF:
        raise ValueError("flags must fit in 32 bits")
    parts = [struct.pack("<II", command.flags, len(command.argv))]

    def put(value: bytes, what: str) -> None:
        data = _check_string(value, what)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)

    for i, arg in enumerate(command.argv):
        put(arg, f"argv[{i}]")
    put(command.cwd, "cwd")
    parts.append(struct.pack("<I", len(command.env)))
    for i, entry in enumerate(command.env):
        put(entry, f"env[{i}]")
    put(command.locale, "locale")
    payload = b"".join(parts)
    if len(payload) > 0xFFFFFFFF:
        raise ValueError("the command does not fit in 4 GiB")
    return payload


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.at

    def u32(self, what: str) -> int:
        if self.left < 4:
            raise MalformedPayload(f"malformed COMMAND: it ends inside {what}")
        (value,) = struct.unpack_from("<I", self.data, self.at)
        self.at += 4
        return int(value)

    def string(self, what: str) -> bytes:
        length = self.u32(what)
        if length > self.left:
            raise MalformedPayload(f"malformed COMMAND: {what} is {length} bytes but only {self.left} remain")
        value = self.data[self.at : self.at + length]
        if b"\0" in value:
            raise MalformedPayload(f"malformed COMMAND: {what} contains a NUL byte")
        self.at += length
        return value

    def strings(self, what: str) -> List[bytes]:
        count = self.u32(what)
        if count > self.left // 4:
            raise MalformedPayload(f"malformed COMMAND: {count} {what} entries cannot fit in {self.left} bytes")
        return [self.string(what) for _ in range(count)]


def decode_command(payload: BytesLike) -> Command:
    """Decodes a COMMAND payload; raises :class:`MalformedPayload` exactly
    where the C ``ipc_command_decode`` fails."""
    r = _Reader(bytes(payload))
    flags = r.u32("flags")
    argv = r.strings("argv")
    cwd = r.string("cwd")
    env = r.strings("env")
    locale = r.string("locale")
    if r.left:
        raise MalformedPayload(f"malformed COMMAND: {r.left} bytes after the last field")
    if not argv:
        raise MalformedPayload("malformed COMMAND: argv is empty")
    return Command(argv, cwd, env, locale, flags)


def encode_console_write(stream: int, text: BytesLike) -> bytes:
    """The CONSOLE_WRITE payload: the stream number (1 stdout, 2 stderr), then the bytes."""
    if stream not in (STDOUT, STDERR):
        raise ValueError(f"stream must be 1 (stdout) or 2 (stderr), not {stream}")
    return bytes((stream,)) + bytes(text)


def decode_console_write(payload: BytesLike) -> Tuple[int, bytes]:
    """(stream, text) of a CONSOLE_WRITE payload."""
    data = bytes(payload)
    if not data:
        raise MalformedPayload("malformed CONSOLE_WRITE: empty payload")
    if data[0] not in (STDOUT, STDERR):
        raise MalformedPayload(f"malformed CONSOLE_WRITE: stream {data[0]}")
    return data[0], data[1:]


def encode_exit(exit_code: int, exit_type: int) -> bytes:
    """The EXIT payload: int32 exit code (two's complement), exit type byte."""
    if not -(2**31) <= exit_code < 2**31:
        raise ValueError(f"exit code {exit_code} does not fit in 32 bits")
    if not 0 <= exit_type <= 255:
        raise ValueError(f"exit type {exit_type} does not fit in a byte")
    return struct.pack("<iB", exit_code, exit_type)


def encode_cancel(signal: NodeSignal = NodeSignal.INTERRUPT) -> bytes:
    """The CANCEL payload: empty for Ctrl-C (what every version sends), else
    the signal's byte."""
    return b"" if signal == NodeSignal.INTERRUPT else bytes([int(signal)])


def decode_cancel(payload: BytesLike) -> NodeSignal:
    """The signal a CANCEL names (INTERRUPT when it is empty)."""
    data = bytes(payload)
    if not data:
        return NodeSignal.INTERRUPT
    if len(data) != 1:
        raise MalformedPayload(f"malformed CANCEL: {len(data)} bytes instead of 0 or 1")
    try:
        return NodeSignal(data[0])
    except ValueError:
        raise MalformedPayload(f"CANCEL with an unknown signal {data[0]}") from None


def decode_exit(payload: BytesLike) -> Tuple[int, int]:
    """(exit_code, exit_type) of an EXIT payload. Unknown exit types are
    returned as they are (treat them as crashed)."""
    data = bytes(payload)
    if len(data) != EXIT_PAYLOAD_SIZE:
        raise MalformedPayload(f"malformed EXIT: {len(data)} bytes instead of {EXIT_PAYLOAD_SIZE}")
    code, kind = struct.unpack("<iB", data)
    return int(code), int(kind)


# ---- the shared-memory setup (docs/protocol.md 11.2) ---------------------------

SHM_SETUP_SIZE = 16
SHM_LAYOUT = 1
SHM_HEADER_SIZE = 192
SHM_MIN_SLOT = 64
SHM_MAX_SLOT = 64 * 1024 * 1024


class ShmSetup(NamedTuple):
    """A SHM_SETUP payload: the region a client offers."""

    layout: int
    region_size: int
    slot_size: int
    flags: int


def shm_region_size(slot_size: int) -> int:
    """The exact region size for a slot size; 0 if the slot size is out of range."""
    if not SHM_MIN_SLOT <= slot_size <= SHM_MAX_SLOT:
        return 0
    return SHM_HEADER_SIZE + 2 * slot_size


def encode_shm_setup(setup: ShmSetup) -> bytes:
    """The 16-byte SHM_SETUP payload."""
    return struct.pack("<IIII", setup.layout, setup.region_size, setup.slot_size, setup.flags)


def decode_shm_setup(payload: BytesLike) -> ShmSetup:
    """Checks a SHM_SETUP payload as a server must before it maps anything;
    raises :class:`MalformedPayload` (a protocol error: close) otherwise.
    The pure backend never gets one (it speaks version 1); this decoder is
    the reference the vectors check the C core against."""
    data = bytes(payload)
    if len(data) != SHM_SETUP_SIZE:
        raise MalformedPayload(f"a SHM_SETUP payload has {len(data)} bytes, not {SHM_SETUP_SIZE}")
    setup = ShmSetup(*struct.unpack("<IIII", data))
    if setup.layout != SHM_LAYOUT:
        raise MalformedPayload(f"unknown shared-memory layout {setup.layout}")
    if setup.flags != 0:
        raise MalformedPayload(f"unknown shared-memory flags 0x{setup.flags:x}")
    if shm_region_size(setup.slot_size) == 0:
        raise MalformedPayload(f"shared-memory slot size {setup.slot_size} out of range")
    if setup.region_size != shm_region_size(setup.slot_size):
        raise MalformedPayload(
            f"shared-memory region size {setup.region_size} does not match slot size {setup.slot_size}"
        )
    return setup


# ---- connections: the protocol's decisions, without I/O ----------------------
#
# h11's model: a connection object consumes received bytes
# (receive_data), says what they mean (next_event: an event, or NEED_DATA),
# and produces the bytes to send. The pure backend's sockets and threads
# sit around it; the decisions (verdict -> refusal text, ERROR packet ->
# exception code) live here, once, and tests/test_vectors.py checks them
# against the vectors without sockets.


class ConnectionState(enum.Enum):
    AWAIT_HANDSHAKE = "AWAIT_HANDSHAKE"
    READY = "READY"
    CLOSED = "CLOSED"


class NeedData(enum.Enum):
    """next_event(): not enough bytes for an event yet."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


class HandshakeDone(NamedTuple):
    """The handshake succeeded; packets use ``version`` from now on."""

    version: int


class HandshakeRejected(NamedTuple):
    """Server side: the client's handshake is refused; send ``reply`` (maybe
    empty) and close. ``verdict`` says why."""

    verdict: Verdict
    first_byte: int
    reply: bytes


class Request(NamedTuple):
    """Server side: a complete REQUEST."""

    payload: bytes


class Refuse(NamedTuple):
    """Server side: a packet the server does not accept. Send ``data`` (an
    ERROR packet saying ``text``) and close without draining."""

    text: str
    data: bytes


class Response(NamedTuple):
    """Client side: a RESPONSE."""

    payload: bytes


class RemoteFailure(NamedTuple):
    """Client side: an ERROR packet. ``code`` is ``Result.E_REMOTE`` when the
    handler failed (the connection stays usable) or ``Result.E_TOO_LARGE``
    when the transport refused a message (the connection is closed)."""

    code: Result
    text: str


class ProtocolFailure(NamedTuple):
    """The peer broke the protocol (or refused ours); the connection is
    closed. ``code`` and ``text`` make the exception."""

    code: Result
    text: str


ServerEvent = Union[HandshakeDone, HandshakeRejected, Request, Refuse, NeedData]
ClientEvent = Union[HandshakeDone, Response, RemoteFailure, ProtocolFailure, NeedData]


# Plain ints: compared once per packet, faster than the IntEnum members.
_REQUEST = int(PacketType.REQUEST)
_RESPONSE = int(PacketType.RESPONSE)
_ERROR = int(PacketType.ERROR)


def _error_packet(text: bytes) -> bytes:
    return encode_header(PacketType.ERROR, len(text)) + text


def _malformed_text(decoder: PacketDecoder) -> str:
    assert decoder.error is not None
    return f"malformed packet header ({decoder.error.c_name}, first byte 0x{decoder.peek(1)[0]:02x})"


class ServerConnection:
    """The server's side of one connection: handshake, then requests.

    ::

        conn = ServerConnection(expected_value, max_message)
        conn.receive_data(bytes_read)
        event = conn.next_event()   # NEED_DATA, HandshakeDone, Request, ...
    """

    __slots__ = ("_decoder", "_pending", "_received", "expected", "max_message", "state", "version")

    def __init__(self, expected: bytes, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.expected = expected
        self.max_message = max_message
        self.state = ConnectionState.AWAIT_HANDSHAKE
        self.version = 0
        self._received = bytearray()
        self._decoder = PacketDecoder(max_message, PROTOCOL_VERSION)
        self._pending: Deque[Packet] = collections.deque()

    def receive_data(self, data: BytesLike) -> None:
        if self.state is ConnectionState.READY:
            self._pending.extend(self._decoder.feed(data))
        elif self.state is ConnectionState.AWAIT_HANDSHAKE:
            self._received += data

    def handshake_reply(self) -> bytes:
        """The bytes to send once HandshakeDone came (after any checks of the
        peer the server makes)."""
        return encode_handshake_reply(self.expected, PROTOCOL_VERSION)

    def next_event(self) -> ServerEvent:
        # The per-request path first: a whole REQUEST waiting (only READY
        # has packets; closing clears them).
        if self._pending:
            packet = self._pending.popleft()
            if packet.type == _REQUEST:
                return Request(packet.payload)
            return self._refuse(f"{_PROTOCOL_ERROR}packet type {packet.type} is not accepted by this server")
        if self.state is ConnectionState.READY:
            return NEED_DATA if self._decoder.error is None else self._bad_header()
        if self.state is ConnectionState.CLOSED:
            return NEED_DATA
        verdict, client_version = check_handshake_request(self._received, self.expected)
        if verdict == Verdict.NEED_MORE:
            return NEED_DATA
        if verdict != Verdict.OK:
            self.state = ConnectionState.CLOSED
            reply = bytes([FOREIGN_REPLY]) if verdict == Verdict.FOREIGN else b""
            return HandshakeRejected(verdict, self._received[0], reply)
        assert client_version is not None
        self.version = min(client_version, PROTOCOL_VERSION)
        self.state = ConnectionState.READY
        self._decoder = PacketDecoder(self.max_message, self.version)
        self._pending.extend(self._decoder.feed(self._received[HANDSHAKE_MESSAGE_SIZE:]))
        self._received = bytearray()
        return HandshakeDone(self.version)

    def _bad_header(self) -> Refuse:
        """READY, no whole packet, and a bad header stopped the decoder."""
        decoder = self._decoder
        if decoder.error == Verdict.TOO_LARGE:
            assert decoder.error_header is not None
            return self._refuse(
                f"{TOO_LARGE_PREFIX.decode()}the request of {decoder.error_header.length} bytes exceeds the "
                f"server's max_message of {self.max_message} bytes"
            )
        return self._refuse(f"{_PROTOCOL_ERROR}{_malformed_text(decoder)}")

    def _refuse(self, text: str) -> Refuse:
        self.state = ConnectionState.CLOSED
        self._pending.clear()
        return Refuse(text, _error_packet(text.encode()))

    def response_too_large(self, size: int) -> Optional[str]:
        """The ERROR text to send instead of a response of ``size`` bytes
        above max_message, or None if it may be sent."""
        if size <= self.max_message:
            return None
        return (
            f"{TOO_LARGE_PREFIX.decode()}the response of {size} bytes exceeds the server's "
            f"max_message of {self.max_message} bytes"
        )


class ClientConnection:
    """The client's side of one connection: handshake, then responses.

    ``name`` only words the failure texts.
    """

    __slots__ = ("_decoder", "_pending", "_received", "max_message", "name", "state", "value", "version")

    def __init__(self, value: bytes, max_message: int = DEFAULT_MAX_MESSAGE, name: str = "") -> None:
        self.value = value
        self.max_message = max_message
        self.name = name
        self.state = ConnectionState.AWAIT_HANDSHAKE
        self.version = 0
        self._received = bytearray()
        self._decoder = PacketDecoder(max_message, PROTOCOL_VERSION)
        self._pending: Deque[Packet] = collections.deque()

    def handshake_request(self) -> bytes:
        """The bytes to send first."""
        return encode_handshake_request(self.value, PROTOCOL_VERSION)

    def receive_data(self, data: BytesLike) -> None:
        if self.state is ConnectionState.READY:
            self._pending.extend(self._decoder.feed(data))
        elif self.state is ConnectionState.AWAIT_HANDSHAKE:
            self._received += data

    def at_boundary(self) -> bool:
        """Ready, and nothing received is still unread: the next bytes on
        the connection start a packet (a reader may then take a payload
        straight from the socket instead of through :meth:`receive_data`)."""
        decoder = self._decoder
        return (
            self.state is ConnectionState.READY
            and not self._pending
            and decoder.error is None
            and decoder.buffered == 0
        )

    def discard_pending(self) -> None:
        """After an abandoned request: nothing received so far is read."""
        self._pending.clear()
        self.state = ConnectionState.CLOSED

    def next_event(self) -> ClientEvent:
        # The per-request path first: a whole RESPONSE waiting (only READY
        # has packets; closing clears them).
        if self._pending:
            packet = self._pending.popleft()
            if packet.type == _RESPONSE:
                return Response(packet.payload)
            if packet.type == _ERROR:
                return self._error_event(packet.payload)
            return self._fail(Result.E_PROTOCOL, f"unexpected packet type {packet.type} from the server")
        if self.state is ConnectionState.READY:
            return NEED_DATA if self._decoder.error is None else self._bad_header()
        if self.state is ConnectionState.CLOSED:
            return NEED_DATA
        verdict, server_version = check_handshake_reply(self._received, self.value)
        if verdict == Verdict.NEED_MORE:
            return NEED_DATA
        if verdict == Verdict.FOREIGN:
            return self._fail(Result.E_HANDSHAKE, f"the server '{self.name}' rejected our handshake as foreign")
        if verdict != Verdict.OK:
            return self._fail(
                Result.E_HANDSHAKE,
                f"'{self.name}' answered the handshake with unexpected bytes: not an ipcfast server, or one "
                f"with another key",
            )
        assert server_version is not None
        self.version = min(server_version, PROTOCOL_VERSION)
        self.state = ConnectionState.READY
        self._decoder = PacketDecoder(self.max_message, self.version)
        self._pending.extend(self._decoder.feed(self._received[HANDSHAKE_MESSAGE_SIZE:]))
        self._received = bytearray()
        return HandshakeDone(self.version)

    def _bad_header(self) -> ProtocolFailure:
        """READY, no whole packet, and a bad header stopped the decoder."""
        decoder = self._decoder
        header = decoder.error_header
        if decoder.error == Verdict.TOO_LARGE and header is not None:
            return self._fail(
                Result.E_TOO_LARGE,
                f"the response of {header.length} bytes exceeds this client's max_message of "
                f"{self.max_message} bytes; raise max_message",
            )
        return self._fail(Result.E_PROTOCOL, _malformed_text(decoder))

    def _error_event(self, payload: bytes) -> RemoteFailure:
        # The same rules as the C client: the transport's own refusals
        # (TOO_LARGE_PREFIX) end the connection, an empty text gets a
        # default, NUL bytes become U+FFFD.
        code = Result.E_REMOTE
        if payload.startswith(TOO_LARGE_PREFIX):
            code = Result.E_TOO_LARGE
            payload = payload[len(TOO_LARGE_PREFIX) :]
            self.state = ConnectionState.CLOSED
            self._pending.clear()
        elif payload.startswith(PROTOCOL_ERROR_PREFIX):
            code = Result.E_PROTOCOL  # the server closes after it
            self.state = ConnectionState.CLOSED
            self._pending.clear()
        text = payload.replace(b"\x00", "\ufffd".encode()).decode("utf-8", "replace")
        return RemoteFailure(code, text or "the server's handler failed without a message")

    def _fail(self, code: Result, text: str) -> ProtocolFailure:
        self.state = ConnectionState.CLOSED
        self._pending.clear()
        return ProtocolFailure(code, text)
