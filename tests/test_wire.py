"""Both backends on the wire, byte for byte (docs/protocol.md).

Servers are driven by a raw socket that plays the client; clients are
pointed at a scripted fake server that plays the server. Where a peer
misbehaves, the native and the pure client must fail the same way, with
the same exception, code and message.

This is the version-1 wire (the socket path): every peer here is made with
shm=False, as the shared-memory default would otherwise negotiate version 2.
Version 2 and the shared-memory path are tests/test_shm.py's.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import ipcfast
import pytest
from conftest import BACKENDS, MakeClient, MakeServer, echo, posix_only, recv_exactly

pytestmark = posix_only


@pytest.fixture
def make_server(server_backend: str) -> MakeServer:
    """ipcfast.Server on the version-1 wire (shm=False)."""

    def make(*args: Any, **kwargs: Any) -> ipcfast.Server:
        return ipcfast.Server(*args, backend=server_backend, shm=False, **kwargs)

    return make


@pytest.fixture
def make_client(client_backend: str) -> MakeClient:
    """ipcfast.Client on the version-1 wire (shm=False)."""

    def make(*args: Any, **kwargs: Any) -> ipcfast.Client:
        return ipcfast.Client(*args, backend=client_backend, shm=False, **kwargs)

    return make


VALUE = ipcfast.handshake_value()
REPLY = bytes(b ^ 0x5A for b in VALUE) + b"\x01"
REQUEST, RESPONSE, ERROR = 1, 2, 3


def packet(type_: int, payload: bytes = b"", version: int = 0) -> bytes:
    if version:
        return bytes([type_ | 0x40, version]) + len(payload).to_bytes(4, "little") + payload
    return bytes([type_]) + len(payload).to_bytes(4, "little") + payload


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_packet(sock: socket.socket) -> Tuple[int, bytes]:
    first = recv_exactly(sock, 1)[0]
    if first & 0x40:
        recv_exactly(sock, 1)
    length = int.from_bytes(recv_exactly(sock, 4), "little")
    return first & 0x3F, recv_exactly(sock, length)


def raw_client(address: str, handshake: bytes = VALUE + b"\x01") -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)
    if handshake:
        sock.sendall(handshake)
        assert recv_exactly(sock, 9) == REPLY
    return sock


# ---- servers, driven by hand -----------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(echo_server: ipcfast.Server) -> None:
    with raw_client(echo_server.address) as sock:
        bodies = [b"one", b"", b"three" * 1000, os.urandom(70000)]
        stream = b"".join(packet(REQUEST, b, version=1 if i % 2 else 0) for i, b in enumerate(bodies))
        sock.sendall(stream)
        for body in bodies:
            assert read_packet(sock) == (RESPONSE, body)


def test_handshake_and_first_request_in_one_write(echo_server: ipcfast.Server) -> None:
    with raw_client(echo_server.address, handshake=b"") as sock:
        sock.sendall(VALUE + b"\x01" + packet(REQUEST, b"early"))
        assert recv_exactly(sock, 9) == REPLY
        assert read_packet(sock) == (RESPONSE, b"early")


def test_handshake_byte_by_byte(echo_server: ipcfast.Server) -> None:
    with raw_client(echo_server.address, handshake=b"") as sock:
        for b in VALUE + b"\x01":
            sock.sendall(bytes([b]))
            time.sleep(0.005)
        assert recv_exactly(sock, 9) == REPLY
        for b in packet(REQUEST, b"slow"):
            sock.sendall(bytes([b]))
        assert read_packet(sock) == (RESPONSE, b"slow")


def test_a_newer_client_version_negotiates_down_to_1(echo_server: ipcfast.Server) -> None:
    with raw_client(echo_server.address, handshake=b"") as sock:
        sock.sendall(VALUE + b"\x07")
        assert recv_exactly(sock, 9) == REPLY  # the server speaks 1
        sock.sendall(packet(REQUEST, b"v1", version=1))
        assert read_packet(sock) == (RESPONSE, b"v1")
        sock.sendall(packet(REQUEST, b"v2", version=2))  # above the negotiated version
        rest = recv_all(sock)
        assert rest == b"" or rest == packet(
            ERROR, b"ipcfast: protocol error: malformed packet header (IPC_VERDICT_BAD_VERSION, first byte 0x41)"
        ), rest


def test_handshake_version_0_gets_eof(echo_server: ipcfast.Server) -> None:
    with raw_client(echo_server.address, handshake=b"") as sock:
        sock.sendall(VALUE + b"\x00")
        assert recv_all(sock) == b""


@pytest.mark.parametrize(
    "sent, text",
    [
        (packet(RESPONSE, b"x"), b"ipcfast: protocol error: packet type 2 is not accepted by this server"),
        (packet(7), b"ipcfast: protocol error: packet type 7 is not accepted by this server"),
        (
            b"\x82\0\0\0\0",
            b"ipcfast: protocol error: malformed packet header (IPC_VERDICT_RESERVED_BIT, first byte 0x82)",
        ),
        (
            b"\x08\0\0\0\0",
            b"ipcfast: protocol error: malformed packet header (IPC_VERDICT_UNKNOWN_TYPE, first byte 0x08)",
        ),
    ],
    ids=["response", "cancel", "reserved-bit", "type-8"],
)
def test_unexpected_packets_are_refused_with_the_same_text(
    echo_server: ipcfast.Server, sent: bytes, text: bytes
) -> None:
    with raw_client(echo_server.address) as sock:
        sock.sendall(packet(REQUEST, b"ok") + sent)
        assert read_packet(sock) == (RESPONSE, b"ok")
        assert recv_all(sock) == packet(ERROR, text)


def test_too_large_request_gets_the_exact_error_then_eof(name: str, make_server: MakeServer) -> None:
    with make_server(name, echo, max_message=4096) as server:
        with raw_client(server.address) as sock:
            sock.sendall(packet(REQUEST, b"a" * 4096))
            assert read_packet(sock) == (RESPONSE, b"a" * 4096)
            # Only the header: the server must answer without waiting for the payload.
            sock.sendall(b"\x01\x01\x10\x00\x00")
            assert recv_all(sock) == packet(
                ERROR,
                b"ipcfast: too large: the request of 4097 bytes exceeds the server's max_message of 4096 bytes",
            )


def test_handler_failures_travel_as_error_packets(name: str, make_server: MakeServer) -> None:
    def handler(request: bytes) -> Any:
        if request == b"raise":
            raise LookupError("nothing under 'x'")
        if request == b"none":
            return None
        return b"z" * 50

    with make_server(name, handler, max_message=10) as server:
        with raw_client(server.address) as sock:
            sock.sendall(packet(REQUEST, b"raise"))
            assert read_packet(sock) == (ERROR, b"LookupError: nothing under 'x'")
            sock.sendall(packet(REQUEST, b"none"))
            assert read_packet(sock) == (
                ERROR,
                b"TypeError: handler returned NoneType, expected bytes-like (bytes, bytearray, memoryview)",
            )
            sock.sendall(packet(REQUEST, b"big"))
            assert read_packet(sock) == (
                ERROR,
                b"ipcfast: too large: the response of 50 bytes exceeds the server's max_message of 10 bytes",
            )
            sock.sendall(packet(REQUEST, b"raise"))  # the connection stays usable
            assert read_packet(sock)[0] == ERROR


def test_a_client_vanishing_mid_packet_disturbs_nobody(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    for partial in (packet(REQUEST, b"x" * 100)[:50], b"\x01\x64", b"\x41", VALUE[:4]):
        handshake = b"" if partial == VALUE[:4] else VALUE + b"\x01"
        with raw_client(echo_server.address, handshake=handshake) as sock:
            sock.sendall(partial)
    with make_client(echo_server.name) as client:
        assert client.request(b"still here") == b"still here"


def test_stop_drains_the_last_response(name: str, make_server: MakeServer) -> None:
    """A response written just before stop() still reaches the client, then EOF."""
    entered = threading.Event()

    def slow(request: bytes) -> bytes:
        entered.set()
        time.sleep(0.2)
        return b"last words"

    server = make_server(name, slow)
    server.start()
    try:
        with raw_client(server.address) as sock:
            sock.sendall(packet(REQUEST, b"go"))
            assert entered.wait(10)
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            assert recv_all(sock) == packet(RESPONSE, b"last words")
            stopper.join(10)
    finally:
        server.stop()


# ---- clients, against a scripted fake server ----------------------------------------------

Script = Callable[[socket.socket], None]


class FakeServer:
    """Listens on a socket path; runs ``script`` on each connection."""

    def __init__(self, path: str, script: Script) -> None:
        self.path = path
        self.script = script
        self.errors: List[BaseException] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.02)
        self.stopping = False
        self.threads: List[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            t = threading.Thread(target=self._run, args=(conn,))
            t.start()
            self.threads.append(t)

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            self.script(conn)
        except (EOFError, OSError):
            pass
        except BaseException as exc:  # reported by close()
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.stopping = True
        self.acceptor.join(10)
        for t in self.threads:
            t.join(10)
        self.sock.close()
        os.unlink(self.path)
        assert not self.errors, self.errors

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def handshake_then(*answers: bytes, close: bool = True) -> Script:
    """A server that shakes hands, then answers successive requests with
    ``answers`` (raw bytes), then closes (or waits for the client to)."""

    def script(conn: socket.socket) -> None:
        assert recv_exactly(conn, 9) == VALUE + b"\x01"
        conn.sendall(REPLY)
        for answer in answers:
            read_packet(conn)
            conn.sendall(answer)
        if not close:
            recv_all(conn)

    return script


def reply_with(data: bytes, then: str = "close") -> Script:
    """A server that answers the handshake with ``data``."""

    def script(conn: socket.socket) -> None:
        recv_exactly(conn, 9)
        if data:
            conn.sendall(data)
        if then == "wait":
            recv_all(conn)

    return script


#: name -> (the fake server's script, connect_timeout, exception class, start of the message)
CONNECT_CASES: Dict[str, Tuple[Script, float, Any, str]] = {
    "foreign": (
        reply_with(b"\xff"),
        5,
        ipcfast.HandshakeError,
        "the server '{name}' rejected our handshake as foreign",
    ),
    "mismatch": (
        reply_with(VALUE + b"\x01", then="wait"),
        5,
        ipcfast.HandshakeError,
        "'{name}' answered the handshake with unexpected bytes: not an ipcfast server, or one with another key",
    ),
    "bad-version": (reply_with(REPLY[:8] + b"\x00", then="wait"), 5, ipcfast.HandshakeError, "'{name}' answered"),
    "closed": (
        reply_with(b""),
        5,
        ipcfast.HandshakeError,
        (
            "the server '{name}' closed the connection during the handshake: it uses another key or protocol "
            "version, refused this user, or is stopping"
        ),
    ),
    "closed-mid-reply": (reply_with(REPLY[:5]), 5, ipcfast.HandshakeError, "the server '{name}' closed"),
    "silent": (
        reply_with(b"", then="wait"),
        0.3,
        ipcfast.ServerBusy,
        (
            "the server '{name}' took the connection but did not answer the handshake in time: all its "
            "connection slots are probably busy; retry later or raise max_clients"
        ),
    ),
}


def _outcome(call: Callable[[], Any]) -> Tuple[str, str, str]:
    try:
        result = call()
    except ipcfast.IPCError as exc:
        return type(exc).__name__, exc.code, str(exc)
    return "ok", "", repr(result)


@pytest.mark.parametrize("case", sorted(CONNECT_CASES))
def test_connect_to_a_misbehaving_server(case: str, tmp_path: Any, make_client: MakeClient) -> None:
    script, budget, cls, message = CONNECT_CASES[case]
    path = str(tmp_path / "fake.sock")
    with FakeServer(path, script):
        t0 = time.monotonic()
        with pytest.raises(cls) as info:
            make_client(path, connect_timeout=budget)
        assert time.monotonic() - t0 < budget + 2
    assert str(info.value).startswith(message.format(name=path)), str(info.value)


def test_a_newer_server_version_negotiates_down_to_1(tmp_path: Any, make_client: MakeClient) -> None:
    path = str(tmp_path / "fake.sock")

    def script(conn: socket.socket) -> None:
        recv_exactly(conn, 9)
        conn.sendall(REPLY[:8] + b"\x09")
        assert read_packet(conn) == (REQUEST, b"q")
        conn.sendall(packet(RESPONSE, b"a", version=1))
        recv_all(conn)

    with FakeServer(path, script):
        with make_client(path) as client:
            assert client.version == 1
            assert client.request(b"q") == b"a"


#: name -> (server's answer to the first request, client max_message, exception class or None, message,
#:          whether the connection is closed afterwards)
REQUEST_CASES: Dict[str, Tuple[bytes, int, Any, str, bool]] = {
    "response-in-pieces": (packet(RESPONSE, b"abc" * 1000), 2**26, None, "", False),
    "extended-response": (packet(RESPONSE, b"ext", version=1), 2**26, None, "", False),
    "remote-error": (packet(ERROR, "it broke: ü".encode()), 2**26, ipcfast.RemoteError, "it broke: ü", False),
    "empty-error": (packet(ERROR), 2**26, ipcfast.RemoteError, "the server's handler failed without a message", False),
    "too-large-error": (
        packet(ERROR, b"ipcfast: too large: the request of 9 bytes exceeds ..."),
        2**26,
        ipcfast.MessageTooLarge,
        "the request of 9 bytes exceeds ...",
        True,
    ),
    "response-above-max-message": (
        packet(RESPONSE, b"x" * 101),
        100,
        ipcfast.MessageTooLarge,
        "the response of 101 bytes exceeds this client's max_message of 100 bytes; raise max_message",
        True,
    ),
    "exit-packet": (
        packet(6, b"\0" * 4),
        2**26,
        ipcfast.ProtocolError,
        "unexpected packet type 6 from the server",
        True,
    ),
    "request-packet": (packet(REQUEST), 2**26, ipcfast.ProtocolError, "unexpected packet type 1 from the server", True),
    "reserved-bit": (
        b"\x82\x01\x00\x00\x00x",
        2**26,
        ipcfast.ProtocolError,
        "malformed packet header (IPC_VERDICT_RESERVED_BIT, first byte 0x82)",
        True,
    ),
    "version-above-negotiated": (
        packet(RESPONSE, b"v2", version=2),
        2**26,
        ipcfast.ProtocolError,
        "malformed packet header (IPC_VERDICT_BAD_VERSION, first byte 0x42)",
        True,
    ),
    "eof-mid-response": (packet(RESPONSE, b"abcdef")[:8], 2**26, ipcfast.ConnectionClosed, "the peer closed", True),
    "eof-no-response": (b"", 2**26, ipcfast.ConnectionClosed, "the peer closed the connection", True),
}


def _answer_in_pieces(answer: bytes, conn: socket.socket) -> None:
    for i in range(0, len(answer), 7):
        conn.sendall(answer[i : i + 7])
        if i < 50:
            time.sleep(0.001)


@pytest.mark.parametrize("case", sorted(REQUEST_CASES))
def test_request_against_a_misbehaving_server(case: str, tmp_path: Any, make_client: MakeClient) -> None:
    answer, max_message, cls, message, closes = REQUEST_CASES[case]
    path = str(tmp_path / "fake.sock")

    def script(conn: socket.socket) -> None:
        assert recv_exactly(conn, 9) == VALUE + b"\x01"
        conn.sendall(REPLY)
        assert read_packet(conn) == (REQUEST, b"first")
        _answer_in_pieces(answer, conn)
        if answer and answer[0] == ERROR and not closes:
            assert read_packet(conn) == (REQUEST, b"second")
            conn.sendall(packet(RESPONSE, b"fine"))
        if answer and cls is None:
            recv_all(conn)

    with FakeServer(path, script):
        with make_client(path, max_message=max_message) as client:
            if cls is None:
                expected = answer[6:] if answer[0] & 0x40 else answer[5:]
                assert client.request(b"first", timeout=10) == expected
                return
            with pytest.raises(cls) as info:
                client.request(b"first", timeout=10)
            assert str(info.value).startswith(message), str(info.value)
            if closes:
                with pytest.raises(ipcfast.ConnectionClosed, match="the connection is closed"):
                    client.request(b"second", timeout=10)
            else:
                assert client.request(b"second", timeout=10) == b"fine"


def test_request_timeout_against_a_silent_server(tmp_path: Any, make_client: MakeClient) -> None:
    path = str(tmp_path / "fake.sock")
    with FakeServer(path, handshake_then(close=False)):
        with make_client(path) as client:
            with pytest.raises(ipcfast.Timeout) as info:
                client.request(b"anyone?", timeout=0.2)
            assert str(info.value) == (
                "no response within the timeout; the connection is closed because the late response would be "
                "read by the next request"
            )
            with pytest.raises(ipcfast.ConnectionClosed) as closed:
                client.request(b"again")
            assert str(closed.value) == f"the connection is closed ({info.value}); open a new client"


def test_both_clients_report_failures_alike(tmp_path: Any) -> None:
    """Every misbehaving-server case, with both client backends: the same
    exception class, code and message (the path is the same for both)."""
    if ipcfast.native_import_error() is not None:
        pytest.skip("needs both backends")
    path = str(tmp_path / "fake.sock")
    outcomes: Dict[str, Dict[str, Tuple[str, str, str]]] = {}
    for case, (script, budget, _, _) in CONNECT_CASES.items():
        with FakeServer(path, script):
            outcomes[case] = {
                b: _outcome(lambda b=b, t=budget: ipcfast.Client(path, connect_timeout=t, backend=b, shm=False))
                for b in BACKENDS
            }
    for case, (answer, max_message, _, _, _) in REQUEST_CASES.items():
        for b in BACKENDS:
            # The fake server answers once, then waits for the client to close
            # (or closes at once, for the end-of-stream cases).
            with FakeServer(path, handshake_then(answer, close=case.startswith("eof"))):
                with ipcfast.Client(path, max_message=max_message, backend=b, shm=False) as client:
                    first = _outcome(lambda: client.request(b"first", timeout=10))
                    second = _outcome(lambda: client.request(b"second", timeout=0.2))
                outcomes.setdefault(case, {})[b] = first + second
    outcomes["not-found"] = {
        b: _outcome(lambda b=b: ipcfast.Client(path, connect_timeout=0.05, backend=b, shm=False)) for b in BACKENDS
    }
    differ = {case: o for case, o in outcomes.items() if o["native"] != o["pure"]}
    assert not differ, differ


def test_a_closed_client_says_so(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    client = make_client(echo_server.name)
    client.close()
    with pytest.raises(ipcfast.ConnectionClosed) as info:
        client.request(b"x")
    assert str(info.value) == f"the client for {echo_server.name!r} is closed: open a new Client"
    with pytest.raises(ipcfast.ConnectionClosed):
        client.version  # noqa: B018


def test_request_timeout_zero_always_times_out(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    with make_client(echo_server.name) as client:
        with pytest.raises(ipcfast.Timeout):
            client.request(b"x", timeout=0)


def test_connect_to_a_path_that_is_not_a_socket(tmp_path: Any, make_client: MakeClient) -> None:
    path = str(tmp_path / "plain-file")
    with open(path, "w"):
        pass
    with pytest.raises(ipcfast.ServerNotFound):
        make_client(path, connect_timeout=0.1)
