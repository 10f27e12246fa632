"""The public Server and Client classes: small facades over the backends.

``Server(...)`` and ``Client(...)`` pick the backend implementation from
their ``backend`` argument and return an instance of that backend's subclass
(``_native.NativeServer`` / ``_native.NativeClient``, or ``_pure.PureServer``
/ ``_pure.PureClient``). So ``isinstance(obj, ipcfast.Client)`` holds for
every backend, and calls go straight to the implementation: no delegation
layer on the hot path.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import warnings
from types import TracebackType
from typing import Any, Callable, Dict, Optional, Type, Union

__all__ = ["Server", "Client", "Handler", "BytesLike", "native_import_error", "BACKENDS"]

#: What a handler may return: anything with the buffer protocol.
BytesLike = Union[bytes, bytearray, memoryview]
#: A request handler: request bytes in, response bytes out.
Handler = Callable[[bytes], BytesLike]
#: A server name: a plain name, or (POSIX) a socket path.
Name = Union[str, "os.PathLike[str]"]

#: Backends known to the facades.
BACKENDS = ("native", "pure")

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
_MAX_UINT32 = 0xFFFFFFFF
_MAX_TIMEOUT_MS = 0x7FFFFFFF

_native_state: Dict[str, Any] = {"loaded": False, "module": None, "error": None}
_native_lock = threading.Lock()


def _load_native(warn: bool = True) -> Any:
    """Import the native backend once; remember (and warn once about) failure."""
    with _native_lock:
        if not _native_state["loaded"]:
            _native_state["loaded"] = True
            try:
                from . import _native
            except ImportError as exc:
                _native_state["error"] = exc
                if warn:
                    warnings.warn(
                        f"ipcfast: the native extension module could not be imported "
                        f"({type(exc).__name__}: {exc}); backend='native' is unavailable. "
                        f"Reinstall ipcfast (pip install --force-reinstall ipcfast) to build it.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            else:
                _native_state["module"] = _native
        return _native_state["module"]


def native_import_error() -> Optional[BaseException]:
    """The exception that prevented importing the native backend, or None."""
    _load_native()
    error: Optional[BaseException] = _native_state["error"]
    return error


def _backend_module(backend: str) -> Any:
    """The module implementing ``backend``: it has ``ServerImpl`` and ``ClientImpl``."""
    if backend == "native":
        module = _load_native()
        if module is None:
            cause = _native_state["error"]
            raise ImportError(
                f"ipcfast's native backend is unavailable: the extension module "
                f"ipcfast._ipcfast_cffi could not be imported ({type(cause).__name__}: {cause})"
            ) from cause
        return module
    if backend == "pure":
        from . import _pure

        return _pure
    raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(map(repr, BACKENDS))}")


# ---- argument helpers shared by the backends ------------------------------


def encode_name(name: Name) -> bytes:
    """The server name as bytes for the C core (file-system encoding)."""
    if isinstance(name, (bytes, bytearray)):
        raise TypeError("name must be str (or os.PathLike), not bytes")
    text = os.fspath(name)
    if not isinstance(text, str):
        raise TypeError(f"name must be str, not {type(name).__name__}")
    if not text:
        raise ValueError("name must not be empty")
    if "\x00" in text:
        raise ValueError("name must not contain NUL characters")
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


def stop_running_servers() -> None:
    """Stop every running server (at interpreter exit, before anything they
    use is torn down)."""
    with _running_lock:
        servers = list(_running_servers)
    for server in servers:
        try:
            server.stop()
        except BaseException:
            pass


atexit.register(stop_running_servers)


# ---- facades ----------------------------------------------------------------


class Server:
    """A request/response server.

    ``Server(name, handler, *, key=None, max_clients=32, max_message=64 MiB,
    access="user", listeners=1, handshake_timeout=5.0, dispatch="thread",
    backend="native")``

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

    The server runs from :meth:`start` (or entering ``with``) until
    :meth:`stop` (or leaving ``with``), even if no reference to it is kept.
    Running servers are stopped when the interpreter exits.
    """

    _stopped_event: threading.Event
    _manual: bool
    _name: str
    _address: Optional[str]
    #: The backend's name ("native" or "pure"), set by each implementation.
    backend: str = ""

    def __new__(cls, *args: Any, backend: str = "native", **kwargs: Any) -> "Server":
        if cls is Server:
            cls = _backend_module(backend).ServerImpl
        return super().__new__(cls)

    # Implemented by the backends.
    def start(self) -> None:
        """Start listening; returns once clients can connect.

        Raises :class:`~ipcfast.AddressInUse` if a live server has the name,
        :class:`~ipcfast.NameTooLong`, :class:`~ipcfast.AccessDenied`, ...
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server: stop accepting, let running handlers finish, close
        every connection, release the name. Idempotent. Must not be called
        from inside this server's handler (raises RuntimeError)."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        raise NotImplementedError

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
        raise NotImplementedError

    def fileno(self) -> int:
        """``dispatch="manual"``: a descriptor (Windows: an event handle)
        that is ready while requests are pending, for select/selectors."""
        raise NotImplementedError

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
    max_message=64 MiB, backend="native")`` connects at once: it retries
    while the server is not found or busy until ``connect_timeout`` seconds
    are spent (None: no limit), then raises :class:`~ipcfast.ServerNotFound`
    or :class:`~ipcfast.ServerBusy`; a wrong ``key`` raises
    :class:`~ipcfast.HandshakeError`.

    ``timeout`` is the default for :meth:`request`; ``max_message`` the
    largest response accepted. A client may be shared between threads:
    requests are serialized.
    """

    _name: str
    #: The backend's name ("native" or "pure"), set by each implementation.
    backend: str = ""

    def __new__(cls, *args: Any, backend: str = "native", **kwargs: Any) -> "Client":
        if cls is Client:
            cls = _backend_module(backend).ClientImpl
        return super().__new__(cls)

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

