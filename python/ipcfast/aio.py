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
import functools
from types import TracebackType
from typing import Any, Awaitable, Callable, Optional, Type, Union

from ._base import BytesLike, Name
from ._base import Client as _SyncClient
from ._base import Server as _SyncServer

__all__ = ["Client", "serve", "AsyncHandler"]

#: An asyncio request handler: request bytes in, response bytes out.
AsyncHandler = Callable[[bytes], Awaitable[BytesLike]]


class Client:
    """An awaitable client: ``async with ipcfast.aio.Client(name) as c:
    await c.request(b"...")``. Takes the keyword arguments of
    :class:`ipcfast.Client`; connecting happens in a worker thread too."""

    def __init__(self, name: Name, **options: Any) -> None:
        self._name = name
        self._options = options
        self._client: Optional[_SyncClient] = None
        # One worker: requests on one connection are serialized anyway, and
        # a single thread keeps their order.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipcfast-aio")

    async def connect(self) -> "Client":
        """Connect (called by ``async with``; idempotent)."""
        if self._client is None:
            self._client = await self._run(functools.partial(_SyncClient, self._name, **self._options))
        return self

    async def request(self, data: BytesLike, timeout: Optional[float] = None) -> bytes:
        """Send one request and return the response (see
        :meth:`ipcfast.Client.request`). Cancelling it aborts the round trip
        and closes the connection; the next request opens a new one."""
        if self._client is None:
            await self.connect()
        # Bytes-like objects the caller may change later are copied now: the
        # request runs after this coroutine yields.
        payload = data if isinstance(data, bytes) else bytes(data)
        future = self._executor.submit(self._request_now, payload, timeout)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # Not started yet: cancelling the future is enough. Running: the
            # round trip is cut short by closing the client (close() from
            # another thread wakes the request and waits for it to leave).
            # The one worker runs one request at a time, so the client now
            # in use is the one running this request.
            client = self._client
            if not future.cancel() and not future.done() and client is not None:
                self._abort(client)
            raise

    def _request_now(self, payload: bytes, timeout: Optional[float]) -> bytes:
        """On the worker thread. The client is looked up now, not when the
        request was queued: one queued behind a request that was cancelled
        meanwhile (whose client was closed by the abort) connects again."""
        client = self._client
        if client is None or client.closed:
            client = self._client = _SyncClient(self._name, **self._options)
        return client.request(payload, timeout)

    def _abort(self, client: _SyncClient) -> None:
        if self._client is client:
            self._client = None
        client.close()

    async def close(self) -> None:
        """Close the connection once pending requests are done."""
        client, self._client = self._client, None
        if client is not None:
            await self._run(client.close)
        self._executor.shutdown(wait=False)

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
    type) gives the client RemoteError, as with a plain handler."""
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
