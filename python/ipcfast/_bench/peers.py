"""The implementations a run compares, one adapter class each.

A peer answers three questions: can it run here (``unavailable``), how does a
server process serve echo requests (``serve``), and how does a client process
make one round trip (``connect``). The harness looks peers up in ``PEERS`` by
key; adding an implementation means adding one class and one entry.

The two C peers are programs (bench/floor.c, bench/c2c.c) that the harness
compiles and runs itself; their ``serve``/``connect`` are never called.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import socket
import struct
import sys
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from .profiles import KIB, MIB

Stop = Callable[[], None]


class Connection(NamedTuple):
    """One connected client: ``request(payload) -> response`` and ``close()``."""

    request: Callable[[bytes], bytes]
    close: Callable[[], None]


class Peer:
    """One implementation of a request/response echo between two processes."""

    key = ""
    description = ""
    compiled = False  # a C program the harness builds and runs itself

    def unavailable(self) -> Optional[str]:
        """Why this peer cannot run here, or None (checked in the harness)."""
        return None

    def serve(self, addr: str) -> Stop:
        """Start an echo server on ``addr`` in this process; return how to stop it."""
        raise NotImplementedError(f"{self.key} is a C program: the harness runs it")

    def connect(self, addr: str) -> Connection:
        raise NotImplementedError(f"{self.key} is a C program: the harness runs it")


def _echo(request: bytes) -> bytes:
    return request


def _missing(module: str) -> Optional[str]:
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install 'ipcfast[bench]')"
    return None


class CPeer(Peer):
    compiled = True

    def __init__(self, key: str, description: str, uses_core: bool) -> None:
        self.key = key
        self.description = description
        self.uses_core = uses_core  # compiled together with every csrc/*.c


class IpcfastPeer(Peer):
    """ipcfast itself, Python client and Python echo handler on both sides."""

    def __init__(
        self, backend: str, description: str, key: str = "", shm: Optional[bool] = None, zero_copy: bool = False
    ) -> None:
        self.key = key or backend
        self.backend = backend
        self.description = description
        # None: the library's default (the shared-memory path where it is
        # negotiated); False: the socket path, for the comparison.
        self.shm = shm
        # The zero-copy calls on both sides: a handler that gets a view
        # (Server(zero_copy=True)) and request_into() a buffer the client
        # keeps, as the iceoryx2 peer uses iceoryx2's loans.
        self.zero_copy = zero_copy

    def _shm_option(self) -> Dict[str, Any]:
        return {} if self.shm is None else {"shm": self.shm}

    def unavailable(self) -> Optional[str]:
        import ipcfast

        if self.backend == "native":
            error = ipcfast.native_import_error()
            return None if error is None else f"the native extension cannot be imported: {error}"
        return None  # the pure backend is probed by a real request (harness.py)

    def serve(self, addr: str) -> Stop:
        import ipcfast

        server = ipcfast.Server(
            addr, _echo, backend=self.backend, max_clients=64, zero_copy=self.zero_copy, **self._shm_option()
        )
        server.start()
        return server.stop

    def connect(self, addr: str) -> Connection:
        import ipcfast

        client = ipcfast.Client(addr, backend=self.backend, connect_timeout=30, **self._shm_option())
        if not self.zero_copy:
            return Connection(client.request, client.close)
        out = bytearray(64 * KIB)
        into = client.request_into

        def request_into(data: bytes) -> Any:
            nonlocal out
            if len(out) < len(data):  # an echo: the response is as large as the request
                out = bytearray(len(data))
            return memoryview(out)[: into(data, out)]

        return Connection(request_into, client.close)


# ---- the hand-written socket server a competent user writes -------------------

_LENGTH = struct.Struct("!I")


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False at end of stream."""
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def _send(sock: socket.socket, header: bytes, payload: Any) -> None:
    """Header and payload in one sendmsg; the rest with sendall if it was short."""
    sent = sock.sendmsg([header, payload])
    if sent < len(header):
        sock.sendall(memoryview(header)[sent:])
        sent = len(header)
    if sent < len(header) + len(payload):
        sock.sendall(memoryview(payload)[sent - len(header) :])


class _Buffer:
    """A preallocated receive buffer that grows to the largest message seen."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(64 * KIB))

    def take(self, sock: socket.socket, size: int) -> Optional[memoryview]:
        if size > len(self.view):
            self.view = memoryview(bytearray(size))
        part = self.view[:size]
        return part if _recv_exact(sock, part) else None


def _socket_serve_client(conn: socket.socket) -> None:
    header = memoryview(bytearray(_LENGTH.size))
    buffer = _Buffer()
    with conn:
        while _recv_exact(conn, header):
            payload = buffer.take(conn, _LENGTH.unpack(header)[0])
            if payload is None:
                return
            _send(conn, header.tobytes(), payload)


class _SocketClient:
    def __init__(self, addr: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(addr)
        self.header = memoryview(bytearray(_LENGTH.size))
        self.buffer = _Buffer()

    def request(self, data: bytes) -> bytes:
        _send(self.sock, _LENGTH.pack(len(data)), data)
        if not _recv_exact(self.sock, self.header):
            raise ConnectionError("the server closed the connection")
        payload = self.buffer.take(self.sock, _LENGTH.unpack(self.header)[0])
        if payload is None:
            raise ConnectionError("the server closed the connection")
        return payload.tobytes()


def _accept_in_thread(
    addr: str, accept: Callable[[], Any], serve: Callable[[Any], None], close: Callable[[], None]
) -> Stop:
    """Accepts clients on a thread (one serving thread each) until the
    returned stop() is called. stop() wakes the blocked accept with a
    connection of its own and joins the thread before closing the listener:
    closing a socket another thread is blocked on in accept() does not wake
    it on Linux, and its descriptor number could then be reused."""
    stopping = threading.Event()

    def accept_loop() -> None:
        while True:
            conn = accept()
            if stopping.is_set():
                conn.close()
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waker:
            try:
                waker.connect(addr)
            except OSError:
                pass
        thread.join(5)
        close()

    return stop


class SocketPeer(Peer):
    key = "socket"
    description = (
        "hand-written Python socket server: AF_UNIX, 4-byte length prefix, recv_into a preallocated "
        "buffer, sendmsg, a thread per client"
    )

    def unavailable(self) -> Optional[str]:
        return None if hasattr(socket, "AF_UNIX") and hasattr(socket.socket, "sendmsg") else "no AF_UNIX/sendmsg"

    def serve(self, addr: str) -> Stop:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(addr)
        listener.listen(128)

        def accept() -> Any:
            return listener.accept()[0]

        return _accept_in_thread(addr, accept, _socket_serve_client, listener.close)

    def connect(self, addr: str) -> Connection:
        client = _SocketClient(addr)
        return Connection(client.request, client.sock.close)


# ---- multiprocessing.connection, pyzmq -----------------------------------------


class MPConnectionPeer(Peer):
    key = "mp.connection"
    description = "multiprocessing.connection, AF_UNIX, send_bytes/recv_bytes, thread per client"

    def unavailable(self) -> Optional[str]:
        return "AF_UNIX is not available on Windows" if sys.platform == "win32" else None

    def serve(self, addr: str) -> Stop:
        from multiprocessing.connection import Listener

        listener = Listener(addr, family="AF_UNIX")

        def echo_loop(conn: Any) -> None:
            try:
                while True:
                    conn.send_bytes(conn.recv_bytes())
            except (EOFError, OSError):
                pass

        return _accept_in_thread(addr, listener.accept, echo_loop, listener.close)

    def connect(self, addr: str) -> Connection:
        from multiprocessing.connection import Client

        conn = Client(addr, family="AF_UNIX")
        send, recv = conn.send_bytes, conn.recv_bytes

        def roundtrip(data: bytes) -> bytes:
            send(data)
            return recv()

        return Connection(roundtrip, conn.close)


class PyzmqPeer(Peer):
    key = "pyzmq"
    description = "pyzmq REQ/REP over ipc:// (one REP socket serves every client)"

    def unavailable(self) -> Optional[str]:
        return _missing("zmq")

    def serve(self, addr: str) -> Stop:
        import zmq

        rep = zmq.Context().socket(zmq.REP)
        rep.bind("ipc://" + addr)

        def rep_loop() -> None:
            while True:
                rep.send(rep.recv(copy=False), copy=False)

        threading.Thread(target=rep_loop, daemon=True).start()
        return lambda: None

    def connect(self, addr: str) -> Connection:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.REQ)
        sock.connect("ipc://" + addr)
        send, recv = sock.send, sock.recv

        def roundtrip(data: bytes) -> bytes:
            send(data)
            reply: bytes = recv()
            return reply

        def close() -> None:
            sock.close(linger=0)
            ctx.term()

        return Connection(roundtrip, close)


# ---- iceoryx2 request/response ---------------------------------------------------


# Ports and nodes a service admits: 16 concurrency clients, the latency client
# and the server, with room for ports of a process that is still going away.
# iceoryx2 preallocates per port, so larger limits make every start slower.
_ICEORYX_PORTS = 24
_ICEORYX_NODES = 32


def _iceoryx_service(addr: str) -> str:
    """A service name unique to this run and measurement (the socket path's tail)."""
    head, tail = os.path.split(addr)
    return f"ipcfast-bench/{os.path.basename(head)}/{tail.replace('.', '_')}"


class _Iceoryx:
    """A node and the request/response service of one measurement.

    Requests carry the client's id in their user header, so that with events
    the server can wake exactly the client it answered."""

    def __init__(self, addr: str) -> None:
        import iceoryx2 as iox2

        self.iox2 = iox2
        iox2.set_log_level(iox2.LogLevel.Error)
        self.name = _iceoryx_service(addr)
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        slice_type = iox2.Slice[ctypes.c_uint8]
        self.service = (
            self.node.service_builder(iox2.ServiceName.new(self.name))
            .request_response(slice_type, slice_type)
            .request_header(ctypes.c_uint64)
            .max_clients(_ICEORYX_PORTS)
            .max_nodes(_ICEORYX_NODES)
            .open_or_create()
        )

    def event(self, suffix: str) -> Any:
        builder = self.node.service_builder(self.iox2.ServiceName.new(f"{self.name}/{suffix}")).event()
        return builder.max_notifiers(_ICEORYX_PORTS).max_listeners(2).max_nodes(_ICEORYX_NODES).open_or_create()

    def wait_slice(self) -> Any:
        """How long one wait may block (stop requests are checked between waits)."""
        return self.iox2.Duration.from_millis(100)

    def release(self) -> None:
        """Drop the service and the node (iceoryx2 cleans up when they go)."""
        del self.service
        del self.node


def _iceoryx_echo(active: Any) -> None:
    """Answer one request with a copy of its payload, shared memory to shared memory."""
    size = active.payload().len()
    response = active.loan_slice_uninit(size)
    ctypes.memmove(response.payload_ptr, active.payload_ptr, size)
    response.assume_init().send()


class IceoryxPeer(Peer):
    """iceoryx2 request/response, Slice[c_uint8] payloads over shared memory.

    ``events``: server and client sleep on iceoryx2 event listeners and notify
    each other after sending (the event-driven idiom). Otherwise both sides
    poll, calling sched_yield between polls so a pinned pair can take turns."""

    def __init__(self, key: str, events: bool) -> None:
        self.key = key
        self.events = events
        how = "event listeners (notify after send)" if events else "busy-polling with sched_yield"
        self.description = f"iceoryx2 request/response over shared memory, waiting with {how}"

    def unavailable(self) -> Optional[str]:
        return _missing("iceoryx2")

    def serve(self, addr: str) -> Stop:
        ice = _Iceoryx(addr)
        server = ice.service.server_builder().allocation_strategy(ice.iox2.AllocationStrategy.PowerOfTwo).create()
        stopping = threading.Event()
        loop = self._event_loop if self.events else self._poll_loop
        thread = threading.Thread(target=loop, args=(ice, server, stopping), daemon=True)
        thread.start()

        def stop() -> None:
            # iceoryx2 removes a service's shared memory when its last port and
            # node are dropped; a process that just exits leaves it behind.
            stopping.set()
            thread.join(5)
            server.delete()
            ice.release()

        return stop

    @staticmethod
    def _poll_loop(ice: _Iceoryx, server: Any, stopping: threading.Event) -> None:
        receive, yield_cpu = server.receive, os.sched_yield
        while not stopping.is_set():
            active = receive()
            if active is None:
                yield_cpu()
                continue
            _iceoryx_echo(active)
            active.delete()

    @staticmethod
    def _event_loop(ice: _Iceoryx, server: Any, stopping: threading.Event) -> None:
        listener = ice.event("requests").listener_builder().create()
        notifiers: Dict[int, Any] = {}
        timeout = ice.wait_slice()
        while not stopping.is_set():
            listener.timed_wait(timeout)
            active = server.receive()
            while active is not None:
                _iceoryx_echo(active)
                client_id = active.user_header().contents.value
                active.delete()
                if client_id not in notifiers:
                    notifiers[client_id] = ice.event(f"responses/{client_id}").notifier_builder().create()
                notifiers[client_id].notify()
                active = server.receive()
        for notifier in notifiers.values():
            notifier.delete()
        listener.delete()

    def connect(self, addr: str) -> Connection:
        ice = _Iceoryx(addr)
        client = ice.service.client_builder().allocation_strategy(ice.iox2.AllocationStrategy.PowerOfTwo).create()
        client_id = os.getpid()
        wait: Callable[[], Any] = os.sched_yield
        notify: Callable[[], Any] = lambda: None  # noqa: E731
        if self.events:
            listener = ice.event(f"responses/{client_id}").listener_builder().create()
            notify = ice.event("requests").notifier_builder().create().notify
            timeout = ice.wait_slice()

            def wait() -> Any:
                return listener.timed_wait(timeout)

        def roundtrip(data: bytes) -> bytes:
            size = len(data)
            request = client.loan_slice_uninit(size)
            ctypes.memmove(request.payload_ptr, data, size)
            request.user_header().contents.value = client_id
            pending = request.assume_init().send()
            notify()
            response = pending.receive()
            while response is None:
                wait()
                response = pending.receive()
            reply = ctypes.string_at(response.payload_ptr, response.payload().len())
            response.delete()
            pending.delete()
            return reply

        def close() -> None:
            client.delete()
            ice.release()

        return Connection(roundtrip, close)


# ---- gRPC ----------------------------------------------------------------------

# The method every gRPC client calls: a unary-unary echo of raw bytes. No
# .proto file and no generated code: a generic handler serves the name, and
# with no (de)serializer given gRPC hands the bytes through unchanged (the
# identity, without a Python call per message).
_GRPC_SERVICE = "ipcfast.bench.Echo"
_GRPC_METHOD = f"/{_GRPC_SERVICE}/Echo"
# gRPC refuses to receive a message above 4 MiB by default (each side
# checks what it receives). The largest size measured is 1 MiB, so the
# default would do today; raising the limit on both sides keeps a larger
# size in SIZES from failing as "RESOURCE_EXHAUSTED" instead of measuring.
_GRPC_MAX_MESSAGE = 64 * MIB
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE),
    ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE),
]
# Handler threads of the server's ThreadPoolExecutor. A unary handler holds
# a worker only while it runs: gRPC's own threads poll the socket and hand
# each request to the pool. 16 is the most clients a run starts, so no
# request ever waits for a free worker, and a slow handler stalls no other
# client, as with the thread-per-client peers. On 2 CPUs the pool size does
# not decide the rate: split, 16 clients, 3 rounds, 1 / 4 / 16 workers served
# 3.3k / 3.5k / 3.2k requests/s, equal within the noise (bench/README.md).
_GRPC_WORKERS = 16


class GrpcPeer(Peer):
    key = "grpc"
    description = (
        f"grpcio unary-unary bytes echo over a Unix socket (unix:PATH), generic handler, no codegen, "
        f"ThreadPoolExecutor with {_GRPC_WORKERS} workers"
    )

    def unavailable(self) -> Optional[str]:
        return _missing("grpc")

    def serve(self, addr: str) -> Stop:
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        def echo(request: bytes, context: Any) -> bytes:
            return request

        handler = grpc.method_handlers_generic_handler(
            _GRPC_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.server(ThreadPoolExecutor(max_workers=_GRPC_WORKERS), options=_GRPC_OPTIONS)
        server.add_generic_rpc_handlers((handler,))
        if server.add_insecure_port("unix:" + addr) == 0:
            raise OSError(f"gRPC could not listen on unix:{addr}")
        server.start()

        def stop() -> None:
            server.stop(grace=None).wait(5)

        return stop

    def connect(self, addr: str) -> Connection:
        import grpc

        channel = grpc.insecure_channel("unix:" + addr, options=_GRPC_OPTIONS)
        # A channel connects lazily: connect now, so the first timed request
        # does not pay for it (and a server that is not there fails here).
        grpc.channel_ready_future(channel).result(timeout=30)
        echo: Callable[[bytes], bytes] = channel.unary_unary(_GRPC_METHOD)
        return Connection(echo, channel.close)


def _peers() -> List[Peer]:
    return [
        CPeer("floor", "minimal C ping-pong over AF_UNIX SOCK_STREAM (bench/floor.c, no ipcfast code)", False),
        CPeer("c2c", "C server and C clients through the public C API of csrc/ (bench/c2c.c)", True),
        IpcfastPeer(
            "native",
            "Python client -> C core -> Python echo handler (ipcfast, backend='native', default settings: "
            "the shared-memory data path on Linux)",
        ),
        IpcfastPeer(
            "native",
            "the same on the socket path (ipcfast, backend='native', shm=False)",
            key="native-socket",
            shm=False,
        ),
        IpcfastPeer(
            "native",
            "the same with the zero-copy calls: Server(zero_copy=True) (the handler gets a view of the request) "
            "and Client.request_into() a buffer the client keeps",
            key="native-zc",
            zero_copy=True,
        ),
        IpcfastPeer("pure", "the pure-Python path (ipcfast, backend='pure') on both sides"),
        SocketPeer(),
        MPConnectionPeer(),
        PyzmqPeer(),
        IceoryxPeer("iceoryx2", events=True),
        IceoryxPeer("iceoryx2-poll", events=False),
        GrpcPeer(),
    ]


#: Every implementation, in round order.
PEERS: Dict[str, Peer] = {peer.key: peer for peer in _peers()}
IMPL_KEYS: List[str] = list(PEERS)
