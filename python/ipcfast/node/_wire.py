"""Node sockets on plain POSIX calls: the path of a name, a client's connect
and handshake, and packets with descriptors attached (SCM_RIGHTS).

Both sides of the node use it. It imports only what a client needs (no
cffi, no threads), because a client's own start-up is part of every
command's cost.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import stat
import struct
import time
from typing import Dict, List, Optional, Sequence, Tuple

from .._codec import (
    COMMAND_FDS,
    COMMAND_UMASK,
    COMMAND_UMASK_SHIFT,
    DEFAULT_HANDSHAKE,
    HANDSHAKE_MESSAGE_SIZE,
    PROTOCOL_VERSION,
    NodeSignal,
    Verdict,
    check_handshake_reply,
    encode_handshake_request,
    encode_header,
)

__all__ = [
    "COMMAND_FDS",
    "COMMAND_UMASK",
    "LOCAL_SIGNALS",
    "UMASK_SHIFT",
    "connect",
    "peer_uid",
    "send_packet",
    "socket_path",
]

UMASK_SHIFT = COMMAND_UMASK_SHIFT

#: This platform's signal for each signal a CANCEL can name (docs/protocol.md
#: 10.5): what the client passes on, and what the node sends the command.
LOCAL_SIGNALS: Dict[NodeSignal, int] = {
    NodeSignal.HANGUP: signal.SIGHUP,
    NodeSignal.INTERRUPT: signal.SIGINT,
    NodeSignal.QUIT: signal.SIGQUIT,
    NodeSignal.TERMINATE: signal.SIGTERM,
    NodeSignal.WINDOW_CHANGED: signal.SIGWINCH,
}

_SUN_PATH_SIZE = 104 if os.uname().sysname != "Linux" else 108


def _check_private_dir(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"the socket directory {path!r} is not a plain directory")
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"the socket directory {path!r} is not private to this user")


def socket_path(name: str) -> str:
    """Where the node called ``name`` listens (docs/protocol.md 2.1); raises
    PermissionError for a socket directory another user could control."""
    if "/" in name:
        return name
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    directory = f"{runtime}/ipcfast" if runtime else f"{os.environ.get('TMPDIR') or '/tmp'}/ipcfast-{os.geteuid()}"
    try:
        _check_private_dir(directory)
    except FileNotFoundError:
        pass  # no server ever ran: connecting reports "not found"
    path = f"{directory}/{name}"
    if len(os.fsencode(path)) >= _SUN_PATH_SIZE:
        raise OSError(f"the socket path {path!r} is too long for a Unix socket")
    return path


def peer_uid(sock: socket.socket) -> Optional[int]:
    """The effective uid of the peer, where the platform tells (Linux)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    return int(struct.unpack("iII", raw)[1])


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the node closed the connection during the handshake")
        data += chunk
    return data


def connect(name: str, timeout: float) -> Optional[socket.socket]:
    """A connection to the node ``name`` after the handshake, checked to
    belong to this user; None when no node answers within ``timeout``."""
    path = socket_path(name)
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            sock.connect(path)
            uid = peer_uid(sock)
            if uid is not None and uid != os.geteuid():
                raise PermissionError(f"the node at {path} belongs to uid {uid}, not to this user")
            sock.sendall(encode_handshake_request(DEFAULT_HANDSHAKE, PROTOCOL_VERSION))
            verdict, _ = check_handshake_reply(_recv_exactly(sock, HANDSHAKE_MESSAGE_SIZE), DEFAULT_HANDSHAKE)
            if verdict != Verdict.OK:
                raise ConnectionError(f"the node's handshake reply was refused ({verdict.name})")
            sock.settimeout(None)
            return sock
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError, socket.timeout, ConnectionError):
            sock.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        except BaseException:
            sock.close()
            raise


def send_packet(sock: socket.socket, type_: int, payload: bytes, fds: Sequence[int] = ()) -> None:
    """Sends one packet; ``fds`` travel with its first byte (SCM_RIGHTS)."""
    send_with_fds(sock, encode_header(type_, len(payload)) + payload, fds)


def send_with_fds(sock: socket.socket, data: bytes, fds: Sequence[int]) -> None:
    """Sends ``data`` with ``fds`` attached to its first byte (SCM_RIGHTS)."""
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        data = data[sock.sendmsg([data], ancillary) :]
    if data:
        sock.sendall(data)


def recv_with_fds(sock: socket.socket, size: int, max_fds: int) -> Tuple[bytes, List[int]]:
    """recv() that also takes descriptors sent with the bytes, each
    close-on-exec from birth where the platform allows (MSG_CMSG_CLOEXEC)."""
    flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    data, ancillary, msg_flags, _ = sock.recvmsg(size, socket.CMSG_SPACE(max_fds * 4), flags)
    fds: List[int] = []
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(raw[: len(raw) - len(raw) % got.itemsize])
            fds.extend(got)
    if not flags:
        for fd in fds:
            os.set_inheritable(fd, False)
    if msg_flags & getattr(socket, "MSG_CTRUNC", 0):
        for fd in fds:
            os.close(fd)
        raise ConnectionError("more descriptors arrived than a command carries")
    return data, fds
