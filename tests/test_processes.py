"""Servers and clients in different processes: cross-process round trips,
killed servers, stale sockets, leaks over many connections."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any, Dict

import pytest

import ipcfast

from conftest import (
    MakeClient,
    MakeServer,
    ServerProcess,
    echo,
    linux_only,
    other_backend,
    posix_only,
    run_python,
    wait_for,
)

CLIENT_CODE = """
import sys, ipcfast
name, backend = sys.argv[1], sys.argv[2]
with ipcfast.Client(name, connect_timeout=10, backend=backend) as client:
    for i in range(50):
        body = ("%d:" % i).encode() + bytes(range(256)) * 10
        assert client.request(body) == body.upper(), i
    print(client.request(b"from another process").decode())
"""


def test_client_in_another_process(name: str, make_server: MakeServer, client_backend: str) -> None:
    with make_server(name, lambda r: r.upper()):
        result = run_python(CLIENT_CODE, name, client_backend)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "FROM ANOTHER PROCESS"


def test_server_in_another_process(name: str, server_backend: str, make_client: MakeClient) -> None:
    with ServerProcess(name, backend=server_backend) as server:
        with make_client(name) as client:
            assert int(client.request(b"pid")) == server.proc.pid != os.getpid()
            assert client.request(b"abc\x00def") == b"fed\x00cba"
            big = os.urandom(2 * 1024 * 1024)
            assert client.request(big) == big[::-1]
        assert server.stop() == 0
        assert server.wait_line("STOPPED")


def test_many_client_processes(name: str, make_server: MakeServer, client_backend: str) -> None:
    """Four client processes at once against one server."""
    import subprocess
    import sys

    from conftest import child_env

    with make_server(name, lambda r: r.upper()):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT_CODE, name, client_backend],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert out.strip() == "FROM ANOTHER PROCESS"


@posix_only
def test_killed_server_stale_socket_and_waiting_client(name: str, server_backend: str, make_client: MakeClient) -> None:
    """SIGKILL the server while a client waits for its answer: the client gets
    ConnectionClosed (no hang) and a new server reclaims the name: one of the
    other backend, so each backend reclaims what the other left behind."""
    outcome: Dict[str, Any] = {}
    with ServerProcess(name, backend=server_backend) as server:
        address = server.address
        client = make_client(name)
        assert client.request(b"ab") == b"ba"

        def wait_for_answer() -> None:
            try:
                outcome["response"] = client.request(b"sleep:30")
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=wait_for_answer)
        thread.start()
        server.wait_line("HANDLING sleep")
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        t0 = time.monotonic()
        thread.join(10)
        assert not thread.is_alive(), "the client hung after the server was killed"
        assert time.monotonic() - t0 < 5.0
        assert isinstance(outcome.get("error"), ipcfast.ConnectionClosed), outcome
        client.close()

    assert os.path.exists(address), "expected the killed server's socket file to be left behind"
    assert os.path.exists(address + ".lock"), "expected the killed server's lock file to be left behind"
    with ipcfast.Server(name, echo, backend=other_backend(server_backend)) as replacement:  # stale socket reclaimed
        assert replacement.address == address
        with make_client(name) as client:
            assert client.request(b"new server") == b"new server"


@posix_only
def test_killed_client_does_not_disturb_the_server(
    name: str, make_server: MakeServer, client_backend: str, make_client: MakeClient
) -> None:
    """A client process killed mid-request: the server keeps serving."""
    entered = threading.Event()
    release = threading.Event()

    def handler(request: bytes) -> bytes:
        if request == b"hold":
            entered.set()
            release.wait(10)
        return request

    import subprocess
    import sys

    from conftest import child_env

    code = "import sys, ipcfast; ipcfast.Client(sys.argv[1], backend=sys.argv[2]).request(b'hold')"
    with make_server(name, handler, max_clients=2):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, name, client_backend], env=child_env(), stderr=subprocess.PIPE
        )
        try:
            assert entered.wait(30), "the child's request never arrived"
            proc.kill()
            proc.wait(10)
        finally:
            release.set()
            if proc.stderr:
                proc.stderr.close()
        # The killed client's slot is recycled: two fresh clients fit in max_clients=2.
        with make_client(name, connect_timeout=10) as a, make_client(name, connect_timeout=10) as b:
            assert a.request(b"a") == b"a"
            assert b.request(b"b") == b"b"


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@linux_only
def test_no_leaks_over_2000_connections(
    name: str, server_backend: str, client_backend: str, make_client: MakeClient
) -> None:
    """2000 connect/request/close cycles: descriptors and threads stay flat in
    the server process (and descriptors in the client process). 2000 cycles for
    native-native; fewer for pairings with a pure side (slower per cycle, and
    the same code paths), but every pairing checks that nothing grows."""
    cycles = 2000 if (server_backend, client_backend) == ("native", "native") else 400
    with ServerProcess(name, backend=server_backend) as server:

        def stats() -> Dict[str, int]:
            with make_client(name) as client:
                return json.loads(client.request(b"stats"))

        for _ in range(20):  # warm up
            with make_client(name) as client:
                client.request(b"warm")
        baseline = stats()
        client_fds = _fd_count()
        client_threads = threading.active_count()

        for i in range(cycles):
            with make_client(name) as client:
                assert client.request(b"%d" % i) == (b"%d" % i)[::-1]

        assert _fd_count() <= client_fds, "the client process leaks descriptors"
        assert threading.active_count() <= client_threads, "the client process leaks threads"
        final: Dict[str, int] = {}

        def settled() -> bool:
            final.update(stats())
            return all(final[k] <= baseline[k] for k in ("fds", "tasks", "active_count"))

        assert wait_for(settled, timeout=10, interval=0.2), (baseline, final)
        print(f"server process before/after {cycles} connections:", baseline, final)
        assert server.stop() == 0


EXIT_CODE = """
import sys, threading, time, ipcfast
name, server_backend, client_backend = sys.argv[1:4]
entered = threading.Event()

def handler(request):
    if request == b"slow":
        entered.set()
        time.sleep(0.3)
    return request

server = ipcfast.Server(name, handler, backend=server_backend)
server.start()
idle = ipcfast.Client(name, backend=client_backend)          # connected, never closed
assert idle.request(b"x") == b"x"

def busy():
    with ipcfast.Client(name, backend=client_backend) as c:
        c.request(b"slow")

threading.Thread(target=busy, daemon=True).start()
entered.wait(10)
print("EXITING", flush=True)
# No stop(), no close(): the atexit hook must stop the server cleanly.
"""


def test_interpreter_exit_with_a_running_server(name: str, server_backend: str, client_backend: str) -> None:
    result = run_python(EXIT_CODE, name, server_backend, client_backend, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "EXITING" in result.stdout
    assert "Fatal" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    with pytest.raises(ipcfast.ServerNotFound):
        ipcfast.Client(name, connect_timeout=0.1, backend=client_backend)


BLOCKED_IMPORT_CODE = """
import sys, warnings

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "ipcfast._ipcfast_cffi":
            raise ImportError("blocked by the test")
        return None

sys.meta_path.insert(0, Block())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import ipcfast
    for attempt in range(2):
        try:
            ipcfast.Server("x", lambda r: r)
        except ImportError as exc:
            print("ImportError:", exc)
    try:
        ipcfast.Client("x")
    except ImportError as exc:
        print("ImportError:", exc)
    # The pure backend needs nothing native.
    with ipcfast.Server(sys.argv[1], lambda r: r[::-1], backend="pure") as server:
        with ipcfast.Client(sys.argv[1], backend="pure") as client:
            print("pure:", client.request(b"erup").decode())
print("warnings:", len(caught), caught[0].category.__name__)
print("name:", ipcfast.pipe_name("p", a=1)[:2])
print("error:", type(ipcfast.native_import_error()).__name__)
print("loaded:", sorted(m for m in sys.modules if m.startswith(("ipcfast", "_cffi", "cffi"))))
"""


@posix_only
def test_import_works_without_the_native_module(name: str) -> None:
    result = run_python(BLOCKED_IMPORT_CODE, name)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum("ImportError:" in line and "blocked by the test" in line for line in lines) == 3, lines
    assert "warnings: 1 RuntimeWarning" in lines  # warned once, not per call
    assert "name: p-" in lines
    assert "error: ImportError" in lines
    assert "pure: pure" in lines
    loaded = next(line for line in lines if line.startswith("loaded:"))
    assert "ipcfast._pure" in loaded and "ipcfast._native" not in loaded and "cffi" not in loaded, loaded


def test_gil_is_released_while_waiting(name: str, server_backend: str, make_client: MakeClient) -> None:
    """While one thread waits for a slow server, Python threads keep running."""
    with ServerProcess(name, backend=server_backend) as server:
        with make_client(name) as client:
            done = threading.Event()

            def wait_for_server() -> None:
                client.request(b"sleep:1.0")
                done.set()

            thread = threading.Thread(target=wait_for_server)
            thread.start()
            server.wait_line("HANDLING sleep")
            iterations = 0
            t0 = time.monotonic()
            while not done.is_set() and time.monotonic() - t0 < 10:
                iterations += 1
            thread.join(10)
        assert done.is_set()
        assert iterations > 10_000, iterations


SERVE_FOREVER_CODE = """
import sys, threading, time, ipcfast
server = ipcfast.Server(sys.argv[1], lambda r: r, backend=sys.argv[2])
server.start()
main = threading.main_thread().ident

def announce():
    # READY only once the main thread waits inside serve_forever(), so the
    # SIGINT the test sends next cannot land before it (a busy machine can
    # keep the main thread from reaching it for a while).
    while True:
        frame, names = sys._current_frames().get(main), []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        if "serve_forever" in names and "wait" in names[:names.index("serve_forever")]:
            break
        time.sleep(0.005)
    print("READY", server.address, flush=True)

threading.Thread(target=announce, daemon=True).start()
try:
    server.serve_forever()
except KeyboardInterrupt:
    print("INTERRUPTED running=%s" % server.running, flush=True)
"""


@posix_only
def test_serve_forever_stops_on_keyboard_interrupt(name: str, server_backend: str, make_client: MakeClient) -> None:
    import subprocess
    import sys

    from conftest import child_env

    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_FOREVER_CODE, name, server_backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY")
        with make_client(name) as client:
            assert client.request(b"up") == b"up"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "INTERRUPTED running=False" in out
    with pytest.raises(ipcfast.ServerNotFound):
        make_client(name, connect_timeout=0.1)
