"""The POSIX transport of both backends: where names live, who owns a name
(the lock-file protocol), stale and foreign files, socket modes, peers of
another user. A native and a pure server follow the same rules, so they
cannot both win one name."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import sys
import tempfile
import threading
from typing import Any, Dict, Iterator, List

import ipcfast
import pytest
from conftest import (
    BACKENDS,
    MakeClient,
    MakeServer,
    echo,
    posix_only,
    run_python,
    unique_name,
)

pytestmark = posix_only


# ---- where plain names live -----------------------------------------------------------


def test_plain_names_use_tmpdir_when_xdg_runtime_dir_is_unset(
    private_tmp: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    name = unique_name()
    assert not os.path.exists(private_tmp)
    with make_server(name, echo) as server:
        assert server.address == os.path.join(private_tmp, name)
        st = os.lstat(private_tmp)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert stat.S_IMODE(os.stat(server.address).st_mode) == 0o600
        with make_client(name) as client:
            assert client.request(b"tmp") == b"tmp"
    assert not os.path.exists(os.path.join(private_tmp, name))
    assert not os.path.exists(os.path.join(private_tmp, name + ".lock"))


def test_plain_names_use_xdg_runtime_dir(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, make_server: MakeServer, make_client: MakeClient
) -> None:
    runtime = str(tmp_path / "run")
    os.mkdir(runtime, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    name = unique_name()
    with make_server(name, echo) as server:
        assert server.address == os.path.join(runtime, "ipcfast", name)
        with make_client(name) as client:
            assert client.request(b"xdg") == b"xdg"


def test_no_private_directory_yet_is_not_found(private_tmp: str, make_client: MakeClient) -> None:
    with pytest.raises(ipcfast.ServerNotFound):
        make_client(unique_name(), connect_timeout=0)
    assert not os.path.exists(private_tmp), "a client must not create the private directory"


# A directory another user made first is not refused outright: both sides
# fall back to HOME/.ipcfast-UID (tests/test_hardening.py covers it).
@pytest.mark.parametrize("flaw", ["symlink", "group-writable", "world-writable", "not-a-directory"])
def test_an_unsafe_private_directory_is_refused(
    private_tmp: str, flaw: str, make_server: MakeServer, make_client: MakeClient, tmp_path: Any
) -> None:
    if flaw == "symlink":
        target = str(tmp_path / "elsewhere")
        os.mkdir(target, 0o700)
        os.symlink(target, private_tmp)
    elif flaw == "not-a-directory":
        with open(private_tmp, "w"):
            pass
    else:
        os.mkdir(private_tmp, 0o700)
        os.chmod(private_tmp, 0o770 if flaw == "group-writable" else 0o707)
    name = unique_name()
    with pytest.raises(ipcfast.AccessDenied) as info:
        make_server(name, echo).start()
    assert info.value.code == "IPC_E_ACCESS_DENIED"
    text = str(info.value)
    assert private_tmp in text, text
    assert "refusing" in text or "not a directory" in text, text
    with pytest.raises(ipcfast.AccessDenied):
        make_client(name, connect_timeout=0.2)


def test_dot_names_are_invalid(make_server: MakeServer, make_client: MakeClient) -> None:
    for bad in (".", ".."):
        with pytest.raises(ipcfast.InvalidArgument, match="not a usable name"):
            make_server(bad, echo).start()
        with pytest.raises(ipcfast.InvalidArgument, match="not a usable name"):
            make_client(bad, connect_timeout=0)


def test_the_longest_socket_path_that_fits(tmp_path: Any, make_server: MakeServer, make_client: MakeClient) -> None:
    limit = 103 if sys.platform == "darwin" or "bsd" in sys.platform else 107
    base = str(tmp_path)
    fits = os.path.join(base, "s" * (limit - len(base) - 1))
    assert len(os.fsencode(fits)) == limit
    with make_server(fits, echo):
        with make_client(fits) as client:
            assert client.request(b"long") == b"long"
    too_long = fits + "x"
    with pytest.raises(ipcfast.NameTooLong, match=f"at most {limit}"):
        make_server(too_long, echo).start()
    with pytest.raises(ipcfast.NameTooLong):
        make_client(too_long, connect_timeout=0)


# ---- socket modes and peers of another user --------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory every user can reach (for sockets other users connect to)."""
    path = tempfile.mkdtemp(prefix="ipcfast-shared-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        for entry in os.listdir(path):
            os.unlink(os.path.join(path, entry))
        os.rmdir(path)


def test_world_access_on_a_plain_name_lets_others_traverse_the_private_directory(
    private_tmp: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    name = unique_name()
    with make_server(name, echo, access="world") as server:
        assert stat.S_IMODE(os.stat(private_tmp).st_mode) == 0o711  # search, not list or write
        assert stat.S_IMODE(os.stat(server.address).st_mode) == 0o666
        with make_client(name) as client:  # still a safe directory for everyone else
            assert client.request(b"w") == b"w"
    with make_server(name, echo) as server:
        assert stat.S_IMODE(os.stat(server.address).st_mode) == 0o600


@pytest.mark.parametrize("access, mode", [("user", 0o600), ("world", 0o666)])
def test_socket_mode_follows_access(shared_dir: str, make_server: MakeServer, access: str, mode: int) -> None:
    path = os.path.join(shared_dir, "s.sock")
    with make_server(path, echo, access=access):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode


OTHER_USER_CLIENT = """
import os, sys, ipcfast
from ipcfast._base import _backend_module
path, backend = sys.argv[1], sys.argv[2]
_backend_module(backend)  # import it while the interpreter's files are still readable
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
try:
    with ipcfast.Client(path, backend=backend, connect_timeout=5) as client:
        print("ANSWER", client.request(b"who").decode())
except ipcfast.IPCError as exc:
    print("ERROR", type(exc).__name__, exc)
"""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run as another user")
def test_another_user_is_refused_unless_access_is_world(
    shared_dir: str, make_server: MakeServer, client_backend: str
) -> None:
    path = os.path.join(shared_dir, "s.sock")
    with make_server(path, echo):
        # Permissions changed behind the server's back do not let them in:
        # the identity check after the handshake still refuses the peer.
        os.chmod(path, 0o666)
        result = run_python(OTHER_USER_CLIENT, path, client_backend)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ERROR HandshakeError"), result.stdout
        assert "refused this user" in result.stdout
    with make_server(path, lambda r: b"world", access="world"):
        result = run_python(OTHER_USER_CLIENT, path, client_backend)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ANSWER world", result.stdout


# ---- who owns a name: the lock file -------------------------------------------------------


def test_a_held_lock_means_address_in_use(tmp_path: Any, make_server: MakeServer) -> None:
    path = str(tmp_path / "s.sock")
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ipcfast.AddressInUse, match="already serving"):
            make_server(path, echo).start()
        assert not os.path.exists(path), "nothing may be touched while another process holds the lock"
    finally:
        os.close(fd)
    with make_server(path, echo):  # the lock was released: the name is free
        pass
    assert not os.path.exists(path + ".lock")


def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Any, make_server: MakeServer) -> None:
    path = str(tmp_path / "precious")
    with open(path, "w") as f:
        f.write("data")
    with pytest.raises(ipcfast.AddressInUse, match="not a socket"):
        make_server(path, echo).start()
    with open(path) as f:
        assert f.read() == "data"
    assert not os.path.exists(path + ".lock"), "a failed start must release and remove its lock file"


def test_a_listener_that_ignores_the_lock_is_not_taken_over(tmp_path: Any, make_server: MakeServer) -> None:
    path = str(tmp_path / "s.sock")
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        squatter.bind(path)
        squatter.listen(4)
        with pytest.raises(ipcfast.AddressInUse, match="does not hold"):
            make_server(path, echo).start()
        assert os.path.exists(path)
    finally:
        squatter.close()
    # Nobody listens any more: the socket file is stale and reclaimed.
    with make_server(path, echo) as server:
        assert server.running


def test_stale_socket_and_lock_file_are_reclaimed(
    tmp_path: Any, make_server: MakeServer, make_client: MakeClient
) -> None:
    path = str(tmp_path / "s.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # a socket file nobody listens on, as a killed server leaves it
    with open(path + ".lock", "w"):
        pass  # and its unlocked lock file
    with make_server(path, echo):
        with make_client(path) as client:
            assert client.request(b"reclaimed") == b"reclaimed"


def test_native_and_pure_servers_never_both_win_a_name(tmp_path: Any) -> None:
    """Servers of both backends start on one name at the same moment, over
    and over: exactly one wins each round, the others get AddressInUse."""
    if ipcfast.native_import_error() is not None:
        pytest.skip("needs both backends")
    path = str(tmp_path / "race.sock")

    def start(server: ipcfast.Server, barrier: threading.Barrier, outcomes: Dict[int, Any], index: int) -> None:
        barrier.wait(10)
        try:
            server.start()
            outcomes[index] = "won"
        except BaseException as exc:
            outcomes[index] = exc

    for round_ in range(30):
        servers = [ipcfast.Server(path, echo, backend=BACKENDS[i % 2]) for i in range(6)]
        barrier = threading.Barrier(len(servers))
        outcomes: Dict[int, Any] = {}
        threads = [
            threading.Thread(target=start, args=(server, barrier, outcomes, i)) for i, server in enumerate(servers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners: List[int] = [i for i, o in outcomes.items() if o == "won"]
        try:
            assert len(outcomes) == len(servers)
            assert len(winners) == 1, (round_, outcomes)
            for i, o in outcomes.items():
                if i not in winners:
                    assert isinstance(o, ipcfast.AddressInUse), (round_, i, o)
            with ipcfast.Client(path, backend=BACKENDS[round_ % 2]) as client:
                assert client.request(b"one") == b"one"
        finally:
            for s in servers:
                s.stop()
        assert not os.path.exists(path) and not os.path.exists(path + ".lock")


def test_a_name_passes_from_one_backend_to_the_other(tmp_path: Any) -> None:
    if ipcfast.native_import_error() is not None:
        pytest.skip("needs both backends")
    path = str(tmp_path / "s.sock")
    for backend in BACKENDS * 3:
        with ipcfast.Server(path, lambda r, b=backend: b.encode(), backend=backend):
            for other in BACKENDS:
                with pytest.raises(ipcfast.AddressInUse):
                    ipcfast.Server(path, echo, backend=other).start()
            with ipcfast.Client(path, backend=backend) as client:
                assert client.request(b"") == backend.encode()


# ---- parallel accept ----------------------------------------------------------------------


def test_several_listeners_serve_a_burst(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    errors: List[BaseException] = []
    start = threading.Barrier(12)

    def worker(i: int) -> None:
        try:
            start.wait(10)
            for j in range(5):
                with make_client(name, connect_timeout=10) as client:
                    body = f"{i}/{j}".encode()
                    assert client.request(body) == body
        except BaseException as exc:
            errors.append(exc)

    with make_server(name, echo, listeners=4, max_clients=8):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]


def test_foreign_listener_with_a_full_backlog_does_not_hang_start(tmp_path: Any, make_server: MakeServer) -> None:
    # The stale-socket probe used to be a blocking connect: a listener that
    # does not hold the lock and has a full backlog hung start() for good.
    path = str(tmp_path / "squatted.sock")
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(path)
    squatter.listen(0)
    queued: List[socket.socket] = []
    try:
        for _ in range(8):  # fill the backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            queued.append(s)
            try:
                s.connect(path)
            except BlockingIOError:
                break
        outcome: Dict[str, Any] = {}

        def start() -> None:
            try:
                make_server(path, echo).start()
                outcome["started"] = True
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                outcome["error"] = exc

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        thread.join(10.0)
        assert not thread.is_alive(), "start() hung on a squatted socket"
        assert isinstance(outcome.get("error"), ipcfast.AddressInUse), outcome
        assert os.path.exists(path), "the squatter's socket must not be removed"
    finally:
        for s in queued:
            s.close()
        squatter.close()
