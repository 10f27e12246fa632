"""A server's life with the process around it (issue 13, items 1, 7, 12):
fork leaves the parent's server alone, stop() and interpreter exit are
bounded even with a stuck handler, and a stalled request reserves memory as
its data arrives, not as announced.

Every scenario runs real processes over real sockets, on both backends.
"""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from typing import List

import pytest

import ipcfast
from conftest import (
    BACKENDS,
    MakeClient,
    MakeServer,
    ServerProcess,
    linux_only,
    posix_only,
    recv_exactly,
    run_python,
    unique_name,
)
from ipcfast import _codec

pytestmark = posix_only


def _script(body: str) -> str:
    return textwrap.dedent(body)


# ---- item 1: a fork child forgets the parent's server ---------------------------------

FORK_SCRIPT = _script(
    """
    import os, sys
    import ipcfast

    server_backend, client_backend, name = sys.argv[1:4]
    server = ipcfast.Server(name, lambda r: r, backend=server_backend)
    server.start()
    address = server.address
    client = ipcfast.Client(name, backend=client_backend)
    assert client.request(b"before") == b"before"
    pid = os.fork()
    if pid == 0:
        # The child leaves the way an application does: atexit hooks run.
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    print("CHILD", status, flush=True)
    # The parent's objects are untouched: same connection, new connections,
    # the socket file is still there.
    assert os.path.exists(address), "the child unlinked the parent's socket"
    assert client.request(b"after") == b"after"
    with ipcfast.Client(name, backend=client_backend, connect_timeout=2) as fresh:
        assert fresh.request(b"fresh") == b"fresh"
    client.close()
    server.stop()
    assert not os.path.exists(address)
    print("OK", flush=True)
    """
)


# The four backend pairings come from conftest (server_backend, client_backend).
def test_fork_child_exit_leaves_parent_server_alone(server_backend: str, client_backend: str) -> None:
    result = run_python(FORK_SCRIPT, server_backend, client_backend, unique_name("fork"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "CHILD 0" in result.stdout, result.stdout + result.stderr
    assert "OK" in result.stdout, result.stdout + result.stderr


# ---- item 12: stop() and interpreter exit are bounded -------------------------------


def _swallow(fn: "object", *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except BaseException:
        pass


def test_stop_with_timeout_abandons_a_stuck_handler(
    name: str, make_server: MakeServer, make_client: MakeClient, ipc_log: "object"
) -> None:
    never = threading.Event()
    entered = threading.Event()

    def handler(request: bytes) -> bytes:
        entered.set()
        never.wait(60)
        return request

    server = make_server(name, handler)
    server.start()
    client = make_client(name, timeout=30)
    thread = threading.Thread(target=lambda: _swallow(client.request, b"x"), daemon=True)
    thread.start()
    assert entered.wait(10)
    started = time.monotonic()
    server.stop(timeout=0.5)
    elapsed = time.monotonic() - started
    never.set()
    thread.join(10)
    client.close()
    assert elapsed < 3.0, f"stop(timeout=0.5) took {elapsed:.2f} s"
    assert not server.running
    assert ipc_log.find("abandon") is not None, ipc_log.messages()  # type: ignore[attr-defined]
    # The name is free again.
    with make_server(name, lambda r: r), make_client(name) as again:
        assert again.request(b"ok") == b"ok"


EXIT_SCRIPT = _script(
    """
    import sys, threading
    import ipcfast

    backend, name = sys.argv[1:3]
    never = threading.Event()
    entered = threading.Event()

    def handler(request):
        entered.set()
        never.wait()
        return request

    server = ipcfast.Server(name, handler, backend=backend)
    server.start()
    client = ipcfast.Client(name, backend=backend)
    threading.Thread(target=client.request, args=(b"x",), daemon=True).start()
    entered.wait(10)
    print("LEAVING", flush=True)
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interpreter_exit_never_hangs_on_a_stuck_handler(backend: str) -> None:
    started = time.monotonic()
    result = run_python(EXIT_SCRIPT, backend, unique_name("exit"), timeout=30)
    elapsed = time.monotonic() - started
    assert "LEAVING" in result.stdout, result.stderr
    assert result.returncode == 0, result.stderr
    assert elapsed < 15.0


# ---- item 7: an announcement alone costs little ---------------------------------------

HELLO = _codec.encode_handshake_request(_codec.DEFAULT_HANDSHAKE)


def _vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def _connect(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)
    sock.sendall(HELLO)
    assert len(recv_exactly(sock, _codec.HANDSHAKE_MESSAGE_SIZE)) == _codec.HANDSHAKE_MESSAGE_SIZE
    return sock


@linux_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_stalled_announced_requests_reserve_memory_as_data_arrives(backend: str) -> None:
    """Eight clients announce 60 MiB requests, send 1 KiB each and stall: the
    server's address space and resident set grow by far less than what was
    announced (the buffer grows with the data that arrives)."""
    announced = 60 << 20
    with ServerProcess(unique_name("mem"), backend=backend) as proc:
        pid = proc.proc.pid
        socks: List[socket.socket] = []
        try:
            for _ in range(8):
                socks.append(_connect(proc.address))
            # Connection threads and their first buffers exist now.
            for sock in socks:
                sock.sendall(_codec.encode_header(_codec.PacketType.REQUEST, 3) + b"abc")
                recv_exactly(sock, 8)
            time.sleep(0.3)
            size_before = _vm_kib(pid, "VmSize")
            rss_before = _vm_kib(pid, "VmRSS")
            for sock in socks:
                sock.sendall(_codec.encode_header(_codec.PacketType.REQUEST, announced) + b"x" * 1024)
            time.sleep(1.0)
            grown_size_mib = (_vm_kib(pid, "VmSize") - size_before) / 1024
            grown_rss_mib = (_vm_kib(pid, "VmRSS") - rss_before) / 1024
        finally:
            for sock in socks:
                sock.close()
        assert grown_size_mib < 64, f"address space grew {grown_size_mib:.0f} MiB for 8 x 1 KiB received"
        assert grown_rss_mib < 32, f"resident set grew {grown_rss_mib:.0f} MiB"
        # Still serving.
        with ipcfast.Client(proc.name, backend=backend) as client:
            assert client.request(b"abc") == b"cba"
