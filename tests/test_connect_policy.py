"""How a client connects (issue 13, items 10 and 13): an absent server is
answered at once, a starting or busy one is waited for within the budget,
and the client can require who serves.

Real processes and real sockets; the identity test needs root (CI runs as
root) to act as `nobody`.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

import pytest

import ipcfast
from conftest import (
    MakeClient,
    MakeServer,
    ServerProcess,
    child_env,
    echo,
    posix_only,
    unique_name,
)

pytestmark = posix_only


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- item 13: absent, starting, restarting -------------------------------------------


def test_absent_server_is_reported_at_once(make_client: MakeClient, private_tmp: str) -> None:
    started = time.monotonic()
    with pytest.raises(ipcfast.ServerNotFound) as info:
        make_client(unique_name("absent"), connect_timeout=5.0)
    assert time.monotonic() - started < 1.0
    assert "none is starting" in str(info.value) and "start one" in str(info.value)


def test_stale_socket_without_server_is_reported_at_once(make_client: MakeClient, private_tmp: str) -> None:
    name = unique_name("stale")
    proc = ServerProcess(name, backend="native")
    try:
        address = proc.address
        proc.kill()  # leaves the socket file (and its lock file, naming a dead pid) behind
        assert os.path.exists(address) and os.path.exists(address + ".lock")
        started = time.monotonic()
        with pytest.raises(ipcfast.ServerNotFound):
            make_client(name, connect_timeout=5.0)
        assert time.monotonic() - started < 1.0
    finally:
        proc.__exit__(None, None, None)


def test_cli_call_to_absent_server_answers_at_once(private_tmp: str) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ipcfast", "call", unique_name("nosuch"), "hi"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "ServerNotFound" in result.stderr
    # Interpreter start-up included.
    assert elapsed < 3.0, f"took {elapsed:.2f} s"


def test_lock_file_records_the_owning_pid(make_server: MakeServer, name: str, private_tmp: str) -> None:
    server = make_server(name, echo)
    with server:
        with open(server.address + ".lock") as f:
            assert f.read().strip() == str(os.getpid())


def test_starting_server_is_waited_for_within_the_budget(
    make_server: MakeServer, make_client: MakeClient, name: str, private_tmp: str
) -> None:
    """A live process owns the name (its pid in the lock file) but does not
    listen yet: the client retries until the server is up."""
    os.makedirs(private_tmp, mode=0o700, exist_ok=True)
    with open(os.path.join(private_tmp, name + ".lock"), "w") as f:
        f.write(f"{os.getpid()}\n")
    server = make_server(name, echo)
    timer = threading.Timer(0.3, server.start)
    timer.start()
    try:
        t0 = time.monotonic()
        with make_client(name, connect_timeout=10) as client:
            assert time.monotonic() - t0 >= 0.2
            assert client.request(b"late") == b"late"
    finally:
        timer.join()
        server.stop()


def test_starting_server_that_never_listens_costs_the_budget(
    make_client: MakeClient, name: str, private_tmp: str
) -> None:
    os.makedirs(private_tmp, mode=0o700, exist_ok=True)
    with open(os.path.join(private_tmp, name + ".lock"), "w") as f:
        f.write(f"{os.getpid()}\n")
    t0 = time.monotonic()
    with pytest.raises(ipcfast.ServerNotFound, match="waited"):
        make_client(name, connect_timeout=0.5)
    assert time.monotonic() - t0 >= 0.4


def test_lock_file_of_a_dead_owner_is_answered_at_once(make_client: MakeClient, name: str, private_tmp: str) -> None:
    os.makedirs(private_tmp, mode=0o700, exist_ok=True)
    with open(os.path.join(private_tmp, name + ".lock"), "w") as f:
        f.write(f"{_dead_pid()}\n")
    t0 = time.monotonic()
    with pytest.raises(ipcfast.ServerNotFound):
        make_client(name, connect_timeout=5)
    assert time.monotonic() - t0 < 1.0


def test_restarting_server_is_reached_by_a_client_that_waits_for_it(
    make_server: MakeServer, make_client: MakeClient, name: str, private_tmp: str
) -> None:
    """Between stop and the next start nothing on the system says a server
    is coming back: a client that knows it asks to wait (git's
    wait_if_not_found), and its budget carries it across the gap."""
    server = make_server(name, echo)
    server.start()
    server.stop()
    timer = threading.Timer(0.3, server.start)
    timer.start()
    try:
        t0 = time.monotonic()
        with make_client(name, connect_timeout=10, wait_for_server=True) as client:
            assert time.monotonic() - t0 >= 0.2
            assert client.request(b"again") == b"again"
    finally:
        timer.join()
        server.stop()


def test_cli_wait_reaches_a_server_that_starts_later(private_tmp: str) -> None:
    name = unique_name("cliwait")
    call = subprocess.Popen(
        [sys.executable, "-m", "ipcfast", "call", name, "hi", "--wait", "--connect-timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        time.sleep(1.0)  # the CLI is retrying by now
        with ipcfast.Server(name, echo):
            out, err = call.communicate(timeout=30)
    finally:
        if call.poll() is None:
            call.kill()
            call.wait()
    assert call.returncode == 0, err
    assert out.strip() == "hi"


def test_probe_tells_the_states_apart(private_tmp: str, name: str) -> None:
    if ipcfast.native_import_error() is not None:
        pytest.skip("the native backend is unavailable")
    from ipcfast._native._ffi import ffi, lib

    def probe(target: str) -> int:
        err = ffi.new("ipc_error *")
        state = int(lib.ipc_client_probe(os.fsencode(target), err))
        lib.ipc_error_clear(err)
        return state

    assert probe(name) == lib.IPC_STATE_NOT_LISTENING
    with ipcfast.Server(name, echo) as server:
        assert probe(name) == lib.IPC_STATE_LISTENING
        lock = server.address + ".lock"
    assert probe(name) == lib.IPC_STATE_NOT_LISTENING
    with open(lock, "w") as f:
        f.write(f"{os.getpid()}\n")
    assert probe(name) == lib.IPC_STATE_STARTING
    with open(lock, "w") as f:
        f.write(f"{_dead_pid()}\n")
    assert probe(name) == lib.IPC_STATE_NOT_LISTENING
    # A path through a regular file is "not found", like a missing directory
    # (docs/protocol.md 2.3; tests/test_hardening.py).
    assert probe("/etc/passwd/x") == lib.IPC_STATE_NOT_LISTENING
    assert probe("") == lib.IPC_STATE_INVALID_PATH


# ---- item 10: the client can require who serves -------------------------------------

needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")

IMPOSTOR = r"""
import os, sys, time, ipcfast
from ipcfast._base import _backend_module
path, backend = sys.argv[1], sys.argv[2]
_backend_module(backend)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
server = ipcfast.Server(path, lambda r: b"impostor", backend=backend, access="world")
server.start()
print("READY", server.address, flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A sticky world-writable directory, like /tmp."""
    path = tempfile.mkdtemp(prefix="ipcfast-ident-", dir="/tmp")
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        for entry in os.listdir(path):
            try:
                os.unlink(os.path.join(path, entry))
            except OSError:
                pass
        os.rmdir(path)


@needs_root
def test_client_refuses_a_server_of_another_user_by_default(
    shared_dir: str, server_backend: str, client_backend: str
) -> None:
    path = os.path.join(shared_dir, "svc.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", IMPOSTOR, path, server_backend],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        # Root's client of a path name accepts root or itself: nobody is neither.
        with pytest.raises(ipcfast.AccessDenied) as info:
            ipcfast.Client(path, backend=client_backend, connect_timeout=2)
        assert "nobody" in str(info.value) or "65534" in str(info.value)
        # An explicit expectation admits the service's user.
        with ipcfast.Client(path, backend=client_backend, server_user=65534) as client:
            assert client.request(b"x") == b"impostor"
        with ipcfast.Client(path, backend=client_backend, server_user="nobody") as client:
            assert client.request(b"x") == b"impostor"
        with ipcfast.Client(path, backend=client_backend, server_user="any") as client:
            assert client.request(b"x") == b"impostor"
        # Requiring another user refuses nobody too, naming both.
        with pytest.raises(ipcfast.AccessDenied, match="nobody"):
            ipcfast.Client(path, backend=client_backend, server_user=0)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_client_accepts_its_own_user_by_default_and_by_uid(
    make_server: MakeServer, make_client: MakeClient, name: str, tmp_path: "os.PathLike[str]"
) -> None:
    path = os.path.join(str(tmp_path), "own.sock")
    for target in (name, path):
        with make_server(target, echo):
            with make_client(target) as client:
                assert client.request(b"a") == b"a"
            with make_client(target, server_user=os.geteuid()) as client:
                assert client.request(b"b") == b"b"


@pytest.mark.parametrize("bad", [True, 1.5, b"root", -1, 2**32])
def test_server_user_argument_is_checked(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        ipcfast.Client("x", server_user=bad)  # type: ignore[arg-type]


def test_server_user_names_an_existing_user() -> None:
    with pytest.raises(ValueError, match="no user named"):
        ipcfast.Client("x", server_user="no-such-user-ipcfast")
