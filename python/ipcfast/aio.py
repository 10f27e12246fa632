"""asyncio front ends over the same transports.

``ipcfast.aio.Client`` awaits requests without blocking the event loop: each
request runs as one blocking call in a worker thread, where the native
backend waits inside the C core with the GIL released (no polling).
Cancelling an ``await client.request(...)`` (``task.cancel()``,
``asyncio.wait_for``) aborts that round trip: the connection, whose stream is
then at an unknown point, is closed at once and the worker is free; the next
request connects again.

``ipcfast.aio.serve(name, handler)`` runs a server whose handler is a
coroutine function executed on the event loop; the transport's connection
threads wait for its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import TracebackType
from typing import Any, Awaitable, Callable, Optional, Type, Union

from ._base import BytesLike, Name
from ._base import Client as _SyncClient
from ._base import Server as _SyncServer

__all__ = ["Client", "serve", "AsyncHandler"]

#: An asyncio request handler: request bytes in, response bytes out.
AsyncHandler = Callable[[bytes], Awaitable[BytesLike]]


class _Call:
    """One request on its way to the worker thread: the connection it runs
    on once it starts, so that cancelling it closes exactly that one."""

    __slots__ = ("client", "cancelled")

    def __init__(self) -> None:
        self.client: Optional[_SyncClient] = None
        self.cancelled = False


class Client:
    """An awaitable client: ``async with ipcfast.aio.Client(name) as c:
    await c.request(b"...")``. Takes the keyword arguments of
    :class:`ipcfast.Client` (``shm=True`` included: the requests then use
    the shared-memory data path where the server accepts it); connecting
    happens in a worker thread too."""

    def __init__(self, name: Name, **options: Any) -> None:
        self._name = name
        self._options = options
        # Only the worker thread connects; the lock guards _client and each
        # call's binding against a cancel on the loop's thread.
        self._client: Optional[_SyncClient] = None
        self._lock = threading.Lock()
        # One worker: requests on one connection are serialized anyway, and
        # a single thread keeps their order.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipcfast-aio")

    async def connect(self) -> "Client":
        """Connect (called by ``async with``; idempotent)."""
        await self._run(self._connected)
        return self

    async def request(self, data: BytesLike, timeout: Optional[float] = None) -> bytes:
        """Send one request and return the response (see
        :meth:`ipcfast.Client.request`). Cancelling it aborts the round trip
        and closes the connection; the next request opens a new one."""
        # Bytes-like objects the caller may change later are copied now: the
        # request runs after this coroutine yields.
        payload = data if isinstance(data, bytes) else bytes(data)
        result: bytes = await self._submit(lambda client: client.request(payload, timeout))
        return result

    async def request_into(self, data: BytesLike, out: Any, timeout: Optional[float] = None) -> int:
        """:meth:`ipcfast.Client.request_into`: the response is received
        into ``out`` without a copy. ``data`` is not copied either: neither
        it nor ``out`` may be changed or read until this returns. Cancelled,
        ``out`` may hold part of a response."""
        result: int = await self._submit(lambda client: client.request_into(data, out, timeout))
        return result

    async def request_view(self, data: BytesLike, timeout: Optional[float] = None) -> memoryview:
        """:meth:`ipcfast.Client.request_view`: the response as a memoryview
        valid until this client's next request (or close) starts."""
        payload = data if isinstance(data, bytes) else bytes(data)
        result: memoryview = await self._submit(lambda client: client.request_view(payload, timeout))
        return result

    async def _submit(self, call: Callable[[_SyncClient], Any]) -> Any:
        state = _Call()
        future = self._executor.submit(self._run_call, state, call)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # Not started yet: it sees `cancelled` and does nothing.
            # Running: the round trip is cut short by closing its client
            # (close() from another thread wakes the request and waits for
            # it to leave), and the next request connects again.
            with self._lock:
                state.cancelled = True
                client = state.client
            if client is not None and not future.done():
                self._abort(client)
            raise

    def _run_call(self, state: _Call, call: Callable[[_SyncClient], Any]) -> Any:
        """On the worker thread: the request on the connection current now
        (not when it was submitted: a cancel in between may have closed that
        one)."""
        client = self._connected()
        with self._lock:
            if state.cancelled:
                return None
            state.client = client
        return call(client)

    def _connected(self) -> _SyncClient:
        """On the worker thread: the open connection, made if there is none."""
        with self._lock:
            client = self._client
        if client is None:
            client = _SyncClient(self._name, **self._options)
            with self._lock:
                self._client = client
        return client

    def _abort(self, client: _SyncClient) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    async def close(self) -> None:
        """Close the connection once pending requests are done."""
        await self._run(self._close_connection)
        self._executor.shutdown(wait=False)

    def _close_connection(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _run(self, call: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self._executor.submit(call))

    async def __aenter__(self) -> "Client":
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()


class _AsyncServer:
    """A running server whose handler is a coroutine function; stop it with
    ``await server.stop()`` or ``async with``."""

    def __init__(self, server: _SyncServer) -> None:
        self._server = server

    @property
    def address(self) -> str:
        """The address clients reach (see :attr:`ipcfast.Server.address`)."""
        return self._server.address

    @property
    def running(self) -> bool:
        """True until :meth:`stop` has stopped the server."""
        return self._server.running

    async def stop(self) -> None:
        """Stop the server (off the loop, so running handlers can finish). Idempotent."""
        # stop() joins the connection threads, which may be waiting for
        # handlers on this very loop: run it off the loop so they can finish.
        await asyncio.get_running_loop().run_in_executor(None, self._server.stop)

    async def serve_forever(self) -> None:
        """Wait until the task is cancelled, then stop the server."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> "_AsyncServer":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.stop()


async def serve(name: Name, handler: AsyncHandler, **options: Any) -> _AsyncServer:
    """Start a server whose ``handler`` is a coroutine function run on the
    current event loop; returns once it listens. Takes the keyword arguments
    of :class:`ipcfast.Server`. A handler that raises (or returns a wrong
    type) gives the client RemoteError, as with a plain handler. With
    ``zero_copy=True`` the request is a read-only memoryview, valid until
    the coroutine returns."""
    loop = asyncio.get_running_loop()

    def bridge(request: bytes) -> Union[BytesLike, Any]:
        # Runs on a connection thread: hand the request to the loop and wait
        # (the GIL is free meanwhile).
        return asyncio.run_coroutine_threadsafe(_call(handler, request), loop).result()

    server = _SyncServer(name, bridge, **options)
    await loop.run_in_executor(None, server.start)
    return _AsyncServer(server)


async def _call(handler: AsyncHandler, request: bytes) -> BytesLike:
    return await handler(request)
