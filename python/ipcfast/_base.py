"""The public Server and Client classes: the lifecycle, written once, over
small backend hooks.

``Server(...)`` and ``Client(...)`` ask the registry (``_backends``) for the
backend named by their ``backend`` argument and return an instance of that
backend's subclass (``_native.NativeServer`` / ``_native.NativeClient``, or
``_pure.PureServer`` / ``_pure.PureClient``). So ``isinstance(obj,
ipcfast.Client)`` holds for every backend, and calls go straight to the
implementation: no delegation layer on the hot path.

What both backends share lives here: argument parsing (:class:`ServerOptions`,
:class:`ClientOptions`), start/stop bracketing, the manual-dispatch
bookkeeping, the "not from inside a handler" rule, and the handler-result
conversion and failure texts. A backend supplies the hooks listed on
:class:`Server` and :class:`Client`.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Dict, Optional, Type, TypeVar, Union

from ._backends import BACKENDS, backend_module, native_import_error
from ._codec import SHM_MAX_SLOT, SHM_MIN_SLOT
from ._errors import BufferTooSmall, InvalidArgument
from ._names import handshake_value

__all__ = [
    "Server",
    "Client",
    "ServerOptions",
    "ClientOptions",
    "Handler",
    "BytesLike",
    "native_import_error",
    "BACKENDS",
]

logger = logging.getLogger("ipcfast")
_get_ident = threading.get_ident
_T = TypeVar("_T")

#: Kept for tests that import the registry through this module.
_backend_module = backend_module

#: What a handler may return: anything with the buffer protocol.
BytesLike = Union[bytes, bytearray, memoryview]
#: A request handler: request bytes in, response bytes out.
Handler = Callable[[bytes], BytesLike]
#: A server name: a plain name, or (POSIX) a socket path.
Name = Union[str, "os.PathLike[str]"]

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: Server(workers=...): see docs/design.md ("Python handlers") for how the
#: default was chosen.
DEFAULT_WORKERS = 0
MAX_WORKERS = 256
#: Server(shm=...) and Client(shm=...): the shared-memory data path is on
#: unless a side says shm=False (docs/protocol.md 11; native backend, Linux and Windows).
DEFAULT_SHM = True
#: Server(shm_spin_us=...) and Client(shm_spin_us=...): the largest value
#: taken (one second of spinning is already far past any use).
MAX_SHM_SPIN_US = 1_000_000
_MAX_UINT32 = 0xFFFFFFFF
_MAX_TIMEOUT_MS = 0x7FFFFFFF

# ---- argument helpers shared by the backends ------------------------------


def encode_name(name: Name) -> bytes:
    """The server name as bytes for the C core (file-system encoding)."""
    if isinstance(name, (bytes, bytearray)):
        raise TypeError("name must be str (or os.PathLike), not bytes")
    text = os.fspath(name)
    if not isinstance(text, str):
        raise TypeError(f"name must be str, not {type(name).__name__}")
    # InvalidArgument is an IPCError (what callers catch from ipcfast) and
    # a ValueError (what this raised before).
    if not text:
        raise InvalidArgument("the server name must not be empty", code="IPC_E_INVALID")
    if "\x00" in text:
        raise InvalidArgument(f"the server name {text!r} contains a NUL character", code="IPC_E_INVALID")
    return os.fsencode(text)


def timeout_ms(timeout: Optional[float], what: str = "timeout") -> int:
    """Seconds (None: no limit) to the C core's milliseconds (-1: no limit)."""
    if timeout is None:
        return -1
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}") from None
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{what} must be >= 0 seconds or None, got {timeout!r}")
    if math.isinf(seconds):
        return -1
    return min(int(math.ceil(seconds * 1000.0)), _MAX_TIMEOUT_MS)


def check_server_args(handler: Any, access: str, dispatch: str) -> None:
    """The Server arguments both backends validate the same way."""
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    if access not in ("user", "world"):
        raise ValueError(f"access must be 'user' or 'world', got {access!r}")
    if dispatch not in ("thread", "manual"):
        raise ValueError(f"dispatch must be 'thread' or 'manual', got {dispatch!r}")


def check_uint32(value: int, what: str, minimum: int = 1) -> int:
    """Validate an integer option that the C core stores as uint32_t."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not minimum <= value <= _MAX_UINT32:
        raise ValueError(f"{what} must be between {minimum} and {_MAX_UINT32}, got {value}")
    return value


@dataclass(frozen=True)
class ServerOptions:
    """The Server arguments, checked once for every backend."""

    name: str
    name_bytes: bytes  #: the name for the C core (file-system encoding)
    handshake: bytes  #: the handshake value derived from the key
    max_clients: int
    max_message: int
    world: bool  #: access == "world"
    listeners: int
    handshake_timeout_ms: int
    manual: bool  #: dispatch == "manual"
    workers: int  #: handler threads fed from the core's queue; 0: none
    #: accept a client's shared-memory data path (native backend, Linux and Windows)
    shm: bool = DEFAULT_SHM
    #: microseconds a waiting thread spins on that path; -1: the C core's default
    shm_spin_us: int = -1

    @classmethod
    def parse(
        cls,
        name: Name,
        handler: Any,
        key: Optional[Union[str, bytes]],
        max_clients: int,
        max_message: int,
        access: str,
        listeners: int,
        handshake_timeout: float,
        dispatch: str,
        workers: int = 0,
        shm: bool = DEFAULT_SHM,
        shm_spin_us: Optional[int] = None,
    ) -> "ServerOptions":
        check_server_args(handler, access, dispatch)
        workers = check_uint32(workers, "workers", minimum=0)
        if workers and dispatch == "manual":
            raise ValueError("workers= needs dispatch='thread' (manual dispatch runs the handler on your thread)")
        if workers > MAX_WORKERS:
            raise ValueError(f"workers must be at most {MAX_WORKERS}, got {workers}")
        name_bytes = encode_name(name)
        max_message = check_uint32(max_message, "max_message")
        max_clients = check_uint32(max_clients, "max_clients")
        listeners = check_uint32(listeners, "listeners")
        hs_ms = timeout_ms(handshake_timeout, "handshake_timeout")
        if hs_ms <= 0:
            raise ValueError("handshake_timeout must be a positive number of seconds")
        return cls(
            name=os.fspath(name),
            name_bytes=name_bytes,
            handshake=handshake_value(key),
            max_clients=max_clients,
            max_message=max_message,
            world=access == "world",
            listeners=listeners,
            handshake_timeout_ms=hs_ms,
            manual=dispatch == "manual",
            workers=workers,
            shm=bool(shm),
            shm_spin_us=check_spin_us(shm_spin_us),
        )


#: ``enum ipc_server_user`` (csrc/ipc.h).
SERVER_USER_DEFAULT = 0
SERVER_USER_ANY = 1
SERVER_USER_UID = 2
#: What ``Client(server_user=...)`` takes: None (the default rule), "any", a uid or a user name.
ServerUser = Optional[Union[int, str]]


def parse_server_user(server_user: ServerUser) -> "tuple[int, int]":
    """``server_user`` as (policy, uid) for the C core's ipc_client_options."""
    if server_user is None:
        return SERVER_USER_DEFAULT, 0
    if server_user == "any":
        return SERVER_USER_ANY, 0
    if isinstance(server_user, bool) or not isinstance(server_user, (int, str)):
        raise TypeError(f"server_user must be None, 'any', a uid or a user name, not {type(server_user).__name__}")
    if isinstance(server_user, int):
        return SERVER_USER_UID, check_uint32(server_user, "server_user", minimum=0)
    try:
        import pwd
    except ImportError:
        raise ValueError("server_user by name needs a POSIX system (Windows takes None or 'any')") from None
    try:
        return SERVER_USER_UID, pwd.getpwnam(server_user).pw_uid
    except KeyError:
        raise ValueError(f"server_user: there is no user named {server_user!r}") from None


@dataclass(frozen=True)
class ClientOptions:
    """The Client arguments, checked once for every backend."""

    name: str
    name_bytes: bytes
    handshake: bytes
    connect_ms: int  #: -1: no limit
    timeout_ms: int  #: the default for request(); -1: no limit
    max_message: int
    #: Retry "not found" within the budget even when nothing is starting.
    wait_for_server: bool = False
    #: Which server user is accepted: SERVER_USER_DEFAULT, _ANY or _UID (ipc.h).
    server_user: int = 0
    server_uid: int = 0  #: with SERVER_USER_UID
    #: offer the server a shared-memory data path (native backend, Linux and Windows)
    shm: bool = DEFAULT_SHM
    #: bytes per direction in that region; 0: the C core's default (2 MiB)
    shm_slot_size: int = 0
    #: microseconds a waiting call spins on that path; -1: the C core's default
    shm_spin_us: int = -1

    @classmethod
    def parse(
        cls,
        name: Name,
        key: Optional[Union[str, bytes]],
        connect_timeout: Optional[float],
        timeout: Optional[float],
        max_message: int,
        wait_for_server: bool = False,
        server_user: ServerUser = None,
        shm: bool = DEFAULT_SHM,
        shm_slot_size: int = 0,
        shm_spin_us: Optional[int] = None,
    ) -> "ClientOptions":
        shm_slot_size = check_uint32(shm_slot_size, "shm_slot_size", minimum=0)
        if shm_slot_size and not SHM_MIN_SLOT <= shm_slot_size <= SHM_MAX_SLOT:
            raise ValueError(
                f"shm_slot_size must be 0 (the default) or {SHM_MIN_SLOT}..{SHM_MAX_SLOT}, got {shm_slot_size}"
            )
        name_bytes = encode_name(name)
        request_ms = timeout_ms(timeout, "timeout")
        connect_ms = timeout_ms(connect_timeout, "connect_timeout")
        policy, uid = parse_server_user(server_user)
        return cls(
            name=os.fspath(name),
            name_bytes=name_bytes,
            handshake=handshake_value(key),
            connect_ms=connect_ms,
            timeout_ms=request_ms,
            max_message=check_uint32(max_message, "max_message"),
            wait_for_server=bool(wait_for_server),
            server_user=policy,
            server_uid=uid,
            shm=bool(shm),
            shm_slot_size=shm_slot_size,
            shm_spin_us=check_spin_us(shm_spin_us),
        )


def check_spin_us(value: Optional[int]) -> int:
    """shm_spin_us: None (the C core's default, -1 here) or 0..MAX_SHM_SPIN_US."""
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"shm_spin_us must be an int or None, got {type(value).__name__}")
    if not 0 <= value <= MAX_SHM_SPIN_US:
        raise ValueError(f"shm_spin_us must be 0..{MAX_SHM_SPIN_US} microseconds, got {value}")
    return value


def _check_backend(impl: Any, backend: Optional[str]) -> None:
    """A backend's class refuses to be built for another backend."""
    if backend is not None and backend != impl.backend:
        raise ValueError(f"{type(impl).__name__} needs backend={impl.backend!r}, got {backend!r}")


# ---- zero-copy requests (both backends) ----------------------------------------------


class ViewBuffer:
    """The buffer behind :meth:`Client.request_view`: a bytearray reused
    from request to request while nothing outside still looks at it."""

    __slots__ = ("buffer", "view")

    def __init__(self) -> None:
        self.buffer = bytearray(64 * 1024)
        self.view: Optional[memoryview] = None

    def reusable(self) -> bytearray:
        """Releases the view handed out last and returns a buffer nothing
        else points into: the same one, or a fresh one when the caller still
        holds a view derived from the last (whose bytes must not change)."""
        self.release()
        buffer = self.buffer
        try:
            # A bytearray refuses to change its size while it is exported.
            buffer.append(0)
            del buffer[-1]
        except BufferError:
            buffer = self.buffer = bytearray(len(buffer))
        return buffer

    def release(self) -> None:
        view, self.view = self.view, None
        if view is not None:
            try:
                view.release()
            except BufferError:
                # Exported further (numpy.frombuffer): that export keeps it
                # alive, and reusable() moves on to a fresh buffer.
                pass

    def hand_out(self, buffer: bytearray, size: int) -> memoryview:
        if buffer is not self.buffer:
            self.buffer = buffer
        with memoryview(buffer) as whole:
            view = whole[:size].toreadonly()
        self.view = view
        return view


def too_small(needed: int, capacity: int, response: bytes) -> Exception:
    """The BufferTooSmall of request_into (both backends)."""
    return BufferTooSmall(
        f"the response of {needed} bytes does not fit the {capacity}-byte buffer: it is in .response, "
        f"and the connection stays usable",
        needed=needed,
        response=response,
    )


def writable_bytes_view(out: Any) -> memoryview:
    """``out`` as a flat writable byte view (no copy), or TypeError/BufferError."""
    try:
        view = memoryview(out)
    except TypeError:
        raise TypeError(
            f"out must be a writable buffer (bytearray, memoryview, ...), not {type(out).__name__}"
        ) from None
    if view.readonly:
        raise TypeError(f"out must be writable: {type(out).__name__} is read-only")
    if not view.c_contiguous:
        raise BufferError("out must be C-contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# ---- handler results (both backends) ------------------------------------------------


class _BadReturn(TypeError):
    """The handler returned something that is not bytes-like."""


def handler_result(result: Any, as_buffer: Callable[[Any], _T]) -> _T:
    """The handler's answer through ``as_buffer`` (which raises TypeError for
    what is not bytes-like); _BadReturn with the user-facing text if it is
    not. The backends try ``type(result) is bytes`` first, inline."""
    if isinstance(result, str):
        raise _BadReturn("handler returned str, expected bytes-like (encode it, e.g. text.encode())")
    try:
        return as_buffer(result)
    except TypeError:
        raise _BadReturn(
            f"handler returned {type(result).__name__}, expected bytes-like (bytes, bytearray, memoryview)"
        ) from None


def failure_text(server_name: str, exc: BaseException) -> bytes:
    """Logs a handler failure and returns the ERROR text the client gets."""
    if isinstance(exc, _BadReturn):
        text = f"TypeError: {exc}"
        logger.error("server %r: %s", server_name, exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
        logger.error("server %r: the handler raised %s", server_name, text, exc_info=exc)
    return text.encode("utf-8", "replace")


# ---- running servers ------------------------------------------------------------

#: Servers between start() and stop(), of every backend. Strong references:
#: a running server must outlive the threads that call its handler.
_running_servers: "set[Server]" = set()
_running_lock = threading.Lock()


def track_running(server: "Server", running: bool) -> None:
    """Called by the backends when a server starts (True) or stops (False)."""
    with _running_lock:
        if running:
            _running_servers.add(server)
        else:
            _running_servers.discard(server)


#: How long interpreter exit lets running handlers finish before it
#: abandons their threads: exit must never hang on a stuck handler.
EXIT_STOP_TIMEOUT = 2.0


def stop_running_servers(timeout: Optional[float] = EXIT_STOP_TIMEOUT) -> None:
    """Stop every running server (at interpreter exit, before anything they
    use is torn down), abandoning handlers still running after ``timeout``."""
    with _running_lock:
        servers = list(_running_servers)
    for server in servers:
        try:
            server.stop(timeout=timeout)
        except BaseException:
            pass


def _forget_servers_in_fork_child() -> None:
    """os.fork() child: the parent's servers are the parent's. Forget them
    (close the child's copies of their descriptors, nothing shut down,
    unlinked or joined) so that the child's exit leaves them alone."""
    global _running_lock
    # Another thread may have held the lock at fork; it does not exist here.
    _running_lock = threading.Lock()
    servers = list(_running_servers)
    _running_servers.clear()
    for server in servers:
        server._forget_after_fork()


atexit.register(stop_running_servers)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_servers_in_fork_child)


# ---- facades ----------------------------------------------------------------


class Server:
    """A request/response server.

    ``Server(name, handler, *, key=None, max_clients=32, max_message=64 MiB,
    access="user", listeners=1, handshake_timeout=5.0, dispatch="thread",
    workers=0, shm=True, zero_copy=False, shm_spin_us=None, backend="native")``

    * ``name``: a plain name (POSIX: a socket in a private per-user
      directory; Windows: ``\\\\.\\pipe\\NAME``), or on POSIX a socket path
      (any name containing ``/``). See :func:`ipcfast.pipe_name`.
    * ``handler(request: bytes) -> bytes-like``: runs on the C core's
      connection threads, several at once. If it raises, the traceback is
      logged to ``logging.getLogger("ipcfast")`` and the client gets
      :class:`~ipcfast.RemoteError`; the server keeps serving.
    * ``key``: application key (str or bytes) both sides must agree on.
    * ``max_clients``: connection slots; further clients wait for a slot.
    * ``max_message``: the largest request accepted (and response sent).
    * ``access``: ``"user"`` (same user only, checked) or ``"world"``.
    * ``listeners``: parallel pending accepts.
    * ``handshake_timeout``: seconds a connecting client has to send its
      handshake.
    * ``dispatch``: ``"thread"`` (default) runs the handler on the
      connection threads as requests arrive; ``"manual"`` queues complete
      requests (received and framed without the GIL) until the application
      calls :meth:`dispatch` from its own loop, which runs the handler on
      that thread. :meth:`fileno` is ready while requests are pending.
    * ``workers``: with ``dispatch="thread"``, ``N > 0`` runs the handler on
      N Python worker threads that take framed requests from the core's
      queue in batches (the connection threads only do I/O and never take
      the GIL); up to N handlers run at once, and a slow one stalls other
      clients only when all N are busy. ``0`` (default) runs the handler on
      the connection threads themselves, which is the lowest latency (no
      hand-off between threads).
    * ``shm``: accept clients' offers of a shared-memory data path (on by
      default; native backend on Linux and Windows; docs/guide.md "Shared memory").
      ``shm=False`` keeps every connection on the socket path. The pure
      backend always keeps the socket path. ``shm_spin_us`` (None: 20) is
      how long a connection thread waiting for the next request spins
      before it sleeps; 0 never spins.
    * ``zero_copy``: ``True`` calls the handler with a read-only
      ``memoryview`` of the request instead of ``bytes``, saving one copy of
      every request (a large message's biggest cost after the transport). The
      view is valid only during the call: the server releases it once the
      response is sent (using it later raises ``ValueError``), and the memory
      behind it is reused for the connection's next request, so neither keep
      it nor slices of it: ``bytes(view)`` keeps a copy. On the shared-memory
      path it is the client's slot itself, which a misbehaving client could
      change while the handler reads it: parse what you must trust from a
      copy. The response may be the view itself or a slice of it (an echo).

    The server runs from :meth:`start` (or entering ``with``) until
    :meth:`stop` (or leaving ``with``), even if no reference to it is kept.
    Running servers are stopped when the interpreter exits (handlers still
    running after a grace of two seconds are abandoned: exit never hangs). A
    server belongs to the process that started it: in a child made with
    ``os.fork()`` it is forgotten (the child's copies of its descriptors are
    closed; the parent's server, name and clients are untouched).
    """

    _stopped_event: threading.Event
    _manual: bool
    _name: str
    _address: Optional[str]
    #: The backend's name ("native" or "pure"), set by each implementation.
    backend: str = ""

    def __new__(cls, *args: Any, backend: str = "native", **kwargs: Any) -> "Server":
        if cls is Server:
            cls = backend_module(backend).ServerImpl
        return super().__new__(cls)

    def __init__(
        self,
        name: Name,
        handler: Handler,
        *,
        key: Optional[Union[str, bytes]] = None,
        max_clients: int = 32,
        max_message: int = DEFAULT_MAX_MESSAGE,
        access: str = "user",
        listeners: int = 1,
        handshake_timeout: float = 5.0,
        dispatch: str = "thread",
        workers: int = DEFAULT_WORKERS,
        backend: Optional[str] = None,
        shm: bool = DEFAULT_SHM,
        zero_copy: bool = False,
        shm_spin_us: Optional[int] = None,
    ) -> None:
        _check_backend(self, backend)
        options = ServerOptions.parse(
            name,
            handler,
            key,
            max_clients,
            max_message,
            access,
            listeners,
            handshake_timeout,
            dispatch,
            workers,
            shm,
            shm_spin_us,
        )
        # Copied out of options: the handler paths read them per request.
        self._name = options.name
        self._handler = handler
        self._max_message = options.max_message
        self._manual = options.manual
        self._workers = options.workers
        self._zero_copy = bool(zero_copy)  # the handler takes a memoryview
        self._state: Any = None  # what _open() returned, while running
        self._address = None
        self._lock = threading.Lock()  # start/stop
        self._stopped_event = threading.Event()
        self._stopped_event.set()
        # Manual dispatch: threads inside dispatch() (ident -> depth); stop()
        # waits for them to leave before the backend frees what they use.
        self._dispatching: Dict[int, int] = {}
        self._stopping = False
        self._dispatch_idle = threading.Condition(threading.Lock())
        self._configure(options)

    # ---- hooks a backend implements ----

    def _configure(self, options: ServerOptions) -> None:
        """Prepare for start() (the arguments are checked already)."""
        raise NotImplementedError

    def _open(self) -> Any:
        """Start serving; returns the run's state (kept until _close) and
        sets ``self._address``. Raises an IPCError if it cannot."""
        raise NotImplementedError

    def _interrupt(self, state: Any) -> None:
        """Manual dispatch, stopping: wake and end every dispatch() wait."""
        raise NotImplementedError

    def _close(self, state: Any, timeout_ms: int) -> None:
        """Stop the run: no dispatch() is running any more. With timeout_ms
        >= 0, connection threads still in the handler after it are
        abandoned (logged with a warning); the name is released anyway."""
        raise NotImplementedError

    def _forget(self, state: Any) -> None:
        """Fork child: close this process's copies of the run's descriptors,
        without shutdown, unlink, join or taking a lock."""
        raise NotImplementedError

    def _in_handler_thread(self, ident: int) -> bool:
        """True on a thread of this server that runs the handler."""
        raise NotImplementedError

    def _dispatch_pending(self, state: Any, wait_ms: int) -> int:
        """Manual dispatch: answer pending requests on this thread, waiting
        up to wait_ms (-1: no limit) for the first; returns how many."""
        raise NotImplementedError

    def _ready_fileno(self, state: Any) -> int:
        """Manual dispatch: the descriptor ready while requests are pending."""
        raise NotImplementedError

    # ---- the lifecycle ----

    def start(self) -> None:
        """Start listening; returns once clients can connect.

        Raises :class:`~ipcfast.AddressInUse` if a live server has the name,
        :class:`~ipcfast.NameTooLong`, :class:`~ipcfast.AccessDenied`, ...
        """
        self._check_not_in_handler("start")
        with self._lock:
            if self._state is not None:
                raise RuntimeError(f"server {self._name!r} is already running")
            self._state = self._open()
            self._stopped_event.clear()
            track_running(self, True)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the server: stop accepting, let running handlers finish, close
        every connection, release the name. Idempotent. Must not be called
        from inside this server's handler (raises RuntimeError).

        ``timeout`` (seconds, None: no limit) bounds the wait: running
        handlers get half of it to answer, then their connections are
        closed, and a handler still running at the end is abandoned (its
        thread is left to finish on its own, a warning is logged); the name
        is released either way, so a new server can start at once."""
        self._check_not_in_handler("stop")
        wait_ms = timeout_ms(timeout)
        with self._lock:
            state = self._state
            if state is None:
                return
            try:
                if self._manual:
                    self._wait_for_dispatchers(state)
                self._close(state, wait_ms)
            finally:
                self._state = None
                self._stopping = False
                track_running(self, False)
                self._stopped_event.set()

    def _forget_after_fork(self) -> None:
        """In a fork child: drop the parent's run without touching it. Locks
        are replaced: a thread of the parent may have held them at fork."""
        state = self._state
        self._lock = threading.Lock()
        self._dispatch_idle = threading.Condition(threading.Lock())
        self._dispatching = {}
        self._stopping = False
        self._state = None
        self._stopped_event = threading.Event()
        self._stopped_event.set()
        if state is not None:
            try:
                self._forget(state)
            except BaseException:  # the child must not fail for the parent's server
                pass

    def _wait_for_dispatchers(self, state: Any) -> None:
        # Wake dispatch() calls waiting in the backend, then let them return
        # before what they use is freed.
        with self._dispatch_idle:
            self._stopping = True
        self._interrupt(state)
        with self._dispatch_idle:
            while self._dispatching:
                self._dispatch_idle.wait()

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._state is not None

    def _check_not_in_handler(self, what: str) -> None:
        ident = _get_ident()
        if ident in self._dispatching or self._in_handler_thread(ident):
            raise RuntimeError(
                f"Server.{what}() called from inside this server's handler: that would deadlock "
                f"(stop waits for running handlers). Call it from another thread, e.g. "
                f"threading.Thread(target=server.{what}).start()"
            )

    def _running_manual(self, what: str) -> Any:
        if not self._manual:
            raise RuntimeError(f"Server.{what}() needs Server(..., dispatch='manual')")
        state = self._state
        if state is None:
            raise RuntimeError(f"server {self._name!r} is not running: call start() first")
        return state

    @property
    def name(self) -> str:
        """The name the server was created with."""
        return self._name

    @property
    def address(self) -> str:
        """The address clients reach: the socket path, or ``\\\\.\\pipe\\NAME``."""
        if self._address is None:
            raise RuntimeError("the server has not been started: call start() first")
        return self._address

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ipcfast.Server {self._name!r} {state} backend={self.backend!r}>"

    def dispatch(self, timeout: Optional[float] = 0.0) -> int:
        """``dispatch="manual"``: run the handler on this thread for every
        pending request and send the answers; returns how many. Waits up to
        ``timeout`` seconds for the first (0: not at all; None: until one
        comes or the server stops)."""
        state = self._running_manual("dispatch")
        wait_ms = timeout_ms(timeout)
        ident = _get_ident()
        with self._dispatch_idle:
            if self._stopping:
                return 0  # stop() is waiting for dispatchers to leave
            self._dispatching[ident] = self._dispatching.get(ident, 0) + 1
        try:
            return self._dispatch_pending(state, wait_ms)
        finally:
            with self._dispatch_idle:
                count = self._dispatching.pop(ident) - 1
                if count:
                    self._dispatching[ident] = count
                self._dispatch_idle.notify_all()

    def fileno(self) -> int:
        """``dispatch="manual"``: a descriptor (Windows: an event handle)
        that is ready while requests are pending, for select/selectors.
        It can be ready once with nothing pending (a request a
        ``dispatch()`` took while it was being announced); the
        ``dispatch()`` that then finds nothing clears it."""
        return self._ready_fileno(self._running_manual("fileno"))

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start the server if needed and block until :meth:`stop` is called
        from another thread (with ``dispatch="manual"``, handling requests on
        this thread meanwhile). On KeyboardInterrupt the server is stopped
        and the KeyboardInterrupt is re-raised."""
        if not self.running:
            self.start()
        try:
            while not self._stopped_event.is_set():
                if not self._manual:
                    self._stopped_event.wait(poll_interval)
                    continue
                try:
                    if self.dispatch(poll_interval) == 0:
                        # Nothing came, or the server is stopping: either
                        # way, do not spin.
                        self._stopped_event.wait(0.001)
                except RuntimeError:
                    if self.running:
                        raise
        except KeyboardInterrupt:
            self.stop()
            raise

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


class Client:
    """A connection to a server.

    ``Client(name, *, key=None, connect_timeout=5.0, timeout=None,
    max_message=64 MiB, backend="native", wait_for_server=False,
    server_user=None)`` connects at once: it retries while the server is
    busy or starting (a live process owns the name but does not listen yet)
    until ``connect_timeout`` seconds are spent (None: no limit), then
    raises :class:`~ipcfast.ServerBusy` or :class:`~ipcfast.ServerNotFound`.
    A name that nothing serves or is starting under raises ServerNotFound at
    once, unless ``wait_for_server`` is true (for a server someone else
    starts or restarts: then "not found" is retried within the budget too).
    A wrong ``key`` raises :class:`~ipcfast.HandshakeError`.

    ``server_user`` says which server is trusted, checked on the connected
    socket before anything is sent: None (default) accepts our own user,
    and root too for a path name (POSIX; Windows: our user or LocalSystem);
    ``"any"`` accepts everyone; a uid or user name accepts exactly that
    user (POSIX). Another server raises :class:`~ipcfast.AccessDenied`
    naming its user.

    ``timeout`` is the default for :meth:`request`; ``max_message`` the
    largest response accepted. A client may be shared between threads:
    requests are serialized.

    ``shm`` (on by default; native backend, Linux and Windows) offers the
    server a shared-memory data path for this connection (docs/protocol.md
    section 11); a server that declines (``shm=False``), or does not speak
    it (the pure backend, other systems), keeps the socket path, so the
    option never breaks a connection. ``shm=False`` never offers it.
    ``shm_slot_size`` (bytes per direction, 0: 2 MiB) is the largest
    message that travels through the region; larger ones take the socket.
    The zero-copy calls (:meth:`request_into`, :meth:`request_view`) gain
    most for messages that fit it. ``shm_spin_us`` (None: 20) is how long a
    call waiting for its response spins before it sleeps in the kernel,
    while the server runs on another CPU (never on our own); 0 never spins,
    which saves CPU and costs latency across CPUs (docs/design.md).
    """

    _name: str
    #: The backend's name ("native" or "pure"), set by each implementation.
    backend: str = ""

    def __new__(cls, *args: Any, backend: str = "native", **kwargs: Any) -> "Client":
        if cls is Client:
            cls = backend_module(backend).ClientImpl
        return super().__new__(cls)

    def __init__(
        self,
        name: Name,
        *,
        key: Optional[Union[str, bytes]] = None,
        connect_timeout: Optional[float] = 5.0,
        timeout: Optional[float] = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        backend: Optional[str] = None,
        wait_for_server: bool = False,
        server_user: ServerUser = None,
        shm: bool = DEFAULT_SHM,
        shm_slot_size: int = 0,
        shm_spin_us: Optional[int] = None,
    ) -> None:
        _check_backend(self, backend)
        options = ClientOptions.parse(
            name,
            key,
            connect_timeout,
            timeout,
            max_message,
            wait_for_server,
            server_user,
            shm,
            shm_slot_size,
            shm_spin_us,
        )
        self._name = options.name
        self._timeout_ms = options.timeout_ms
        self._lock = threading.Lock()  # one request at a time
        self._connect(options)

    def _connect(self, options: ClientOptions) -> None:
        """Backend hook: connect and handshake, or raise an IPCError."""
        raise NotImplementedError

    def request(self, data: BytesLike, timeout: Optional[float] = None) -> bytes:
        """Send one request and return the response.

        ``timeout`` in seconds covers sending and receiving (None: the
        client's default ``timeout``; both None: no limit). Raises
        :class:`~ipcfast.RemoteError` if the handler failed (the connection
        stays usable), :class:`~ipcfast.Timeout`,
        :class:`~ipcfast.ConnectionClosed`, :class:`~ipcfast.MessageTooLarge`
        (after these the connection is closed and later requests raise
        ConnectionClosed).
        """
        raise NotImplementedError

    # ---- zero-copy requests (issue 15) ----

    def request_into(self, data: BytesLike, out: Any, timeout: Optional[float] = None) -> int:
        """Send one request and receive the response into ``out``, a
        writable C-contiguous buffer the caller owns (bytearray, writable
        memoryview, array.array, a numpy array, ...); returns the response's
        size in bytes (``out[:n]`` holds it, the rest of ``out`` is not
        touched).

        Nothing is copied on the way in (``data`` may be any C-contiguous
        buffer) and the response is written once: on the socket path it is
        read from the socket straight into ``out``, on the shared-memory
        path copied once from the shared slot.

        A response larger than ``out`` raises :class:`~ipcfast.BufferTooSmall`
        with ``needed`` (its size) and ``response`` (the response as bytes,
        so it is not lost); ``out`` is not written to and the connection
        stays usable. A read-only ``out`` raises TypeError before anything
        is sent. Other failures as :meth:`request`.
        """
        raise NotImplementedError

    def request_view(self, data: BytesLike, timeout: Optional[float] = None) -> memoryview:
        """Send one request and return the response as a read-only
        memoryview over a buffer this client owns and reuses, valid until
        the client's next request or :meth:`close`: then it is released, and
        using it raises ValueError instead of reading the next response.
        Views made from it that are still alive (slices, or an export such as
        ``numpy.frombuffer(view)``, which also keeps the view itself from
        being released) keep the bytes they saw: the next response then
        goes to a fresh buffer, and no memory anyone still sees is ever
        written again. The response is written once, as with
        :meth:`request_into`. Failures as :meth:`request`."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection. Idempotent."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The name the client connected to."""
        return self._name

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ipcfast.Client {self._name!r} {state} backend={self.backend!r}>"

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
