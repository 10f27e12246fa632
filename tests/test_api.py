"""The Python API over real servers and clients: round trips, payloads,
concurrency, life cycle, names."""

from __future__ import annotations

import os
import random
import stat
import threading
import time
from typing import Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipcfast
from ipcfast._native import ffi, lib

from conftest import echo, posix_only, unique_name, wait_for

KIB = 1024
MIB = 1024 * 1024
HEADER = 5  # short packet header: type + 4-byte length


def payload(size: int, seed: int = 0) -> bytes:
    """size bytes with NULs and every byte value, reproducible."""
    rng = random.Random(seed * 1_000_003 + size)
    data = bytearray(rng.getrandbits(8) for _ in range(min(size, 4096)))
    if size > 4096:
        data = (bytes(data) * (size // 4096 + 1))[:size]
        data = bytearray(data)
    for i in range(0, size, 97):
        data[i] = 0
    return bytes(data)


# ---- round trips ---------------------------------------------------------


def test_round_trip(name: str) -> None:
    def upper(request: bytes) -> bytes:
        return request.upper()

    with ipcfast.Server(name, upper) as server:
        assert server.running
        with ipcfast.Client(name) as client:
            assert client.request(b"hi") == b"HI"
            assert client.request(b"hello world") == b"HELLO WORLD"
            assert client.version == 1


SIZES = sorted(
    {
        0,
        1,
        2,
        HEADER,
        HEADER + 1,
        255,
        256,
        4095,
        4096,
        4097,
        65535,
        65536,
        65537,
        65536 - HEADER,
        65536 - HEADER - 1,
        65536 - HEADER + 1,
        65536 - HEADER - 1 - 1,  # extended header (6 bytes) edge
        65536 + HEADER,
        131072 - HEADER,
        MIB - 1,
        MIB,
        MIB + 1,
        4 * MIB,
    }
)


def test_payload_sizes(echo_server: ipcfast.Server) -> None:
    """Every size from 0 B to 4 MiB around the 64 KiB edges, binary-exact."""
    with ipcfast.Client(echo_server.name) as client:
        for size in SIZES:
            data = payload(size)
            assert data.count(0) > 0 or size == 0
            response = client.request(data)
            assert len(response) == size, f"size {size}"
            assert response == data, f"payload of {size} bytes came back altered"


def test_payload_sizes_one_connection_each(echo_server: ipcfast.Server) -> None:
    """The same sizes, each on a fresh connection (first packet after the handshake)."""
    for size in (0, 65535, 65536, 65537, 4 * MIB):
        with ipcfast.Client(echo_server.name) as client:
            data = payload(size, seed=1)
            assert client.request(data) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=20000))
def test_payloads_property(echo_server: ipcfast.Server, data: bytes) -> None:
    with ipcfast.Client(echo_server.name) as client:
        assert client.request(data) == data
        assert client.request(data + b"\x00") == data + b"\x00"


def test_request_accepts_bytes_like(echo_server: ipcfast.Server) -> None:
    with ipcfast.Client(echo_server.name) as client:
        assert client.request(bytearray(b"abc")) == b"abc"
        assert client.request(memoryview(b"xabcx")[1:4]) == b"abc"
        import array

        arr = array.array("i", [1, 2, 3])
        assert client.request(arr) == arr.tobytes()
        with pytest.raises(TypeError, match="bytes-like"):
            client.request("text")  # type: ignore[arg-type]
        # A refused argument does not break the connection.
        assert client.request(b"still") == b"still"


@pytest.mark.parametrize(
    "make",
    [
        lambda r: r,
        lambda r: bytearray(r),
        lambda r: memoryview(r),
        lambda r: memoryview(b"--" + r + b"--")[2:-2],
    ],
    ids=["bytes", "bytearray", "memoryview", "memoryview-slice"],
)
def test_handler_may_return_bytes_like(name: str, make) -> None:
    with ipcfast.Server(name, make):
        with ipcfast.Client(name) as client:
            assert client.request(b"\x00payload\xff") == b"\x00payload\xff"


def test_request_gets_a_copy(name: str) -> None:
    """The handler's bytes and the client's response are independent objects."""
    seen: List[bytes] = []

    def keep(request: bytes) -> bytes:
        seen.append(request)
        return request

    with ipcfast.Server(name, keep):
        with ipcfast.Client(name) as client:
            first = client.request(b"first")
            second = client.request(b"second")
    assert (first, second) == (b"first", b"second")
    assert seen == [b"first", b"second"]


# ---- concurrency -----------------------------------------------------------


def test_sixteen_concurrent_clients(name: str) -> None:
    """16 threads, each with its own client, each gets exactly its own answers."""

    def tag(request: bytes) -> bytes:
        return b"<" + request[::-1] + b">"

    errors: List[BaseException] = []
    counts: Dict[int, int] = {}
    start = threading.Barrier(16)

    def worker(index: int) -> None:
        try:
            rng = random.Random(index)
            with ipcfast.Client(name) as client:
                start.wait(10)
                for j in range(150):
                    noise = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
                    body = f"client={index};n={j};".encode() + noise
                    assert client.request(body) == b"<" + body[::-1] + b">"
                    counts[index] = counts.get(index, 0) + 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    with ipcfast.Server(name, tag):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not errors, errors[:3]
    assert counts == {i: 150 for i in range(16)}


def test_handlers_run_in_parallel(name: str) -> None:
    """Four connections are inside the handler at the same time."""
    barrier = threading.Barrier(4)

    def meet(request: bytes) -> bytes:
        barrier.wait(10)  # raises BrokenBarrierError unless 4 run at once
        return b"met " + request

    results: List[bytes] = []

    def worker(i: int) -> None:
        with ipcfast.Client(name) as client:
            results.append(client.request(str(i).encode()))

    with ipcfast.Server(name, meet):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(results) == [b"met 0", b"met 1", b"met 2", b"met 3"]


def test_one_client_shared_by_threads(echo_server: ipcfast.Server) -> None:
    """Concurrent use of one Client is serialized, never crossed."""
    errors: List[BaseException] = []
    with ipcfast.Client(echo_server.name) as client:

        def worker(index: int) -> None:
            try:
                for j in range(200):
                    body = f"{index}:{j}".encode() * (1 + j % 7)
                    assert client.request(body) == body
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]


# ---- life cycle ---------------------------------------------------------------


def test_context_managers(name: str) -> None:
    server = ipcfast.Server(name, echo)
    assert not server.running
    with server as entered:
        assert entered is server
        assert server.running
        with ipcfast.Client(name) as client:
            assert not client.closed
            assert client.request(b"x") == b"x"
        assert client.closed
        with pytest.raises(ipcfast.ConnectionClosed):
            client.request(b"x")
    assert not server.running
    with pytest.raises(ipcfast.ServerNotFound):
        ipcfast.Client(name, connect_timeout=0.2)


def test_stop_is_idempotent_and_restart_works(name: str) -> None:
    server = ipcfast.Server(name, echo)
    server.stop()  # never started: no-op
    server.start()
    with pytest.raises(RuntimeError, match="already running"):
        server.start()
    server.stop()
    server.stop()
    server.start()  # a stopped server can start again on the same name
    try:
        with ipcfast.Client(name) as client:
            assert client.request(b"again") == b"again"
    finally:
        server.stop()


def test_close_is_idempotent(echo_server: ipcfast.Server) -> None:
    client = ipcfast.Client(echo_server.name)
    client.close()
    client.close()
    assert client.closed
    with pytest.raises(ipcfast.ConnectionClosed, match="closed"):
        client.request(b"x")


def test_serve_forever_returns_after_stop(name: str) -> None:
    server = ipcfast.Server(name, echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    assert wait_for(lambda: server.running, 10)
    with ipcfast.Client(name) as client:
        assert client.request(b"ping") == b"ping"
    assert thread.is_alive()
    server.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert not server.running


def test_stop_from_inside_the_handler_raises(name: str) -> None:
    holder: Dict[str, ipcfast.Server] = {}

    def handler(request: bytes) -> bytes:
        try:
            holder["server"].stop()
        except RuntimeError as exc:
            return f"refused: {exc}".encode()
        return b"stopped?!"

    server = ipcfast.Server(name, handler)
    holder["server"] = server
    with server:
        with ipcfast.Client(name) as client:
            answer = client.request(b"stop please")
            assert answer.startswith(b"refused: "), answer
            assert b"deadlock" in answer
            # Still serving.
            assert client.request(b"again").startswith(b"refused")


def test_running_server_needs_no_reference(name: str) -> None:
    """A started server keeps serving even if the caller drops it."""
    import gc

    server = ipcfast.Server(name, echo)
    server.start()
    address = server.address
    del server
    gc.collect()
    with ipcfast.Client(name) as client:
        assert client.request(b"alive") == b"alive"
    from ipcfast import _native

    for s in list(_native._running_servers):
        if s.address == address:
            s.stop()


@posix_only
def test_address_is_a_private_socket(echo_server: ipcfast.Server) -> None:
    address = echo_server.address
    assert os.path.isabs(address)
    assert address.endswith(echo_server.name)
    st_ = os.stat(address)
    assert stat.S_ISSOCK(st_.st_mode)
    parent = os.stat(os.path.dirname(address))
    assert stat.S_IMODE(parent.st_mode) & 0o077 == 0, "socket directory is not private"


@posix_only
def test_name_with_slash_is_a_path(tmp_path) -> None:
    path = str(tmp_path / "my.sock")
    with ipcfast.Server(path, echo) as server:
        assert server.address == path
        assert os.path.exists(path)
        with ipcfast.Client(path) as client:
            assert client.request(b"by path") == b"by path"
    assert not os.path.exists(path), "the socket was not removed at stop"


def test_matching_keys_meet(name: str) -> None:
    with ipcfast.Server(name, echo, key="secret"):
        with ipcfast.Client(name, key="secret") as client:
            assert client.request(b"k") == b"k"
        with ipcfast.Client(name, key=b"secret") as client:  # str is UTF-8
            assert client.request(b"k") == b"k"


def test_isinstance_of_the_facades(echo_server: ipcfast.Server) -> None:
    assert isinstance(echo_server, ipcfast.Server)
    with ipcfast.Client(echo_server.name, backend="native") as client:
        assert isinstance(client, ipcfast.Client)
        assert "native" in repr(client)


def test_backends(name: str) -> None:
    with pytest.raises(NotImplementedError, match="pure-Python path"):
        ipcfast.Server(name, echo, backend="pure")
    with pytest.raises(NotImplementedError, match="pure-Python path"):
        ipcfast.Client(name, backend="pure")
    with pytest.raises(ValueError, match="unknown backend"):
        ipcfast.Client(name, backend="bogus")
    assert ipcfast.native_import_error() is None


def test_argument_validation(name: str) -> None:
    with pytest.raises(TypeError):
        ipcfast.Server(name, b"not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ipcfast.Server(name, echo, max_clients=0)
    with pytest.raises(ValueError):
        ipcfast.Server(name, echo, access="everyone")
    with pytest.raises(ValueError):
        ipcfast.Server(name, echo, max_message=2**32)
    with pytest.raises(ValueError):
        ipcfast.Server("", echo)
    with pytest.raises(ValueError):
        ipcfast.Client("bad\x00name")
    with pytest.raises(ValueError):
        ipcfast.Client(name, connect_timeout=-1)
    with pytest.raises(TypeError):
        ipcfast.Client(name, connect_timeout="soon")  # type: ignore[arg-type]
    # The C core's own validation arrives as InvalidArgument (a ValueError).
    with pytest.raises(ipcfast.InvalidArgument) as info:
        ipcfast.Server(name, echo, max_clients=2, listeners=3).start()
    assert isinstance(info.value, ValueError)
    assert info.value.code == "IPC_E_INVALID"
    assert "listeners" in str(info.value)


# ---- names, handshake values, versions ----------------------------------------


def test_pipe_name_is_deterministic() -> None:
    a = ipcfast.pipe_name("tool", version="1.2", user="ann", arch="x86_64")
    b = ipcfast.pipe_name("tool", arch="x86_64", user="ann", version="1.2")
    assert a == b
    prefix, digest = a.rsplit("-", 1)
    assert prefix == "tool"
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert ipcfast.pipe_name("tool", version="1.3", user="ann", arch="x86_64") != a
    assert ipcfast.pipe_name("other", version="1.2", user="ann", arch="x86_64") != a
    assert ipcfast.pipe_name("tool") == ipcfast.pipe_name("tool")
    assert ipcfast.pipe_name("tool") != a
    # Types matter: 1 and "1" are different options.
    assert ipcfast.pipe_name("tool", v=1) != ipcfast.pipe_name("tool", v="1")
    # Non-JSON values are encoded by repr, deterministically.
    assert ipcfast.pipe_name("tool", p=frozenset()) == ipcfast.pipe_name("tool", p=frozenset())
    assert ipcfast.pipe_name("tool", nested={"b": 1, "a": [1, 2]}) == ipcfast.pipe_name(
        "tool", nested={"a": [1, 2], "b": 1}
    )
    # A known value, so the encoding cannot change by accident.
    import hashlib

    assert ipcfast.pipe_name("tool", b=2, a="x") == "tool-" + hashlib.sha256(b'{"a":"x","b":2}').hexdigest()


def test_pipe_name_is_usable(name: str) -> None:
    pname = ipcfast.pipe_name(name, version=ipcfast.__version__)
    with ipcfast.Server(pname, echo):
        with ipcfast.Client(ipcfast.pipe_name(name, version=ipcfast.__version__)) as client:
            assert client.request(b"n") == b"n"


def test_default_handshake_matches_the_c_constant() -> None:
    c_value = bytes(ffi.buffer(lib.IPC_DEFAULT_HANDSHAKE, lib.IPC_HANDSHAKE_SIZE))
    assert c_value == bytes.fromhex("00f783ca2a317e38")
    assert ipcfast.handshake_value() == c_value
    assert ipcfast.handshake_value(None) == c_value
    assert ipcfast.handshake_value("") == c_value
    keyed = ipcfast.handshake_value("k")
    assert keyed != c_value and keyed[0] == 0 and len(keyed) == 8
    assert ipcfast.handshake_value("k") == ipcfast.handshake_value(b"k")
    assert ipcfast.handshake_value("é") == ipcfast.handshake_value("é".encode("utf-8"))


def test_version_matches_the_c_core() -> None:
    assert ipcfast.__version__ == ffi.string(lib.IPCFAST_VERSION).decode()
    from importlib.metadata import version

    assert version("ipcfast") == ipcfast.__version__


def test_py_typed_marker_is_installed() -> None:
    assert os.path.exists(os.path.join(os.path.dirname(ipcfast.__file__), "py.typed"))


def test_many_servers_at_once() -> None:
    servers = [ipcfast.Server(unique_name(), lambda r, i=i: str(i).encode() + r) for i in range(8)]
    try:
        for s in servers:
            s.start()
        for i, s in enumerate(servers):
            with ipcfast.Client(s.name) as client:
                assert client.request(b"!") == f"{i}!".encode()
    finally:
        for s in servers:
            s.stop()


def test_connect_waits_for_a_server_that_starts_later(name: str) -> None:
    """connect retries "not found" within its budget (a server restarting)."""
    server = ipcfast.Server(name, echo)
    timer = threading.Timer(0.3, server.start)
    timer.start()
    try:
        t0 = time.monotonic()
        with ipcfast.Client(name, connect_timeout=10) as client:
            assert time.monotonic() - t0 >= 0.2
            assert client.request(b"late") == b"late"
    finally:
        timer.join()
        server.stop()
