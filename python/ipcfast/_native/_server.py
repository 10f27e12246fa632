"""The native Server: the C core's server (cffi, API mode).

A handler call is one ``extern "Python"`` callback that returns the response,
which the C core then sends without a copy (the GIL is taken once per
request). Everything else (argument checks, start/stop bracketing, dispatch
bookkeeping) is written once in ``_base``; this module supplies its hooks.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Dict, Optional

from .._base import Server, ServerOptions, failure_text, handler_result
from .._errors import ConnectionClosed
from ._ffi import NULL, ffi, lib, raise_from_error, result_name
from ._node import NodeCall

__all__ = ["NativeServer"]

logger = logging.getLogger("ipcfast")

_get_ident = threading.get_ident
_NULL = NULL


# ---- handler bridge -----------------------------------------------------------


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
        listener(NodeCall(call))


ffi.def_extern(name="_ipcfast_cancel", onerror=_handler_onerror)(_ipcfast_cancel)


# ---- server -------------------------------------------------------------------

_DISPATCH_THREAD: int = lib.IPC_DISPATCH_THREAD
_DISPATCH_MANUAL: int = lib.IPC_DISPATCH_MANUAL
_ACCESS_USER: int = lib.IPC_ACCESS_USER
_ACCESS_WORLD: int = lib.IPC_ACCESS_WORLD


class NativeServer(Server):
    """The native implementation of :class:`ipcfast.Server`."""

    backend = "native"

    # ---- hooks of _base.Server ----

    def _configure(self, options: ServerOptions) -> None:
        self._name_bytes = options.name_bytes
        c_options = ffi.new("ipc_server_options *")
        lib.ipc_server_options_init(c_options)
        c_options.max_clients = options.max_clients
        c_options.listeners = options.listeners
        c_options.max_message = options.max_message
        c_options.handshake_timeout_ms = options.handshake_timeout_ms
        c_options.access = _ACCESS_WORLD if options.world else _ACCESS_USER
        ffi.memmove(c_options.handshake, options.handshake, lib.IPC_HANDSHAKE_SIZE)
        c_options.dispatch = _DISPATCH_MANUAL if options.manual else _DISPATCH_THREAD
        c_options.shm = int(options.shm)
        if not options.manual:
            c_options.returning_handler = lib._ipcfast_reply
        self._options = c_options
        self._handle: Any = None  # ffi.new_handle(self), while running
        # Connection thread ident -> the response being sent on it (see
        # _reply); its keys are also the threads running our handler.
        self._held: Dict[int, Any] = {}
        # ipcfast.node: called (on a C thread) with the call of a cancelled command.
        self._cancel_listener: Optional[Callable[[NodeCall], None]] = None

    def _open(self) -> Any:
        handle = ffi.new_handle(self)
        out = ffi.new("ipc_server_t **")
        err = ffi.new("ipc_error *")
        rc = lib.ipc_server_open(out, self._name_bytes, self._options, _NULL, handle, err)
        if rc != lib.IPC_OK:
            raise_from_error(err)
        self._handle = handle
        self._address = os.fsdecode(ffi.string(lib.ipc_server_address(out[0])))
        return out[0]

    def _interrupt(self, server: Any) -> None:
        lib.ipc_server_interrupt(server)

    def _close(self, server: Any) -> None:
        try:
            lib.ipc_server_stop(server)  # GIL released; joins every C thread
        finally:
            self._handle = None

    def _in_handler_thread(self, ident: int) -> bool:
        return ident in self._held

    def _ready_fileno(self, server: Any) -> int:
        return int(lib.ipc_server_ready_handle(server))

    def _dispatch_pending(self, server: Any, wait_ms: int) -> int:
        call_p = ffi.new("ipc_call **")
        request_p = ffi.new("const uint8_t **")
        size_p = ffi.new("size_t *")
        handled = 0
        while lib.ipc_server_next_call(server, call_p, request_p, size_p, wait_ms, _NULL) == lib.IPC_OK:
            call = call_p[0]
            try:
                self._answer(call, request_p[0], size_p[0])
            finally:
                lib.ipc_call_finish(call)
            handled += 1
            wait_ms = 0
        return handled

    # ---- server nodes (ipcfast.node) ----

    def enable_node(self, cancel_listener: Callable[[NodeCall], None]) -> None:
        """Makes this (not yet started) server a node: COMMAND packets are
        queued for :meth:`next_command` and CANCELs reported to
        ``cancel_listener`` (on a C thread); REQUESTs still go to the handler."""
        self._options.node = 1
        self._options.cancel_handler = lib._ipcfast_cancel
        self._cancel_listener = cancel_listener

    def next_command(self, timeout_ms: int) -> Optional[NodeCall]:
        """A node's next queued COMMAND, waiting up to timeout_ms; None if
        none came in time. ConnectionClosed once the server stops."""
        server = self._state
        if server is None:
            raise ConnectionClosed(f"server {self._name!r} is not running", code="IPC_E_CLOSED")
        call_p = ffi.new("ipc_call **")
        request_p = ffi.new("const uint8_t **")
        size_p = ffi.new("size_t *")
        rc = lib.ipc_server_next_call(server, call_p, request_p, size_p, timeout_ms, _NULL)
        if rc == lib.IPC_E_TIMEOUT:
            return None
        if rc != lib.IPC_OK:
            raise ConnectionClosed(f"server {self._name!r} stopped ({result_name(rc)})", code=result_name(rc))
        return NodeCall(call_p[0], ffi.buffer(request_p[0], size_p[0])[:])

    # Temporary: node/_server.py still uses these two private names (remove
    # once it calls enable_node/next_command).
    def _enable_node(self, cancel_listener: Callable[[Any], None]) -> None:
        self._options.node = 1
        self._options.cancel_handler = lib._ipcfast_cancel
        self._cancel_listener = lambda call: cancel_listener(call._call)

    @property
    def _c_server(self) -> Any:
        """The ipc_server_t * while running, else None."""
        return self._state

    # ---- handler calls ----

    # Manual dispatch: answer one call on the dispatching thread.
    def _answer(self, call: Any, request: Any, size: int) -> None:
        try:
            result = self._handler(ffi.buffer(request, size)[:])
            buf = ffi.from_buffer(result) if type(result) is bytes else handler_result(result, ffi.from_buffer)
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
            buf = ffi.from_buffer(result) if type(result) is bytes else handler_result(result, ffi.from_buffer)
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

    def _fail(self, call: Any, exc: BaseException) -> None:
        message = failure_text(self._name, exc)
        rc = lib.ipc_call_fail(call, message, len(message), _NULL)
        if rc != lib.IPC_OK:
            logger.debug("server %r: the error was not delivered (%s)", self._name, result_name(rc))
