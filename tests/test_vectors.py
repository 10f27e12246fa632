"""Wire protocol v1 test vectors (tests/vectors/protocol_v1.json) against the codecs.

The vectors are normative (docs/protocol.md, section 8). Every codec is
reached through a small adapter with one fixed set of method names, so a
new codec (the pure-Python one) only needs an adapter class and an entry in
CODECS to be checked against the same vectors:

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
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest

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
        return name[len("IPC_VERDICT_"):]

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


#: name -> adapter factory. The pure-Python codec joins here.
CODECS: Dict[str, Callable[[], Any]] = {"c": CCodec}


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
    for key, cases in VECTORS.items():
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
        "OK", "NEED_MORE", "FOREIGN", "MISMATCH", "BAD_VERSION"}
    assert {c["verdict"] for c in VECTORS["handshake_reply"]} == {
        "OK", "NEED_MORE", "FOREIGN", "MISMATCH", "BAD_VERSION"}


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
                    "payload": self.buffer[header.header_size:end].hex(),
                }
            )
            self.buffer = self.buffer[end:]

    def end(self) -> str:
        if self.error:
            return self.error
        return "NEED_MORE" if self.buffer else "OK"


def _splits(data: bytes) -> List[List[bytes]]:
    """The stream in one piece, byte by byte, in fixed-size and random pieces."""
    out = [[data], [data[i:i + 1] for i in range(len(data))]]
    for size in (2, 3, 5, 6, 7):
        out.append([data[i:i + size] for i in range(0, len(data), size)])
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
