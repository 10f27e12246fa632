"""Regenerates tests/vectors/protocol_v1.json (wire protocol v1 test vectors)
and tests/vectors/protocol_shm.json (version 2: the shared-memory packets,
docs/protocol.md section 11; a file of its own so the v1 file stays as it
was).

Run from anywhere:  python tests/vectors/generate_protocol_v1.py

The JSON file is the normative artifact (docs/protocol.md, section 8); this
script only exists so the vectors can be reviewed and extended in one place.
Every case is written out by hand below; the small helper functions here
compute encodings from the rules of docs/protocol.md and are deliberately
simple, not a codec to reuse. When you change a rule, read the diff of the
JSON file before committing it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

OUT = Path(__file__).with_name("protocol_v1.json")
OUT_SHM = Path(__file__).with_name("protocol_shm.json")

TYPES = {
    "REQUEST": 1,
    "RESPONSE": 2,
    "ERROR": 3,
    "COMMAND": 4,
    "CONSOLE_WRITE": 5,
    "EXIT": 6,
    "CANCEL": 7,
}
XOR = 0x5A
DEFAULT_MAX = 64 * 1024 * 1024


def derive(key: bytes) -> bytes:
    return b"\x00" + hashlib.sha256(b"ipcfast\x00" + bytes([1]) + key).digest()[:7]


DEFAULT = derive(b"")
KEYED = derive(b"secret")


def reply_of(value: bytes) -> bytes:
    return bytes(b ^ XOR for b in value)


def header(type_: int, length: int, version: int = 0) -> bytes:
    if version:
        return bytes([type_ | 0x40, version]) + struct.pack("<I", length)
    return bytes([type_]) + struct.pack("<I", length)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)


def build() -> dict:
    doc: dict = {
        "version": 1,
        "description": (
            "ipcfast wire protocol v1 test vectors; schema in docs/protocol.md "
            "section 8. Byte strings are lowercase hex."
        ),
        "constants": {
            "handshake_size": 8,
            "reply_xor": XOR,
            "foreign_reply": 0xFF,
            "max_header_size": 6,
            "default_max_message": DEFAULT_MAX,
            "type_mask": 0x3F,
            "type_extended": 0x40,
            "type_reserved": 0x80,
            "packet_types": TYPES,
            "too_large_error_prefix": "ipcfast: too large: ",
        },
        "default_handshake": DEFAULT.hex(),
    }

    # ---- handshake derivation ------------------------------------------
    deriv = []
    for key in [None, "", "secret", "héllo wörld", "日本語キー"]:
        raw = b"" if key is None else key.encode("utf-8")
        deriv.append({"key": key, "value": derive(raw).hex()})
    for raw in [b"", b"\x00", b"\xff\xfe\x00binary", bytes(range(32))]:
        deriv.append({"key": {"hex": raw.hex()}, "value": derive(raw).hex()})
    doc["handshake_derivation"] = deriv

    # ---- client handshake request encoding ------------------------------
    doc["encode_handshake_request"] = [
        {"value": v.hex(), "version": ver, "hex": (v + bytes([ver])).hex()}
        for v, ver in [(DEFAULT, 1), (DEFAULT, 2), (DEFAULT, 255), (KEYED, 1)]
    ]

    # ---- server side: checking the client's request ---------------------
    hr = []

    def req(name, data, verdict, expected=DEFAULT, client_version=None):
        case = {
            "name": name,
            "hex": data.hex(),
            "expected": expected.hex(),
            "verdict": verdict,
        }
        if verdict == "OK":
            case["client_version"] = client_version
        hr.append(case)

    full = DEFAULT + b"\x01"
    req("empty", b"", "NEED_MORE")
    for n in range(1, 9):
        req(f"prefix_{n}", full[:n], "NEED_MORE")
    req("ok_v1", full, "OK", client_version=1)
    req("ok_v2", DEFAULT + b"\x02", "OK", client_version=2)
    req("ok_v255", DEFAULT + b"\xff", "OK", client_version=255)
    req("ok_keyed", KEYED + b"\x01", "OK", expected=KEYED, client_version=1)
    req("bad_version_0", DEFAULT + b"\x00", "BAD_VERSION")
    req("foreign_1_byte_G", b"G", "FOREIGN")
    req("foreign_1_byte_ff", b"\xff", "FOREIGN")
    req("foreign_1_byte_01", b"\x01", "FOREIGN")
    req("foreign_http", b"GET / HT", "FOREIGN")
    req("foreign_full_length", b"\x01" + DEFAULT[1:] + b"\x01", "FOREIGN")
    req("foreign_before_version_0", b"\x80" + DEFAULT[1:] + b"\x00", "FOREIGN")
    req("mismatch_at_byte_1", DEFAULT[:1] + bytes([DEFAULT[1] ^ 1]), "MISMATCH")
    req("mismatch_at_byte_1_full", flip(full, 1), "MISMATCH")
    req("mismatch_at_byte_4_partial", flip(full[:5], 4), "MISMATCH")
    req("mismatch_at_last_byte", flip(full, 7), "MISMATCH")
    req("mismatch_at_last_byte_no_version", flip(DEFAULT, 7), "MISMATCH")
    req("mismatch_before_version_0", flip(DEFAULT, 7) + b"\x00", "MISMATCH")
    req("mismatch_wrong_key", KEYED + b"\x01", "MISMATCH")
    req("mismatch_echoed_reply_shape", b"\x00" + reply_of(DEFAULT)[1:] + b"\x01", "MISMATCH")
    req("mismatch_all_zero", bytes(9), "MISMATCH")
    # a server expecting a keyed value sees the default one
    req("mismatch_default_vs_keyed", full, "MISMATCH", expected=KEYED)
    doc["handshake_request"] = hr

    # ---- server reply encoding ---------------------------------------------
    doc["encode_handshake_reply"] = [
        {"client_value": v.hex(), "version": ver, "hex": (reply_of(v) + bytes([ver])).hex()}
        for v, ver in [(DEFAULT, 1), (DEFAULT, 3), (KEYED, 1), (bytes(8), 1)]
    ]

    # ---- client side: checking the server's reply -----------------------
    rp = []

    def rep(name, data, verdict, client_value=DEFAULT, server_version=None):
        case = {
            "name": name,
            "client_value": client_value.hex(),
            "hex": data.hex(),
            "verdict": verdict,
        }
        if verdict == "OK":
            case["server_version"] = server_version
        rp.append(case)

    good = reply_of(DEFAULT) + b"\x01"
    rep("empty", b"", "NEED_MORE")
    for n in range(1, 9):
        rep(f"prefix_{n}", good[:n], "NEED_MORE")
    rep("ok_v1", good, "OK", server_version=1)
    rep("ok_v2", reply_of(DEFAULT) + b"\x02", "OK", server_version=2)
    rep("ok_v255", reply_of(DEFAULT) + b"\xff", "OK", server_version=255)
    rep("ok_keyed", reply_of(KEYED) + b"\x01", "OK", client_value=KEYED, server_version=1)
    rep("bad_version_0", reply_of(DEFAULT) + b"\x00", "BAD_VERSION")
    rep("foreign_ff", b"\xff", "FOREIGN")
    rep("foreign_ff_then_more", b"\xff" + good[1:], "FOREIGN")
    rep("echo_of_request_1_byte", DEFAULT[:1], "MISMATCH")
    rep("echo_of_request", DEFAULT + b"\x01", "MISMATCH")
    rep("mismatch_at_byte_3_partial", flip(good[:4], 3), "MISMATCH")
    rep("mismatch_at_last_byte", flip(good, 7), "MISMATCH")
    rep("mismatch_before_version_0", flip(reply_of(DEFAULT), 7) + b"\x00", "MISMATCH")
    rep("mismatch_wrong_key", reply_of(KEYED) + b"\x01", "MISMATCH")
    rep("mismatch_http_text", b"HTTP/1.1", "MISMATCH")
    doc["handshake_reply"] = rp

    # ---- header encoding -----------------------------------------------------
    enc = []
    for t in TYPES.values():
        enc.append({"type": t, "length": 5, "version": 0, "hex": header(t, 5).hex()})
    for t, length, ver in [
        (1, 0, 0),
        (2, 1, 0),
        (1, 0x01020304, 0),
        (2, DEFAULT_MAX, 0),
        (3, 0xFFFFFFFF, 0),
        (1, 0, 1),
        (2, 5, 1),
        (7, 0x01020304, 1),
        (4, 0xFFFFFFFF, 2),
        (5, 256, 255),
    ]:
        enc.append({"type": t, "length": length, "version": ver, "hex": header(t, length, ver).hex()})
    doc["encode_header"] = enc

    # ---- header parsing ------------------------------------------------------
    ph = []

    def parse(name, data, verdict, max_message=DEFAULT_MAX, max_version=1, fields=None):
        case = {
            "name": name,
            "hex": data.hex(),
            "max_message": max_message,
            "max_version": max_version,
            "verdict": verdict,
        }
        if fields is not None:
            t, ver, length = fields
            case.update({"type": t, "version": ver, "length": length, "header_size": 6 if ver else 5})
        ph.append(case)

    for name, t in TYPES.items():
        parse(f"short_{name.lower()}", header(t, 5), "OK", fields=(t, 0, 5))
        parse(f"extended_{name.lower()}", header(t, 5, 1), "OK", fields=(t, 1, 5))
    parse("empty", b"", "NEED_MORE")
    short = header(2, 0x00030201)
    for n in range(1, 5):
        parse(f"short_prefix_{n}", short[:n], "NEED_MORE")
    parse("short_complete", short, "OK", fields=(2, 0, 0x00030201))
    ext = header(2, 0x00030201, 1)
    for n in range(1, 6):
        parse(f"extended_prefix_{n}", ext[:n], "NEED_MORE")
    parse("extended_complete", ext, "OK", fields=(2, 1, 0x00030201))
    parse("extended_prefix_2_bad_version_0", ext[:1] + b"\x00", "BAD_VERSION")
    parse("extended_prefix_2_version_2_above_max", ext[:1] + b"\x02", "BAD_VERSION")
    parse("extended_version_0", bytes([0x41, 0]) + struct.pack("<I", 5), "BAD_VERSION")
    parse("extended_version_2_above_max_1", header(1, 5, 2), "BAD_VERSION")
    parse("extended_version_255_above_max_1", header(1, 5, 255), "BAD_VERSION")
    parse("extended_version_2_max_2", header(1, 5, 2), "OK", max_version=2, fields=(1, 2, 5))
    parse("extended_version_3_above_max_2", header(1, 5, 3), "BAD_VERSION", max_version=2)
    parse("extended_version_255_max_255", header(1, 5, 255), "OK", max_version=255, fields=(1, 255, 5))
    parse("extended_bad_version_before_too_large", header(1, 0xFFFFFFFF, 2), "BAD_VERSION")
    # reserved bit and unknown types are decided from the first byte alone
    parse("reserved_bit_1_byte", b"\x81", "RESERVED_BIT")
    parse("reserved_bit_full", b"\x81" + struct.pack("<I", 5), "RESERVED_BIT")
    parse("reserved_bit_extended", b"\xc1\x01" + struct.pack("<I", 5), "RESERVED_BIT")
    parse("reserved_bit_with_type_0", b"\x80" + struct.pack("<I", 0), "RESERVED_BIT")
    parse("reserved_bit_all_ones", b"\xff", "RESERVED_BIT")
    parse("type_0_1_byte", b"\x00", "UNKNOWN_TYPE")
    parse("type_0_full", header(0, 5), "UNKNOWN_TYPE")
    parse("type_0_extended", header(0, 5, 1), "UNKNOWN_TYPE")
    parse("type_8_1_byte", b"\x08", "UNKNOWN_TYPE")
    parse("type_8_full", header(8, 5), "UNKNOWN_TYPE")
    parse("type_8_extended_bad_version", bytes([0x48, 0]) + struct.pack("<I", 5), "UNKNOWN_TYPE")
    parse("type_63", header(63, 5), "UNKNOWN_TYPE")
    parse("type_63_extended_1_byte", b"\x7f", "UNKNOWN_TYPE")
    parse("type_63_too_large", header(63, 0xFFFFFFFF), "UNKNOWN_TYPE")
    # lengths
    parse("length_0", header(1, 0), "OK", fields=(1, 0, 0))
    parse("length_0_max_0", header(1, 0), "OK", max_message=0, fields=(1, 0, 0))
    parse("length_1_max_0", header(1, 1), "TOO_LARGE", max_message=0, fields=(1, 0, 1))
    parse("length_max_message", header(2, 4096), "OK", max_message=4096, fields=(2, 0, 4096))
    parse("length_max_message_plus_1", header(2, 4097), "TOO_LARGE", max_message=4096, fields=(2, 0, 4097))
    parse("length_default_max", header(1, DEFAULT_MAX), "OK", fields=(1, 0, DEFAULT_MAX))
    parse("length_default_max_plus_1", header(1, DEFAULT_MAX + 1), "TOO_LARGE", fields=(1, 0, DEFAULT_MAX + 1))
    parse("length_2p32_minus_1", header(1, 0xFFFFFFFF), "TOO_LARGE", fields=(1, 0, 0xFFFFFFFF))
    parse("length_2p32_minus_1_extended", header(3, 0xFFFFFFFF, 1), "TOO_LARGE", fields=(3, 1, 0xFFFFFFFF))
    parse("length_2p32_minus_1_allowed", header(2, 0xFFFFFFFF), "OK", max_message=0xFFFFFFFF, fields=(2, 0, 0xFFFFFFFF))
    parse(
        "length_little_endian",
        bytes([1, 0x78, 0x56, 0x34, 0x12]),
        "OK",
        max_message=0xFFFFFFFF,
        fields=(1, 0, 0x12345678),
    )
    parse("length_high_byte_only", bytes([1, 0, 0, 0, 0x80]), "TOO_LARGE", fields=(1, 0, 0x80000000))
    # only the header is examined: payload bytes that follow are ignored
    parse("followed_by_payload", header(2, 3) + b"abc", "OK", fields=(2, 0, 3))
    parse("followed_by_next_header", header(1, 0) + header(1, 0), "OK", fields=(1, 0, 0))
    parse("extended_followed_by_payload", header(2, 2, 1) + b"hi", "OK", fields=(2, 1, 2))
    doc["parse_header"] = ph

    # ---- streams -------------------------------------------------------------
    streams = []

    def stream(name, packets, end="OK", tail=b"", max_message=DEFAULT_MAX, max_version=1):
        data = b"".join(header(t, len(p), v) + p for t, v, p in packets) + tail
        streams.append(
            {
                "name": name,
                "hex": data.hex(),
                "max_message": max_message,
                "max_version": max_version,
                "packets": [{"type": t, "version": v, "payload": p.hex()} for t, v, p in packets],
                "end": end,
            }
        )

    stream(
        "three_requests",
        [(1, 0, b"hello"), (1, 0, b""), (1, 0, bytes(range(256)))],
    )
    stream(
        "mixed_server_packets",
        [(2, 0, b"HELLO"), (3, 0, "handler failed: ünïcode".encode()), (2, 1, b"\x00\x01\x02"), (2, 0, b"")],
    )
    stream(
        "node_packets",
        [(4, 0, b"argv"), (5, 0, b"\x01out\x1b[0m"), (5, 1, b"\x02err"), (7, 0, b""), (6, 0, b"\x00\x00\x00\x00\x00")],
    )
    stream("empty_stream", [])
    stream("payload_looks_like_headers", [(1, 0, header(8, 0xFFFFFFFF) + b"\x80\xff"), (1, 0, header(1, 0))])
    stream("at_max_message", [(1, 0, b"x" * 64), (1, 0, b"y" * 64)], max_message=64)
    stream("ends_inside_payload", [(2, 0, b"ok")], end="NEED_MORE", tail=header(2, 10) + b"part")
    stream("ends_inside_header", [(2, 0, b"ok")], end="NEED_MORE", tail=header(2, 10)[:3])
    stream("ends_inside_extended_header", [(2, 0, b"ok")], end="NEED_MORE", tail=header(2, 10, 1)[:1])
    stream("then_unknown_type", [(1, 0, b"a"), (1, 0, b"b")], end="UNKNOWN_TYPE", tail=header(9, 0))
    stream("then_reserved_bit", [(2, 0, b"a")], end="RESERVED_BIT", tail=b"\x82" + struct.pack("<I", 0))
    stream("then_bad_version", [(2, 1, b"a")], end="BAD_VERSION", tail=header(2, 1, 2) + b"b")
    stream("then_too_large", [(1, 0, b"x" * 64)], end="TOO_LARGE", tail=header(1, 65) + b"x" * 65, max_message=64)
    stream("version_2_negotiated", [(1, 2, b"v2"), (1, 1, b"v1"), (1, 0, b"short")], max_version=2)
    doc["streams"] = streams
    add_node_vectors(doc)
    return doc


# ---- server-node payloads (docs/protocol.md section 10) ----------------------


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def string(value: bytes) -> bytes:
    return u32(len(value)) + value


def command_bytes(flags: int, argv: list, cwd: bytes, env: list, locale: bytes) -> bytes:
    out = u32(flags) + u32(len(argv)) + b"".join(string(a) for a in argv) + string(cwd)
    return out + u32(len(env)) + b"".join(string(e) for e in env) + string(locale)


def add_node_vectors(doc: dict) -> None:
    commands = []

    def command(name: str, flags: int, argv: list, cwd: bytes, env: list, locale: bytes) -> None:
        commands.append(
            {
                "name": name,
                "flags": flags,
                "argv": [a.hex() for a in argv],
                "cwd": cwd.hex(),
                "env": [e.hex() for e in env],
                "locale": locale.hex(),
                "hex": command_bytes(flags, argv, cwd, env, locale).hex(),
            }
        )

    command(
        "python_module",
        0,
        [b"python", b"-m", b"tool", b"--flag"],
        b"/home/u/project",
        [b"HOME=/home/u", b"LANG=C.UTF-8"],
        b"C.UTF-8",
    )
    command(
        "ttys_and_utf8", 0x6, [b"prog", "caf\u00e9".encode()], "/tmp/d\u00e9j\u00e0".encode(), [b"A=", b"B==c"], b""
    )
    command("no_environment", 0x1, [b"x"], b"/", [], b"POSIX")
    command("empty_strings", 0, [b""], b"", [b""], b"")
    command("raw_bytes", 0, [b"\xff\xfe", b"\x1b[31m"], b"/tmp/\x80", [b"K=\xc3"], b"en_US.ISO-8859-1")
    # Descriptors attached (bit 3) and umask 022 present (bit 4, value in bits 16-27),
    # stdout and stderr terminals: docs/protocol.md 10.2.
    command(
        "descriptors_and_umask",
        0x8 | 0x10 | (0o022 << 16) | 0x6,
        [b"python", b"-m", b"black", b"-"],
        b"/home/u/project",
        [b"TZ=Europe/Paris"],
        b"en_US.UTF-8",
    )
    doc["command"] = commands

    good = bytes.fromhex(commands[0]["hex"])
    malformed = []

    def bad(name: str, data: bytes, error: str) -> None:
        malformed.append({"name": name, "hex": data.hex(), "error": error})

    bad("empty", b"", "ends inside flags")
    bad("only_flags", u32(0), "ends inside argv")
    bad("no_argv", command_bytes(0, [], b"/", [], b""), "argv is empty")
    bad("truncated_at_end", good[:-1], "remain")
    bad("trailing_byte", good + b"\x00", "bytes after the last field")
    bad("nul_in_argv", command_bytes(0, [b"a\x00b"], b"/", [], b""), "NUL")
    bad("nul_in_cwd", command_bytes(0, [b"a"], b"/\x00", [], b""), "NUL")
    bad("nul_in_env", command_bytes(0, [b"a"], b"/", [b"A=\x00"], b""), "NUL")
    bad("nul_in_locale", command_bytes(0, [b"a"], b"/", [], b"C\x00"), "NUL")
    bad("forged_argc", u32(0) + u32(0x40000000) + string(b"a"), "cannot fit")
    bad("forged_envc", u32(0) + u32(1) + string(b"a") + string(b"/") + u32(0xFFFFFFFF), "cannot fit")
    bad("string_past_end", u32(0) + u32(1) + u32(100) + b"abc", "remain")
    bad("missing_locale", command_bytes(0, [b"a"], b"/", [], b"")[:-4], "ends inside locale")
    doc["command_malformed"] = malformed

    doc["console_write"] = [
        {"name": "stdout", "hex": "01" + b"hello\n".hex(), "stream": 1, "text": b"hello\n".hex()},
        {
            "name": "stderr_ansi",
            "hex": "02" + b"\x1b[31mred\x1b[0m\r\n".hex(),
            "stream": 2,
            "text": b"\x1b[31mred\x1b[0m\r\n".hex(),
        },
        {"name": "empty_text", "hex": "01", "stream": 1, "text": ""},
        {"name": "empty_payload", "hex": "", "error": "empty payload"},
        {"name": "stream_0", "hex": "0078", "error": "stream 0"},
        {"name": "stream_3", "hex": "0378", "error": "stream 3"},
    ]
    doc["exit"] = [
        {"name": "completed_0", "hex": "0000000000", "exit_code": 0, "exit_type": 0},
        {"name": "completed_3", "hex": "0300000000", "exit_code": 3, "exit_type": 0},
        {"name": "cancelled_130", "hex": "8200000001", "exit_code": 130, "exit_type": 1},
        {"name": "crashed_1", "hex": "0100000002", "exit_code": 1, "exit_type": 2},
        {"name": "busy", "hex": "0000000003", "exit_code": 0, "exit_type": 3},
        {"name": "killed_sigterm", "hex": "0f00000006", "exit_code": 15, "exit_type": 6},
        {"name": "negative", "hex": "feffffff00", "exit_code": -2, "exit_type": 0},
        {"name": "int32_min", "hex": "0000008002", "exit_code": -2147483648, "exit_type": 2},
        {"name": "int32_max", "hex": "ffffff7f00", "exit_code": 2147483647, "exit_type": 0},
        {"name": "unknown_type", "hex": "07000000c8", "exit_code": 7, "exit_type": 200},
        {"name": "too_short", "hex": "00000000", "error": "instead of 5"},
        {"name": "too_long", "hex": "000000000000", "error": "instead of 5"},
    ]
    # CANCEL (10.5): empty is Ctrl-C; one byte names the signal the client got.
    doc["cancel"] = [
        {"name": "empty_is_interrupt", "hex": "", "signal": 2},
        {"name": "hangup", "hex": "01", "signal": 1},
        {"name": "interrupt_spelled_out", "hex": "02", "signal": 2},
        {"name": "quit", "hex": "03", "signal": 3},
        {"name": "terminate", "hex": "0f", "signal": 15},
        {"name": "window_changed", "hex": "1c", "signal": 28},
        {"name": "unknown_signal_9", "hex": "09", "error": "unknown signal 9"},
        {"name": "unknown_signal_0", "hex": "00", "error": "unknown signal 0"},
        {"name": "two_bytes", "hex": "0f00", "error": "instead of 0 or 1"},
    ]


def dumps(doc: dict) -> str:
    """JSON with one vector per line, so diffs show exactly which case changed."""
    lines = ["{"]
    items = list(doc.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, list):
            lines.append(f" {json.dumps(key)}: [")
            for j, entry in enumerate(value):
                inner = "," if j < len(value) - 1 else ""
                lines.append("  " + json.dumps(entry, ensure_ascii=False) + inner)
            lines.append(" ]" + comma)
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    return text


SHM_TYPES = {"SHM_SETUP": 8, "SHM_ACCEPT": 9, "SHM_DECLINE": 10}


def shm_setup(layout: int, region: int, slot: int, flags: int) -> bytes:
    return struct.pack("<IIII", layout, region, slot, flags)


def build_shm() -> dict:
    """Version 2: the shared-memory packets (docs/protocol.md 11)."""
    doc: dict = {
        "version": 2,
        "constants": {
            "shm_protocol_version": 2,
            "packet_types": SHM_TYPES,
            "setup_size": 16,
            "layout": 1,
            "header_size": 192,
            "min_slot": 64,
            "max_slot": 64 * 1024 * 1024,
            "magic": "4953484d",
            "request_channel_offset": 64,
            "response_channel_offset": 128,
            "on_socket_flag": 1,
        },
    }
    # Headers: the new types exist from version 2 on, nowhere else.
    ph = []
    for name, t in SHM_TYPES.items():
        for ver in (0, 2):
            ph.append(
                {
                    "name": f"{name.lower()}_v{ver or 'short'}_max_2",
                    "hex": header(t, 16, ver).hex(),
                    "max_message": DEFAULT_MAX,
                    "max_version": 2,
                    "verdict": "OK",
                    "type": t,
                    "version": ver,
                    "length": 16,
                    "header_size": 6 if ver else 5,
                }
            )
        ph.append(
            {
                "name": f"{name.lower()}_max_1",
                "hex": header(t, 16).hex(),
                "max_message": DEFAULT_MAX,
                "max_version": 1,
                "verdict": "UNKNOWN_TYPE",
            }
        )
    ph.append(
        {
            "name": "type_11_max_2",
            "hex": header(11, 0).hex(),
            "max_message": DEFAULT_MAX,
            "max_version": 2,
            "verdict": "UNKNOWN_TYPE",
        }
    )
    ph.append(
        {
            "name": "type_63_max_255",
            "hex": header(63, 0).hex(),
            "max_message": DEFAULT_MAX,
            "max_version": 255,
            "verdict": "UNKNOWN_TYPE",
        }
    )
    ph.append(
        {
            "name": "request_v2_max_2",
            "hex": header(1, 3, 2).hex(),
            "max_message": DEFAULT_MAX,
            "max_version": 2,
            "verdict": "OK",
            "type": 1,
            "version": 2,
            "length": 3,
            "header_size": 6,
        }
    )
    doc["parse_header"] = ph
    doc["region_size"] = [
        {"slot_size": slot, "region_size": 192 + 2 * slot if 64 <= slot <= 64 * 1024 * 1024 else 0}
        for slot in (0, 63, 64, 4096, 256 * 1024, 64 * 1024 * 1024, 64 * 1024 * 1024 + 1, 0xFFFFFFFF)
    ]
    good = [("default_256k", 256 * 1024), ("min_64", 64), ("max_64m", 64 * 1024 * 1024), ("page_4k", 4096)]
    doc["shm_setup"] = [
        {
            "name": name,
            "hex": shm_setup(1, 192 + 2 * slot, slot, 0).hex(),
            "layout": 1,
            "region_size": 192 + 2 * slot,
            "slot_size": slot,
            "flags": 0,
        }
        for name, slot in good
    ]
    doc["shm_setup_malformed"] = [
        {"name": "empty", "hex": "", "error": "has 0 bytes"},
        {"name": "15_bytes", "hex": shm_setup(1, 8384, 4096, 0)[:15].hex(), "error": "has 15 bytes"},
        {"name": "17_bytes", "hex": (shm_setup(1, 8384, 4096, 0) + b"\x00").hex(), "error": "has 17 bytes"},
        {"name": "layout_0", "hex": shm_setup(0, 8384, 4096, 0).hex(), "error": "layout 0"},
        {"name": "layout_2", "hex": shm_setup(2, 8384, 4096, 0).hex(), "error": "layout 2"},
        {"name": "flags_1", "hex": shm_setup(1, 8384, 4096, 1).hex(), "error": "flags 0x1"},
        {"name": "slot_63", "hex": shm_setup(1, 192 + 126, 63, 0).hex(), "error": "slot size 63 out of range"},
        {"name": "slot_0", "hex": shm_setup(1, 192, 0, 0).hex(), "error": "slot size 0 out of range"},
        {
            "name": "slot_too_large",
            "hex": shm_setup(1, 0xFFFFFFFF, 64 * 1024 * 1024 + 1, 0).hex(),
            "error": "out of range",
        },
        {"name": "region_one_short", "hex": shm_setup(1, 8383, 4096, 0).hex(), "error": "does not match"},
        {"name": "region_one_long", "hex": shm_setup(1, 8385, 4096, 0).hex(), "error": "does not match"},
        {"name": "region_wraps", "hex": shm_setup(1, 0, 0x80000000, 0).hex(), "error": "out of range"},
    ]
    # The exchange of docs/protocol.md 11.5, byte for byte.
    hs = derive(b"")
    setup = shm_setup(1, 192 + 2 * 4096, 4096, 0)
    doc["exchange"] = [
        {
            "name": "accepted",
            "client": (hs + b"\x02").hex() + (header(8, 16) + setup).hex(),
            "server": (reply_of(hs) + b"\x02").hex() + header(9, 0).hex(),
            "version": 2,
            "uses_shm": True,
        },
        {
            "name": "declined",
            "client": (hs + b"\x02").hex() + (header(8, 16) + setup).hex(),
            "server": (reply_of(hs) + b"\x02").hex() + (header(10, 4) + b"busy").hex(),
            "version": 2,
            "uses_shm": False,
        },
        {
            "name": "v1_server",
            "client": (hs + b"\x02").hex(),
            "server": (reply_of(hs) + b"\x01").hex(),
            "version": 1,
            "uses_shm": False,
        },
    ]
    return doc


def main() -> None:
    text = dumps(build())
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    OUT_SHM.write_text(dumps(build_shm()), encoding="utf-8")
    print(f"wrote {OUT_SHM}")


if __name__ == "__main__":
    main()
