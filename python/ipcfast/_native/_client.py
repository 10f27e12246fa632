"""The native Client: one ``ipc_client_call`` per request, with the GIL
released (cffi releases it around every call into the library).

The request path is kept to what must happen per request (see
bench/client_instructions.py for the instruction counts): bytes go to C as
they are, five arguments; the call returns the response's size (or minus
an error code), a small response sits at a fixed address (the reply's
inline buffer, wrapped in a cffi buffer once at connect time), and a slice
of that buffer copies it into the bytes returned: one Python-level copy, no
field read per request. Larger responses are copied by ``ffi.unpack`` from
the C client's buffer.

Signals. The C client runs an interrupt hook every ``IPC_INTERRUPT_SLICE_MS``
while it waits for the server (never on a request that does not wait). The
hook, :func:`_ipcfast_interrupt_check`, enters Python, where the interpreter
runs pending signal handlers on the main thread. A handler that raises
(Ctrl-C's KeyboardInterrupt) ends the C call with ``IPC_E_INTERRUPTED``; the
exception is kept and re-raised by the call, and the connection is abandoned.
A handler that returns lets the call wait on.

Closing. :meth:`close` may run on any thread during a request: the C client
wakes the request (it raises ConnectionClosed), waits for it to leave and
closes the connection; the C struct itself is freed only when the Python
object goes (no request can be running then).

fork(). A client inherited by a fork() child is forgotten there (its
descriptor closed, nothing sent, no lock taken); using it raises an error
naming the process that owns it.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import Any, Deque, List, NoReturn, Optional

from .._base import BytesLike, Client, ClientOptions, ViewBuffer, timeout_ms, too_small
from .._errors import ConnectionClosed, InvalidArgument
from ._ffi import ffi, lib, raise_from_error

__all__ = ["NativeClient"]

_NULL = ffi.NULL
_OK = lib.IPC_OK
_INTERRUPTED = lib.IPC_E_INTERRUPTED
_INLINE_SIZE = lib.IPC_REPLY_INLINE_SIZE
_call = lib.ipc_client_call
_call_into = lib.ipc_client_call_into
_from_buffer = ffi.from_buffer
_unpack = ffi.unpack
_get_ident = threading.get_ident

#: What a signal handler raised inside the interrupt hook, for the call to
#: re-raise. Only the main thread runs signal handlers, so one slot is enough.
_raised: List[BaseException] = []


def _keep_raised(exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
    # cffi's onerror: the hook raised, which is how a signal handler's
    # exception arrives (the interpreter runs pending handlers as the hook's
    # frame starts). Returning None makes the hook return its error value, 1.
    if exc is not None:
        _raised[:] = [exc]


def _ipcfast_interrupt_check(user_data: Any) -> int:
    """The C client's interrupt hook. Entering this function runs the
    pending signal handlers (main thread only); if one raises, cffi hands the
    exception to _keep_raised and the C call ends."""
    return 0


ffi.def_extern(name="_ipcfast_interrupt_check", error=1, onerror=_keep_raised)(_ipcfast_interrupt_check)


#: Open clients of this process, for the fork() child hook.
_live: "weakref.WeakSet[NativeClient]" = weakref.WeakSet()


def _forget_after_fork() -> None:
    for client in list(_live):
        client._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class NativeClient(Client):
    """The native implementation of :class:`ipcfast.Client`."""

    backend = "native"

    #: The ipc_client_t *, freed with the object (or forgotten after fork).
    _handle: Any = None
    #: What requests pass to C: the handle while open, NULL once closed (C
    #: answers a NULL client at once, and the slow path says why).
    _client: Any = _NULL
    _closed = True
    _forked_from = 0

    def _connect(self, options: ClientOptions) -> None:
        c_options = ffi.new("ipc_client_options *")
        lib.ipc_client_options_init(c_options)
        c_options.max_message = options.max_message
        c_options.shm = int(options.shm)
        c_options.shm_slot_size = options.shm_slot_size
        if options.shm_spin_us >= 0:
            c_options.shm_spin_us = options.shm_spin_us
        # request() copies a response into bytes before anything else runs;
        # request_into() and request_view() copy from the slot themselves.
        c_options.shm_responses_in_place = 1
        ffi.memmove(c_options.handshake, options.handshake, lib.IPC_HANDSHAKE_SIZE)
        c_options.wait_if_not_found = options.wait_for_server
        c_options.server_user = options.server_user
        c_options.server_uid = options.server_uid
        c_options.interrupt_check = lib._ipcfast_interrupt_check
        self._turn: Deque[None] = collections.deque([None])
        self._turn_changed = threading.Condition(threading.Lock())
        self._waiters = 0
        self._reply = ffi.new("ipc_client_reply *")
        # A slice of a cffi buffer is a bytes copy, cheaper than ffi.unpack
        # (which parses keyword arguments).
        self._inline = ffi.buffer(self._reply.inline_data)
        self._view_buffer = ViewBuffer()
        err = ffi.new("ipc_error *")
        out = ffi.new("ipc_client_t **")
        rc = lib.ipc_client_open(out, options.name_bytes, c_options, options.connect_ms, err)
        if rc != _OK:
            _raise_interrupted(rc, err)
            raise_from_error(err)
        self._handle = self._client = out[0]
        self._closed = False
        self._pid = os.getpid()
        _live.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def version(self) -> int:
        """The packet version both sides agreed on."""
        if self._closed:
            self._raise_closed()
        return int(lib.ipc_client_version(self._handle))

    def request(self, data: BytesLike, timeout: Optional[float] = None) -> bytes:
        if type(data) is not bytes:
            data = _as_buffer(data)
        ms = self._timeout_ms if timeout is None else timeout_ms(timeout)
        # One request at a time, and the turn covers the copy of the
        # response too (the next request overwrites it). The turn is a token
        # in a deque: pop and append are atomic and cost half a Lock's
        # acquire and release; a thread that finds no token waits in
        # _request_waiting.
        turn = self._turn
        try:
            turn.pop()
        except IndexError:
            return self._request_waiting(data, ms)
        try:
            if self._view_buffer.view is not None:
                self._view_buffer.release()  # request_view's answer ends here
            n = _call(self._client, data, len(data), ms, self._reply)
            if n > _INLINE_SIZE:
                return _unpack(self._reply.data, n)  # type: ignore[no-any-return]
            if n >= 0:
                return self._inline[:n]  # type: ignore[no-any-return]
            self._raise_failure(-n)
        finally:
            turn.append(None)
            if self._waiters:
                self._hand_over()

    # ---- zero-copy requests ----

    def request_into(self, data: BytesLike, out: Any, timeout: Optional[float] = None) -> int:
        if type(data) is not bytes:
            data = _as_buffer(data)
        target = _writable(out)
        ms = self._timeout_ms if timeout is None else timeout_ms(timeout)
        self._take_turn()
        try:
            return self._call_into(data, target, ms)
        finally:
            self._give_turn()

    def request_view(self, data: BytesLike, timeout: Optional[float] = None) -> memoryview:
        if type(data) is not bytes:
            data = _as_buffer(data)
        ms = self._timeout_ms if timeout is None else timeout_ms(timeout)
        views = self._view_buffer
        self._take_turn()
        try:
            buffer = views.reusable()
            target = _from_buffer(buffer)
            n = _call_into(self._client, data, len(data), target, len(target), ms, self._reply)
            del target  # it holds an export on the buffer
            if n < 0:
                self._raise_failure(-n)
            if n > len(buffer):
                # Kept by C in its own buffer: copied once more, into a
                # buffer large enough for the next responses too.
                buffer = bytearray(max(n, 2 * len(buffer)))
                ffi.memmove(buffer, self._reply.data, n)
            return views.hand_out(buffer, n)
        finally:
            self._give_turn()

    def _call_into(self, data: Any, target: Any, ms: int) -> int:
        if self._view_buffer.view is not None:
            self._view_buffer.release()
        capacity = len(target)
        n = _call_into(self._client, data, len(data), target, capacity, ms, self._reply)
        if n < 0:
            self._raise_failure(-n)
        if n > capacity:
            raise too_small(n, capacity, _unpack(self._reply.data, n))
        return n  # type: ignore[no-any-return]

    def _take_turn(self) -> None:
        try:
            self._turn.pop()
        except IndexError:
            self._wait_for_turn()

    def _give_turn(self) -> None:
        self._turn.append(None)
        if self._waiters:
            self._hand_over()

    def _wait_for_turn(self) -> None:
        turn = self._turn
        with self._turn_changed:
            self._waiters += 1
            try:
                while True:
                    try:
                        turn.pop()
                        return
                    except IndexError:
                        self._turn_changed.wait()
            finally:
                self._waiters -= 1

    def _round_trip(self, data: Any, ms: int) -> bytes:
        self._view_buffer.release()
        n = _call(self._client, data, len(data), ms, self._reply)
        if n < 0:
            self._raise_failure(-n)
        return _unpack(self._reply.data, n)  # type: ignore[no-any-return]

    def _request_waiting(self, data: Any, ms: int) -> bytes:
        """request() when another thread has the turn: wait for it."""
        self._wait_for_turn()
        try:
            return self._round_trip(data, ms)
        finally:
            self._give_turn()

    def _hand_over(self) -> None:
        with self._turn_changed:
            self._turn_changed.notify()

    def _raise_failure(self, rc: int) -> NoReturn:
        err = ffi.addressof(self._reply, "error")
        _raise_interrupted(rc, err)
        if self._client == _NULL:
            lib.ipc_error_clear(err)
            self._raise_closed()
        raise_from_error(err)

    def _raise_closed(self) -> NoReturn:
        if self._forked_from:
            raise InvalidArgument(
                f"this client belongs to process {self._forked_from}: it was opened before fork() and this "
                f"process ({os.getpid()}) must not share its connection; open a new Client in the child",
                code="IPC_E_INVALID",
            )
        raise ConnectionClosed(f"the client for {self._name!r} is closed: open a new Client", code="IPC_E_CLOSED")

    def close(self) -> None:
        # No Python lock: a request on another thread may hold it. The C
        # client wakes that request and waits for it to leave.
        if self._closed:
            return
        self._closed = True
        self._client = _NULL
        lib.ipc_client_shutdown(self._handle)
        self._view_buffer.release()
        _live.discard(self)

    def _forget(self) -> None:
        """In a fork() child: drop the parent's connection without touching it."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        self._client = _NULL
        self._closed = True
        self._forked_from = self._pid
        # A parent thread may have held the turn at fork time.
        self._turn = collections.deque([None])
        self._turn_changed = threading.Condition(threading.Lock())
        self._waiters = 0
        lib.ipc_client_forget(handle)

    def __del__(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                lib.ipc_client_close(handle)
            except Exception:
                pass


def _as_buffer(data: Any) -> Any:
    try:
        return ffi.from_buffer(data)
    except TypeError:
        raise TypeError(f"request data must be bytes-like, not {type(data).__name__}") from None


def _writable(out: Any) -> Any:
    """``out`` for C, without a copy: TypeError if it is read-only or not a buffer."""
    try:
        return _from_buffer("char[]", out, True)  # positional: no keyword parsing per call
    except TypeError:
        raise TypeError(
            f"out must be a writable buffer (bytearray, writable memoryview, ...), not {type(out).__name__}"
        ) from None
    except BufferError as exc:
        raise TypeError(f"out must be a writable buffer: {exc}") from None


def _raise_interrupted(rc: int, err: Any) -> None:
    """IPC_E_INTERRUPTED: re-raise what the signal handler raised."""
    if rc == _INTERRUPTED and _raised:
        lib.ipc_error_clear(err)
        exc = _raised.pop()
        raise exc
