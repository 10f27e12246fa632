"""A server's life with the process around it (issue 13, items 1, 7, 12):
fork leaves the parent's server alone, stop() and interpreter exit are
bounded even with a stuck handler, and a stalled request reserves memory as
its data arrives, not as announced.

Every scenario runs real processes over real sockets, on both backends.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
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
    child_env,
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


#: A child interpreter's opening: a server whose handler never returns,
#: with one request stuck in it.
STUCK_HANDLER = _script(
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
    """
)

EXIT_SCRIPT = STUCK_HANDLER + _script(
    """
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


# ---- issue 14: handlers on worker threads (workers=N) -------------------------------


def test_workers_answer_many_clients_and_report_handler_errors(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    def handler(request: bytes) -> bytes:
        if request == b"boom":
            raise ValueError("no boom here")
        return request[::-1]

    with make_server(name, handler, workers=2):
        clients = [make_client(name) for _ in range(5)]
        try:
            for round_ in range(20):
                for i, client in enumerate(clients):
                    payload = f"{i}-{round_}".encode()
                    assert client.request(payload) == payload[::-1]
            with pytest.raises(ipcfast.RemoteError, match="ValueError: no boom here"):
                clients[0].request(b"boom")
            assert clients[0].request(b"still") == b"llits"
        finally:
            for client in clients:
                client.close()


def test_workers_run_handlers_at_once_and_a_slow_one_stalls_nobody(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    both_inside = threading.Barrier(2, timeout=10)
    release = threading.Event()

    def handler(request: bytes) -> bytes:
        if request == b"pair":
            both_inside.wait()  # only passes if two handlers run at once
        elif request == b"slow":
            release.wait(20)
        return request

    with make_server(name, handler, workers=2):
        with make_client(name, timeout=15) as a, make_client(name, timeout=15) as b:
            outcome: List[bytes] = []
            thread = threading.Thread(target=lambda: outcome.append(a.request(b"pair")))
            thread.start()
            assert b.request(b"pair") == b"pair"
            thread.join(10)
            assert outcome == [b"pair"]
            # One worker is stuck in a slow handler: the other still serves.
            slow = threading.Thread(target=lambda: outcome.append(a.request(b"slow")))
            slow.start()
            time.sleep(0.2)
            started = time.monotonic()
            assert b.request(b"quick") == b"quick"
            assert time.monotonic() - started < 5.0
            release.set()
            slow.join(10)
            assert outcome == [b"pair", b"slow"]


def test_workers_keep_max_message_and_refuse_stop_from_a_handler(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    seen: List[BaseException] = []
    server: "ipcfast.Server"

    def handler(request: bytes) -> bytes:
        if request == b"stop":
            try:
                server.stop()
            except RuntimeError as exc:
                seen.append(exc)
            return b"refused"
        return request * 1000

    server = make_server(name, handler, workers=1, max_message=4096)
    with server, make_client(name) as client:
        assert client.request(b"abc") == b"abc" * 1000
        with pytest.raises(ipcfast.MessageTooLarge):
            client.request(b"abcdefgh")
    with server, make_client(name) as client:
        assert client.request(b"stop") == b"refused"
    assert seen and "inside this server's handler" in str(seen[0])


def test_stop_with_timeout_abandons_a_stuck_worker(
    name: str, make_server: MakeServer, make_client: MakeClient, ipc_log: "object"
) -> None:
    never = threading.Event()
    entered = threading.Event()

    def handler(request: bytes) -> bytes:
        entered.set()
        never.wait(60)
        return request

    server = make_server(name, handler, workers=1)
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
    assert ipc_log.find("abandon") is not None, ipc_log.messages()  # type: ignore[attr-defined]
    with make_server(name, lambda r: r, workers=1), make_client(name) as again:
        assert again.request(b"ok") == b"ok"


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_argument_is_checked(backend: str) -> None:
    with pytest.raises(ValueError, match="dispatch='thread'"):
        ipcfast.Server("x", lambda r: r, workers=2, dispatch="manual", backend=backend)
    with pytest.raises(ValueError):
        ipcfast.Server("x", lambda r: r, workers=-1, backend=backend)
    with pytest.raises(TypeError):
        ipcfast.Server("x", lambda r: r, workers=1.5, backend=backend)  # type: ignore[arg-type]


CTRL_C_SCRIPT = STUCK_HANDLER + _script(
    """
    print("STOPPING", flush=True)
    try:
        server.stop()
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_breaks_a_stop_waiting_for_a_stuck_handler(backend: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, backend, unique_name("sigint")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "STOPPING"
        time.sleep(1.5)  # past the soft grace: stop() waits for the handler now
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "INTERRUPTED" in out, err
    assert proc.returncode == 0, err
    assert elapsed < 5.0, f"exit took {elapsed:.1f} s after SIGINT"


def test_a_node_refuses_workers(name: str) -> None:
    from ipcfast._native import NativeServer

    server = ipcfast.Server(name, lambda r: r, workers=1, backend="native")
    assert isinstance(server, NativeServer)
    with pytest.raises(ValueError, match="workers"):
        server.enable_node(lambda call: None)
