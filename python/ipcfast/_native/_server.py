"""The native Server: the C core's server (cffi, API mode).

With ``workers=0`` (the default) each connection's thread enters Python once,
through the ``extern "Python"`` connection handler, and runs the connection's
request loop here: one ``ipc_serve_next`` per request sends the previous
response (without a copy) and waits for the next request with the GIL
released, and a small request arrives at a fixed address that a buffer made
once per connection slices into ``bytes``. No callback, thread state or
argument tuple per request. Everything else (argument checks, start/stop
bracketing, dispatch bookkeeping) is written once in ``_base``; this module
supplies its hooks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, List, Optional, Set, cast

from .._base import Server, ServerOptions, failure_text, handler_result
from .._errors import ConnectionClosed
from ._ffi import NULL, ffi, lib, raise_from_error, result_name
from ._node import NodeCall

__all__ = ["NativeServer"]

logger = logging.getLogger("ipcfast")

_get_ident = threading.get_ident
_NULL = NULL
_OK: int = lib.IPC_OK
_RESPONSE: int = lib.IPC_PACKET_RESPONSE
_ERROR: int = lib.IPC_PACKET_ERROR
_REQUEST_INLINE_SIZE: int = lib.IPC_REQUEST_INLINE_SIZE
#: How many ready requests a single worker takes at once.
_BATCH = 64
# How long a waiting dispatch() stays in C before Python's signal handlers
# (Ctrl-C) get a chance to run.
_WAIT_SLICE_MS = 100
#: Handles of servers whose stop abandoned connection threads stuck in a
#: handler: deliberately kept for the life of the process (see _close).
_ABANDONED_HANDLES: List[Any] = []


# ---- handler bridge -----------------------------------------------------------


def _handler_onerror(exc_type: Any, exc: Any, tb: Any) -> None:
    # Only reached if the bridge itself fails; the C core then sends an
    # ERROR packet (the handler returned without answering).
    try:
        logger.error("ipcfast: internal error in the handler bridge", exc_info=(exc_type, exc, tb))
    except BaseException:
        pass


def _ipcfast_serve(user_data: Any, loop: Any) -> None:
    """C connection handler: runs one connection's request loop, on the
    connection's thread, until the connection is over."""
    server: NativeServer = ffi.from_handle(user_data)
    server._serve_connection(loop)


ffi.def_extern(name="_ipcfast_serve", onerror=_handler_onerror)(_ipcfast_serve)


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
        # Workers take requests from the core's queue, as manual dispatch.
        queued = options.manual or options.workers > 0
        c_options.dispatch = _DISPATCH_MANUAL if queued else _DISPATCH_THREAD
        c_options.shm = int(options.shm)
        if options.shm_spin_us >= 0:
            c_options.shm_spin_us = options.shm_spin_us
        # Every handler path copies the request into a bytes object at once,
        # or hands it over as a view valid during the call: a copy in C first
        # would be one copy too many (see zero_copy in the guide).
        c_options.shm_requests_in_place = 1
        if not queued:
            c_options.connection_handler = lib._ipcfast_serve
        self._options = c_options
        self._handle: Any = None  # ffi.new_handle(self), while running
        # The connection threads running our request loop (_serve_connection).
        self._loop_threads: Set[int] = set()
        # ipcfast.node: called (on a C thread) with the call of a cancelled command.
        self._cancel_listener: Optional[Callable[[NodeCall], None]] = None
        # workers > 0: the threads running the handler, and their idents.
        self._worker_threads: List[threading.Thread] = []
        self._worker_idents: Set[int] = set()
        self._workers_leaving = False

    def _open(self) -> Any:
        handle = ffi.new_handle(self)
        out = ffi.new("ipc_server_t **")
        err = ffi.new("ipc_error *")
        rc = lib.ipc_server_open(out, self._name_bytes, self._options, _NULL, handle, err)
        if rc != lib.IPC_OK:
            raise_from_error(err)
        self._handle = handle
        self._address = os.fsdecode(ffi.string(lib.ipc_server_address(out[0])))
        if self._workers:
            self._start_workers(out[0])
        return out[0]

    def _start_workers(self, server: Any) -> None:
        self._workers_leaving = False
        self._worker_idents = set()
        self._worker_threads = [
            threading.Thread(target=self._work, args=(server,), name=f"ipcfast-worker-{i}", daemon=True)
            for i in range(self._workers)
        ]
        for thread in self._worker_threads:
            thread.start()

    def _stop_workers(self, server: Any, timeout_ms: int) -> None:
        """Ends the workers before the core frees what they use: those
        still in a handler after half the timeout are left to the core's
        stop, which then abandons their connections (and keeps the server)."""
        self._workers_leaving = True
        lib.ipc_server_interrupt(server)
        until = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 2000.0
        for thread in self._worker_threads:
            thread.join(None if until is None else max(0.0, until - time.monotonic()))
        self._worker_threads = []

    def _interrupt(self, server: Any) -> None:
        lib.ipc_server_interrupt(server)

    def _close(self, server: Any, timeout_ms: int) -> None:
        abandoned = 0
        if self._worker_threads:
            started = time.monotonic()
            self._stop_workers(server, timeout_ms)
            if timeout_ms >= 0:
                timeout_ms = max(0, timeout_ms - int((time.monotonic() - started) * 1000))
        try:
            # GIL released; joins every C thread it does not abandon.
            abandoned = self._stop_core(server, timeout_ms)
        finally:
            if abandoned > 0:
                # Abandoned C threads call back through the handle when
                # their handler returns: it must live as long as they may.
                _ABANDONED_HANDLES.append(self._handle)
            self._handle = None

    def _stop_core(self, server: Any, timeout_ms: int) -> int:
        """ipc_server_stop_timeout; on the main thread without a timeout it
        runs on a helper thread, so that Ctrl-C can break the wait (the stop
        then goes on in the background, and the handle is kept for it)."""
        if timeout_ms >= 0 or threading.current_thread() is not threading.main_thread():
            result: int = lib.ipc_server_stop_timeout(server, timeout_ms)
            return result
        outcome: List[int] = []
        helper = threading.Thread(
            target=lambda: outcome.append(lib.ipc_server_stop_timeout(server, -1)),
            name="ipcfast-stop",
            daemon=True,
        )
        helper.start()
        try:
            helper.join()
        except BaseException:
            _ABANDONED_HANDLES.append(self._handle)
            raise
        return outcome[0] if outcome else 0

    def _forget(self, server: Any) -> None:
        lib.ipc_server_forget(server)
        self._handle = None

    def _in_handler_thread(self, ident: int) -> bool:
        return ident in self._loop_threads or ident in self._worker_idents

    def _ready_fileno(self, server: Any) -> int:
        return int(lib.ipc_server_ready_handle(server))

    def _dispatch_pending(self, server: Any, wait_ms: int) -> int:
        call_p = ffi.new("ipc_call **")
        request_p = ffi.new("const uint8_t **")
        size_p = ffi.new("size_t *")
        handled = 0
        # A wait returns to Python every _WAIT_SLICE_MS, so that a signal
        # handler (Ctrl-C's KeyboardInterrupt) runs: blocked in C, a
        # dispatch(None) ignored Ctrl-C until a request came.
        until = None if wait_ms < 0 else time.monotonic() + wait_ms / 1000.0
        while True:
            slice_ms = _WAIT_SLICE_MS if wait_ms < 0 else min(wait_ms, _WAIT_SLICE_MS)
            rc = lib.ipc_server_next_call(server, call_p, request_p, size_p, slice_ms, _NULL)
            if rc == lib.IPC_OK:
                call = call_p[0]
                try:
                    self._answer(call, request_p[0], size_p[0])
                finally:
                    lib.ipc_call_finish(call)
                handled += 1
                wait_ms = 0
                continue
            if rc != lib.IPC_E_TIMEOUT or wait_ms == 0:
                return handled
            if until is not None:
                wait_ms = max(0, int((until - time.monotonic()) * 1000.0))

    # ---- server nodes (ipcfast.node) ----

    def enable_node(self, cancel_listener: Callable[[NodeCall], None]) -> None:
        """Makes this (not yet started) server a node: COMMAND packets are
        queued for :meth:`next_command` and CANCELs reported to
        ``cancel_listener`` (on a C thread); REQUESTs still go to the handler."""
        self._refuse_workers_for_node()
        self._options.node = 1
        self._options.cancel_handler = lib._ipcfast_cancel
        self._cancel_listener = cancel_listener

    def _refuse_workers_for_node(self) -> None:
        # A node's COMMANDs share the core's queue with the workers' requests.
        if self._workers:
            raise ValueError("a server node cannot have workers: use workers=0")

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

    # ---- handler calls ----

    # workers > 0: a worker thread's loop. One GIL hand-over per batch of
    # ready requests; each is answered with one write from this thread.
    def _work(self, server: Any) -> None:
        self._worker_idents.add(_get_ident())
        calls = ffi.new("ipc_call *[]", _BATCH)
        answered = ffi.new("ipc_call *[]", _BATCH)
        requests = ffi.new("const uint8_t *[]", _BATCH)
        sizes = ffi.new("size_t[]", _BATCH)
        count_p = ffi.new("size_t *")
        take = lib.ipc_server_next_calls
        respond = lib.ipc_call_respond
        handler = self._handler
        buffer = ffi.buffer
        from_buffer = ffi.from_buffer
        # A batch runs its handlers one after another: with more than one
        # worker, take one call at a time, so that a slow handler never holds
        # back a request another (idle) worker could run.
        batch = _BATCH if self._workers == 1 else 1
        zero_copy = self._zero_copy
        done = 0
        try:
            while not self._workers_leaving:
                # Ends the last batch and takes the next in one C call.
                if take(server, answered, done, calls, requests, sizes, batch, count_p, -1, _NULL) != _OK:
                    done = 0
                    break  # the server is stopping
                done = 0
                for i in range(count_p[0]):
                    call = answered[i] = calls[i]
                    done += 1
                    if zero_copy:
                        self._answer_with_view(call, requests[i], sizes[i])
                        continue
                    try:
                        result = handler(buffer(requests[i], sizes[i])[:])
                        buf = from_buffer(result) if type(result) is bytes else handler_result(result, from_buffer)
                    except BaseException as exc:
                        self._fail(call, exc)
                        continue
                    respond(call, buf, len(buf), _NULL)
        finally:
            for i in range(done):  # only if the loop itself failed
                lib.ipc_call_finish(answered[i])

    # Manual dispatch and workers: answer one call on this thread.
    def _answer(self, call: Any, request: Any, size: int) -> None:
        if self._zero_copy:
            self._answer_with_view(call, request, size)
            return
        try:
            result = self._handler(ffi.buffer(request, size)[:])
            buf = ffi.from_buffer(result) if type(result) is bytes else handler_result(result, ffi.from_buffer)
        except BaseException as exc:
            self._fail(call, exc)
            return
        lib.ipc_call_respond(call, buf, len(buf), _NULL)

    # workers=0: a connection's request loop, on its C thread (with the GIL,
    # which ipc_serve_next releases while it sends and waits).
    def _serve_connection(self, loop: Any) -> None:
        ident = _get_ident()
        self._loop_threads.add(ident)
        try:
            if self._zero_copy:
                self._serve_views(loop)
            else:
                self._serve_bytes(loop)
        finally:
            self._loop_threads.discard(ident)

    def _serve_bytes(self, loop: Any) -> None:
        # Each answer is handed to the next ipc_serve_next, which sends it
        # without a copy: `answer` keeps it alive until then.
        request = ffi.new("ipc_next_request *")
        inline = ffi.buffer(request.inline_data)  # a fixed address: sliced per request
        serve_next = lib.ipc_serve_next
        handler = self._handler
        buffer = ffi.buffer
        from_buffer = ffi.from_buffer
        inline_size = _REQUEST_INLINE_SIZE
        max_message = self._max_message
        answer_type, answer, size = 0, _NULL, 0
        while True:
            n = serve_next(loop, answer_type, answer, size, request)
            if n < 0:
                return  # the connection is over
            try:
                result = handler(inline[:n] if n <= inline_size else buffer(request.data, n)[:])
                answer = result if type(result) is bytes else handler_result(result, from_buffer)
                answer_type = _RESPONSE
            except BaseException as exc:
                answer = failure_text(self._name, exc)
                answer_type = _ERROR
            size = len(answer)
            if size > max_message and answer_type == _RESPONSE:
                # The core refuses it and logs at ERROR; add the server's name.
                logger.debug(
                    "server %r: the handler's response of %d bytes is above max_message (%d); "
                    "the client gets an error instead",
                    self._name,
                    size,
                    self._max_message,
                )

    # zero_copy=True: the handler gets a view of the request, and the
    # response is sent before the view is released (it may point into the
    # view: an echo), not by the next ipc_serve_next: once it is sent the
    # client may write its next request where the view points.
    def _serve_views(self, loop: Any) -> None:
        request = ffi.new("ipc_next_request *")
        serve_next = lib.ipc_serve_next
        while True:
            n = serve_next(loop, 0, _NULL, 0, request)
            if n < 0:
                return
            self._answer_with_view(request.call, request.data, n)

    # zero_copy=True: the response is sent before this returns, so the
    # request's view is released at once (before the client can write its
    # next request where the view points).
    def _answer_with_view(self, call: Any, request: Any, size: int) -> None:
        view = _request_view(request, size)
        try:
            result = cast(Any, self._handler)(view)  # zero_copy: it takes a view
            buf = ffi.from_buffer(result) if type(result) is bytes else handler_result(result, ffi.from_buffer)
        except BaseException as exc:
            _release(view)
            self._fail(call, exc)
            return
        lib.ipc_call_respond(call, buf, len(buf), _NULL)
        del buf, result  # their exports of the view, if the response was (part of) it
        _release(view)

    def _fail(self, call: Any, exc: BaseException) -> None:
        message = failure_text(self._name, exc)
        rc = lib.ipc_call_fail(call, message, len(message), _NULL)
        if rc != lib.IPC_OK:
            logger.debug("server %r: the error was not delivered (%s)", self._name, result_name(rc))


def _request_view(request: Any, size: int) -> memoryview:
    """A read-only view of a request the C core holds (zero_copy=True)."""
    return memoryview(ffi.buffer(request, size)).toreadonly()


def _release(view: memoryview) -> None:
    """Ends a request view, so a handler that kept it gets ValueError rather
    than the next request's bytes. An export still alive (numpy.frombuffer of
    it, say) keeps it open: the documentation says not to keep one."""
    try:
        view.release()
    except BufferError:
        pass
