"""Other users (SPEC section 8, security; threat model in docs/security.md).

Complements tests/test_transport_posix.py (which covers servers on a path
name in a shared directory, unsafe private directories and the lock file):
here the server uses a plain name in its private per-user directory, and
the client of another user (root drops to nobody in a child process)
connects by ``server.address``, the full socket path (plain names resolve
per user). With the default access it is refused and the server keeps
serving; with access="world" it is served; it can neither take over nor
remove a live server's socket.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Iterator

import pytest

import ipcfast
from conftest import MakeServer, echo, posix_only, run_python, unique_name

pytestmark = [
    posix_only,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run as another user"),
]

AS_NOBODY = r"""
import os, sys, ipcfast
from ipcfast._base import _backend_module
action, address, backend = sys.argv[1], sys.argv[2], sys.argv[3]
_backend_module(backend)  # import while the interpreter's files are readable
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
try:
    if action == "request":
        with ipcfast.Client(address, backend=backend, connect_timeout=3) as client:
            print("ANSWER", client.request(b"who").decode())
    elif action == "serve":
        ipcfast.Server(address, lambda r: b"impostor", backend=backend).start()
        print("STARTED")
    elif action == "unlink":
        os.unlink(address)
        print("UNLINKED")
except (ipcfast.IPCError, OSError) as exc:
    print("ERROR", type(exc).__name__, exc)
"""


def as_nobody(action: str, address: str, backend: str) -> str:
    result = run_python(AS_NOBODY, action, address, backend, timeout=30)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


@pytest.fixture
def private_tmp_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Plain names in a fresh TMPDIR/ipcfast-UID, where TMPDIR is a directory
    other users can traverse (pytest's own tmp_path is not); the children
    inherit TMPDIR. Returns the private directory's path."""
    base = tempfile.mkdtemp(prefix="ipcfast-sec-", dir="/tmp")
    os.chmod(base, 0o755)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", base)
    try:
        yield os.path.join(base, f"ipcfast-{os.geteuid()}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_another_user_is_refused_by_a_default_server_and_it_keeps_serving(
    private_tmp_env: str, make_server: MakeServer, client_backend: str
) -> None:
    name = unique_name()
    with make_server(name, echo) as server:
        assert stat.S_IMODE(os.stat(private_tmp_env).st_mode) == 0o700
        out = as_nobody("request", server.address, client_backend)
        # The private directory keeps the other user out before any byte is sent.
        assert out.startswith("ERROR "), out
        assert out.split()[1] in ("AccessDenied", "PermissionError", "HandshakeError", "ServerNotFound"), out
        # Even with every file permission opened behind the server's back,
        # the identity check after the handshake refuses the peer.
        os.chmod(private_tmp_env, 0o755)
        os.chmod(server.address, 0o666)
        try:
            out = as_nobody("request", server.address, client_backend)
        finally:
            os.chmod(private_tmp_env, 0o700)
        assert out.startswith("ERROR HandshakeError"), out
        with ipcfast.Client(name) as client:
            assert client.request(b"still serving") == b"still serving"


def test_world_access_serves_another_user_by_address(
    private_tmp_env: str, make_server: MakeServer, client_backend: str
) -> None:
    name = unique_name()
    with make_server(name, lambda r: b"world", access="world") as server:
        assert stat.S_IMODE(os.stat(private_tmp_env).st_mode) == 0o711
        assert as_nobody("request", server.address, client_backend) == "ANSWER world"


def test_another_user_can_neither_take_over_nor_remove_a_live_socket(
    private_tmp_env: str, make_server: MakeServer, server_backend: str
) -> None:
    """Even a world-access server (directory 0711, socket 0666): another user
    cannot start a server on its address, nor unlink its socket; the server
    goes on serving its own answer."""
    name = unique_name()
    with make_server(name, lambda r: b"genuine", access="world") as server:
        out = as_nobody("serve", server.address, server_backend)
        assert out.startswith("ERROR "), out
        assert out.split()[1] in ("AddressInUse", "AccessDenied", "PermissionError"), out
        out = as_nobody("unlink", server.address, server_backend)
        assert out.startswith("ERROR PermissionError"), out
        assert stat.S_ISSOCK(os.stat(server.address).st_mode)
        with ipcfast.Client(name) as client:
            assert client.request(b"x") == b"genuine"


def test_a_second_server_of_the_same_user_does_not_unlink_a_live_socket(
    private_tmp_env: str, make_server: MakeServer, server_backend: str
) -> None:
    name = unique_name()
    with make_server(name, lambda r: b"first") as server:
        inode = os.stat(server.address).st_ino
        for backend in ("native", "pure"):
            with pytest.raises(ipcfast.AddressInUse):
                ipcfast.Server(server.address, echo, backend=backend).start()
        assert os.stat(server.address).st_ino == inode  # the same socket file, untouched
        with ipcfast.Client(name) as client:
            assert client.request(b"x") == b"first"
