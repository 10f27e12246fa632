"""Fault injection against running servers (SPEC section 8, reliability).

Real processes and real sockets: clients are killed with SIGKILL at every
stage of a request, stall half-way through a header or a payload, send
garbage; servers are stopped and killed under load. Each test asserts what
the survivors see: the server frees the slot and keeps serving everybody
else, and every client gets its answer or a clear error, never a hang.

Runs once per server backend (and, where an ipcfast client is the thing
under test, once per client backend).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

import ipcfast
from conftest import (
    MakeClient,
    MakeServer,
    ServerProcess,
    child_env,
    echo,
    linux_only,
    posix_only,
    recv_exactly,
)

pytestmark = posix_only

VALUE = ipcfast.handshake_value()
HELLO = VALUE + b"\x01"
REPLY = bytes(b ^ 0x5A for b in VALUE)  # then the server's highest version
#: Vs: 1 from the pure server, 2 from a native one (shared memory is on by default).
SERVER_VERSIONS = (1, 2)
REQUEST, RESPONSE, ERROR = 1, 2, 3
TOO_LARGE_PREFIX = b"ipcfast: too large: "
PROTOCOL_ERROR_PREFIX = b"ipcfast: protocol error: "


def header(type_byte: int, length: int) -> bytes:
    return bytes([type_byte]) + length.to_bytes(4, "little")


def recv_until_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def raw(address: str, handshake: bool = True, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    if handshake:
        sock.sendall(HELLO)
        reply = recv_exactly(sock, 9)
        assert reply[:8] == REPLY and reply[8] in SERVER_VERSIONS, reply
    return sock


def assert_refused_then_eof(sock: socket.socket) -> bytes:
    """The server closes: at most one ERROR packet first. Returns its text."""
    rest = recv_until_eof(sock)
    if not rest:
        return b""
    assert rest[0] == ERROR, rest[:40]
    length = int.from_bytes(rest[1:5], "little")
    assert len(rest) == 5 + length, "more than one ERROR packet before the close"
    return rest[5:]


def served(name: str, make_client: Optional[MakeClient] = None, payload: bytes = b"still here") -> None:
    """A fresh client is served at once."""
    client = make_client(name, connect_timeout=5) if make_client else ipcfast.Client(name, connect_timeout=5)
    with client:
        assert client.request(payload, timeout=5) == payload


# ---- clients killed at every stage --------------------------------------------------------

# A raw client in its own process, so SIGKILL hits it at a known point.
# It prints a line once it reached its stage, then waits to be killed.
KILLED_CLIENT = r"""
import socket, sys, time
address, stage = sys.argv[1], sys.argv[2]
hello = bytes.fromhex(sys.argv[3])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(address)
if stage == "before_handshake":
    sock.sendall(hello[:4])
else:
    sock.sendall(hello)
    reply = b""
    while len(reply) < 9:
        reply += sock.recv(9 - len(reply))
    if stage == "during":
        sock.sendall(b"\x01" + (4).to_bytes(4, "little") + b"hold")
    elif stage == "after":
        sock.sendall(b"\x01" + (2).to_bytes(4, "little") + b"ok")
        got = b""
        while len(got) < 7:
            got += sock.recv(7 - len(got))
    elif stage == "mid_large":
        size = 8 << 20
        sock.sendall(b"\x01" + size.to_bytes(4, "little") + b"x" * (size // 2))
print("STAGE", flush=True)
time.sleep(60)
"""

STAGES = ["before_handshake", "before_request", "during", "after", "mid_large"]


@pytest.mark.parametrize("stage", STAGES)
def test_client_killed_at_any_stage_frees_its_slot(stage: str, name: str, make_server: MakeServer) -> None:
    """SIGKILL before the handshake completes, before, during and after a
    request, and half-way through an 8 MiB request: with max_clients=2 and
    one survivor connected, the killed client's slot comes back (a new
    client fits), the survivor keeps being served, the handler of the
    interrupted request finishes normally."""
    entered = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def handler(request: bytes) -> bytes:
        if request == b"hold":
            entered.set()
            release.wait(10)
            finished.set()
        return request

    with make_server(name, handler, max_clients=2, handshake_timeout=30) as server:
        survivor = ipcfast.Client(name, connect_timeout=5)
        try:
            assert survivor.request(b"s0") == b"s0"
            proc = subprocess.Popen(
                [sys.executable, "-c", KILLED_CLIENT, server.address, stage, HELLO.hex()],
                stdout=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "STAGE"
                if stage == "during":
                    assert entered.wait(10), "the request never reached the handler"
                # Both slots are taken now: a third client must wait.
                with pytest.raises(ipcfast.ServerBusy):
                    ipcfast.Client(name, connect_timeout=0.3)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stdout:
                    proc.stdout.close()
            assert survivor.request(b"s1") == b"s1"
            release.set()
            if stage == "during":
                assert finished.wait(10)
            # The slot is free again (before_handshake: without waiting for
            # the 30 s handshake timeout, since the peer's close is noticed).
            t0 = time.monotonic()
            with ipcfast.Client(name, connect_timeout=5) as fresh:
                assert fresh.request(b"fresh") == b"fresh"
            assert time.monotonic() - t0 < 3.0
            assert survivor.request(b"s2") == b"s2"
        finally:
            release.set()
            survivor.close()


# ---- stalled clients ----------------------------------------------------------------------


def test_stalled_clients_stall_nobody(name: str, make_server: MakeServer) -> None:
    """Clients that stop half-way through a handshake, a packet header or a
    payload hold only their own slot: four other clients are served at full
    speed meanwhile; the stalled handshake is dropped after the handshake
    timeout; the stalled packets stay connected (no packet timeout) until
    they go away, and then their slots come back."""
    with make_server(name, echo, max_clients=8, handshake_timeout=0.5) as server:
        stalled_handshake = raw(server.address, handshake=False)
        stalled_handshake.sendall(HELLO[:5])
        half_header = raw(server.address)
        half_header.sendall(header(REQUEST, 100)[:2])
        half_payload = raw(server.address)
        half_payload.sendall(header(REQUEST, 100) + b"y" * 50)
        t_stall = time.monotonic()

        errors: List[BaseException] = []
        latencies: List[float] = []

        def busy(i: int) -> None:
            try:
                with ipcfast.Client(name, connect_timeout=5) as client:
                    for j in range(200):
                        t0 = time.monotonic()
                        data = b"%d-%d" % (i, j)
                        assert client.request(data, timeout=5) == data
                        latencies.append(time.monotonic() - t0)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=busy, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert len(latencies) == 800
        assert max(latencies) < 1.0, f"a request waited {max(latencies):.2f} s behind a stalled client"

        # The incomplete handshake is dropped after its timeout (0.5 s).
        assert stalled_handshake.recv(16) == b""
        assert time.monotonic() - t_stall < 3.0
        # The half packets are still connected: no byte came back, no EOF.
        for sock in (half_header, half_payload):
            sock.settimeout(0.2)
            with pytest.raises(socket.timeout):
                sock.recv(16)
        # Completing the half payload still gets its answer.
        half_payload.settimeout(5)
        half_payload.sendall(b"y" * 50)
        kind = recv_exactly(half_payload, 5)[0]
        assert kind == RESPONSE
        for sock in (stalled_handshake, half_header, half_payload):
            sock.close()
        # All 8 slots are usable again.
        clients = [ipcfast.Client(name, connect_timeout=5) for _ in range(8)]
        try:
            for i, c in enumerate(clients):
                assert c.request(b"%d" % i) == b"%d" % i
        finally:
            for c in clients:
                c.close()


# ---- servers stopped or killed under load -------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_server_stopped_or_killed_under_load(how: str, name: str, server_backend: str, client_backend: str) -> None:
    """16 clients hammer a server process (some requests take 50 ms in the
    handler); the server is stopped (stdin closed: Server.stop) or killed
    (SIGKILL). Every client ends with its answers followed by
    ConnectionClosed, within about a second, and no answer is wrong."""
    outcomes: Dict[int, Tuple[str, float, int]] = {}
    lock = threading.Lock()
    started = threading.Barrier(17)

    with ServerProcess(name, backend=server_backend) as server:

        def hammer(i: int) -> None:
            ok = 0
            client = ipcfast.Client(name, connect_timeout=10, backend=client_backend)
            started.wait(20)
            try:
                while True:
                    if (ok + i) % 5 == 0:
                        assert client.request(b"sleep:0.05") == b"slept"
                    else:
                        data = b"client %d request %d" % (i, ok)
                        assert client.request(data) == data[::-1], "a wrong answer"
                    ok += 1
            except ipcfast.ConnectionClosed:
                kind = "closed"
            except BaseException as exc:  # noqa: BLE001
                kind = f"{type(exc).__name__}: {exc}"
            finally:
                client.close()
            with lock:
                outcomes[i] = (kind, time.monotonic(), ok)

        threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(16)]
        for t in threads:
            t.start()
        started.wait(20)
        time.sleep(0.5)
        t_fault = time.monotonic()
        if how == "kill":
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
        else:
            assert server.proc.stdin is not None
            server.proc.stdin.close()
        for t in threads:
            t.join(10)
        hung = [i for i, t in enumerate(threads) if t.is_alive()]
        assert not hung, f"clients {hung} hang after the server was {how}ped"
        if how == "stop":
            assert server.proc.wait(10) == 0

    assert len(outcomes) == 16
    bad = {i: o for i, o in outcomes.items() if o[0] != "closed"}
    assert not bad, f"clients that did not end with ConnectionClosed: {bad}"
    late = {i: round(o[1] - t_fault, 2) for i, o in outcomes.items() if o[1] - t_fault > 1.6}
    assert not late, f"clients that learned of the {how} late (seconds): {late}"
    assert all(o[2] > 0 for o in outcomes.values()), "some client was never served before the fault"


# ---- handlers -------------------------------------------------------------------------------


def test_slow_and_failing_handlers_leave_the_others_alone(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    """One request sits 2 s in the handler, others raise or return the wrong
    type: each of those gets its own clear error (or answer), and meanwhile
    a fourth client does 200 round trips without waiting."""
    slow_entered = threading.Event()

    def handler(request: bytes) -> Any:
        if request == b"slow":
            slow_entered.set()
            time.sleep(2.0)
            return b"slow done"
        if request == b"raise":
            raise ValueError("handler exploded on purpose")
        if request == b"wrong":
            return 12345
        return request

    with make_server(name, handler):
        results: Dict[str, Any] = {}

        def slow() -> None:
            with make_client(name) as c:
                results["slow"] = c.request(b"slow", timeout=10)

        t = threading.Thread(target=slow)
        t.start()
        assert slow_entered.wait(5)
        t0 = time.monotonic()
        with make_client(name) as c:
            with pytest.raises(ipcfast.RemoteError, match="handler exploded on purpose"):
                c.request(b"raise")
            with pytest.raises(ipcfast.RemoteError, match="int"):
                c.request(b"wrong")
            assert c.request(b"after errors") == b"after errors"  # the connection stays usable
        with make_client(name) as c:
            for i in range(200):
                assert c.request(b"%d" % i) == b"%d" % i
        assert time.monotonic() - t0 < 1.5, "the others waited for the slow handler"
        t.join(10)
        assert results["slow"] == b"slow done"


# ---- garbage ---------------------------------------------------------------------------------


def _vm_peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPeak:"):
                return int(line.split()[1])
    raise AssertionError("no VmPeak")


GARBAGE = {
    "reserved_bit": b"\x81" + (1).to_bytes(4, "little") + b"x",
    "reserved_bit_extended": b"\xc1\x01" + (1).to_bytes(4, "little") + b"x",
    "type_0": header(0, 1) + b"x",
    "type_8": header(8, 1) + b"x",
    "type_63": header(63, 0),
    "response_type": header(RESPONSE, 1) + b"x",
    "extended_version_0": b"\x41\x00" + (1).to_bytes(4, "little") + b"x",
    "extended_version_2": b"\x41\x02" + (1).to_bytes(4, "little") + b"x",
    "second_handshake": HELLO,
}


def test_garbage_after_the_handshake_closes_only_that_connection(name: str, make_server: MakeServer) -> None:
    """Unknown packet types, reserved bits, bad versions, a repeated
    handshake, and 50 runs of random bytes: each connection gets at most one
    ERROR packet and then EOF; a client connected all along is served
    between every one of them."""
    rng = random.Random(1234)
    cases = list(GARBAGE.items())
    for i in range(50):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        if blob[0] & 0x3F == REQUEST and not blob[0] & 0x80:
            blob = b"\x3f" + blob[1:]  # a valid request header would wait for its payload
        cases.append((f"random_{i}", blob))
    with make_server(name, echo, max_message=4096) as server:
        with ipcfast.Client(name) as survivor:
            for label, blob in cases:
                with raw(server.address) as sock:
                    sock.sendall(blob)
                    text = assert_refused_then_eof(sock)
                    refused = not text or text.startswith((PROTOCOL_ERROR_PREFIX, TOO_LARGE_PREFIX))
                    assert refused, (label, text)
                assert survivor.request(label.encode()) == label.encode(), label


@pytest.mark.parametrize(
    "length, accepted",
    [(0, True), (4096, True), (4097, False), (2**32 - 1, False)],
    ids=["0", "max_message", "max_message+1", "2^32-1"],
)
def test_request_length_limits(length: int, accepted: bool, name: str, make_server: MakeServer) -> None:
    """Lengths 0 and max_message are served; max_message + 1 and 2^32 - 1
    get the "too large" ERROR packet naming both sizes and then EOF, without
    the payload being sent at all."""
    with make_server(name, echo, max_message=4096) as server:
        with raw(server.address) as sock:
            if accepted:
                sock.sendall(header(REQUEST, length) + b"z" * length)
                head = recv_exactly(sock, 5)
                assert head == header(RESPONSE, length)
                assert recv_exactly(sock, length) == b"z" * length
            else:
                sock.sendall(header(REQUEST, length))
                text = assert_refused_then_eof(sock)
                assert text.startswith(TOO_LARGE_PREFIX), text
                assert str(length).encode() in text and b"4096" in text, text
        served(name)


@linux_only
def test_huge_lengths_are_refused_without_allocating(name: str, make_server: MakeServer) -> None:
    """With max_message = 256 MiB, headers announcing 256 MiB + 1 and
    4 GiB - 1 are refused without reserving that memory: the peak virtual
    size of this process (the server runs in it) grows by far less."""
    limit = 256 << 20
    with make_server(name, echo, max_message=limit) as server:
        with raw(server.address) as sock:  # warm up: the connection thread and its buffer
            sock.sendall(header(REQUEST, 3) + b"abc")
            assert recv_exactly(sock, 8)[5:] == b"abc"
        before = _vm_peak_kib()
        for length in (limit + 1, 2**32 - 1):
            with raw(server.address) as sock:
                sock.sendall(header(REQUEST, length))
                text = assert_refused_then_eof(sock)
                assert text.startswith(TOO_LARGE_PREFIX), text
        grown_mib = (_vm_peak_kib() - before) / 1024
        assert grown_mib < 128, f"peak virtual memory grew by {grown_mib:.0f} MiB for refused requests"
        served(name)
