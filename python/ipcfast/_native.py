"""The native backend: Server and Client over the C core (cffi, API mode).

The hot path stays in C: a request is one ``ipc_client_request`` call with
the GIL released (cffi releases it around every call into the library), and
a handler call is one ``extern "Python"`` callback that returns the response,
which the C core then sends without a copy (the GIL is taken once per request).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Callable, Dict, Optional, Union

from ._base import (
    DEFAULT_MAX_MESSAGE,
    BytesLike,
    Client,
    Handler,
    Name,
    Server,
    check_server_args,
    check_uint32,
    encode_name,
    stop_running_servers,
    timeout_ms,
    track_running,
)
from ._errors import ConnectionClosed, raise_from_error
from ._ipcfast_cffi import ffi, lib
from ._names import handshake_value

__all__ = ["NativeServer", "NativeClient", "ServerImpl", "ClientImpl", "ffi", "lib"]

logger = logging.getLogger("ipcfast")

_get_ident = threading.get_ident
_NULL = ffi.NULL



# ---- logging bridge -----------------------------------------------------------


def _ipcfast_log(user_data: Any, level: int, message: Any) -> None:
    """C log callback: forwards to logging.getLogger("ipcfast")."""
    try:
        if logger.isEnabledFor(level):
            text = ffi.string(message).decode("utf-8", "replace") if message != _NULL else ""
            logger.log(level, "%s", text)
    except BaseException:  # never propagate into C
        pass


# Registered without decorator syntax: cffi's decorators are untyped.
ffi.def_extern(name="_ipcfast_log")(_ipcfast_log)


def _install_log_handler() -> None:
    lib.ipc_set_log_handler(lib._ipcfast_log, _NULL)


def _uninstall_log_handler() -> None:
    lib.ipc_set_log_handler(_NULL, _NULL)


# ---- handler bridge -----------------------------------------------------------


class _BadReturn(TypeError):
    """The handler returned something that is not bytes-like."""


def _handler_onerror(exc_type: Any, exc: Any, tb: Any) -> None:
    # Only reached if the bridge itself fails; the C core then sends an
    # ERROR packet (the handler returned without answering).
    try:
        logger.error("ipcfast: internal error in the handler bridge", exc_info=(exc_type, exc, tb))
    except BaseException:
        pass


def _ipcfast_reply(user_data: Any, call: Any, request: Any, size: int, response_size: Any) -> Any:
    """C handler callback: runs the Python handler of the server in user_data
    and returns its response for the C core to send (one GIL acquisition per
    request: no call back into C on the success path)."""
    server: NativeServer = ffi.from_handle(user_data)
    return server._reply(call, request, size, response_size)


ffi.def_extern(name="_ipcfast_reply", onerror=_handler_onerror)(_ipcfast_reply)


def _ipcfast_cancel(user_data: Any, call: Any) -> None:
    """C cancel callback (server nodes, ipcfast.node): a client sent CANCEL
    for, or vanished during, the command ``call``."""
    server: NativeServer = ffi.from_handle(user_data)
    listener = server._cancel_listener
    if listener is not None:
        listener(call)


ffi.def_extern(name="_ipcfast_cancel", onerror=_handler_onerror)(_ipcfast_cancel)


# ---- server -------------------------------------------------------------------

_ACCESS = {"user": lib.IPC_ACCESS_USER, "world": lib.IPC_ACCESS_WORLD}
_DISPATCH = {"thread": lib.IPC_DISPATCH_THREAD, "manual": lib.IPC_DISPATCH_MANUAL}


class NativeServer(Server):
    """The native implementation of :class:`ipcfast.Server`."""

    backend = "native"

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
        backend: str = "native",
    ) -> None:
        if backend != "native":
            raise ValueError(f"NativeServer needs backend='native', got {backend!r}")
        check_server_args(handler, access, dispatch)
        self._name = os.fspath(name)
        self._name_bytes = encode_name(name)
        self._handler = handler
        self._max_message = check_uint32(max_message, "max_message")
        options = ffi.new("ipc_server_options *")
        lib.ipc_server_options_init(options)
        options.max_clients = check_uint32(max_clients, "max_clients")
        options.listeners = check_uint32(listeners, "listeners")
        options.max_message = self._max_message
        hs_ms = timeout_ms(handshake_timeout, "handshake_timeout")
        if hs_ms <= 0:
            raise ValueError("handshake_timeout must be a positive number of seconds")
        options.handshake_timeout_ms = hs_ms
        options.access = _ACCESS[access]
        ffi.memmove(options.handshake, handshake_value(key), lib.IPC_HANDSHAKE_SIZE)
        options.dispatch = _DISPATCH[dispatch]
        if dispatch == "thread":
            options.returning_handler = lib._ipcfast_reply
        self._manual = dispatch == "manual"
        self._options = options
        # Manual dispatch: threads inside dispatch(); stop() waits for them
        # to leave before the C server is freed.
        self._dispatching: Dict[int, int] = {}
        self._stopping = False
        self._dispatch_idle = threading.Condition(threading.Lock())
        self._server: Any = None  # ipc_server_t *, while running
        self._handle: Any = None  # ffi.new_handle(self), while running
        self._address: Optional[str] = None
        self._lock = threading.Lock()  # start/stop
        # Connection thread ident -> the response being sent on it (see
        # _reply); its keys are also the threads running our handler.
        self._held: Dict[int, Any] = {}
        self._stopped_event = threading.Event()
        self._stopped_event.set()
        # ipcfast.node: called (on a C thread) with the call of a cancelled command.
        self._cancel_listener: Optional[Callable[[Any], None]] = None

    def _enable_node(self, cancel_listener: Callable[[Any], None]) -> None:
        """Makes this (not yet started) server a node (ipcfast.node): COMMAND
        packets are queued for ``ipc_server_next_call`` and CANCELs reported
        to ``cancel_listener``; REQUESTs still go to the handler."""
        self._options.node = 1
        self._options.cancel_handler = lib._ipcfast_cancel
        self._cancel_listener = cancel_listener

    @property
    def _c_server(self) -> Any:
        """The ipc_server_t * while running (ipcfast.node), else None."""
        return self._server

    @property
    def running(self) -> bool:
        return self._server is not None

    def _check_not_in_handler(self, what: str) -> None:
        if _get_ident() in self._held or _get_ident() in self._dispatching:
            raise RuntimeError(
                f"Server.{what}() called from inside this server's handler: that would deadlock "
                f"(stop waits for running handlers). Call it from another thread, e.g. "
                f"threading.Thread(target=server.{what}).start()"
            )

    def start(self) -> None:
        self._check_not_in_handler("start")
        with self._lock:
            if self._server is not None:
                raise RuntimeError(f"server {self._name!r} is already running")
            handle = ffi.new_handle(self)
            out = ffi.new("ipc_server_t **")
            err = ffi.new("ipc_error *")
            rc = lib.ipc_server_open(out, self._name_bytes, self._options, _NULL, handle, err)
            if rc != lib.IPC_OK:
                raise_from_error(err)
            self._handle = handle
            self._server = out[0]
            self._address = os.fsdecode(ffi.string(lib.ipc_server_address(self._server)))
            self._stopped_event.clear()
            track_running(self, True)

    def stop(self) -> None:
        self._check_not_in_handler("stop")
        with self._lock:
            server = self._server
            if server is None:
                return
            try:
                if self._manual:
                    self._wait_for_dispatchers(server)
                lib.ipc_server_stop(server)  # GIL released; joins every C thread
            finally:
                self._server = None
                self._handle = None
                self._stopping = False
                track_running(self, False)
                self._stopped_event.set()

    def _wait_for_dispatchers(self, server: Any) -> None:
        # Wake dispatch() calls waiting in C, then let them return before
        # the server they use is freed.
        with self._dispatch_idle:
            self._stopping = True
        lib.ipc_server_interrupt(server)
        with self._dispatch_idle:
            while self._dispatching:
                self._dispatch_idle.wait()

    def fileno(self) -> int:
        """Manual dispatch: a descriptor (Windows: an event handle) that is
        ready while requests are pending, for select/selectors/poll or an
        event loop's add_reader. Call :meth:`dispatch` when it is."""
        server = self._running_manual("fileno")
        return int(lib.ipc_server_ready_handle(server))

    def dispatch(self, timeout: Optional[float] = 0.0) -> int:
        """Manual dispatch: run the handler, on this thread, for every
        pending request and send the answers; returns how many were handled.
        Waits up to ``timeout`` seconds for the first one (0: not at all;
        None: until one comes or the server stops)."""
        server = self._running_manual("dispatch")
        ident = _get_ident()
        with self._dispatch_idle:
            if self._stopping:
                return 0  # stop() is waiting for dispatchers to leave
            self._dispatching[ident] = self._dispatching.get(ident, 0) + 1
        call_p = ffi.new("ipc_call **")
        request_p = ffi.new("const uint8_t **")
        size_p = ffi.new("size_t *")
        wait = timeout_ms(timeout)
        handled = 0
        try:
            while lib.ipc_server_next_call(server, call_p, request_p, size_p, wait, _NULL) == lib.IPC_OK:
                call = call_p[0]
                try:
                    self._answer(call, request_p[0], size_p[0])
                finally:
                    lib.ipc_call_finish(call)
                handled += 1
                wait = 0
        finally:
            with self._dispatch_idle:
                count = self._dispatching.pop(ident) - 1
                if count:
                    self._dispatching[ident] = count
                self._dispatch_idle.notify_all()
        return handled

    def _running_manual(self, what: str) -> Any:
        if not self._manual:
            raise RuntimeError(f"Server.{what}() needs Server(..., dispatch='manual')")
        server = self._server
        if server is None:
            raise RuntimeError(f"server {self._name!r} is not running: call start() first")
        return server

    # Manual dispatch: answer one call on the dispatching thread.
    def _answer(self, call: Any, request: Any, size: int) -> None:
        try:
            result = self._handler(ffi.buffer(request, size)[:])
            buf = ffi.from_buffer(result) if type(result) is bytes else self._as_buffer(result)
        except BaseException as exc:
            self._fail(call, exc)
            return
        lib.ipc_call_respond(call, buf, len(buf), _NULL)

    # Called on a C connection thread (with the GIL) for each request, and
    # with request == NULL when its client disconnected.
    def _reply(self, call: Any, request: Any, size: int, response_size: Any) -> Any:
        ident = _get_ident()
        held = self._held
        if request == _NULL:
            held.pop(ident, None)
            return _NULL
        # Drops the previous response of this connection: it has been sent.
        held[ident] = None
        try:
            result = self._handler(ffi.buffer(request, size)[:])
            buf = ffi.from_buffer(result) if type(result) is bytes else self._as_buffer(result)
        except BaseException as exc:
            self._fail(call, exc)
            return _NULL
        # The C core sends buf after we return, without a copy: keep it
        # (and the object it points into) alive until this connection's next
        # call. A response above max_message is refused by the core.
        held[ident] = buf
        size = response_size[0] = len(buf)
        if size > self._max_message:
            # The core refuses it and logs at ERROR; add the server's name.
            logger.debug(
                "server %r: the handler's response of %d bytes is above max_message (%d); "
                "the client gets an error instead",
                self._name,
                size,
                self._max_message,
            )
        return buf

    @staticmethod
    def _as_buffer(result: Any) -> Any:
        if isinstance(result, str):
            raise _BadReturn("handler returned str, expected bytes-like (encode it, e.g. text.encode())")
        try:
            return ffi.from_buffer(result)
        except TypeError:
            raise _BadReturn(
                f"handler returned {type(result).__name__}, expected bytes-like (bytes, bytearray, memoryview)"
            ) from None

    def _fail(self, call: Any, exc: BaseException) -> None:
        if isinstance(exc, _BadReturn):
            text = f"TypeError: {exc}"
            logger.error("server %r: %s", self._name, exc)
        else:
            text = f"{type(exc).__name__}: {exc}"
            logger.error("server %r: the handler raised %s", self._name, text, exc_info=exc)
        message = text.encode("utf-8", "replace")
        rc = lib.ipc_call_fail(call, message, len(message), _NULL)
        if rc != lib.IPC_OK:
            name = ffi.string(lib.ipc_result_name(rc)).decode("ascii", "replace")
            logger.debug("server %r: the error was not delivered (%s)", self._name, name)


# ---- client -------------------------------------------------------------------


class NativeClient(Client):
    """The native implementation of :class:`ipcfast.Client`."""

    backend = "native"

    _client: Any = None

    def __init__(
        self,
        name: Name,
        *,
        key: Optional[Union[str, bytes]] = None,
        connect_timeout: Optional[float] = 5.0,
        timeout: Optional[float] = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        backend: str = "native",
    ) -> None:
        if backend != "native":
            raise ValueError(f"NativeClient needs backend='native', got {backend!r}")
        self._name = os.fspath(name)
        name_bytes = encode_name(name)
        self._timeout_ms = timeout_ms(timeout, "timeout")
        connect_ms = timeout_ms(connect_timeout, "connect_timeout")
        options = ffi.new("ipc_client_options *")
        lib.ipc_client_options_init(options)
        options.max_message = check_uint32(max_message, "max_message")
        ffi.memmove(options.handshake, handshake_value(key), lib.IPC_HANDSHAKE_SIZE)
        self._lock = threading.Lock()
        self._err = ffi.new("ipc_error *")
        self._response = ffi.new("const uint8_t **")
        self._response_size = ffi.new("size_t *")
        out = ffi.new("ipc_client_t **")
        rc = lib.ipc_client_open(out, name_bytes, options, connect_ms, self._err)
        if rc != lib.IPC_OK:
            raise_from_error(self._err)
        self._client = out[0]

    @property
    def closed(self) -> bool:
        return self._client is None

    @property
    def version(self) -> int:
        """The packet version both sides agreed on."""
        with self._lock:
            if self._client is None:
                raise ConnectionClosed("the client is closed", code="IPC_E_CLOSED")
            return int(lib.ipc_client_version(self._client))

    def request(self, data: BytesLike, timeout: Optional[float] = None) -> bytes:
        try:
            buf = ffi.from_buffer(data)
        except TypeError:
            raise TypeError(f"request data must be bytes-like, not {type(data).__name__}") from None
        ms = self._timeout_ms if timeout is None else timeout_ms(timeout)
        with self._lock:
            client = self._client
            if client is None:
                raise ConnectionClosed(
                    f"the client for {self._name!r} is closed: open a new Client", code="IPC_E_CLOSED"
                )
            rc = lib.ipc_client_request(client, buf, len(buf), self._response, self._response_size, ms, self._err)
            if rc != 0:
                raise_from_error(self._err)
            response: bytes = ffi.buffer(self._response[0], self._response_size[0])[:]
            return response

    def close(self) -> None:
        with self._lock:
            client = self._client
            if client is not None:
                self._client = None
                lib.ipc_client_close(client)

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            self._client = None
            try:
                lib.ipc_client_close(client)
            except Exception:
                pass


ServerImpl = NativeServer
ClientImpl = NativeClient


# ---- process lifetime ---------------------------------------------------------


def _shutdown() -> None:
    """atexit: stop running servers, then detach the log callback (this runs
    before _base's own stop_running_servers, registered earlier)."""
    stop_running_servers()
    _uninstall_log_handler()


_install_log_handler()
atexit.register(_shutdown)
