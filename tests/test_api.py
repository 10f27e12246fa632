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

from conftest import MakeClient, MakeServer, echo, posix_only, unique_name, wait_for

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


def test_round_trip(
    name: str, make_server: MakeServer, make_client: MakeClient, server_backend: str, client_backend: str
) -> None:
    def upper(request: bytes) -> bytes:
        return request.upper()

    with make_server(name, upper) as server:
        assert server.running
        with make_client(name) as client:
            assert client.request(b"hi") == b"HI"
            assert client.request(b"hello world") == b"HELLO WORLD"
            # Version 2 (the shared-memory path, on by default) needs both
            # sides native; the pure backend speaks version 1.
            assert client.version == (2 if server_backend == client_backend == "native" else 1)


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


def test_payload_sizes(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    """Every size from 0 B to 4 MiB around the 64 KiB edges, binary-exact."""
    with make_client(echo_server.name) as client:
        for size in SIZES:
            data = payload(size)
            assert data.count(0) > 0 or size == 0
            response = client.request(data)
            assert len(response) == size, f"size {size}"
            assert response == data, f"payload of {size} bytes came back altered"


def test_payload_sizes_one_connection_each(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    """The same sizes, each on a fresh connection (first packet after the handshake)."""
    for size in (0, 65535, 65536, 65537, 4 * MIB):
        with make_client(echo_server.name) as client:
            data = payload(size, seed=1)
            assert client.request(data) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=20000))
def test_payloads_property(echo_server: ipcfast.Server, data: bytes, make_client: MakeClient) -> None:
    with make_client(echo_server.name) as client:
        assert client.request(data) == data
        assert client.request(data + b"\x00") == data + b"\x00"


def test_request_accepts_bytes_like(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    with make_client(echo_server.name) as client:
        assert client.request(bytearray(b"abc")) == b"abc"
        assert client.request(memoryview(b"xabcx")[1:4]) == b"abc"
        import array

        arr = array.array("i", [1, 2, 3])
        assert client.request(arr) == arr.tobytes()
        with pytest.raises(TypeError, match="bytes-like"):
            client.request("text")  # type: ignore[arg-type]
        # A strided view has no flat buffer to send (both backends refuse it
        # alike; the caller copies it with bytes(view)).
        with pytest.raises(BufferError):
            client.request(memoryview(b"abcdef")[::2])
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
def test_handler_may_return_bytes_like(name: str, make, make_server: MakeServer, make_client: MakeClient) -> None:
    with make_server(name, make):
        with make_client(name) as client:
            assert client.request(b"\x00payload\xff") == b"\x00payload\xff"


def test_request_gets_a_copy(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    """The handler's bytes and the client's response are independent objects."""
    seen: List[bytes] = []

    def keep(request: bytes) -> bytes:
        seen.append(request)
        return request

    with make_server(name, keep):
        with make_client(name) as client:
            first = client.request(b"first")
            second = client.request(b"second")
    assert (first, second) == (b"first", b"second")
    assert seen == [b"first", b"second"]


# ---- concurrency -----------------------------------------------------------


def test_sixteen_concurrent_clients(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    """16 threads, each with its own client, each gets exactly its own answers."""

    def tag(request: bytes) -> bytes:
        return b"<" + request[::-1] + b">"

    errors: List[BaseException] = []
    counts: Dict[int, int] = {}
    start = threading.Barrier(16)

    def worker(index: int) -> None:
        try:
            rng = random.Random(index)
            with make_client(name) as client:
                start.wait(10)
                for j in range(150):
                    noise = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
                    body = f"client={index};n={j};".encode() + noise
                    assert client.request(body) == b"<" + body[::-1] + b">"
                    counts[index] = counts.get(index, 0) + 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    with make_server(name, tag):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not errors, errors[:3]
    assert counts == {i: 150 for i in range(16)}


def test_handlers_run_in_parallel(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    """Four connections are inside the handler at the same time."""
    barrier = threading.Barrier(4)

    def meet(request: bytes) -> bytes:
        barrier.wait(10)  # raises BrokenBarrierError unless 4 run at once
        return b"met " + request

    results: List[bytes] = []

    def worker(i: int) -> None:
        with make_client(name) as client:
            results.append(client.request(str(i).encode()))

    with make_server(name, meet):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(results) == [b"met 0", b"met 1", b"met 2", b"met 3"]


def test_one_client_shared_by_threads(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    """Concurrent use of one Client is serialized, never crossed."""
    errors: List[BaseException] = []
    with make_client(echo_server.name) as client:

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


def test_context_managers(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    server = make_server(name, echo)
    assert not server.running
    with server as entered:
        assert entered is server
        assert server.running
        with make_client(name) as client:
            assert not client.closed
            assert client.request(b"x") == b"x"
        assert client.closed
        with pytest.raises(ipcfast.ConnectionClosed):
            client.request(b"x")
    assert not server.running
    with pytest.raises(ipcfast.ServerNotFound):
        make_client(name, connect_timeout=0.2)


def test_stop_is_idempotent_and_restart_works(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    server = make_server(name, echo)
    server.stop()  # never started: no-op
    server.start()
    with pytest.raises(RuntimeError, match="already running"):
        server.start()
    server.stop()
    server.stop()
    server.start()  # a stopped server can start again on the same name
    try:
        with make_client(name) as client:
            assert client.request(b"again") == b"again"
    finally:
        server.stop()


def test_close_is_idempotent(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    client = make_client(echo_server.name)
    client.close()
    client.close()
    assert client.closed
    with pytest.raises(ipcfast.ConnectionClosed, match="closed"):
        client.request(b"x")


def test_serve_forever_returns_after_stop(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    server = make_server(name, echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    assert wait_for(lambda: server.running, 10)
    with make_client(name) as client:
        assert client.request(b"ping") == b"ping"
    assert thread.is_alive()
    server.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert not server.running


def test_stop_from_inside_the_handler_raises(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    holder: Dict[str, ipcfast.Server] = {}

    def handler(request: bytes) -> bytes:
        try:
            holder["server"].stop()
        except RuntimeError as exc:
            return f"refused: {exc}".encode()
        return b"stopped?!"

    server = make_server(name, handler)
    holder["server"] = server
    with server:
        with make_client(name) as client:
            answer = client.request(b"stop please")
            assert answer.startswith(b"refused: "), answer
            assert b"deadlock" in answer
            # Still serving.
            assert client.request(b"again").startswith(b"refused")


def test_running_server_needs_no_reference(
    name: str, server_backend: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    """A started server keeps serving even if the caller drops it."""
    import gc

    server = make_server(name, echo)
    server.start()
    address = server.address
    del server
    gc.collect()
    with make_client(name) as client:
        assert client.request(b"alive") == b"alive"
    from ipcfast._base import _running_servers

    for s in list(_running_servers):
        if s.address == address:
            s.stop()


@posix_only
def test_address_is_a_private_socket(private_tmp: str, name: str, make_server: MakeServer) -> None:
    # A fresh private directory: a server with access="world" on a plain name
    # makes the shared one traversable (0711) for good.
    with make_server(name, echo) as server:
        _check_private_socket(server)


def _check_private_socket(echo_server: ipcfast.Server) -> None:
    address = echo_server.address
    assert os.path.isabs(address)
    assert address.endswith(echo_server.name)
    st_ = os.stat(address)
    assert stat.S_ISSOCK(st_.st_mode)
    parent = os.stat(os.path.dirname(address))
    assert stat.S_IMODE(parent.st_mode) & 0o077 == 0, "socket directory is not private"


@posix_only
def test_name_with_slash_is_a_path(tmp_path, make_server: MakeServer, make_client: MakeClient) -> None:
    path = str(tmp_path / "my.sock")
    with make_server(path, echo) as server:
        assert server.address == path
        assert os.path.exists(path)
        with make_client(path) as client:
            assert client.request(b"by path") == b"by path"
    assert not os.path.exists(path), "the socket was not removed at stop"
    # An os.PathLike name works the same.
    with make_server(tmp_path / "p.sock", echo) as server:
        assert server.address == str(tmp_path / "p.sock")
        with make_client(tmp_path / "p.sock") as client:
            assert client.request(b"path-like") == b"path-like"


def test_matching_keys_meet(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    with make_server(name, echo, key="secret"):
        with make_client(name, key="secret") as client:
            assert client.request(b"k") == b"k"
        with make_client(name, key=b"secret") as client:  # str is UTF-8
            assert client.request(b"k") == b"k"


def test_isinstance_of_the_facades(
    echo_server: ipcfast.Server, server_backend: str, client_backend: str, make_client: MakeClient
) -> None:
    assert isinstance(echo_server, ipcfast.Server)
    assert f"backend={server_backend!r}" in repr(echo_server)
    with make_client(echo_server.name) as client:
        assert isinstance(client, ipcfast.Client)
        assert f"backend={client_backend!r}" in repr(client)


def test_backends(name: str) -> None:
    from ipcfast import _native, _pure

    assert ipcfast.BACKENDS == ("native", "pure")
    assert type(ipcfast.Server(name, echo)) is _native.NativeServer  # the default
    assert type(ipcfast.Server(name, echo, backend="native")) is _native.NativeServer
    assert type(ipcfast.Server(name, echo, backend="pure")) is _pure.PureServer
    with pytest.raises(ValueError, match="unknown backend"):
        ipcfast.Server(name, echo, backend="bogus")
    with pytest.raises(ValueError, match="unknown backend"):
        ipcfast.Client(name, backend="bogus")
    # Each implementation refuses to be built for the other backend.
    with pytest.raises(ValueError, match="backend='pure'"):
        _pure.PureServer(name, echo, backend="native")
    with pytest.raises(ValueError, match="backend='native'"):
        _native.NativeClient(name, backend="pure")
    assert ipcfast.native_import_error() is None


def test_pure_backend_says_where_it_is_not_implemented(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a platform without the pure transport (Windows, for now) the error
    names the platform and the way out."""
    import sys

    from ipcfast import _pure

    monkeypatch.setattr(_pure, "POSIX", False)
    for make in (lambda: ipcfast.Server(name, echo, backend="pure"), lambda: ipcfast.Client(name, backend="pure")):
        with pytest.raises(NotImplementedError) as info:
            make()
        assert f"({sys.platform})" in str(info.value) and "backend='native'" in str(info.value)


def test_argument_validation(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    with pytest.raises(TypeError):
        make_server(name, b"not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_server(name, echo, max_clients=0)
    with pytest.raises(ValueError):
        make_server(name, echo, access="everyone")
    with pytest.raises(ValueError):
        make_server(name, echo, max_message=2**32)
    with pytest.raises(ValueError):
        make_server("", echo)
    with pytest.raises(ValueError):
        make_client("bad\x00name")
    with pytest.raises(ValueError):
        make_client(name, connect_timeout=-1)
    with pytest.raises(TypeError):
        make_client(name, connect_timeout="soon")  # type: ignore[arg-type]
    # The C core's own validation arrives as InvalidArgument (a ValueError).
    with pytest.raises(ipcfast.InvalidArgument) as info:
        make_server(name, echo, max_clients=2, listeners=3).start()
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


def test_pipe_name_is_usable(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    pname = ipcfast.pipe_name(name, version=ipcfast.__version__)
    with make_server(pname, echo):
        with make_client(ipcfast.pipe_name(name, version=ipcfast.__version__)) as client:
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
    from ipcfast import _codec

    assert _codec.DEFAULT_HANDSHAKE == c_value
    for constant in (
        "PROTOCOL_VERSION",
        "HANDSHAKE_SIZE",
        "HANDSHAKE_REPLY_XOR",
        "FOREIGN_REPLY",
        "MAX_HEADER_SIZE",
        "DEFAULT_MAX_MESSAGE",
    ):
        assert getattr(_codec, constant) == getattr(lib, "IPC_" + constant), constant
    for packet_type in _codec.PacketType:
        assert packet_type == getattr(lib, "IPC_PACKET_" + packet_type.name)


def test_version_matches_the_c_core() -> None:
    assert ipcfast.__version__ == ffi.string(lib.IPCFAST_VERSION).decode()
    from importlib.metadata import version

    assert version("ipcfast") == ipcfast.__version__


def test_py_typed_marker_is_installed() -> None:
    assert os.path.exists(os.path.join(os.path.dirname(ipcfast.__file__), "py.typed"))


def test_many_servers_at_once(make_server: MakeServer, make_client: MakeClient) -> None:
    servers = [make_server(unique_name(), lambda r, i=i: str(i).encode() + r) for i in range(8)]
    try:
        for s in servers:
            s.start()
        for i, s in enumerate(servers):
            with make_client(s.name) as client:
                assert client.request(b"!") == f"{i}!".encode()
    finally:
        for s in servers:
            s.stop()


def test_connect_waits_for_a_server_that_starts_later(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    """With wait_for_server, connect retries "not found" within its budget
    (a server someone else starts later); without it, an absent server is
    answered at once (tests/test_connect_policy.py)."""
    server = make_server(name, echo)
    timer = threading.Timer(0.3, server.start)
    timer.start()
    try:
        t0 = time.monotonic()
        with make_client(name, connect_timeout=10, wait_for_server=True) as client:
            assert time.monotonic() - t0 >= 0.2
            assert client.request(b"late") == b"late"
    finally:
        timer.join()
        server.stop()
