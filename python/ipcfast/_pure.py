"""The pure-Python backend: wire protocol v1 over ``socket`` and ``threading``.

The reference and the fallback for the native backend (``backend="pure"``):
the same names, the same lock-file ownership protocol, the same handshake,
framing and limits, the same exceptions with the same messages, and the
same server structure as the C core (``csrc/ipc.c``, ``csrc/ipc_posix.c``):

* a listener thread (``listeners`` of them) that takes a free slot of the
  slot table (``max_clients``) *before* it accepts, so when every slot is
  taken new clients wait in the listen backlog;
* one thread per connection: handshake within the handshake timeout, then
  one request at a time, in order;
* blocked reads wake at least every 500 ms; :meth:`PureServer.stop` wakes
  them at once (``shutdown(SHUT_RD)`` on each connection, a byte on a wake
  pipe for the accept loops), lets running handlers finish for up to a
  second, then shuts the remaining connections hard and joins every thread.

POSIX only (Unix-domain sockets). On other platforms constructing a server
or client raises :class:`NotImplementedError`.

Nothing here imports the native extension, so ``backend="pure"`` works when
it could not be built.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import select
import socket
import stat
import struct
import sys
import threading
import time
import weakref
from typing import Any, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

from ._base import (
    SERVER_USER_ANY,
    SERVER_USER_UID,
    BytesLike,
    Client,
    ClientOptions,
    Server,
    ServerOptions,
    ViewBuffer,
    failure_text,
    handler_result,
    timeout_ms,
    too_small,
    writable_bytes_view,
)
from ._codec import (
    NEED_DATA,
    ClientConnection,
    ClientEvent,
    HandshakeDone,
    HandshakeRejected,
    PacketType,
    ProtocolFailure,
    Refuse,
    MAX_ERROR_TEXT,
    RemoteFailure,
    Request,
    Response,
    ServerConnection,
    MAX_HEADER_SIZE,
    Header,
    Verdict,
    encode_header,
    parse_header,
)
from ._errors import ConnectionClosed, InvalidArgument, IPCError, Result, error_for_code

POSIX = os.name == "posix"
if POSIX:
    import fcntl

__all__ = ["POSIX", "ClientImpl", "PureClient", "PureServer", "ServerImpl"]

logger = logging.getLogger("ipcfast")

#: Blocked reads and accepts wake at least this often (IPC_WAKE_INTERVAL_MS).
WAKE_INTERVAL = 0.5
#: How long "not found" is retried when the name's owner is not recorded yet.
NOT_FOUND_GRACE = 0.25
#: How long stop() lets running handlers finish before it closes their
#: connections under them (STOP_GRACE_MS in ipc.c).
STOP_GRACE = 1.0
#: The C core's limit on max_clients.
MAX_CLIENTS_LIMIT = 4096
#: The listen backlog (LISTEN_BACKLOG in ipc_posix_name.c): deep enough for a
#: burst of clients, shallow enough that a connect/close flood cannot put a
#: newcomer behind thousands of dead connections.
LISTEN_BACKLOG = 64
#: Size of each connection's receive buffer (bytes read per recv).
RECV_CHUNK = 64 * 1024
#: Below this, a packet's header and payload are joined into one buffer
#: before sending (one send, no iovec); above, sendmsg sends both in place.
_JOIN_BELOW = 16 * 1024

_MAX_UINT32 = 0xFFFFFFFF
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_SO_NOSIGPIPE = 0x1022  # macOS / BSD: a dead peer must not raise SIGPIPE
_BSD_LIKE = sys.platform == "darwin" or "bsd" in sys.platform
_LINUX = sys.platform.startswith("linux")
#: sizeof(sockaddr_un.sun_path): paths must be shorter (they need a NUL).
SUN_PATH_SIZE = 104 if _BSD_LIKE else 108

_get_ident = threading.get_ident
_monotonic = time.monotonic

_NOT_FOUND = Result.E_NOT_FOUND
_BUSY = Result.E_BUSY
_CLOSED = Result.E_CLOSED
_TIMEOUT = Result.E_TIMEOUT


def _require_posix() -> None:
    if not POSIX:
        raise NotImplementedError(
            f"ipcfast's pure-Python backend is not implemented on this platform ({sys.platform}): "
            f"it speaks Unix-domain sockets only (Linux, macOS, BSD); use backend='native'"
        )


# ---- errors ---------------------------------------------------------------------

#: errno -> C result name, as map_errno() in ipc_posix.c.
_ERRNO_CODES: Dict[int, Result] = {
    errno.ENOENT: _NOT_FOUND,
    errno.ENOTDIR: _NOT_FOUND,  # a path through a regular file: as a missing directory
    errno.ECONNREFUSED: _NOT_FOUND,
    errno.EAGAIN: _BUSY,
    errno.EWOULDBLOCK: _BUSY,
    errno.EACCES: Result.E_ACCESS_DENIED,
    errno.EPERM: Result.E_ACCESS_DENIED,
    errno.ENAMETOOLONG: Result.E_NAME_TOO_LONG,
    errno.EADDRINUSE: Result.E_ADDRESS_IN_USE,
    errno.EPIPE: _CLOSED,
    errno.ECONNRESET: _CLOSED,
    errno.ENOTCONN: _CLOSED,
    errno.ENOMEM: Result.E_NO_MEMORY,
    errno.ENOBUFS: Result.E_NO_MEMORY,
    errno.ETIMEDOUT: _TIMEOUT,
}

_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


def _error(code: Union[Result, str], message: str, system_error: int = 0) -> IPCError:
    return error_for_code(code, message, system_error)


def _errno_error(exc: Union[OSError, int], what: str, path: Optional[str] = None) -> IPCError:
    """An OS failure as the ipcfast error the C core gives for it."""
    number = exc if isinstance(exc, int) else (exc.errno or 0)
    reason = os.strerror(number) if number else str(exc)
    if path is not None:
        message = f"{what} '{path}' failed: {reason}"
    else:
        message = f"{what} failed: {reason}"
    return _error(_ERRNO_CODES.get(number, Result.E_SYSTEM), message, number)


def _remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds left until deadline (None: no limit), never negative."""
    if deadline is None:
        return None
    left = deadline - _monotonic()
    return left if left > 0 else 0.0


def _deadline_after(ms: int) -> Optional[float]:
    return None if ms < 0 else _monotonic() + ms / 1000.0


# ---- names: plain names live in a private per-user directory ------------------------


def _check_private_dir(path: str) -> None:
    """Refuses a directory that another user could control."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise _errno_error(exc, "checking the socket directory", path) from None
    if stat.S_ISLNK(st.st_mode):
        raise _error(
            "IPC_E_ACCESS_DENIED",
            f"the socket directory '{path}' is a symbolic link; refusing to use it (remove it, or set XDG_RUNTIME_DIR)",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise _error("IPC_E_ACCESS_DENIED", f"'{path}' should be the private socket directory but is not a directory")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise _error(
            "IPC_E_ACCESS_DENIED",
            f"the socket directory '{path}' belongs to {_describe_user(st.st_uid)}, not to us (uid {euid}); "
            f"refusing to use it",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _error(
            "IPC_E_ACCESS_DENIED",
            f"the socket directory '{path}' is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode) & 0o777:03o}); refusing to use it (chmod 700 it)",
        )


def _describe_user(uid: int) -> str:
    """ "user 'nobody' (uid 65534)": who owns a file we refuse."""
    try:
        import pwd

        return f"user '{pwd.getpwuid(uid).pw_name}' (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _use_private_dir(path: str, create: bool) -> str:
    """Checks (and with ``create``, makes) one candidate private directory.
    A client that finds none gets its path anyway: connecting then reports
    "not found"."""
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _errno_error(exc, "creating the socket directory", path) from None
    else:
        try:
            os.lstat(path)
        except FileNotFoundError:
            return path
        except OSError:
            pass  # reported by the check below
    _check_private_dir(path)
    return path


def _home_dir() -> Optional[str]:
    """$HOME, else the password database's entry (as the C core)."""
    home = os.environ.get("HOME")
    if home:
        return home
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_dir or None
    except (ImportError, KeyError):
        return None


def _squatted_dir_fallback(squatted: str, squatter: int, create: bool) -> str:
    """``${TMPDIR:-/tmp}/ipcfast-UID`` belongs to another user, who made it
    first (anybody can create names in /tmp): fall back to
    ``HOME/.ipcfast-UID``, a name only we (and root) can create. Client and
    server follow the same rule, so they meet there."""
    euid = os.geteuid()
    owner = _describe_user(squatter)
    home = _home_dir()
    if home is None:
        raise _error(
            "IPC_E_ACCESS_DENIED",
            f"the socket directory '{squatted}' belongs to {owner}, not to us (uid {euid}); refusing to use it, "
            f"and there is no home directory to fall back to (set HOME or XDG_RUNTIME_DIR, or have that user or "
            f"root remove it)",
        )
    fallback = f"{home}/.ipcfast-{euid}"
    if create:
        logger.warning("the socket directory %s belongs to %s; using %s instead", squatted, owner, fallback)
    try:
        return _use_private_dir(fallback, create)
    except IPCError as exc:
        raise _error(
            "IPC_E_ACCESS_DENIED",
            f"the socket directory '{squatted}' belongs to {owner}, not to us (uid {euid}); refusing to use it, "
            f"and the fallback failed: {exc}",
            exc.system_error,
        ) from None


def private_dir(create: bool) -> str:
    """``$XDG_RUNTIME_DIR/ipcfast``, else ``${TMPDIR:-/tmp}/ipcfast-UID``
    (or, when another user owns that, ``HOME/.ipcfast-UID``).

    A server (``create``) makes it with mode 0700; both sides refuse it when
    it is unsafe. A client that finds no directory gets its path anyway
    (connecting then reports "not found").
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return _use_private_dir(f"{runtime}/ipcfast", create)
    tmp = os.environ.get("TMPDIR") or "/tmp"
    path = f"{tmp}/ipcfast-{os.geteuid()}"
    try:
        owner = os.lstat(path).st_uid
    except OSError:
        owner = os.geteuid()
    if owner != os.geteuid():
        return _squatted_dir_fallback(path, owner, create)
    return _use_private_dir(path, create)


def resolve_name(name: str, create: bool) -> str:
    """The socket path for a name: a name containing '/' is a path as is."""
    if not name:
        raise _error("IPC_E_INVALID", "empty name")
    if name.endswith(".lock"):  # NAME.lock is the lock file of NAME (docs/protocol.md 2.1)
        raise _error(
            "IPC_E_INVALID", f"'{name}' ends in \".lock\", which is reserved for lock files: choose another name"
        )
    if "/" in name:
        path = name
    else:
        if name in (".", ".."):
            raise _error("IPC_E_INVALID", f"'{name}' is not a usable name")
        path = f"{private_dir(create)}/{name}"
    length = len(os.fsencode(path))
    if length >= SUN_PATH_SIZE:
        raise _error(
            "IPC_E_NAME_TOO_LONG",
            f"the socket path '{path}' is {length} bytes; Unix sockets allow at most {SUN_PATH_SIZE - 1}: "
            f"use a shorter name (or a shorter XDG_RUNTIME_DIR/TMPDIR)",
            errno.ENAMETOOLONG,
        )
    return path


def _new_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # close-on-exec in Python
    except OSError as exc:
        raise _errno_error(exc, "socket(AF_UNIX)") from None
    if _BSD_LIKE and not _MSG_NOSIGNAL:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)
        except OSError:
            pass
    return sock


def _ready(read: Sequence[int] = (), write: Sequence[int] = (), timeout: Optional[float] = None) -> Set[int]:
    """The descriptors ready to read (among ``read``) or to write (among
    ``write``) within ``timeout`` seconds (None: no limit). poll(), or
    select() where there is no poll()."""
    if hasattr(select, "poll"):
        poller = select.poll()
        for fd in read:
            poller.register(fd, select.POLLIN)
        for fd in write:
            poller.register(fd, select.POLLOUT)
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        return {fd for fd, _ in poller.poll(ms)}
    readable, writable, _ = select.select(list(read), list(write), [], timeout)
    return set(readable) | set(writable)


def _wait_for_room(sock: socket.socket, path: str, timeout: Optional[float]) -> int:
    """Linux: a blocking connect() on a full backlog is queued by the kernel
    and woken as the server accepts, so the client gets its turn even against
    a flood of connect/close loops (pauses between non-blocking attempts lose
    every race to them). SO_SNDTIMEO bounds the wait, recomputed after a
    signal; as ipc__posix_connect_socket() in ipc_posix_socket.c. Returns an
    errno (0: connected)."""
    deadline = None if timeout is None else _monotonic() + timeout
    sock.setblocking(True)
    try:
        while True:
            left = _remaining(deadline)
            if left == 0:
                return errno.EAGAIN
            seconds = 0.0 if left is None else max(left, 0.001)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
            )
            result = sock.connect_ex(path)
            if result == errno.EINTR:
                continue
            if result == errno.EISCONN:
                return 0  # an interrupted attempt completed after all
            if result == 0:
                try:
                    # After a signal, Python may call an unfinished attempt
                    # connected: only a known peer proves it.
                    sock.getpeername()
                except OSError:
                    continue
            return result
    finally:
        sock.setblocking(False)


# ---- sending ---------------------------------------------------------------------------


def _send_all(
    sock: socket.socket,
    parts: Sequence[BytesLike],
    deadline: Optional[float],
    timeout_ms_for_message: int = -1,
    abort: Optional[threading.Event] = None,
) -> None:
    """Write every byte of ``parts`` (in order) before ``deadline``.

    Waits in slices of at most 500 ms. Raises Timeout at the deadline,
    ConnectionClosed when the peer is gone (or ``abort`` is set).
    """
    views: List[memoryview] = []
    for part in parts:
        view = memoryview(part)
        if view.nbytes:
            views.append(view if view.format == "B" and view.ndim == 1 else view.cast("B"))
    while views:
        slice_ = WAKE_INTERVAL
        if deadline is not None:
            left = deadline - _monotonic()
            if left <= 0:
                raise _error(_TIMEOUT, f"the peer did not take the data in time ({timeout_ms_for_message} ms)")
            slice_ = min(slice_, left)
        sock.settimeout(slice_)
        try:
            if len(views) == 1:
                sent = sock.send(views[0], _MSG_NOSIGNAL)
            else:
                sent = sock.sendmsg(views, (), _MSG_NOSIGNAL)
        except socket.timeout:
            if abort is not None and abort.is_set():
                raise _error(_CLOSED, "the server is stopping") from None
            continue
        except OSError as exc:
            if exc.errno in _PEER_GONE:
                raise _error(_CLOSED, "the peer closed the connection", exc.errno) from None
            raise _errno_error(exc, "sendmsg") from None
        while sent and views:
            first = views[0]
            if sent >= first.nbytes:
                sent -= first.nbytes
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0


def _packet_parts(type_: int, payload: memoryview) -> List[BytesLike]:
    header = encode_header(type_, payload.nbytes)
    if payload.nbytes < _JOIN_BELOW:
        return [header + payload.tobytes()]
    return [header, payload]


def _request_bytes(data: Any) -> memoryview:
    """A request's bytes as a flat view (no copy); TypeError if not bytes-like."""
    try:
        return _as_bytes_view(data)
    except TypeError:
        raise TypeError(f"request data must be bytes-like, not {type(data).__name__}") from None


_LATE_RESPONSE = (
    "no response within the timeout; the connection is closed because the late response would be read by the "
    "next request"
)


def _as_bytes_view(data: Any) -> memoryview:
    """A flat byte view of a buffer-protocol object, without copying.

    TypeError if ``data`` has no buffer; BufferError if it is not
    C-contiguous (as the native backend, which hands the buffer to C).
    """
    view = memoryview(data)
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B")


# ---- the listening side of a name ----------------------------------------------------------


class _Listener:
    """The socket, the lock file that owns the name, and the wake pipe.

    Ownership (docs/protocol.md 2.1): an exclusive ``flock`` on
    ``PATH.lock`` held for the server's life; whatever sits at ``PATH`` is
    replaced only while holding it, and only if it is a socket nobody
    listens on.
    """

    def __init__(self, name: str, world: bool) -> None:
        self.path = resolve_name(name, create=True)
        self.lock_path = self.path + ".lock"
        self.world = world
        self.lock_fd = -1
        self.sock: Optional[socket.socket] = None
        self.placed: Optional[Tuple[int, int]] = None  # (dev, ino) of our socket file at path
        self.opened_dir = False
        # Refused peers are logged at most once a second (a flood of them
        # must not turn into a flood of log calls), with a count.
        self.next_refusal_log = 0.0
        self.refused_unlogged = 0
        self.wake_r = -1
        self.wake_w = -1
        try:
            self._take_name_lock()
            self._clear_stale_socket()
            self.wake_r, self.wake_w = os.pipe()  # close-on-exec from birth (pipe2)
            os.set_blocking(self.wake_r, False)
            os.set_blocking(self.wake_w, False)
            self.sock = _new_socket()
            self._place_socket(0o666 if world else 0o600)
            if world and "/" not in name:
                self._let_others_traverse()
                self.opened_dir = True
            self.sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    def _place_socket(self, mode: int) -> None:
        """Binds and listens at the path with the final mode, never changing
        a mode by name: a chmod(path) after bind follows whatever another
        user swapped in meanwhile (a symbolic link to any file we own). The
        socket is bound in a fresh 0700 staging directory beside the path,
        gets its mode relative to that directory's descriptor, listens, and
        is hard-linked into place (which fails, like bind, if the name is
        taken). Same rule as ipc__posix_place_socket() in ipc_posix_name.c."""
        sock = self.sock
        assert sock is not None
        path = self.path
        parent = os.path.dirname(path) or "."
        staging_length = len(os.fsencode(parent.rstrip("/") + "/.ipcXXXXXX/s"))
        if staging_length >= SUN_PATH_SIZE:
            self._place_socket_directly(mode, staging_length)
            return
        staging = self._make_staging_dir(parent.rstrip("/"), path)
        dfd = -1
        bound = False
        try:
            try:
                dfd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                st = os.fstat(dfd)
            except OSError:
                st = None
            if st is None or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise _error(
                    "IPC_E_ACCESS_DENIED",
                    f"the staging directory '{staging}' for '{path}' was replaced by another user",
                )
            try:
                os.fchmod(sock.fileno(), mode)  # best effort: narrows the mode at bind where honoured
            except OSError:
                pass
            try:
                sock.bind(staging + "/s")
            except OSError as exc:
                raise _errno_error(exc, "bind", path) from None
            bound = True
            try:  # nobody else can create entries in our 0700 directory: "s" is ours
                os.chmod("s", mode, dir_fd=dfd)
            except OSError as exc:
                raise _errno_error(exc, "chmod", path) from None
            st = os.stat("s", dir_fd=dfd, follow_symlinks=False)
            try:
                sock.listen(LISTEN_BACKLOG)
            except OSError as exc:
                raise _errno_error(exc, "listen", path) from None
            try:
                os.link("s", path, src_dir_fd=dfd, follow_symlinks=False)
            except OSError as exc:
                raise _errno_error(exc, "bind", path) from None
            self.placed = (st.st_dev, st.st_ino)
        finally:
            if bound:
                try:
                    os.unlink("s", dir_fd=dfd)
                except OSError:
                    pass
            if dfd >= 0:
                os.close(dfd)
            try:
                os.rmdir(staging)
            except OSError:
                pass

    @staticmethod
    def _make_staging_dir(parent: str, path: str) -> str:
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        for _ in range(100):
            suffix = "".join(letters[b % len(letters)] for b in os.urandom(6))
            staging = f"{parent}/.ipc{suffix}"
            try:
                os.mkdir(staging, 0o700)
                return staging
            except FileExistsError:
                continue
            except OSError as exc:
                raise _errno_error(exc, "bind (creating a staging directory)", path) from None
        raise _error("IPC_E_ADDRESS_IN_USE", f"could not create a staging directory in '{parent}'", errno.EEXIST)

    def _place_socket_directly(self, mode: int, staging_length: int) -> None:
        """Where the staging path does not fit sun_path: bind in place, only
        for access "user" (the mode set on the socket before bind, never by
        name after; the same-user check at accept still holds)."""
        sock = self.sock
        assert sock is not None
        if mode != 0o600:
            raise _error(
                "IPC_E_NAME_TOO_LONG",
                f"the socket path '{self.path}' leaves no room for the race-free set-up of a world-access socket "
                f"(it binds at a {staging_length}-byte path first; Unix sockets allow {SUN_PATH_SIZE - 1}): "
                f"use a shorter name",
                errno.ENAMETOOLONG,
            )
        try:
            os.fchmod(sock.fileno(), mode)
        except OSError:
            pass
        try:
            sock.bind(self.path)
        except OSError as exc:
            raise _errno_error(exc, "bind", self.path) from None
        try:
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode):
                self.placed = (st.st_dev, st.st_ino)
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            raise _errno_error(exc, "listen", self.path) from None

    def _lock_private_dir(self) -> int:
        """The directory's mode for world access changes under an flock on the
        directory itself (shared with the C core): a stopping server must not
        miss a world socket being set up and close the directory under it."""
        directory = os.path.dirname(self.path)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise _errno_error(exc, "opening the socket directory", directory) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise _errno_error(exc, "locking the socket directory", directory) from None
        return fd

    def _let_others_traverse(self) -> None:
        """access "world" on a plain name: other users must be able to pass
        through the private directory to reach the socket by its full path.
        Search permission only: they still cannot list it, and the other
        sockets in it keep mode 0600 and the same-user check."""
        directory = os.path.dirname(self.path)
        fd = self._lock_private_dir()
        try:
            os.fchmod(fd, 0o711)
        except OSError as exc:
            raise _errno_error(exc, "making the socket directory traversable", directory) from None
        finally:
            os.close(fd)  # releases the lock
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            logger.warning(
                'access is "world" but %s lives under XDG_RUNTIME_DIR (%s), which other users usually cannot '
                "enter: give the server a path name in a shared directory instead",
                self.path,
                runtime,
            )

    def _take_name_lock(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(5):
            try:
                fd = os.open(self.lock_path, flags, 0o600)
            except OSError as exc:
                raise _errno_error(exc, "opening the lock file", self.lock_path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise _error(
                        "IPC_E_ADDRESS_IN_USE", f"another server is already serving '{self.path}'", errno.EADDRINUSE
                    ) from None
                raise _errno_error(exc, "locking", self.lock_path) from None
            # A stopping server unlinks its lock file: make sure we locked
            # the file that is still at the path, not an orphan.
            try:
                held = os.fstat(fd)
                named = os.stat(self.lock_path)
            except OSError:
                named = None
            if named is not None and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                _record_owner(fd)
                self.lock_fd = fd
                return
            os.close(fd)
        raise _error(
            "IPC_E_ADDRESS_IN_USE",
            f"could not claim '{self.path}': other servers keep replacing its lock file",
            errno.EADDRINUSE,
        )

    def _clear_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _errno_error(exc, "checking", self.path) from None
        if not stat.S_ISSOCK(st.st_mode):
            raise _error(
                "IPC_E_ADDRESS_IN_USE",
                f"'{self.path}' exists and is not a socket; refusing to replace it",
                errno.EEXIST,
            )
        probe = _new_socket()
        try:
            probe.setblocking(False)
            result = probe.connect_ex(self.path)
        finally:
            probe.close()
        # Connected, or queued behind a full backlog: something listens there.
        if result in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            raise _error(
                "IPC_E_ADDRESS_IN_USE",
                f"a process that does not hold '{self.path}' is listening on it",
                errno.EADDRINUSE,
            )
        # Only "refused" proves that nobody listens (docs/protocol.md 2.1).
        if result == errno.ENOENT:
            return
        if result != errno.ECONNREFUSED:
            raise _errno_error(result, "probing the existing socket", self.path)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _errno_error(exc, "removing the stale socket", self.path) from None
        logger.info("reclaimed the stale socket %s", self.path)

    def accept(self) -> Optional[socket.socket]:
        """The next connection, or None once the server is stopping."""
        sock = self.sock
        assert sock is not None
        fd = sock.fileno()
        while True:
            ready = _ready(read=(fd, self.wake_r), timeout=WAKE_INTERVAL)
            if self.wake_r in ready:
                return None
            if fd not in ready:
                continue
            try:
                conn, _ = sock.accept()  # accept4(SOCK_CLOEXEC)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # another listener won the race, or the client gave up
            except OSError as exc:
                raise _errno_error(exc, "accept", self.path) from None
            if self._unwanted(conn):
                conn.close()
                continue
            return conn

    def _unwanted(self, conn: socket.socket) -> bool:
        """Connections not worth a slot's thread, closed at accept: a peer
        already gone (a connect/close flood leaves a queue of them), and
        with access "user", a peer of another user, refused before a slot or
        thread is spent on it (the check after the handshake stays)."""
        try:
            if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                return True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return True
        if self.world:
            return False
        try:
            uid = _peer_uid(conn)
        except OSError as exc:
            self._log_refusal(f"its user is unknown ({os.strerror(exc.errno or 0)})")
            return True
        if uid != os.geteuid():
            self._log_refusal(f'uid {uid}, and access is "user"')
            return True
        return False

    def _log_refusal(self, why: str) -> None:
        now = _monotonic()
        if now < self.next_refusal_log:
            self.refused_unlogged += 1
            return
        if self.refused_unlogged:
            logger.warning(
                "refused a connection to %s: %s (and %d more refused since the last message)",
                self.path,
                why,
                self.refused_unlogged,
            )
        else:
            logger.warning("refused a connection to %s: %s", self.path, why)
        self.refused_unlogged = 0
        self.next_refusal_log = now + 1.0

    def _remove_our_socket(self) -> None:
        """Removes the socket file only while it is still the one we placed:
        another process may have replaced it since."""
        placed, self.placed = self.placed, None
        if placed is None:
            return
        try:
            st = os.lstat(self.path)
        except OSError:
            return  # somebody removed it already
        if (st.st_dev, st.st_ino) != placed:
            logger.warning("%s is no longer our socket; leaving it in place", self.path)
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _close_dir_to_others(self) -> None:
        """Removes our socket, then takes the directory back to 0700 when no
        other world-access socket remains in it; under the directory lock."""
        try:
            fd = self._lock_private_dir()
        except IPCError:
            self._remove_our_socket()
            return
        try:
            self._remove_our_socket()
            still_shared = False
            for entry in os.listdir(fd):
                try:
                    st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISSOCK(st.st_mode) and st.st_mode & stat.S_IWOTH:
                    still_shared = True
                    break
            if not still_shared:
                os.fchmod(fd, 0o700)
        except OSError:
            pass
        finally:
            os.close(fd)

    def interrupt(self) -> None:
        if self.wake_w >= 0:
            try:
                os.write(self.wake_w, b"\x01")
            except OSError:
                pass  # a full pipe is already readable, which is all we need

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.opened_dir:
            self.opened_dir = False
            self._close_dir_to_others()
        else:
            self._remove_our_socket()
        if self.lock_fd >= 0:
            # Remove the lock file while still holding it; a starting server
            # notices that it locked the orphan.
            try:
                os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self.lock_fd)
            self.lock_fd = -1
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1


def _record_owner(fd: int) -> None:
    """Our pid in the lock file we hold (docs/protocol.md 2.1), so that a
    client finding no socket tells a starting server (live pid) from none.
    Best effort: an unrecorded owner only makes clients retry briefly."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass


_OWNER_NONE, _OWNER_ALIVE, _OWNER_UNKNOWN = range(3)


def _name_owner(path: str) -> int:
    """What the lock file of the socket ``path`` says about its owner; never
    takes the lock (a starting server would then fail)."""
    try:
        fd = os.open(path + ".lock", os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return _OWNER_NONE
    except OSError:
        return _OWNER_UNKNOWN
    try:
        text = os.read(fd, 31)
    except OSError:
        return _OWNER_UNKNOWN
    finally:
        os.close(fd)
    try:
        pid = int(text)
    except ValueError:
        return _OWNER_UNKNOWN  # created, pid not written yet
    if pid <= 0:
        return _OWNER_UNKNOWN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return _OWNER_NONE
    except PermissionError:
        pass  # alive, another user's
    return _OWNER_ALIVE


def _check_server_user(sock: socket.socket, name: str, options: ClientOptions) -> None:
    """Refuses a server whose user ``options.server_user`` does not accept,
    before anything is sent to it."""
    if options.server_user == SERVER_USER_ANY:
        return
    try:
        server = _peer_uid(sock)
    except OSError as exc:
        raise _errno_error(exc, "reading the server's credentials") from None
    ours = os.geteuid()
    if options.server_user == SERVER_USER_UID:
        ok, wanted, extra = server == options.server_uid, options.server_uid, ""
    else:  # a path name may be a root service; a plain name is our own
        ok = server == ours or ("/" in name and server == 0)
        wanted, extra = ours, " or root" if "/" in name else ""
    if not ok:
        raise _error(
            "IPC_E_ACCESS_DENIED",
            f"the server on '{name}' runs as {_describe_user(server)}, not as {_describe_user(wanted)}{extra}; "
            f"refusing to send it anything (pass server_user to trust that user)",
        )


def _peer_uid(sock: socket.socket) -> int:
    """The effective uid of the process at the other end of a Unix socket."""
    if hasattr(socket, "SO_PEERCRED"):
        size = struct.calcsize("iII")
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
        _pid, uid, _gid = struct.unpack("iII", raw)
        return int(uid)
    if _BSD_LIKE:
        # LOCAL_PEERCRED (SOL_LOCAL = 0): struct xucred {u_int cr_version;
        # uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16];}.
        raw = sock.getsockopt(0, 0x001, 4 + 4 + 4 + 16 * 4)
        _version, uid = struct.unpack_from("II", raw)
        return int(uid)
    raise OSError(errno.ENOTSUP, "no way to learn a Unix socket peer's user on this platform")


# ---- server ------------------------------------------------------------------------------

_SLOT_FREE, _SLOT_RESERVED, _SLOT_RUNNING, _SLOT_DONE = range(4)


class _Slot:
    __slots__ = ("conn", "index", "state", "thread")

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = _SLOT_FREE
        self.thread: Optional[threading.Thread] = None
        self.conn: Optional[socket.socket] = None


class _Run:
    """One run of a server, from start() to stop(): listener, threads, slots."""

    def __init__(self, server: PureServer, listener: _Listener) -> None:
        self.server = server
        self.listener = listener
        self.cond = threading.Condition(threading.Lock())
        self.slots = [_Slot(i) for i in range(server._max_clients)]
        self.stopping = False
        self.hard = threading.Event()  # set when stop stops waiting for handlers
        self.listener_threads: List[threading.Thread] = []
        self.thread_idents: Set[int] = set()  # connection and worker threads (stop/start from a handler)
        self.worker_threads: List[threading.Thread] = []
        # workers > 0 queues requests as manual dispatch does.
        self.queued = server._manual or server._workers > 0
        # Manual dispatch (guarded by cond): requests waiting for
        # dispatch(), oldest first; a pipe readable while there are some.
        self.queue: Deque[_Pending] = collections.deque()
        self.ready: Optional[Tuple[int, int]] = None
        if server._manual:
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            os.set_blocking(write_end, False)
            self.ready = (read_end, write_end)

    # -- manual dispatch --

    def queue_and_wait(self, conn: "_Connection", request: bytes) -> bool:
        """Hands a request to dispatch() and waits until it is answered;
        False if stop ended it unanswered."""
        item = _Pending(conn, request)
        with self.cond:
            if self.stopping:
                return False
            self.queue.append(item)
            if len(self.queue) == 1 and self.ready is not None:
                os.write(self.ready[1], b"\x01")
            self.cond.notify_all()
            while not item.finished:
                self.cond.wait()
        return not item.abandoned

    def take(self, timeout: Optional[float]) -> Optional["_Pending"]:
        """The oldest pending request, waiting up to timeout (None: no
        limit); None on timeout or once stopping."""
        deadline = None if timeout is None else _monotonic() + timeout
        with self.cond:
            while not self.queue and not self.stopping:
                left = None if deadline is None else deadline - _monotonic()
                if left is not None and left <= 0:
                    return None
                self.cond.wait(left)
            if self.stopping:
                return None
            item = self.queue.popleft()
            if not self.queue:
                self._clear_ready()
            return item

    def finish(self, item: "_Pending", abandoned: bool = False) -> None:
        with self.cond:
            item.finished = True
            item.abandoned = abandoned
            self.cond.notify_all()

    def _clear_ready(self) -> None:
        if self.ready is not None:
            try:
                while os.read(self.ready[0], 64):
                    pass
            except BlockingIOError:
                pass

    def abandon_queued(self) -> None:
        """On stop: requests nobody took end unanswered (their clients see
        the connection closed). Caller holds cond."""
        while self.queue:
            item = self.queue.popleft()
            item.finished = item.abandoned = True
        self._clear_ready()
        self.cond.notify_all()

    # -- worker threads (workers > 0) --

    def worker_main(self) -> None:
        self.thread_idents.add(_get_ident())
        while True:
            item = self.take(None)
            if item is None:
                return  # stopping
            try:
                item.conn.handle(item.request)
            finally:
                self.finish(item)

    # -- listener threads --

    def launch(self, count: int) -> None:
        try:
            for i in range(self.server._workers):
                worker = threading.Thread(target=self.worker_main, name=f"ipcfast-pure-worker-{i}", daemon=True)
                worker.start()
                self.worker_threads.append(worker)
            for i in range(count):
                thread = threading.Thread(target=self.listener_main, name=f"ipcfast-pure-listener-{i}", daemon=True)
                thread.start()
                self.listener_threads.append(thread)
        except BaseException:
            with self.cond:
                self.stopping = True
                self.cond.notify_all()
            self.stop_listeners()
            raise

    def reserve_slot(self) -> Optional[_Slot]:
        """Waits for a free slot (clients queue in the backlog meanwhile);
        None once stopping."""
        chosen: Optional[_Slot] = None
        finished: Optional[threading.Thread] = None
        with self.cond:
            while not self.stopping and chosen is None:
                for state in (_SLOT_FREE, _SLOT_DONE):
                    for slot in self.slots:
                        if slot.state == state:
                            chosen = slot
                            break
                    if chosen is not None:
                        break
                if chosen is None:
                    self.cond.wait()
            if chosen is not None:
                finished = chosen.thread
                chosen.thread = None
                chosen.state = _SLOT_RESERVED
        if finished is not None:
            finished.join()  # already finished: returns at once
        return chosen

    def release_slot(self, slot: _Slot) -> None:
        with self.cond:
            slot.state = _SLOT_FREE
            self.cond.notify_all()

    def start_connection(self, slot: _Slot, conn: socket.socket, accepted_at: float) -> None:
        with self.cond:
            if not self.stopping:
                slot.conn = conn
                slot.state = _SLOT_RUNNING
                thread = threading.Thread(
                    target=self.connection_main,
                    args=(slot, conn, accepted_at),
                    name=f"ipcfast-pure-conn-{slot.index}",
                    daemon=True,
                )
                slot.thread = thread
                try:
                    thread.start()
                    return
                except RuntimeError as exc:  # can't start new thread
                    slot.conn = None
                    slot.thread = None
                    logger.error("could not start a connection thread: %s", exc)
            slot.state = _SLOT_FREE
            self.cond.notify_all()
        conn.close()

    def pause_unless_stopping(self, seconds: float) -> None:
        until = _monotonic() + seconds
        with self.cond:
            while not self.stopping:
                left = until - _monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)

    def listener_main(self) -> None:
        while True:
            slot = self.reserve_slot()
            if slot is None:
                break
            try:
                conn = self.listener.accept()
            except IPCError as exc:
                self.release_slot(slot)
                logger.error("accept failed (retrying): %s", exc)
                self.pause_unless_stopping(0.1)  # e.g. out of descriptors: back off
                continue
            except BaseException:  # pragma: no cover - the listener must not die silently
                self.release_slot(slot)
                logger.exception("ipcfast: the listener thread failed")
                break
            if conn is None:
                self.release_slot(slot)
                break
            self.start_connection(slot, conn, _monotonic())

    def stop_listeners(self) -> None:
        self.listener.interrupt()
        for thread in self.listener_threads:
            thread.join()
        self.listener_threads = []

    # -- connection threads --

    def connection_main(self, slot: _Slot, conn: socket.socket, accepted_at: float) -> None:
        ident = _get_ident()
        self.thread_idents.add(ident)
        connection = _Connection(self, slot, conn)
        try:
            try:
                connection.run(accepted_at)
            except BaseException:  # pragma: no cover - a bug here must not kill the slot
                logger.exception("[slot %d] ipcfast: internal error in the connection thread", slot.index)
            # Drain while stop can still cut it short: end-of-stream goes
            # after everything we wrote. Refused connections are closed as is.
            if not connection.refused:
                try:
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            with self.cond:
                slot.conn = None
            conn.close()
        finally:
            self.thread_idents.discard(ident)
            with self.cond:
                slot.state = _SLOT_DONE
                self.cond.notify_all()

    def interrupt_connections(self, hard: bool) -> None:
        """Soft: end reads (running handlers may still answer); hard: end
        everything. Caller holds the lock."""
        how = socket.SHUT_RDWR if hard else socket.SHUT_RD
        for slot in self.slots:
            if slot.state == _SLOT_RUNNING and slot.conn is not None:
                try:
                    slot.conn.shutdown(how)
                except OSError:
                    pass

    def count_running(self) -> int:
        return sum(1 for slot in self.slots if slot.state == _SLOT_RUNNING)

    def end_dispatch(self) -> None:
        """Stopping: queued requests end unanswered, and dispatch() calls
        (counted by the server, which waits for them) return."""
        with self.cond:
            self.stopping = True
            self.abandon_queued()

    def wait_running(self, until: Optional[float]) -> None:
        """Waits until no connection runs or `until` passes. Caller holds cond."""
        while self.count_running() > 0:
            left = None if until is None else until - _monotonic()
            if left is not None and left <= 0:
                break
            self.cond.wait(left)

    def join_connections(self) -> int:
        """Joins every connection thread that ended; returns how many still
        run a handler (left alone: they still use their slot)."""
        abandoned = 0
        for slot in self.slots:
            with self.cond:
                running = slot.state == _SLOT_RUNNING
                thread = None if running else slot.thread
                if running:
                    abandoned += 1
                else:
                    slot.thread = None
            if thread is not None:
                thread.join()
                slot.state = _SLOT_FREE
        return abandoned

    def stop(self, timeout_ms: int) -> None:
        now = _monotonic()
        deadline = None if timeout_ms < 0 else now + timeout_ms / 1000.0
        # With a timeout, half of it is the soft grace, the rest is for
        # threads to leave once their connections are closed under them.
        grace_end = now + (STOP_GRACE if deadline is None else min(STOP_GRACE, timeout_ms / 2000.0))
        with self.cond:
            self.stopping = True
            self.abandon_queued()
            self.interrupt_connections(hard=False)
        self.stop_listeners()
        address = self.listener.path
        try:
            for worker in self.worker_threads:  # take() returns None now
                worker.join(max(0.0, grace_end - _monotonic()))
            with self.cond:
                self.wait_running(grace_end)
                self.hard.set()
                self.interrupt_connections(hard=True)
                self.wait_running(deadline)
            # No new threads can start now: join without the lock.
            abandoned = self.join_connections()
        finally:
            # Even when Ctrl-C breaks the wait: the name is released (no
            # connection thread uses the listener or the ready pipe now).
            self.listener.close()
            if self.ready is not None:
                os.close(self.ready[0])
                os.close(self.ready[1])
                self.ready = None
        if abandoned:
            logger.warning(
                "server on %s stopped; abandoned %d connection thread(s) still running a handler "
                "after the stop timeout",
                address,
                abandoned,
            )
        else:
            logger.info("server on %s stopped", address)

    def forget(self) -> None:
        """Fork child: close this process's copies of the descriptors with
        close() alone (the parent keeps its socket, lock and clients); no
        lock is taken, nothing is unlinked or joined."""
        listener = self.listener
        for slot in self.slots:
            conn = slot.conn
            if conn is not None:
                conn.close()
        if listener.sock is not None:
            listener.sock.close()
            listener.sock = None
        listener.placed = None  # never unlink: the socket file is the parent's
        fds = [listener.lock_fd, listener.wake_r, listener.wake_w]
        listener.lock_fd = listener.wake_r = listener.wake_w = -1
        if self.ready is not None:
            fds.extend(self.ready)
            self.ready = None
        for fd in fds:
            if fd >= 0:
                os.close(fd)


class _Pending:
    """Manual dispatch: a request waiting for (or in) dispatch()."""

    __slots__ = ("conn", "request", "finished", "abandoned")

    def __init__(self, conn: "_Connection", request: bytes) -> None:
        self.conn = conn
        self.request = request
        self.finished = False
        self.abandoned = False


class _Connection:
    """One client's connection, owned by its thread."""

    __slots__ = ("protocol", "refused", "run_", "scratch", "server", "slot", "sock", "write_failed")

    def __init__(self, run: _Run, slot: _Slot, sock: socket.socket) -> None:
        self.run_ = run
        self.server = run.server
        self.slot = slot
        self.sock = sock
        self.scratch = bytearray(RECV_CHUNK)
        self.refused = False  # closed for a bad packet: no drain
        self.write_failed = False
        self.protocol = ServerConnection(run.server._handshake, run.server._max_message)

    def run(self, accepted_at: float) -> None:
        if self.handshake(accepted_at):
            self.serve()

    def _recv(self, timeout: float) -> Optional[int]:
        """Bytes read into scratch (0: closed), or None if none came in time."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv_into(self.scratch)
        except socket.timeout:
            return None

    def handshake(self, accepted_at: float) -> bool:
        """Reads the client's handshake into self.protocol; True once it is
        answered (the connection is READY)."""
        server = self.server
        index = self.slot.index
        protocol = self.protocol
        deadline = accepted_at + server._handshake_timeout_ms / 1000.0
        while True:
            event = protocol.next_event()
            if event is not NEED_DATA:
                break
            left = deadline - _monotonic()
            try:
                if left <= 0:
                    raise _error(_TIMEOUT, "timed out waiting for data")
                n = self._recv(min(left, WAKE_INTERVAL))
                if n == 0:
                    raise _error(_CLOSED, "the peer closed the connection")
            except IPCError as exc:
                logger.info("[slot %d] client dropped during the handshake: %s", index, exc)
                return False
            except OSError as exc:
                logger.info("[slot %d] client dropped during the handshake: %s", index, _errno_error(exc, "recv"))
                return False
            if n:
                protocol.receive_data(memoryview(self.scratch)[:n])
        if isinstance(event, HandshakeRejected):
            self.rejected(event)
            return False
        if not server._world and not self.same_user():
            return False
        try:
            _send_all(self.sock, [protocol.handshake_reply()], deadline, -1, self.run_.hard)
        except (IPCError, OSError) as exc:
            logger.info("[slot %d] could not send the handshake reply: %s", index, exc)
            return False
        return True

    def rejected(self, event: HandshakeRejected) -> None:
        index = self.slot.index
        if event.verdict == Verdict.FOREIGN:
            logger.warning(
                "[slot %d] refused a foreign client (first byte 0x%02x, not an ipcfast handshake)",
                index,
                event.first_byte,
            )
        else:
            logger.warning(
                "[slot %d] handshake %s: the client uses another key or protocol; dropped",
                index,
                "mismatch" if event.verdict == Verdict.MISMATCH else "with version 0",
            )
        if event.reply:
            try:
                _send_all(self.sock, [event.reply], _monotonic() + WAKE_INTERVAL)
            except (IPCError, OSError):
                pass

    def same_user(self) -> bool:
        """access="user": the peer runs as this user (logged if not)."""
        try:
            same_user = _peer_uid(self.sock) == os.geteuid()
            reason = 'it runs as another user (access is "user")'
        except OSError as exc:
            same_user = False
            reason = str(_errno_error(exc, "getsockopt(SO_PEERCRED)"))
        if not same_user:
            logger.warning("[slot %d] refused a client: %s", self.slot.index, reason)
        return same_user

    def serve(self) -> None:
        run = self.run_
        protocol = self.protocol
        view = memoryview(self.scratch)
        while True:
            event = protocol.next_event()
            while event is NEED_DATA:
                try:
                    n = self._recv(WAKE_INTERVAL)
                except OSError as exc:
                    if exc.errno not in _PEER_GONE:
                        logger.warning("[slot %d] read failed: %s", self.slot.index, _errno_error(exc, "recv"))
                    return
                if n is None:
                    if run.stopping:
                        return
                    continue
                if n == 0:
                    return  # the client left (or stop ended the reads)
                protocol.receive_data(view[:n])
                event = protocol.next_event()
            if type(event) is not Request:
                assert isinstance(event, Refuse)
                self.refuse(event)
                return
            if run.queued:
                if not run.queue_and_wait(self, event.payload):
                    return  # the server is stopping
            else:
                self.handle(event.payload)
            if self.write_failed:
                return

    def handle(self, request: bytes) -> None:
        server = self.server
        try:
            result = server._handler(request)
            view = memoryview(result) if type(result) is bytes else handler_result(result, _as_bytes_view)
        except BaseException as exc:
            self.fail(exc)
            return
        too_large = self.protocol.response_too_large(view.nbytes)
        if too_large is not None:
            logger.error("%s", too_large)
            logger.debug(
                "server %r: the handler's response of %d bytes is above max_message (%d); "
                "the client got an error instead",
                server._name,
                view.nbytes,
                server._max_message,
            )
            self.send(PacketType.ERROR, memoryview(too_large.encode()))
            return
        self.send(PacketType.RESPONSE, view)

    def fail(self, exc: BaseException) -> None:
        # A failure text is an explanation: its head is enough (protocol 5).
        text = failure_text(self.server._name, exc)[:MAX_ERROR_TEXT]
        self.send(PacketType.ERROR, memoryview(text))

    def send(self, type_: int, payload: memoryview) -> None:
        if self.write_failed:
            return
        # No deadline: a client that stops reading blocks only this thread,
        # and stop() interrupts the write.
        try:
            _send_all(self.sock, _packet_parts(type_, payload), None, -1, self.run_.hard)
        except (IPCError, OSError) as exc:
            self.write_failed = True
            logger.debug("server %r: the response was not delivered (%s)", self.server._name, exc)

    def refuse(self, event: Refuse) -> None:
        """Tells the client why its packet was refused; the caller closes."""
        # The client may still be writing the rest of the refused packet and
        # not reading: closing (no drain) keeps our reply readable.
        self.refused = True
        logger.warning("[slot %d] %s; closing the connection", self.slot.index, event.text)
        try:  # best effort and bounded: the client may not be reading
            _send_all(self.sock, [event.data], _monotonic() + WAKE_INTERVAL, -1, self.run_.hard)
        except (IPCError, OSError):
            pass


class PureServer(Server):
    """The pure-Python implementation of :class:`ipcfast.Server`."""

    backend = "pure"

    # ---- hooks of _base.Server ----

    def _configure(self, options: ServerOptions) -> None:
        _require_posix()
        self._max_clients = options.max_clients
        self._listeners = options.listeners
        self._handshake_timeout_ms = options.handshake_timeout_ms
        self._world = options.world
        self._handshake = options.handshake
        if self._zero_copy:
            # The request is already a bytes object of its own here: its view
            # costs nothing, and outlives the call harmlessly.
            handler: Any = self._handler
            self._handler = lambda request: handler(memoryview(request))

    @property
    def _run(self) -> Optional[_Run]:
        run: Optional[_Run] = self._state
        return run

    def _open(self) -> _Run:
        if self._max_clients > MAX_CLIENTS_LIMIT:
            raise _error(Result.E_INVALID, f"max_clients {self._max_clients} is above the limit of {MAX_CLIENTS_LIMIT}")
        if self._listeners > self._max_clients:
            raise _error(
                Result.E_INVALID,
                f"listeners ({self._listeners}) cannot exceed max_clients ({self._max_clients})",
            )
        listener = _Listener(self._name, self._world)
        run = _Run(self, listener)
        try:
            run.launch(self._listeners)
        except BaseException:
            listener.close()
            raise
        self._address = listener.path
        logger.info("server listening on %s (%d slots)", listener.path, self._max_clients)
        return run

    def _interrupt(self, run: _Run) -> None:
        run.end_dispatch()

    def _close(self, run: _Run, timeout_ms: int) -> None:
        run.stop(timeout_ms)

    def _forget(self, run: _Run) -> None:
        run.forget()

    def _in_handler_thread(self, ident: int) -> bool:
        run = self._run
        return run is not None and ident in run.thread_idents

    def _ready_fileno(self, run: _Run) -> int:
        assert run.ready is not None
        return run.ready[0]

    def _dispatch_pending(self, run: _Run, wait_ms: int) -> int:
        handled = 0
        wait = None if wait_ms < 0 else wait_ms / 1000.0
        while True:
            item = run.take(wait)
            if item is None:
                return handled
            try:
                item.conn.handle(item.request)
            finally:
                run.finish(item)
            handled += 1
            wait = 0.0


# ---- client --------------------------------------------------------------------------------


#: Open clients of this process, for the fork() child hook.
_live_clients: "weakref.WeakSet[PureClient]" = weakref.WeakSet()


def _forget_clients_after_fork() -> None:
    for client in list(_live_clients):
        client._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_clients_after_fork)


class PureClient(Client):
    """The pure-Python implementation of :class:`ipcfast.Client`.

    Signals: every wait is a socket call with a timeout, which Python
    interrupts to run signal handlers (PEP 475): Ctrl-C raises at once and
    abandons the connection; a handler that returns lets the wait go on
    within its deadline. close() from another thread wakes a request with
    shutdown() and waits for it to leave. A client inherited by a fork()
    child is forgotten there (closed without shutdown()).
    """

    backend = "pure"

    _sock: Optional[socket.socket] = None
    _forked_from = 0
    _owner = 0  #: the thread of the latest request

    def _connect(self, options: ClientOptions) -> None:
        _require_posix()
        connect_ms = options.connect_ms
        self._max_message = options.max_message
        self._value = options.handshake
        self._closed = False
        self._closed_reason = "closed"
        self._version = 0
        self._scratch = bytearray(RECV_CHUNK)
        self._view_buffer = ViewBuffer()
        self._protocol = ClientConnection(self._value, self._max_message, self._name)
        self._wait_for_server = options.wait_for_server
        deadline = _deadline_after(connect_ms)
        sock = self._connect_retrying(deadline, connect_ms)
        try:
            _check_server_user(sock, self._name, options)
        except BaseException:
            sock.close()
            raise
        if connect_ms == 0:
            # A budget of 0 means one attempt without retries; the handshake
            # that follows still needs a round trip (same rule as native).
            deadline = _deadline_after(int(WAKE_INTERVAL * 1000))
        try:
            self._handshake(sock, deadline)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._pid = os.getpid()
        _live_clients.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _forget(self) -> None:
        """In a fork() child: drop the parent's connection without touching
        it (close() of our descriptor only: no shutdown, nothing sent)."""
        sock, self._sock = self._sock, None
        if self._closed and sock is None:
            return
        self._closed = True
        self._forked_from = self._pid
        # A parent thread may have held the lock at fork time.
        self._lock = threading.Lock()
        if sock is not None:
            sock.close()

    def _closed_error(self) -> IPCError:
        if self._forked_from:
            return InvalidArgument(
                f"this client belongs to process {self._forked_from}: it was opened before fork() and this "
                f"process ({os.getpid()}) must not share its connection; open a new Client in the child",
                code=Result.E_INVALID.c_name,
            )
        return ConnectionClosed(f"the client for {self._name!r} is closed: open a new Client", code=_CLOSED.c_name)

    @property
    def version(self) -> int:
        """The packet version both sides agreed on."""
        with self._lock:
            if self._closed:
                raise ConnectionClosed("the client is closed", code=_CLOSED.c_name)
            return self._version

    # -- connecting --

    def _connect_once(self, timeout: Optional[float]) -> socket.socket:
        path = resolve_name(self._name, create=False)
        sock = _new_socket()
        try:
            # Non-blocking connect: a full backlog answers EAGAIN ("busy") at
            # once instead of blocking past the budget.
            sock.setblocking(False)
            result = sock.connect_ex(path)
            if result == errno.EAGAIN and _LINUX and timeout != 0:
                result = _wait_for_room(sock, path, timeout)
            if result == errno.EINPROGRESS:
                if not _ready(write=(sock.fileno(),), timeout=timeout):
                    result = errno.EAGAIN
                else:
                    result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except BaseException:
            sock.close()
            raise
        if result == 0:
            return sock
        sock.close()
        if result in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise _error(_BUSY, f"the server '{path}' has a full connection queue", result)
        if result in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
            raise _error(_NOT_FOUND, f"no server is listening on '{path}' ({os.strerror(result)})", result)
        raise _errno_error(result, "connect to", path)

    def _worth_retrying_not_found(self, started: float) -> bool:
        """A live owner of the name is starting; no owner means nothing will
        answer unless the caller asked to wait; an owner not recorded yet
        gets a short grace (same rule as native)."""
        if self._wait_for_server:
            return True
        owner = _name_owner(resolve_name(self._name, create=False))
        if owner == _OWNER_ALIVE:
            return True
        return owner == _OWNER_UNKNOWN and _monotonic() - started < NOT_FOUND_GRACE

    def _connect_retrying(self, deadline: Optional[float], budget_ms: int) -> socket.socket:
        """Connection attempts until one works or the budget is spent; "busy"
        and a starting server are retried with a backoff."""
        started = _monotonic()
        backoff = 0.001
        seen_busy = False
        while True:
            try:
                return self._connect_once(_remaining(deadline))
            except IPCError as exc:
                if exc.code not in (_NOT_FOUND.c_name, _BUSY.c_name):
                    raise
                last = exc
            # A server we saw busy and that then vanished has stopped.
            if last.code == _NOT_FOUND.c_name and seen_busy:
                raise _error(
                    _NOT_FOUND,
                    f"the server '{self._name}' went away while we waited for a free slot",
                    last.system_error,
                ) from None
            if last.code == _NOT_FOUND.c_name and not self._worth_retrying_not_found(started):
                raise _error(
                    _NOT_FOUND,
                    f"no server is listening on '{self._name}' and none is starting: start one",
                    last.system_error,
                ) from None
            seen_busy = seen_busy or last.code == _BUSY.c_name
            wait = _remaining(deadline)
            if wait == 0:
                if last.code == _NOT_FOUND.c_name:
                    raise _error(
                        _NOT_FOUND,
                        f"no server is listening on '{self._name}' (waited {budget_ms} ms): start one",
                        last.system_error,
                    ) from None
                raise _error(
                    _BUSY, f"the server '{self._name}' stayed busy for {budget_ms} ms: retry later", last.system_error
                ) from None
            time.sleep(backoff if wait is None else min(backoff, wait))
            backoff = min(backoff * 2, 0.05)

    def _handshake(self, sock: socket.socket, deadline: Optional[float]) -> None:
        name = self._name
        protocol = self._protocol
        view = memoryview(self._scratch)
        try:
            _send_all(sock, [protocol.handshake_request()], deadline)
            while True:
                event = protocol.next_event()
                if event is not NEED_DATA:
                    break
                n = self._recv_into(sock, deadline, "timed out waiting for data")
                protocol.receive_data(view[:n])
        except IPCError as exc:
            if exc.code == _TIMEOUT.c_name:
                raise _error(
                    _BUSY,
                    f"the server '{name}' took the connection but did not answer the handshake in time: "
                    f"all its connection slots are probably busy; retry later or raise max_clients",
                ) from None
            if exc.code == _CLOSED.c_name:
                raise _error(
                    Result.E_HANDSHAKE,
                    f"the server '{name}' closed the connection during the handshake: it uses another key "
                    f"or protocol version, refused this user, or is stopping",
                ) from None
            raise error_for_code(exc.code, f"handshake: {exc}", exc.system_error) from None
        if isinstance(event, ProtocolFailure):
            raise _error(event.code, event.text)
        assert isinstance(event, HandshakeDone)
        self._version = event.version

    def _recv_into(
        self,
        sock: socket.socket,
        deadline: Optional[float],
        timeout_text: str,
        into: Optional[memoryview] = None,
        flags: int = 0,
    ) -> int:
        """Bytes read into ``into`` (default: the scratch buffer), at least
        1, or an IPCError."""
        wait = _remaining(deadline)
        if wait == 0:
            raise _error(_TIMEOUT, timeout_text)
        sock.settimeout(wait)
        try:
            n = sock.recv_into(self._scratch if into is None else into, 0, flags)
        except socket.timeout:
            raise _error(_TIMEOUT, timeout_text) from None
        except OSError as exc:
            if exc.errno in _PEER_GONE:
                raise _error(
                    _CLOSED, f"the connection was reset: {os.strerror(exc.errno or 0)}", exc.errno or 0
                ) from None
            raise _errno_error(exc, "recv") from None
        if n == 0:
            raise _error(_CLOSED, "the peer closed the connection")
        return n

    # -- requests --

    def _abandon(self, why: BaseException) -> None:
        """After a failure that leaves the stream in an unknown state, the
        connection is closed for good."""
        sock = self._sock
        if sock is not None:
            self._sock = None
            self._closed_reason = str(why) or "the connection failed"
            sock.close()
            self._protocol.discard_pending()

    def _read_event(self, sock: socket.socket, deadline: Optional[float]) -> ClientEvent:
        """The next RESPONSE, ERROR or failure; IPCError on I/O failure."""
        protocol = self._protocol
        event = protocol.next_event()
        if event is NEED_DATA:
            view = memoryview(self._scratch)
            while event is NEED_DATA:
                n = self._recv_into(
                    sock,
                    deadline,
                    "no response within the timeout; the connection is closed because the late response would "
                    "be read by the next request",
                )
                protocol.receive_data(view[:n])
                event = protocol.next_event()
        return event

    def _explain_refused_write(self, sock: socket.socket, exc: IPCError) -> IPCError:
        """A server that refuses a request (too large) says why in an ERROR
        packet and closes, possibly while we are still writing: then the
        write fails, but the explanation may be waiting for us."""
        try:
            event = self._read_event(sock, _monotonic() + 0.1)
        except IPCError:
            return exc
        if not isinstance(event, RemoteFailure):
            return exc
        code = event.code if event.code == Result.E_TOO_LARGE else exc.code
        return _error(code, event.text)

    def request(self, data: BytesLike, timeout: Optional[float] = None) -> bytes:
        view = _request_bytes(data)
        ms = self._timeout_ms if timeout is None else timeout_ms(timeout)
        with self._lock:
            payload = self._round_trip(view, ms, None)
        assert isinstance(payload, bytes)
        return payload

    def request_into(self, data: BytesLike, out: Any, timeout: Optional[float] = None) -> int:
        view = _request_bytes(data)
        target = writable_bytes_view(out)
        ms = self._timeout_ms if timeout is None else timeout_ms(timeout)
        with self._lock:
            result = self._round_trip(view, ms, target)
        if isinstance(result, int):
            return result
        # Not taken from the socket directly (an ERROR, or bytes already
        # buffered): copied once from the packet.
        size = len(result)
        if size > target.nbytes:
            raise too_small(size, target.nbytes, result)
        target[:size] = result
        return size

    def request_view(self, data: BytesLike, timeout: Optional[float] = None) -> memoryview:
        view = _request_bytes(data)
        ms = self._timeout_ms if timeout is None else timeout_ms(timeout)
        views = self._view_buffer
        with self._lock:
            buffer = views.reusable()
            with memoryview(buffer) as target:
                result = self._round_trip(view, ms, target)
            if isinstance(result, int):
                return views.hand_out(buffer, result)
            size = len(result)
            if size > len(buffer):
                buffer = bytearray(max(size, 2 * len(buffer)))
            buffer[:size] = result
            return views.hand_out(buffer, size)

    def _read_into(self, sock: socket.socket, deadline: Optional[float], target: memoryview) -> int:
        """A RESPONSE that fits ``target`` read from the socket straight into
        it: its size. -1: nothing was consumed, read the packet as usual
        (something is buffered already, or it is not such a RESPONSE)."""
        if not self._protocol.at_boundary():
            return -1
        header = self._peek_header(sock, deadline)
        if header is None or header.type != PacketType.RESPONSE or header.length > target.nbytes:
            return -1
        scratch = memoryview(self._scratch)
        # The header is there (peeked): this takes exactly it.
        self._recv_into(sock, deadline, _LATE_RESPONSE, scratch[: header.header_size])
        got, size = 0, header.length
        while got < size:
            got += self._recv_into(sock, deadline, _LATE_RESPONSE, target[got:size])
        return size

    def _peek_header(self, sock: socket.socket, deadline: Optional[float]) -> Optional[Header]:
        """The next packet's header, left on the socket; None if it has not
        all arrived yet or is bad (the usual read then deals with it)."""
        scratch = memoryview(self._scratch)
        n = self._recv_into(sock, deadline, _LATE_RESPONSE, scratch[:MAX_HEADER_SIZE], socket.MSG_PEEK)
        verdict, header = parse_header(scratch[:n], self._max_message, self._version)
        return header if verdict == Verdict.OK else None

    def _round_trip(self, view: memoryview, ms: int, target: Optional[memoryview]) -> Union[bytes, int]:
        """One request under the lock: the response's bytes, or with a
        ``target`` possibly its size once read straight into it."""
        self._owner = threading.get_ident()
        if self._view_buffer.view is not None:
            self._view_buffer.release()  # request_view's answer ends here
        sock = self._sock
        if self._closed:
            raise self._closed_error()
        if sock is None:
            raise ConnectionClosed(
                f"the connection is closed ({self._closed_reason}); open a new client", code=_CLOSED.c_name
            )
        deadline = _deadline_after(ms)
        size = view.nbytes
        if size > _MAX_UINT32:
            raise _error(Result.E_TOO_LARGE, f"a request of {size} bytes does not fit the 4-byte length field")
        try:
            try:
                _send_all(sock, _packet_parts(PacketType.REQUEST, view), deadline, ms)
            except IPCError as exc:
                error = self._explain_refused_write(sock, exc) if exc.code == _CLOSED.c_name else exc
                raise self._abandon_for(error) from None
            try:
                if target is not None:
                    received = self._read_into(sock, deadline, target)
                    if received >= 0:
                        return received
                event = self._read_event(sock, deadline)
            except IPCError as exc:
                raise self._abandon_for(exc) from None
        except IPCError:
            raise
        except BaseException as exc:
            # E.g. KeyboardInterrupt in the middle of a request: the
            # stream is at an unknown point, so it cannot be reused.
            self._abandon(ConnectionClosed(f"interrupted by {type(exc).__name__}"))
            raise
        if type(event) is Response:
            return event.payload
        assert isinstance(event, (RemoteFailure, ProtocolFailure))
        error = _error(event.code, event.text)
        if event.code != Result.E_REMOTE:
            self._abandon(error)
        # A handler failure leaves the connection usable.
        raise error

    def _abandon_for(self, error: IPCError) -> IPCError:
        """Abandons the connection after a failed request; the error to raise
        (a close() from another thread says so)."""
        if self._closed:
            error = ConnectionClosed("the client was closed by another thread during this call", code=_CLOSED.c_name)
        self._abandon(error)
        return error

    def close(self) -> None:
        lock = self._lock
        if not lock.acquire(blocking=False):
            # A request is in flight on another thread: wake it (shutdown()
            # makes its wait return at once), then let it leave. Only then:
            # without a call in flight the connection may be shared with a
            # fork()ed process, which shutdown() would cut off too.
            self._closed = True
            sock = self._sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._owner == threading.get_ident():
                # A signal handler closing the client during our own request
                # on this thread: the request ends (and closes the socket)
                # once the handler returns; waiting would wait for ourselves.
                return
            lock.acquire()
        try:
            self._closed = True
            sock = self._sock
            if sock is not None:
                self._sock = None
                sock.close()
            self._view_buffer.release()
            _live_clients.discard(self)
        finally:
            lock.release()

    def __del__(self) -> None:
        sock = self._sock
        if sock is not None:
            self._sock = None
            try:
                sock.close()
            except Exception:
                pass


ServerImpl = PureServer
ClientImpl = PureClient
