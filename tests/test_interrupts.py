"""Interruptible client calls and clients after fork() (issue 13, items 5
and 1's client half): Ctrl-C and other signal handlers during a blocking
request or connect, close() from another thread, cancelling an asyncio
request, the CLI's exit code, and a Client used in a fork() child.

Every signal scenario runs in a real child interpreter (signals must not
touch the pytest process) against real sockets, on both backends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Iterator, List

import pytest

import ipcfast
import ipcfast.aio
from conftest import (
    BACKENDS,
    MakeClient,
    MakeServer,
    ServerProcess,
    child_env,
    posix_only,
    run_python,
    unique_name,
)

pytestmark = posix_only


def _script(body: str) -> str:
    return textwrap.dedent(body)


# ---- a client inherited by a fork() child ------------------------------------------------

CLIENT_AFTER_FORK_SCRIPT = _script(
    """
    import os, sys
    import ipcfast

    backend, name = sys.argv[1:3]
    server = ipcfast.Server(name, lambda r: r, backend=backend)
    server.start()
    client = ipcfast.Client(name, backend=backend)
    pid = os.fork()
    if pid == 0:
        try:
            client.request(b"child")
        except ipcfast.IPCError as exc:
            os.write(1, ("CHILD-ERROR " + type(exc).__name__ + " " + str(exc) + "\\n").encode())
            os._exit(0)
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    print("STATUS", status, flush=True)
    for i in range(50):
        assert client.request(b"p%d" % i) == b"p%d" % i
    client.close()
    server.stop()
    print("OK", flush=True)
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_client_used_in_fork_child_raises_clear_error(backend: str) -> None:
    result = run_python(CLIENT_AFTER_FORK_SCRIPT, backend, unique_name("forkc"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "STATUS 0" in result.stdout, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("CHILD-ERROR"))
    assert "fork" in line, line
    assert "OK" in result.stdout


# ---- item 5: Ctrl-C and close() during a blocking call ------------------------------


@pytest.fixture
def hung_server() -> Iterator[ServerProcess]:
    """A server (its own process) whose `sleep:` requests take a minute."""
    with ServerProcess(unique_name("hung")) as proc:
        yield proc


REQUEST_SCRIPT = _script(
    """
    import sys, time
    import ipcfast

    backend, name = sys.argv[1:3]
    api = sys.argv[3] if len(sys.argv) > 3 else "request"
    client = ipcfast.Client(name, backend=backend)
    if backend == "native" and sys.platform.startswith("linux"):
        from ipcfast._ipcfast_cffi import lib
        if not lib.ipc_client_uses_shm(client._client):
            sys.exit("expected the shared-memory path")
    print("READY", flush=True)
    try:
        if api == "request":
            client.request(b"sleep:60")
        elif api == "into":
            client.request_into(b"sleep:60", bytearray(100))
        else:
            client.request_view(b"sleep:60")
    except KeyboardInterrupt:
        print("INTERRUPTED", time.monotonic(), flush=True)
        sys.exit(42)
    print("ANSWERED", flush=True)
    """
)


def _interrupt_latency(script: str, *args: str, ready_after: float = 0.3) -> float:
    """Start script, wait for its READY line, wait ready_after seconds, send
    SIGINT; returns seconds from the signal to the child's exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), line + (proc.stderr.read() if proc.stderr else "")
        time.sleep(ready_after)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, f"rc={proc.returncode} out={out!r} err={err!r}"
    assert "INTERRUPTED" in out
    return elapsed


@pytest.mark.parametrize("api", ["request", "into", "view"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_interrupts_a_blocking_request(backend: str, api: str, hung_server: ServerProcess) -> None:
    """request(), request_into() and request_view() alike: the native client
    waits on the shared-memory path here (the server in its own process
    accepts it by default), the pure one on the socket."""
    elapsed = _interrupt_latency(REQUEST_SCRIPT, backend, hung_server.name, api)
    # About 100 ms is the promise; the bound leaves room for a loaded CI
    # machine and the interpreter's own exit.
    assert elapsed < 2.0, f"KeyboardInterrupt took {elapsed:.2f} s"


DISPATCH_SCRIPT = _script(
    """
    import os, sys
    import ipcfast

    backend, timeout = sys.argv[1], sys.argv[2]
    server = ipcfast.Server("dispatch-%d" % os.getpid(), lambda r: r, backend=backend, dispatch="manual")
    server.start()
    print("READY", flush=True)
    try:
        server.dispatch(timeout=None if timeout == "none" else float(timeout))
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        server.stop()
        sys.exit(42)
    print("RETURNED", flush=True)
    """
)


@pytest.mark.parametrize("timeout", ["none", "30"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_interrupts_a_waiting_dispatch(backend: str, timeout: str) -> None:
    """A main loop blocked in dispatch() with no request coming: Ctrl-C ends
    the wait (the native one waited in C until a request came)."""
    elapsed = _interrupt_latency(DISPATCH_SCRIPT, backend, timeout)
    assert elapsed < 2.0, f"KeyboardInterrupt took {elapsed:.2f} s"


CONNECT_SCRIPT = _script(
    """
    import sys, time
    import ipcfast

    backend, path = sys.argv[1:3]
    print("READY", flush=True)
    try:
        ipcfast.Client(path, backend=backend, connect_timeout=None)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(42)
    print("CONNECTED", flush=True)
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_interrupts_a_connect_stuck_in_the_handshake(backend: str, tmp_path: "os.PathLike[str]") -> None:
    # A listener that accepts but never answers the handshake.
    path = os.path.join(str(tmp_path), "mute.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    held: List[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        elapsed = _interrupt_latency(CONNECT_SCRIPT, backend, path, ready_after=0.5)
        assert elapsed < 2.0, f"KeyboardInterrupt took {elapsed:.2f} s"
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        listener.close()


def test_cli_call_exits_130_at_once_on_ctrl_c(hung_server: ServerProcess) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipcfast", "call", hung_server.name, "sleep:60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        hung_server.wait_line("HANDLING", timeout=20)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert elapsed < 2.0, f"the CLI took {elapsed:.2f} s to exit"


def test_close_from_another_thread_aborts_an_inflight_request(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    release = threading.Event()

    def handler(request: bytes) -> bytes:
        release.wait(30)
        return request

    with make_server(name, handler):
        client = make_client(name)
        outcome: List[BaseException] = []

        def call() -> None:
            try:
                client.request(b"stuck")
            except BaseException as exc:  # noqa: B036 - recorded for the assertion
                outcome.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        client.close()
        thread.join(5)
        elapsed = time.monotonic() - started
        release.set()
        assert not thread.is_alive(), "close() did not abort the request"
        assert elapsed < 2.0
        assert outcome and isinstance(outcome[0], ipcfast.ConnectionClosed), outcome
        assert client.closed


# ---- a signal handler that does not raise ----------------------------------------------

ALARM_SCRIPT = _script(
    """
    import signal, sys, time
    import ipcfast

    backend, name = sys.argv[1:3]
    ticks = []
    signal.signal(signal.SIGALRM, lambda signum, frame: ticks.append(time.monotonic()))
    client = ipcfast.Client(name, backend=backend)
    signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
    answer = client.request(b"sleep:0.6", timeout=10)
    during = len(ticks)
    # A timeout still holds while signals arrive.
    started = time.monotonic()
    try:
        client.request(b"sleep:5", timeout=0.4)
        print("NO-TIMEOUT", flush=True)
    except ipcfast.Timeout:
        print("TIMEOUT", round(time.monotonic() - started, 2), flush=True)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    assert answer == b"slept", answer
    print("TICKS", during, flush=True)
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_signal_handler_that_returns_lets_the_request_complete(backend: str, hung_server: ServerProcess) -> None:
    result = run_python(ALARM_SCRIPT, backend, hung_server.name, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The handler ran while the request waited (not all at its end)...
    ticks = int(next(x for x in lines if x.startswith("TICKS")).split()[1])
    assert ticks >= 3, result.stdout
    # ...and the request went on to its answer; the timeout kept its deadline.
    timeout_line = next(x for x in lines if x.startswith(("TIMEOUT", "NO-TIMEOUT")))
    assert timeout_line.startswith("TIMEOUT"), result.stdout
    assert float(timeout_line.split()[1]) < 2.0, result.stdout


CLOSE_IN_HANDLER_SCRIPT = _script(
    """
    import signal, sys, time
    import ipcfast

    backend, name = sys.argv[1:3]
    client = ipcfast.Client(name, backend=backend)
    signal.signal(signal.SIGALRM, lambda signum, frame: client.close())
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    started = time.monotonic()
    try:
        client.request(b"sleep:60")
        print("ANSWERED", flush=True)
    except ipcfast.ConnectionClosed as exc:
        print("CLOSED", round(time.monotonic() - started, 2), exc, flush=True)
    assert client.closed
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_signal_handler_may_close_the_client_during_its_request(backend: str, hung_server: ServerProcess) -> None:
    result = run_python(CLOSE_IN_HANDLER_SCRIPT, backend, hung_server.name, timeout=60)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith(("CLOSED", "ANSWERED")))
    assert line.startswith("CLOSED"), result.stdout
    assert float(line.split()[1]) < 3.0, line


# ---- asyncio: cancelling a request aborts its round trip ---------------------------------


def test_cancelling_an_aio_request_aborts_the_round_trip(
    name: str, make_server: MakeServer, client_backend: str
) -> None:
    release = threading.Event()

    def handler(request: bytes) -> bytes:
        if request == b"stuck":
            release.wait(30)
        return request

    async def scenario() -> float:
        async with ipcfast.aio.Client(name, backend=client_backend) as client:
            task = asyncio.ensure_future(client.request(b"stuck"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The worker is free at once (the stuck round trip was aborted,
            # not left running) and the next request gets a fresh connection.
            started = time.monotonic()
            assert await asyncio.wait_for(client.request(b"next"), 10) == b"next"
            return time.monotonic() - started

    with make_server(name, handler):
        try:
            elapsed = asyncio.run(scenario())
        finally:
            release.set()
    assert elapsed < 2.0, f"the next request waited {elapsed:.2f} s"
