"""The shared-memory data path (docs/protocol.md section 11) from Python:
the version-2 vectors against both codecs, and Client(..., shm=True)
against native and pure servers in both dispatch modes. A native server
started with shm=True accepts (on Linux); the pure server speaks version 1,
so the offer is never made and the socket path carries the requests.
The fault tests of the path itself are C tests (tests/c/test_shm.c)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from conftest import MakeServer, ServerProcess, child_env

import ipcfast
from ipcfast import _codec

VECTORS: Dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "protocol_shm.json").read_text(encoding="utf-8")
)
# where the C core has the region: Linux (memfd) and Windows (a section)
SHM_PLATFORM = sys.platform.startswith("linux") or sys.platform == "win32"
LINUX = sys.platform.startswith("linux")


def _c_lib() -> Any:
    try:
        from ipcfast._ipcfast_cffi import ffi, lib
    except ImportError as exc:  # pragma: no cover - depends on the build
        pytest.skip(f"the native module is not built: {exc}")
    return ffi, lib


# ---- vectors -------------------------------------------------------------------------


def test_constants_match_both_codecs() -> None:
    ffi, lib = _c_lib()
    constants = VECTORS["constants"]
    assert lib.IPC_PROTOCOL_VERSION_SHM == _codec.SHM_PROTOCOL_VERSION == constants["shm_protocol_version"]
    for name, number in constants["packet_types"].items():
        assert getattr(lib, "IPC_PACKET_" + name) == _codec.PacketType[name] == number
    assert lib.IPC_SHM_SETUP_SIZE == _codec.SHM_SETUP_SIZE == constants["setup_size"]
    assert lib.IPC_SHM_LAYOUT == _codec.SHM_LAYOUT == constants["layout"]
    assert lib.IPC_SHM_HEADER_SIZE == _codec.SHM_HEADER_SIZE == constants["header_size"]
    assert lib.IPC_SHM_MIN_SLOT == _codec.SHM_MIN_SLOT == constants["min_slot"]
    assert lib.IPC_SHM_MAX_SLOT == _codec.SHM_MAX_SLOT == constants["max_slot"]


@pytest.mark.parametrize("case", VECTORS["parse_header"], ids=lambda c: c["name"])
def test_parse_header_both_codecs(case: Dict[str, Any]) -> None:
    ffi, lib = _c_lib()
    data = bytes.fromhex(case["hex"])
    verdict, header = _codec.parse_header(data, case["max_message"], case["max_version"])
    assert verdict.name == case["verdict"]
    c_header = ffi.new("ipc_packet_header *")
    buf = ffi.new("uint8_t[]", list(data) or [0])
    c_verdict = lib.ipc_packet_header_parse(buf, len(data), case["max_message"], case["max_version"], c_header)
    assert ffi.string(lib.ipc_verdict_name(c_verdict)).decode() == "IPC_VERDICT_" + case["verdict"]
    if case["verdict"] == "OK":
        expected = (case["type"], case["version"], case["length"], case["header_size"])
        assert tuple(header) == expected
        assert (c_header.type, c_header.version, c_header.length, c_header.header_size) == expected


@pytest.mark.parametrize("case", VECTORS["region_size"], ids=lambda c: str(c["slot_size"]))
def test_region_size(case: Dict[str, Any]) -> None:
    _, lib = _c_lib()
    assert _codec.shm_region_size(case["slot_size"]) == case["region_size"]
    assert lib.ipc_shm_region_size(case["slot_size"]) == case["region_size"]


@pytest.mark.parametrize("case", VECTORS["shm_setup"], ids=lambda c: c["name"])
def test_shm_setup_encode_and_decode(case: Dict[str, Any]) -> None:
    ffi, lib = _c_lib()
    fields = (case["layout"], case["region_size"], case["slot_size"], case["flags"])
    assert _codec.encode_shm_setup(_codec.ShmSetup(*fields)).hex() == case["hex"]
    assert tuple(_codec.decode_shm_setup(bytes.fromhex(case["hex"]))) == fields
    setup = ffi.new("ipc_shm_setup *", fields)
    out = ffi.new("uint8_t[16]")
    assert lib.ipc_shm_setup_encode(out, setup) == 16
    assert bytes(ffi.buffer(out, 16)).hex() == case["hex"]
    decoded = ffi.new("ipc_shm_setup *")
    err = ffi.new("ipc_error *")
    data = bytes.fromhex(case["hex"])
    assert lib.ipc_shm_setup_decode(ffi.new("uint8_t[]", list(data)), len(data), decoded, err) == lib.IPC_OK
    assert (decoded.layout, decoded.region_size, decoded.slot_size, decoded.flags) == fields


@pytest.mark.parametrize("case", VECTORS["shm_setup_malformed"], ids=lambda c: c["name"])
def test_shm_setup_malformed(case: Dict[str, Any]) -> None:
    ffi, lib = _c_lib()
    data = bytes.fromhex(case["hex"])
    with pytest.raises(_codec.MalformedPayload) as info:
        _codec.decode_shm_setup(data)
    assert case["error"] in str(info.value)
    decoded = ffi.new("ipc_shm_setup *")
    err = ffi.new("ipc_error *")
    try:
        rc = lib.ipc_shm_setup_decode(ffi.new("uint8_t[]", list(data) or [0]), len(data), decoded, err)
        assert rc == lib.IPC_E_PROTOCOL
        assert case["error"] in ffi.string(err.message).decode()
    finally:
        lib.ipc_error_clear(err)


@pytest.mark.parametrize("case", VECTORS["exchange"], ids=lambda c: c["name"])
def test_exchange_vectors_follow_the_codec(case: Dict[str, Any]) -> None:
    """The worked exchanges parse with the codec's own rules."""
    client = bytes.fromhex(case["client"])
    server = bytes.fromhex(case["server"])
    value = client[:8]
    verdict, server_version = _codec.check_handshake_reply(server[:9], value)
    assert verdict == _codec.Verdict.OK
    assert server_version is not None
    version = min(client[8], server_version)
    assert version == case["version"]
    rest = server[9:]
    if rest:
        verdict, header = _codec.parse_header(rest, _codec.DEFAULT_MAX_MESSAGE, version)
        assert verdict == _codec.Verdict.OK
        assert (header.type == _codec.PacketType.SHM_ACCEPT) == case["uses_shm"]
        _codec.decode_shm_setup(client[9 + 5 :])


# ---- Client(..., shm=True) -------------------------------------------------------------


def _uses_shm(client: ipcfast.Client) -> bool:
    _, lib = _c_lib()
    return bool(lib.ipc_client_uses_shm(client._client))  # type: ignore[attr-defined]


def _upper(request: bytes) -> bytes:
    return request.upper()


@pytest.mark.parametrize("dispatch", ["thread", "manual"])
def test_shm_client_against_each_server(name: str, server_backend: str, make_server: MakeServer, dispatch: str) -> None:
    _c_lib()
    sizes = [0, 16, 1024, 64 * 1024, 300 * 1024, 1024 * 1024]
    with make_server(name, _upper, dispatch=dispatch, shm=True) as server:
        stop = threading.Event()
        loop = None
        if dispatch == "manual":

            def run() -> None:
                while not stop.is_set():
                    server.dispatch(timeout=0.05)

            loop = threading.Thread(target=run)
            loop.start()
        try:
            with ipcfast.Client(name, shm=True, timeout=30) as client:
                expected_shm = SHM_PLATFORM and server_backend == "native"
                assert _uses_shm(client) == expected_shm
                assert client.version == (2 if server_backend == "native" else 1)
                for size in sizes:
                    data = bytes(i % 251 for i in range(size)).replace(b"\x00", b"a")
                    assert client.request(data) == data.upper()
        finally:
            stop.set()
            if loop:
                loop.join(10)


def test_shm_client_handler_failure_keeps_the_connection(name: str, make_server: MakeServer) -> None:
    _c_lib()

    def handler(request: bytes) -> bytes:
        if request == b"boom":
            raise ValueError("boom")
        return request

    with make_server(name, handler, shm=True):
        with ipcfast.Client(name, shm=True, timeout=30) as client:
            with pytest.raises(ipcfast.RemoteError):
                client.request(b"boom")
            assert client.request(b"after") == b"after"


def test_shm_on_by_default_and_either_side_opts_out(name: str) -> None:
    _c_lib()
    with ipcfast.Server(name, _upper, backend="native"):
        with ipcfast.Client(name) as client:
            assert _uses_shm(client) == SHM_PLATFORM
            assert client.request(b"x") == b"X"
        with ipcfast.Client(name, shm=False) as client:
            assert not _uses_shm(client)
            assert client.version == 1
            assert client.request(b"x") == b"X"
    with ipcfast.Server(name, _upper, backend="native", shm=False):
        with ipcfast.Client(name) as client:
            assert not _uses_shm(client)
            assert client.version == 1
            assert client.request(b"x") == b"X"


def test_shm_messages_larger_than_the_socket_buffer(name: str) -> None:
    """A message above the slot travels on the socket; announcing it only
    after writing it deadlocked once it outgrew the socket's buffer (the
    reader waited on the region, the writer on the reader)."""
    _c_lib()
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB

    def handler(request: bytes) -> bytes:
        return big if request == b"big" else request[:3]

    with ipcfast.Server(name, handler, backend="native", shm=True):
        with ipcfast.Client(name, shm=True, timeout=30) as client:
            assert _uses_shm(client) == SHM_PLATFORM
            assert client.request(big) == big[:3]
            assert client.request(b"big") == big
            assert client.request(b"small") == b"sma"


def test_shm_many_sequential_requests(name: str) -> None:
    _c_lib()
    with ipcfast.Server(name, _upper, backend="native", shm=True):
        with ipcfast.Client(name, shm=True, timeout=30) as client:
            assert _uses_shm(client) == SHM_PLATFORM
            answers: List[bytes] = [client.request(b"r%d" % i) for i in range(2000)]
            assert answers == [b"R%d" % i for i in range(2000)]


# ---- faults on the shared-memory path (the socket is the liveness channel) ---------------

linux_only = pytest.mark.skipif(not LINUX, reason="these faults are made with SIGSTOP and /proc (Linux)")


def _wait_until_stopped(pid: int) -> None:
    """SIGSTOP takes effect asynchronously: wait until every thread is stopped."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


@linux_only
def test_shm_stopped_server_times_out_and_a_killed_one_is_noticed(name: str) -> None:
    """A server stopped with SIGSTOP holds its client no longer than the
    request's timeout; a server killed during a request ends it within a
    liveness slice, not at the timeout."""
    _c_lib()
    with ServerProcess(name) as server:
        with ipcfast.Client(name, shm=True, timeout=30) as client:
            assert _uses_shm(client)
            pid = int(client.request(b"pid"))
            os.kill(pid, signal.SIGSTOP)
            try:
                _wait_until_stopped(pid)
                started = time.monotonic()
                with pytest.raises(ipcfast.Timeout):
                    client.request(b"x", timeout=0.3)
                assert time.monotonic() - started < 5
            finally:
                os.kill(pid, signal.SIGCONT)
        with ipcfast.Client(name, shm=True, timeout=30) as client:
            assert _uses_shm(client)
            failure: List[BaseException] = []

            def long_request() -> None:
                try:
                    client.request(b"sleep:60")
                except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                    failure.append(exc)

            waiter = threading.Thread(target=long_request)
            waiter.start()
            server.wait_line("HANDLING", timeout=30)
            killed = time.monotonic()
            server.kill()
            waiter.join(10)
            assert not waiter.is_alive(), "a request to a killed server kept waiting"
            assert time.monotonic() - killed < 5
            assert len(failure) == 1 and isinstance(failure[0], ipcfast.ConnectionClosed), failure


STOPPED_CLIENT = """
import sys, ipcfast
client = ipcfast.Client(sys.argv[1], shm=True, timeout=30)
print(client.request(b"hello").decode(), flush=True)
sys.stdin.read()
"""


@linux_only
def test_shm_server_stops_promptly_with_a_stopped_client(name: str) -> None:
    """stop() ends the connection threads waiting on the region of a client
    that is frozen (SIGSTOP): the socket's shutdown wakes their futex."""
    _c_lib()
    server = ipcfast.Server(name, _upper, backend="native", shm=True)
    server.start()
    child = subprocess.Popen(
        [sys.executable, "-c", STOPPED_CLIENT, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "HELLO"
        child.send_signal(signal.SIGSTOP)
        _wait_until_stopped(child.pid)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
    finally:
        child.kill()
        child.wait(10)
        server.stop()


def test_shm_pure_peers_decline_and_interoperate(name: str) -> None:
    """The pure backend takes shm= and keeps the socket path on either side."""
    with ipcfast.Server(name, _upper, backend="pure", shm=True):
        with ipcfast.Client(name, backend="pure", shm=True) as client:
            assert client.request(b"ab") == b"AB"
        if ipcfast.native_import_error() is None:
            with ipcfast.Client(name, shm=True) as native:
                assert not _uses_shm(native)
                assert native.version == 1
                assert native.request(b"cd") == b"CD"
    if ipcfast.native_import_error() is None:
        with ipcfast.Server(name, _upper, backend="native", shm=True):
            with ipcfast.Client(name, backend="pure", shm=True) as client:
                assert client.version == 1
                assert client.request(b"ef") == b"EF"


# ---- Client(shm_spin_us=...) and Server(shm_spin_us=...) ------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
def test_shm_spin_us_is_checked(name: str, side: str) -> None:
    def make(**kw: Any) -> Any:
        if side == "client":
            return ipcfast.Client(name, **kw)
        return ipcfast.Server(name, _upper, **kw)

    for bad in (-1, ipcfast._base.MAX_SHM_SPIN_US + 1):
        with pytest.raises(ValueError, match="shm_spin_us"):
            make(shm_spin_us=bad)
    for wrong in ("20", 2.5, True):
        with pytest.raises(TypeError, match="shm_spin_us"):
            make(shm_spin_us=wrong)


_SLOW_SERVER = r"""
import os, sys, time, ipcfast
os.sched_setaffinity(0, {int(sys.argv[2])})
def handler(request):
    time.sleep(0.05)  # the client waits 50 ms for every response
    return request
with ipcfast.Server(sys.argv[1], handler, shm_spin_us=int(sys.argv[3])):
    print("READY", flush=True)
    sys.stdin.read()
"""


@pytest.mark.skipif(not LINUX, reason="pins the two sides to two CPUs (sched_setaffinity)")
def test_shm_spin_us_is_the_clients_spin_budget(name: str) -> None:
    """A client waiting for a slow handler on another CPU spins for at most
    its budget, then sleeps: 200 ms of budget burns the 50 ms of every wait,
    0 burns nothing. CPU time, not speed, is asserted (10x apart)."""
    _c_lib()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    before = os.sched_getaffinity(0)
    spent: Dict[int, float] = {}
    try:
        for spin in (0, 200_000):
            server_name = f"{name}-{spin}"
            server = subprocess.Popen(
                [sys.executable, "-c", _SLOW_SERVER, server_name, str(cpus[1]), "0"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=child_env(),
                text=True,
            )
            try:
                assert server.stdout is not None and server.stdout.readline() == "READY\n"
                os.sched_setaffinity(0, {cpus[0]})
                with ipcfast.Client(server_name, shm_spin_us=spin, timeout=30) as client:
                    assert _uses_shm(client)
                    client.request(b"warm")  # the server's CPU is now in the region
                    start = time.process_time()
                    for i in range(6):
                        assert client.request(b"%d" % i) == b"%d" % i
                    spent[spin] = time.process_time() - start
            finally:
                os.sched_setaffinity(0, before)
                assert server.stdin is not None
                server.stdin.close()
                server.wait(30)
    finally:
        os.sched_setaffinity(0, before)
    # 6 waits of 50 ms: spinning burns close to 300 ms, sleeping close to none
    assert spent[200_000] > 0.1, spent
    assert spent[0] < spent[200_000] / 10, spent


# ---- the slot size a client offers ---------------------------------------------------------


def _offered_slot(path: str, **client_options: Any) -> int:
    """The slot size a native client offers in its SHM_SETUP, read by a raw
    server that then declines (the client carries on over the socket)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    offered: List[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            hello = conn.recv(9, socket.MSG_WAITALL)
            conn.sendall(_codec.encode_handshake_reply(hello[:8], _codec.SHM_PROTOCOL_VERSION))
            size = 5 + _codec.SHM_SETUP_SIZE
            data, ancillary, _, _ = conn.recvmsg(size, socket.CMSG_SPACE(4), socket.MSG_WAITALL)
            for level, kind, fds in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    os.close(int.from_bytes(fds[:4], sys.byteorder))
            offered.append(_codec.decode_shm_setup(data[5:]).slot_size)
            why = b"raw test server"
            conn.sendall(_codec.encode_header(_codec.PacketType.SHM_DECLINE, len(why)) + why)
            conn.recv(1)  # until the client closes

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with ipcfast.Client(path, shm=True, timeout=10, **client_options) as client:
            assert not _uses_shm(client)  # declined: the socket path
    finally:
        thread.join(10)
        listener.close()
    return offered[0]


@pytest.mark.skipif(not LINUX, reason="the raw server passes descriptors (SCM_RIGHTS)")
def test_slots_never_start_at_the_same_page_offset(tmp_path: Path) -> None:
    """The response slot starts slot_size bytes after the request slot: a
    slot size near a multiple of the page size made a copy from one to the
    other (a zero-copy echo) 3x slower (4K aliasing), so the client offers
    half a page more. Sizes already clear of it are offered as asked."""
    _c_lib()
    page = 4096
    cases = {0: 2 * 1024 * 1024, 1 << 20: 1 << 20, 5000: 5000, 4096: 4096, 64: 64, 65536 + 100: 65536 + 100}
    for asked, base in cases.items():
        got = _offered_slot(str(tmp_path / f"raw-{asked}.sock"), shm_slot_size=asked)
        assert got >= base, (asked, got)
        if base >= page:
            assert 512 <= got % page <= page - 512, (asked, got)
        else:
            assert got == base
        if 512 <= base % page <= page - 512:
            assert got == base
