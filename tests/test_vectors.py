"""Wire protocol v1 test vectors (tests/vectors/protocol_v1.json) against the codecs.

The vectors are normative (docs/protocol.md, section 8). Every codec (the C
core's and the pure-Python one, ipcfast._codec) is reached through a small
adapter with one fixed set of method names, so each runs against the same
vectors (one test per codec, PEP 399 style):

    default_handshake() -> bytes
    encode_handshake_request(value, version) -> bytes
    check_handshake_request(data, expected) -> (verdict, client_version | None)
    encode_handshake_reply(client_value, version) -> bytes
    check_handshake_reply(data, client_value) -> (verdict, server_version | None)
    encode_header(type, length, version) -> bytes
    parse_header(data, max_message, max_version) -> (verdict, Header)

Verdicts are the names of the C enum ipc_verdict without the IPC_VERDICT_
prefix ("OK", "NEED_MORE", ...). Header fields are only compared for OK and
TOO_LARGE (the other verdicts leave them unspecified).

At the end, hypothesis checks the two codecs against each other on generated
input: valid packet streams split anywhere, random header bytes, random
streams, random handshakes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

VECTORS_PATH = Path(__file__).parent / "vectors" / "protocol_v1.json"
VECTORS: Dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

VERDICTS = (
    "OK",
    "NEED_MORE",
    "FOREIGN",
    "MISMATCH",
    "RESERVED_BIT",
    "UNKNOWN_TYPE",
    "BAD_VERSION",
    "TOO_LARGE",
)


class Header(NamedTuple):
    type: int
    version: int
    length: int
    header_size: int


# ---------------------------------------------------------------------------
# Codec adapters
# ---------------------------------------------------------------------------


class NodeCommand(NamedTuple):
    argv: List[bytes]
    cwd: bytes
    env: List[bytes]
    locale: bytes
    flags: int


def _command_of(case: Dict[str, Any]) -> NodeCommand:
    return NodeCommand(
        [bytes.fromhex(a) for a in case["argv"]],
        bytes.fromhex(case["cwd"]),
        [bytes.fromhex(e) for e in case["env"]],
        bytes.fromhex(case["locale"]),
        case["flags"],
    )


class CCodec:
    """The C core's codec (csrc/ipc.c) through the cffi extension module."""

    name = "c"

    def __init__(self) -> None:
        try:
            from ipcfast._ipcfast_cffi import ffi, lib
        except ImportError as exc:  # pragma: no cover - depends on the build
            pytest.skip(f"the native module ipcfast._ipcfast_cffi is not built: {exc}")
        self.ffi = ffi
        self.lib = lib

    # helpers
    def _in(self, data: bytes) -> Any:
        # An exact-size copy (one spare byte for an empty input, so the
        # pointer is valid): nothing after `size` is there to be misread.
        if not data:
            return self.ffi.new("uint8_t[1]")
        return self.ffi.new("uint8_t[]", list(data))

    def _value(self, value: bytes) -> Any:
        assert len(value) == 8, value
        return self.ffi.new("uint8_t[8]", list(value))

    def _verdict(self, verdict: int) -> str:
        name = self.ffi.string(self.lib.ipc_verdict_name(verdict)).decode("ascii")
        assert name.startswith("IPC_VERDICT_"), name
        return name[len("IPC_VERDICT_") :]

    # the adapter interface
    def default_handshake(self) -> bytes:
        return bytes(self.ffi.buffer(self.lib.IPC_DEFAULT_HANDSHAKE, 8))

    def encode_handshake_request(self, value: bytes, version: int) -> bytes:
        out = self.ffi.new("uint8_t[9]")
        n = self.lib.ipc_handshake_encode_request(out, self._value(value), version)
        return bytes(self.ffi.buffer(out, n))

    def check_handshake_request(self, data: bytes, expected: bytes) -> Tuple[str, Optional[int]]:
        version = self.ffi.new("uint8_t *", 0xEE)
        verdict = self._verdict(
            self.lib.ipc_handshake_check_request(self._in(data), len(data), self._value(expected), version)
        )
        return verdict, (version[0] if verdict == "OK" else None)

    def encode_handshake_reply(self, client_value: bytes, version: int) -> bytes:
        out = self.ffi.new("uint8_t[9]")
        n = self.lib.ipc_handshake_encode_reply(out, self._value(client_value), version)
        return bytes(self.ffi.buffer(out, n))

    def check_handshake_reply(self, data: bytes, client_value: bytes) -> Tuple[str, Optional[int]]:
        version = self.ffi.new("uint8_t *", 0xEE)
        verdict = self._verdict(
            self.lib.ipc_handshake_check_reply(self._in(data), len(data), self._value(client_value), version)
        )
        return verdict, (version[0] if verdict == "OK" else None)

    def encode_header(self, type: int, length: int, version: int = 0) -> bytes:
        out = self.ffi.new("uint8_t[6]")
        n = self.lib.ipc_packet_header_encode(out, type, length, version)
        return bytes(self.ffi.buffer(out, n))

    def parse_header(self, data: bytes, max_message: int, max_version: int) -> Tuple[str, Header]:
        header = self.ffi.new("ipc_packet_header *")
        verdict = self._verdict(
            self.lib.ipc_packet_header_parse(self._in(data), len(data), max_message, max_version, header)
        )
        return verdict, Header(header.type, header.version, header.length, header.header_size)

    # server-node payloads: (result, error message) pairs
    def _error(self, err: Any) -> str:
        return self.ffi.string(err.message).decode("utf-8", "replace") if err.message else ""

    def encode_command(self, command: NodeCommand) -> bytes:
        keep = [self.ffi.new("char[]", a) for a in command.argv + command.env]
        argv = self.ffi.new("char *[]", keep[: len(command.argv)] or 1)
        env = self.ffi.new("char *[]", keep[len(command.argv) :] or 1)
        c = self.ffi.new("ipc_command *")
        c.flags = command.flags
        c.argc = len(command.argv)
        c.argv = argv
        cwd = self.ffi.new("char[]", command.cwd)
        locale = self.ffi.new("char[]", command.locale)
        c.cwd = cwd
        c.envc = len(command.env)
        c.env = env
        c.locale = locale
        out = self.ffi.new("uint8_t **")
        size = self.ffi.new("size_t *")
        err = self.ffi.new("ipc_error *")
        assert self.lib.ipc_command_encode(c, out, size, err) == 0, self._error(err)
        try:
            return bytes(self.ffi.buffer(out[0], size[0]))
        finally:
            self.lib.ipc_free(out[0])

    def decode_command(self, data: bytes) -> Tuple[Optional[NodeCommand], str]:
        c = self.ffi.new("ipc_command *")
        err = self.ffi.new("ipc_error *")
        rc = self.lib.ipc_command_decode(self._in(data), len(data), c, err)
        try:
            if rc != 0:
                assert rc == self.lib.IPC_E_PROTOCOL
                return None, self._error(err)
            s = self.ffi.string
            return (
                NodeCommand(
                    [s(c.argv[i]) for i in range(c.argc)],
                    s(c.cwd),
                    [s(c.env[i]) for i in range(c.envc)],
                    s(c.locale),
                    c.flags,
                ),
                "",
            )
        finally:
            self.lib.ipc_command_free(c)
            self.lib.ipc_error_clear(err)

    def decode_console_write(self, data: bytes) -> Tuple[Optional[Tuple[int, bytes]], str]:
        stream = self.ffi.new("int *")
        text = self.ffi.new("const uint8_t **")
        size = self.ffi.new("size_t *")
        err = self.ffi.new("ipc_error *")
        buf = self._in(data)
        rc = self.lib.ipc_console_write_decode(buf, len(data), stream, text, size, err)
        try:
            if rc != 0:
                return None, self._error(err)
            return (stream[0], bytes(self.ffi.buffer(text[0], size[0]))), ""
        finally:
            self.lib.ipc_error_clear(err)

    def encode_exit(self, code: int, kind: int) -> bytes:
        out = self.ffi.new("uint8_t[5]")
        n = self.lib.ipc_exit_encode(out, code, kind)
        return bytes(self.ffi.buffer(out, n))

    def decode_exit(self, data: bytes) -> Tuple[Optional[Tuple[int, int]], str]:
        code = self.ffi.new("int32_t *")
        kind = self.ffi.new("uint8_t *")
        err = self.ffi.new("ipc_error *")
        rc = self.lib.ipc_exit_decode(self._in(data), len(data), code, kind, err)
        try:
            if rc != 0:
                return None, self._error(err)
            return (code[0], kind[0]), ""
        finally:
            self.lib.ipc_error_clear(err)

    def decode_cancel(self, data: bytes) -> Tuple[Optional[int], str]:
        signal_code = self.ffi.new("int *")
        err = self.ffi.new("ipc_error *")
        rc = self.lib.ipc_cancel_decode(self._in(data), len(data), signal_code, err)
        try:
            if rc != 0:
                return None, self._error(err)
            return signal_code[0], ""
        finally:
            self.lib.ipc_error_clear(err)


class PureCodec:
    """The pure-Python codec (python/ipcfast/_codec.py)."""

    name = "pure"

    def __init__(self) -> None:
        from ipcfast import _codec

        self.codec = _codec

    def default_handshake(self) -> bytes:
        return self.codec.DEFAULT_HANDSHAKE

    def encode_handshake_request(self, value: bytes, version: int) -> bytes:
        return self.codec.encode_handshake_request(value, version)

    def check_handshake_request(self, data: bytes, expected: bytes) -> Tuple[str, Optional[int]]:
        verdict, version = self.codec.check_handshake_request(data, expected)
        return verdict.name, version

    def encode_handshake_reply(self, client_value: bytes, version: int) -> bytes:
        return self.codec.encode_handshake_reply(client_value, version)

    def check_handshake_reply(self, data: bytes, client_value: bytes) -> Tuple[str, Optional[int]]:
        verdict, version = self.codec.check_handshake_reply(data, client_value)
        return verdict.name, version

    def encode_header(self, type: int, length: int, version: int = 0) -> bytes:
        return self.codec.encode_header(type, length, version)

    def parse_header(self, data: bytes, max_message: int, max_version: int) -> Tuple[str, Header]:
        verdict, header = self.codec.parse_header(data, max_message, max_version)
        return verdict.name, Header(*header)

    def encode_command(self, command: NodeCommand) -> bytes:
        return self.codec.encode_command(self.codec.Command(*command))

    def decode_command(self, data: bytes) -> Tuple[Optional[NodeCommand], str]:
        try:
            c = self.codec.decode_command(data)
        except self.codec.MalformedPayload as exc:
            return None, str(exc)
        return NodeCommand(c.argv, c.cwd, c.env, c.locale, c.flags), ""

    def decode_console_write(self, data: bytes) -> Tuple[Optional[Tuple[int, bytes]], str]:
        try:
            return self.codec.decode_console_write(data), ""
        except self.codec.MalformedPayload as exc:
            return None, str(exc)

    def encode_exit(self, code: int, kind: int) -> bytes:
        return self.codec.encode_exit(code, kind)

    def decode_exit(self, data: bytes) -> Tuple[Optional[Tuple[int, int]], str]:
        try:
            return self.codec.decode_exit(data), ""
        except self.codec.MalformedPayload as exc:
            return None, str(exc)

    def decode_cancel(self, data: bytes) -> Tuple[Optional[int], str]:
        try:
            return int(self.codec.decode_cancel(data)), ""
        except self.codec.MalformedPayload as exc:
            return None, str(exc)


#: name -> adapter factory: every vector test runs once per codec.
CODECS: Dict[str, Callable[[], Any]] = {"c": CCodec, "pure": PureCodec}


@pytest.fixture(params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> Any:
    return CODECS[request.param]()


def _ids(cases: List[Dict[str, Any]]) -> List[str]:
    return [str(c.get("name", i)) for i, c in enumerate(cases)]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


# ---------------------------------------------------------------------------
# The vector file itself
# ---------------------------------------------------------------------------


def test_vector_file_is_well_formed() -> None:
    assert VECTORS["version"] == 1
    for key in (
        "handshake_request",
        "handshake_reply",
        "parse_header",
    ):
        names = [c["name"] for c in VECTORS[key]]
        assert len(names) == len(set(names)), f"duplicate case names in {key}"
        for case in VECTORS[key]:
            assert case["verdict"] in VERDICTS, case
    for case in VECTORS["streams"]:
        assert case["end"] in VERDICTS, case
    # every byte string is hex
    for cases in VECTORS.values():
        if isinstance(cases, list):
            for case in cases:
                for field in ("hex", "value", "expected", "client_value"):
                    if field in case:
                        bytes.fromhex(case[field])


def test_vectors_cover_what_the_protocol_requires() -> None:
    """Guards against the vector file silently losing coverage."""
    parse = VECTORS["parse_header"]
    verdicts = {c["verdict"] for c in parse}
    assert verdicts == {"OK", "NEED_MORE", "RESERVED_BIT", "UNKNOWN_TYPE", "BAD_VERSION", "TOO_LARGE"}
    ok_types = {(c["type"], c["header_size"]) for c in parse if c["verdict"] == "OK"}
    for t in range(1, 8):
        assert (t, 5) in ok_types and (t, 6) in ok_types, t
    first_bytes = {_hex(c["hex"])[0] & 0x3F for c in parse if c["verdict"] == "UNKNOWN_TYPE"}
    assert {0, 8, 63} <= first_bytes
    lengths = {c.get("length") for c in parse}
    assert {0, 4096, 4097, 0xFFFFFFFF} <= lengths
    # every proper prefix of a short and an extended header
    prefix_sizes = {(len(_hex(c["hex"]))) for c in parse if c["verdict"] == "NEED_MORE"}
    assert prefix_sizes == {0, 1, 2, 3, 4, 5}
    assert {c["verdict"] for c in VECTORS["handshake_request"]} == {
        "OK",
        "NEED_MORE",
        "FOREIGN",
        "MISMATCH",
        "BAD_VERSION",
    }
    assert {c["verdict"] for c in VECTORS["handshake_reply"]} == {
        "OK",
        "NEED_MORE",
        "FOREIGN",
        "MISMATCH",
        "BAD_VERSION",
    }


@pytest.mark.parametrize("case", VECTORS["handshake_derivation"])
def test_handshake_derivation_formula(case: Dict[str, Any]) -> None:
    """The vectors follow the documented formula (independent of any codec)."""
    key = case["key"]
    if key is None:
        raw = b""
    elif isinstance(key, str):
        raw = key.encode("utf-8")
    else:
        raw = _hex(key["hex"])
    expected = b"\x00" + hashlib.sha256(b"ipcfast\x00\x01" + raw).digest()[:7]
    assert case["value"] == expected.hex()


@pytest.mark.parametrize("case", VECTORS["handshake_derivation"])
def test_handshake_derivation_python_layer(case: Dict[str, Any]) -> None:
    try:
        from ipcfast._names import handshake_value
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"ipcfast._names is not importable: {exc}")
    key = case["key"]
    arg = _hex(key["hex"]) if isinstance(key, dict) else key
    assert handshake_value(arg).hex() == case["value"]


# ---------------------------------------------------------------------------
# Codecs against the vectors
# ---------------------------------------------------------------------------


def test_default_handshake(codec: Any) -> None:
    assert codec.default_handshake().hex() == VECTORS["default_handshake"]
    assert VECTORS["default_handshake"] == VECTORS["handshake_derivation"][0]["value"]


@pytest.mark.parametrize("case", VECTORS["encode_handshake_request"])
def test_encode_handshake_request(codec: Any, case: Dict[str, Any]) -> None:
    assert codec.encode_handshake_request(_hex(case["value"]), case["version"]).hex() == case["hex"]


@pytest.mark.parametrize("case", VECTORS["handshake_request"], ids=_ids(VECTORS["handshake_request"]))
def test_check_handshake_request(codec: Any, case: Dict[str, Any]) -> None:
    verdict, version = codec.check_handshake_request(_hex(case["hex"]), _hex(case["expected"]))
    assert verdict == case["verdict"]
    if verdict == "OK":
        assert version == case["client_version"]


@pytest.mark.parametrize("case", VECTORS["encode_handshake_reply"])
def test_encode_handshake_reply(codec: Any, case: Dict[str, Any]) -> None:
    reply = codec.encode_handshake_reply(_hex(case["client_value"]), case["version"])
    assert reply.hex() == case["hex"]
    # never an echo, never the foreign-client byte
    assert reply[:8] != _hex(case["client_value"])
    assert reply[0] != 0xFF


@pytest.mark.parametrize("case", VECTORS["handshake_reply"], ids=_ids(VECTORS["handshake_reply"]))
def test_check_handshake_reply(codec: Any, case: Dict[str, Any]) -> None:
    verdict, version = codec.check_handshake_reply(_hex(case["hex"]), _hex(case["client_value"]))
    assert verdict == case["verdict"]
    if verdict == "OK":
        assert version == case["server_version"]


def test_handshake_round_trip(codec: Any) -> None:
    value = codec.default_handshake()
    for version in (1, 2, 255):
        request = codec.encode_handshake_request(value, version)
        assert codec.check_handshake_request(request, value) == ("OK", version)
        reply = codec.encode_handshake_reply(value, version)
        assert codec.check_handshake_reply(reply, value) == ("OK", version)
        # the request is never a valid reply and vice versa
        assert codec.check_handshake_reply(request, value)[0] == "MISMATCH"
        assert codec.check_handshake_request(reply, value)[0] == "FOREIGN"


@pytest.mark.parametrize("case", VECTORS["encode_header"])
def test_encode_header(codec: Any, case: Dict[str, Any]) -> None:
    assert codec.encode_header(case["type"], case["length"], case["version"]).hex() == case["hex"]


@pytest.mark.parametrize("case", VECTORS["encode_header"])
def test_encoded_header_parses_back(codec: Any, case: Dict[str, Any]) -> None:
    verdict, header = codec.parse_header(_hex(case["hex"]), 0xFFFFFFFF, 255)
    assert verdict == "OK"
    assert header == (case["type"], case["version"], case["length"], 6 if case["version"] else 5)


@pytest.mark.parametrize("case", VECTORS["parse_header"], ids=_ids(VECTORS["parse_header"]))
def test_parse_header(codec: Any, case: Dict[str, Any]) -> None:
    verdict, header = codec.parse_header(_hex(case["hex"]), case["max_message"], case["max_version"])
    assert verdict == case["verdict"]
    if verdict in ("OK", "TOO_LARGE"):
        assert header == (case["type"], case["version"], case["length"], case["header_size"])


def test_parse_header_every_first_byte(codec: Any) -> None:
    """All 256 first bytes: the verdict of one byte alone follows the rules."""
    for b in range(256):
        verdict, _ = codec.parse_header(bytes([b]), 1024, 1)
        t = b & 0x3F
        if b & 0x80:
            expected = "RESERVED_BIT"
        elif t == 0 or t > 7:
            expected = "UNKNOWN_TYPE"
        else:
            expected = "NEED_MORE"
        assert verdict == expected, hex(b)


# ---------------------------------------------------------------------------
# Streams: packets back to back, fed in pieces
# ---------------------------------------------------------------------------


class Reassembler:
    """Incremental packet splitter on top of a codec's parse_header.

    Feed it bytes in any pieces; it yields whole packets and stops at the
    first bad header (its verdict is then `error`).
    """

    def __init__(self, codec: Any, max_message: int, max_version: int) -> None:
        self.codec = codec
        self.max_message = max_message
        self.max_version = max_version
        self.buffer = b""
        self.packets: List[Dict[str, Any]] = []
        self.error: Optional[str] = None

    def feed(self, data: bytes) -> None:
        if self.error:
            return
        self.buffer += data
        while True:
            verdict, header = self.codec.parse_header(self.buffer, self.max_message, self.max_version)
            if verdict == "NEED_MORE":
                return
            if verdict != "OK":
                self.error = verdict
                return
            end = header.header_size + header.length
            if len(self.buffer) < end:
                return
            self.packets.append(
                {
                    "type": header.type,
                    "version": header.version,
                    "payload": self.buffer[header.header_size : end].hex(),
                }
            )
            self.buffer = self.buffer[end:]

    def end(self) -> str:
        if self.error:
            return self.error
        return "NEED_MORE" if self.buffer else "OK"


def _splits(data: bytes) -> List[List[bytes]]:
    """The stream in one piece, byte by byte, in fixed-size and random pieces."""
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    for size in (2, 3, 5, 6, 7):
        out.append([data[i : i + size] for i in range(0, len(data), size)])
    rng = random.Random(len(data))
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 4))) if len(data) > 1 else []
        bounds = [0, *cuts, len(data)]
        out.append([data[a:b] for a, b in zip(bounds, bounds[1:])])
    return out


@pytest.mark.parametrize("case", VECTORS["streams"], ids=_ids(VECTORS["streams"]))
def test_streams(codec: Any, case: Dict[str, Any]) -> None:
    data = _hex(case["hex"])
    for pieces in _splits(data):
        r = Reassembler(codec, case["max_message"], case["max_version"])
        for piece in pieces:
            r.feed(piece)
        assert r.packets == case["packets"], [len(p) for p in pieces]
        assert r.end() == case["end"], [len(p) for p in pieces]


def test_streams_encode_back(codec: Any) -> None:
    """Re-encoding the expected packets gives the stream (for streams that end cleanly)."""
    for case in VECTORS["streams"]:
        if case["end"] != "OK":
            continue
        rebuilt = b"".join(
            codec.encode_header(p["type"], len(_hex(p["payload"])), p["version"]) + _hex(p["payload"])
            for p in case["packets"]
        )
        assert rebuilt.hex() == case["hex"], case["name"]


def test_all_prefixes_of_valid_handshakes_need_more(codec: Any) -> None:
    value = codec.default_handshake()
    request = codec.encode_handshake_request(value, 1)
    reply = codec.encode_handshake_reply(value, 1)
    for n in range(9):
        assert codec.check_handshake_request(request[:n], value)[0] == "NEED_MORE"
        assert codec.check_handshake_reply(reply[:n], value)[0] == "NEED_MORE"
    # and any single corrupted byte among the 8 value bytes is caught as soon as it arrives
    for i, flip in itertools.product(range(1, 8), (0x01, 0x80)):
        bad = bytearray(request)
        bad[i] ^= flip
        for n in range(i + 1, 10):
            assert codec.check_handshake_request(bytes(bad[:n]), value)[0] == "MISMATCH", (i, n)


# ---------------------------------------------------------------------------
# The pure codec's incremental decoder, and both codecs against each other
# ---------------------------------------------------------------------------


def _pure_decode(pieces: List[bytes], max_message: int, max_version: int) -> Tuple[List[Dict[str, Any]], str]:
    """Feeds pieces to ipcfast._codec.PacketDecoder; its packets and end verdict."""
    from ipcfast._codec import PacketDecoder

    decoder = PacketDecoder(max_message, max_version)
    packets: List[Dict[str, Any]] = []
    for piece in pieces:
        for p in decoder.feed(piece):
            packets.append({"type": p.type, "version": p.version, "payload": p.payload.hex()})
    return packets, decoder.verdict.name


def _c_decode(data: bytes, max_message: int, max_version: int) -> Tuple[List[Dict[str, Any]], str]:
    """The same stream through the C core's header parser, in one piece."""
    r = Reassembler(CCodec(), max_message, max_version)
    r.feed(data)
    return r.packets, r.end()


@pytest.mark.parametrize("case", VECTORS["streams"], ids=_ids(VECTORS["streams"]))
def test_pure_decoder_streams(case: Dict[str, Any]) -> None:
    """PacketDecoder (not just parse_header) against the stream vectors, in every split."""
    data = _hex(case["hex"])
    for pieces in _splits(data):
        packets, end = _pure_decode(pieces, case["max_message"], case["max_version"])
        assert packets == case["packets"], [len(p) for p in pieces]
        assert end == case["end"], [len(p) for p in pieces]


def test_pure_decoder_details() -> None:
    from ipcfast._codec import Packet, PacketDecoder, Verdict, encode_header

    decoder = PacketDecoder(max_message=10, max_version=1)
    assert decoder.verdict is Verdict.OK and decoder.needed == 0 and decoder.buffered == 0
    assert decoder.feed(b"\x02") == []
    assert decoder.verdict is Verdict.NEED_MORE and decoder.needed == 4
    assert decoder.feed(b"\x03\x00\x00\x00ab") == []
    assert decoder.needed == 1 and decoder.buffered == 7
    assert decoder.feed(memoryview(b"c\x42")) == [Packet(2, 0, b"abc")]
    assert decoder.needed == 5  # extended header: 6 bytes
    assert decoder.take_buffered() == b"\x42"
    assert decoder.verdict is Verdict.OK
    # A too-large header stops decoding at once, reporting its length; later input is ignored.
    assert decoder.feed(encode_header(1, 11) + b"x") == []
    assert decoder.verdict is Verdict.TOO_LARGE and decoder.error is Verdict.TOO_LARGE
    assert decoder.error_header is not None and decoder.error_header.length == 11
    assert decoder.feed(encode_header(1, 0)) == [] and decoder.needed == 0
    # Packets before a bad header are still handed out.
    decoder = PacketDecoder()
    assert decoder.feed(encode_header(1, 1) + b"a" + b"\x09") == [Packet(1, 0, b"a")]
    assert decoder.verdict is Verdict.UNKNOWN_TYPE


def _packets_strategy(max_version: int) -> Any:
    packet = st.tuples(
        st.integers(1, 7),
        st.integers(0, max_version),
        st.binary(max_size=300),
    )
    return st.lists(packet, max_size=12)


def _cut(data: bytes, cuts: List[int]) -> List[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(
    max_version=st.integers(1, 3),
    data=st.data(),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_valid_streams_decode_alike_in_any_split(max_version: int, data: Any, cuts: List[int]) -> None:
    """Valid packets back to back, split anywhere: the pure decoder gives
    the packets that were encoded, and the same as the C parser."""
    packets = data.draw(_packets_strategy(max_version))
    stream = b"".join(
        (bytes([t | 0x40, v]) if v else bytes([t])) + len(p).to_bytes(4, "little") + p for t, v, p in packets
    )
    expected = [{"type": t, "version": v, "payload": p.hex()} for t, v, p in packets]
    pure = _pure_decode(_cut(stream, cuts), 0xFFFFFFFF, max_version)
    assert pure == (expected, "OK")
    assert _c_decode(stream, 0xFFFFFFFF, max_version) == pure
    # Every proper prefix: the packets completed so far, then NEED_MORE.
    if stream:
        cut = cuts[0] % len(stream) if cuts else len(stream) // 2
        assert _pure_decode([stream[:cut]], 0xFFFFFFFF, max_version) == _c_decode(stream[:cut], 0xFFFFFFFF, max_version)


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=12),
    max_message=st.one_of(st.sampled_from([0, 1, 5, 4096, 2**26, 2**32 - 1]), st.integers(0, 2**32 - 1)),
    max_version=st.integers(1, 255),
)
def test_random_headers_get_the_same_verdict(data: bytes, max_message: int, max_version: int) -> None:
    """Any bytes: the pure parse_header and the C ipc_packet_header_parse agree."""
    from ipcfast import _codec
    from ipcfast._ipcfast_cffi import ffi, lib

    c_header = ffi.new("ipc_packet_header *")
    buf = ffi.new("uint8_t[]", list(data) or [0])
    c_verdict = lib.ipc_packet_header_parse(buf, len(data), max_message, max_version, c_header)
    verdict, header = _codec.parse_header(data, max_message, max_version)
    assert int(verdict) == c_verdict
    assert verdict.c_name == ffi.string(lib.ipc_verdict_name(c_verdict)).decode()
    if verdict.name in ("OK", "TOO_LARGE"):
        assert tuple(header) == (c_header.type, c_header.version, c_header.length, c_header.header_size)


@settings(max_examples=300, deadline=None)
@given(
    stream=st.binary(max_size=64),
    cuts=st.lists(st.integers(0, 100), max_size=8),
    max_message=st.sampled_from([0, 3, 16, 2**32 - 1]),
    max_version=st.integers(1, 3),
)
def test_random_streams_decode_alike(stream: bytes, cuts: List[int], max_message: int, max_version: int) -> None:
    """Any bytes, split anywhere: same packets and the same final verdict."""
    pure = _pure_decode(_cut(stream, cuts), max_message, max_version)
    assert pure == _c_decode(stream, max_message, max_version)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=10), value=st.binary(min_size=8, max_size=8))
def test_random_handshakes_get_the_same_verdict(data: bytes, value: bytes) -> None:
    c, pure = CCodec(), PureCodec()
    assert pure.check_handshake_request(data, value) == c.check_handshake_request(data, value)
    assert pure.check_handshake_reply(data, value) == c.check_handshake_reply(data, value)


# ---------------------------------------------------------------------------
# Server-node payloads
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["command"], ids=_ids(VECTORS["command"]))
def test_encode_command(codec: Any, case: Dict[str, Any]) -> None:
    assert codec.encode_command(_command_of(case)).hex() == case["hex"]


@pytest.mark.parametrize("case", VECTORS["command"], ids=_ids(VECTORS["command"]))
def test_decode_command(codec: Any, case: Dict[str, Any]) -> None:
    decoded, error = codec.decode_command(bytes.fromhex(case["hex"]))
    assert error == ""
    assert decoded == _command_of(case)


@pytest.mark.parametrize("case", VECTORS["command_malformed"], ids=_ids(VECTORS["command_malformed"]))
def test_malformed_command(codec: Any, case: Dict[str, Any]) -> None:
    decoded, error = codec.decode_command(bytes.fromhex(case["hex"]))
    assert decoded is None
    assert case["error"] in error


def test_every_truncated_command_is_malformed(codec: Any) -> None:
    data = bytes.fromhex(VECTORS["command"][0]["hex"])
    for n in range(len(data)):
        decoded, error = codec.decode_command(data[:n])
        assert decoded is None and error, n


@pytest.mark.parametrize("case", VECTORS["console_write"], ids=_ids(VECTORS["console_write"]))
def test_console_write(codec: Any, case: Dict[str, Any]) -> None:
    decoded, error = codec.decode_console_write(bytes.fromhex(case["hex"]))
    if "error" in case:
        assert decoded is None and case["error"] in error
    else:
        assert decoded == (case["stream"], bytes.fromhex(case["text"]))


@pytest.mark.parametrize("case", VECTORS["exit"], ids=_ids(VECTORS["exit"]))
def test_exit(codec: Any, case: Dict[str, Any]) -> None:
    decoded, error = codec.decode_exit(bytes.fromhex(case["hex"]))
    if "error" in case:
        assert decoded is None and case["error"] in error
    else:
        assert decoded == (case["exit_code"], case["exit_type"])
        assert codec.encode_exit(case["exit_code"], case["exit_type"]).hex() == case["hex"]


@pytest.mark.parametrize("case", VECTORS["cancel"], ids=_ids(VECTORS["cancel"]))
def test_cancel(codec: Any, case: Dict[str, Any]) -> None:
    decoded, error = codec.decode_cancel(bytes.fromhex(case["hex"]))
    if "error" in case:
        assert decoded is None and case["error"] in error
    else:
        assert decoded == case["signal"]
        if codec.name == "pure" and case["name"] != "interrupt_spelled_out":
            # What this codec writes: the shortest form (Ctrl-C stays empty).
            assert codec.codec.encode_cancel(codec.codec.NodeSignal(case["signal"])).hex() == case["hex"]


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_command_codecs_agree_on_any_bytes(data: bytes) -> None:
    c_result, c_error = CCodec().decode_command(data)
    p_result, p_error = PureCodec().decode_command(data)
    assert c_result == p_result
    assert c_error == p_error
    if c_result is not None:
        assert CCodec().encode_command(c_result) == data


# ---------------------------------------------------------------------------
# The sans-I/O connection objects (ipcfast._codec.ServerConnection and
# ClientConnection) against the same vectors: no sockets, whole or byte by byte
# ---------------------------------------------------------------------------


def _drive(conn: Any, pieces: List[bytes]) -> List[Any]:
    """Feeds pieces to a connection object; every event it gives, in order,
    until it wants more data (or closed)."""
    from ipcfast._codec import NEED_DATA, ConnectionState

    events: List[Any] = []
    for piece in pieces:
        conn.receive_data(piece)
        while conn.state is not ConnectionState.CLOSED:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
    return events


def _whole_and_bytewise(data: bytes) -> List[List[bytes]]:
    return [[data], [data[i : i + 1] for i in range(len(data))]]


@pytest.mark.parametrize("case", VECTORS["handshake_request"], ids=_ids(VECTORS["handshake_request"]))
def test_server_connection_handshake(case: Dict[str, Any]) -> None:
    from ipcfast._codec import ConnectionState, HandshakeDone, HandshakeRejected, ServerConnection

    data = _hex(case["hex"])
    for pieces in _whole_and_bytewise(data):
        conn = ServerConnection(_hex(case["expected"]))
        events = _drive(conn, pieces)
        if case["verdict"] == "NEED_MORE":
            assert events == [] and conn.state is ConnectionState.AWAIT_HANDSHAKE
        elif case["verdict"] == "OK":
            assert events == [HandshakeDone(min(case["client_version"], 1))]
            assert conn.state is ConnectionState.READY
            assert conn.handshake_reply() == _hex(
                next(r["hex"] for r in VECTORS["encode_handshake_reply"] if r["client_value"] == case["expected"])
            )
        else:
            # A foreign client gets the one-byte answer; a mismatch gets nothing.
            reply = b"\xff" if case["verdict"] == "FOREIGN" else b""
            assert len(events) == 1 and isinstance(events[0], HandshakeRejected), events
            assert (events[0].verdict.name, events[0].reply, events[0].first_byte) == (case["verdict"], reply, data[0])
            assert conn.state is ConnectionState.CLOSED


@pytest.mark.parametrize("case", VECTORS["handshake_reply"], ids=_ids(VECTORS["handshake_reply"]))
def test_client_connection_handshake(case: Dict[str, Any]) -> None:
    from ipcfast._codec import ClientConnection, ConnectionState, HandshakeDone, ProtocolFailure
    from ipcfast._errors import Result

    value = _hex(case["client_value"])
    for pieces in _whole_and_bytewise(_hex(case["hex"])):
        conn = ClientConnection(value, name="srv")
        assert conn.handshake_request() == value + b"\x01"
        events = _drive(conn, pieces)
        if case["verdict"] == "NEED_MORE":
            assert events == [] and conn.state is ConnectionState.AWAIT_HANDSHAKE
        elif case["verdict"] == "OK":
            assert events == [HandshakeDone(min(case["server_version"], 1))]
            assert conn.state is ConnectionState.READY
        else:
            assert len(events) == 1 and isinstance(events[0], ProtocolFailure), events
            assert events[0].code is Result.E_HANDSHAKE and "'srv'" in events[0].text
            assert ("foreign" in events[0].text) == (case["verdict"] == "FOREIGN")
            assert conn.state is ConnectionState.CLOSED


_V1_STREAMS = [case for case in VECTORS["streams"] if case["max_version"] == 1]


def _error_packet_text(data: bytes) -> str:
    from ipcfast._codec import PacketDecoder, PacketType

    packets = PacketDecoder().feed(data)
    assert len(packets) == 1 and packets[0].type == PacketType.ERROR
    return packets[0].payload.decode()


class _Refused:
    """An expected Refuse event: its text starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"_Refused({self.prefix!r})"


def _expected_server_events(case: Dict[str, Any]) -> List[Any]:
    from ipcfast._codec import TOO_LARGE_PREFIX, Request

    expected: List[Any] = []
    for packet in case["packets"]:
        if packet["type"] != 1:
            return expected + [_Refused(f"ipcfast: protocol error: packet type {packet['type']} is not accepted")]
        expected.append(Request(_hex(packet["payload"])))
    if case["end"] == "TOO_LARGE":
        expected.append(_Refused(TOO_LARGE_PREFIX.decode() + "the request of "))
    elif case["end"] not in ("OK", "NEED_MORE"):
        expected.append(_Refused(f"ipcfast: protocol error: malformed packet header (IPC_VERDICT_{case['end']}"))
    return expected


@pytest.mark.parametrize("case", _V1_STREAMS, ids=_ids(_V1_STREAMS))
def test_server_connection_streams(case: Dict[str, Any]) -> None:
    """After a handshake, REQUESTs become Request events; the first packet
    of another type, or the bad header that ends a stream, a Refuse whose
    ERROR packet says why, and the connection closes."""
    from ipcfast._codec import ConnectionState, HandshakeDone, Refuse, ServerConnection

    value = _hex(VECTORS["default_handshake"])
    expected = _expected_server_events(case)
    for pieces in _whole_and_bytewise(value + b"\x01" + _hex(case["hex"])):
        conn = ServerConnection(value, case["max_message"])
        events = _drive(conn, pieces)
        assert events[0] == HandshakeDone(1)
        events = events[1:]
        assert len(events) == len(expected), (events, expected)
        for have, want in zip(events, expected):
            if isinstance(want, _Refused):
                assert isinstance(have, Refuse) and have.text.startswith(want.prefix), (have, want)
                assert _error_packet_text(have.data) == have.text
            else:
                assert have == want
        refused = bool(expected) and isinstance(expected[-1], _Refused)
        assert conn.state is (ConnectionState.CLOSED if refused else ConnectionState.READY)


def _expected_client_events(case: Dict[str, Any]) -> List[Any]:
    """The events a client connection gives for a stream; a bad header at
    the end is given as its Result (the text is checked apart)."""
    from ipcfast._codec import TOO_LARGE_PREFIX, ProtocolFailure, RemoteFailure, Response
    from ipcfast._errors import Result

    expected: List[Any] = []
    for packet in case["packets"]:
        payload = _hex(packet["payload"])
        if packet["type"] == 2:
            expected.append(Response(payload))
        elif packet["type"] == 3 and payload.startswith(TOO_LARGE_PREFIX):
            return expected + [RemoteFailure(Result.E_TOO_LARGE, payload[len(TOO_LARGE_PREFIX) :].decode())]
        elif packet["type"] == 3:
            text = payload.replace(b"\x00", "\ufffd".encode()).decode("utf-8", "replace")
            expected.append(RemoteFailure(Result.E_REMOTE, text or "the server's handler failed without a message"))
        else:
            text = f"unexpected packet type {packet['type']} from the server"
            return expected + [ProtocolFailure(Result.E_PROTOCOL, text)]
    if case["end"] == "TOO_LARGE":
        expected.append(Result.E_TOO_LARGE)
    elif case["end"] not in ("OK", "NEED_MORE"):
        expected.append(Result.E_PROTOCOL)
    return expected


@pytest.mark.parametrize("case", _V1_STREAMS, ids=_ids(_V1_STREAMS))
def test_client_connection_streams(case: Dict[str, Any]) -> None:
    """RESPONSE and ERROR packets become Response and RemoteFailure events;
    other types and bad headers a ProtocolFailure; what ends the connection
    (a failure, a transport refusal) closes it."""
    from ipcfast._codec import ClientConnection, ConnectionState, ProtocolFailure, RemoteFailure
    from ipcfast._errors import Result

    value = _hex(VECTORS["default_handshake"])
    reply = bytes(b ^ 0x5A for b in value) + b"\x01"
    expected = _expected_client_events(case)
    for pieces in _whole_and_bytewise(reply + _hex(case["hex"])):
        conn = ClientConnection(value, case["max_message"], name="srv")
        events = _drive(conn, pieces)[1:]
        if expected and isinstance(expected[-1], Result):
            last = events.pop()
            assert isinstance(last, ProtocolFailure) and last.code is expected[-1], last
            assert ("max_message" if last.code is Result.E_TOO_LARGE else case["end"]) in last.text
            assert events == expected[:-1]
            assert conn.state is ConnectionState.CLOSED
            continue
        assert events == expected
        ends = bool(events) and (
            isinstance(events[-1], ProtocolFailure)
            or (isinstance(events[-1], RemoteFailure) and events[-1].code is Result.E_TOO_LARGE)
        )
        assert conn.state is (ConnectionState.CLOSED if ends else ConnectionState.READY)


def test_connections_without_sockets_talk_to_each_other() -> None:
    """A client and a server connection wired together in memory: handshake,
    a request, a response, a handler failure, and the response-size rule."""
    from ipcfast._codec import (
        ClientConnection,
        HandshakeDone,
        PacketType,
        RemoteFailure,
        Request,
        Response,
        ServerConnection,
        encode_header,
    )
    from ipcfast._errors import Result

    value = _hex(VECTORS["default_handshake"])
    server, client = ServerConnection(value, max_message=64), ClientConnection(value, name="mem")
    assert _drive(server, [client.handshake_request()]) == [HandshakeDone(1)]
    assert _drive(client, [server.handshake_reply()]) == [HandshakeDone(1)]
    assert _drive(server, [encode_header(PacketType.REQUEST, 2) + b"hi"]) == [Request(b"hi")]
    assert _drive(client, [encode_header(PacketType.RESPONSE, 2) + b"HI"]) == [Response(b"HI")]
    assert server.response_too_large(64) is None
    too_large = server.response_too_large(65)
    assert too_large is not None and "65 bytes" in too_large
    error = too_large.encode()
    assert _drive(client, [encode_header(PacketType.ERROR, len(error)) + error]) == [
        RemoteFailure(Result.E_TOO_LARGE, too_large[len("ipcfast: too large: ") :])
    ]
