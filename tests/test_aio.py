"""ipcfast.aio: the awaitable client and the coroutine-handler server."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

import ipcfast
import ipcfast.aio
from conftest import MakeServer, echo


def test_awaitable_client_round_trips(name: str, make_server: MakeServer, client_backend: str) -> None:
    async def main() -> None:
        async with ipcfast.aio.Client(name, backend=client_backend) as client:
            answers = [await client.request(b"n%d" % i) for i in range(20)]
            assert answers == [b"n%d" % i for i in range(20)]
            assert await client.request(bytearray(b"ba")) == b"ba"

    with make_server(name, echo):
        asyncio.run(main())


def test_the_event_loop_keeps_running_during_a_request(name: str, make_server: MakeServer) -> None:
    def slow(request: bytes) -> bytes:
        time.sleep(0.3)
        return request

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        async with ipcfast.aio.Client(name) as client:
            assert await client.request(b"slow") == b"slow"
        task.cancel()
        return ticks

    with make_server(name, slow):
        assert asyncio.run(main()) >= 10  # the loop ran while we waited


def test_a_request_made_right_after_a_cancel_is_answered(name: str, make_server: MakeServer) -> None:
    """A request issued before the cancelled one has unwound (it queues on
    the connection that the cancellation then closes) connects again rather
    than failing with ConnectionClosed (seen with the shared-memory default,
    where a round trip is fast enough to hit it in the guide's sample)."""

    def handler(request: bytes) -> bytes:
        if request == b"slow":
            time.sleep(0.4)
        return request

    async def main() -> None:
        async with ipcfast.aio.Client(name) as client:
            task = asyncio.create_task(client.request(b"slow"))
            await asyncio.sleep(0.05)
            task.cancel()
            assert await client.request(b"next") == b"next"
            with pytest.raises(asyncio.CancelledError):
                await task

    with make_server(name, handler):
        asyncio.run(main())


def test_a_cancelled_request_never_leaves_a_stale_answer(name: str, make_server: MakeServer) -> None:
    def handler(request: bytes) -> bytes:
        if request == b"slow":
            time.sleep(0.4)
        return request

    async def main() -> None:
        async with ipcfast.aio.Client(name) as client:
            task = asyncio.create_task(client.request(b"slow"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The next request gets its own answer, not the cancelled one's.
            assert await client.request(b"next") == b"next"

    with make_server(name, handler):
        asyncio.run(main())


def test_coroutine_handler_server(name: str, server_backend: str) -> None:
    async def handler(request: bytes) -> bytes:
        if request == b"boom":
            raise ValueError("async boom")
        await asyncio.sleep(0.001)
        return request.upper()

    async def main() -> None:
        server = await ipcfast.aio.serve(name, handler, backend=server_backend)
        async with server:
            async with ipcfast.aio.Client(name) as client:
                assert await client.request(b"abc") == b"ABC"
                with pytest.raises(ipcfast.RemoteError, match="async boom"):
                    await client.request(b"boom")
                # Several clients at once, all served by handlers on this loop.
                clients = [ipcfast.aio.Client(name) for _ in range(4)]
                try:
                    answers = await asyncio.gather(*(c.request(b"c%d" % i) for i, c in enumerate(clients)))
                finally:
                    for c in clients:
                        await c.close()
                assert answers == [b"C%d" % i for i in range(4)]
        assert not server.running

    asyncio.run(main())


def test_coroutine_handlers_run_on_the_loop_thread(name: str) -> None:
    seen = []

    async def handler(request: bytes) -> bytes:
        seen.append(threading.get_ident())
        return request

    async def main() -> int:
        server = await ipcfast.aio.serve(name, handler)
        async with server:
            with ipcfast.Client(name) as client:
                # A blocking client would block the loop: use it from a thread.
                await asyncio.get_running_loop().run_in_executor(None, client.request, b"x")
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert seen == [loop_thread]


def _doubled(request: bytes) -> bytes:
    return request + request


@pytest.mark.parametrize("shm", [False, True], ids=["socket", "shm"])
def test_aio_client_on_each_data_path(name: str, make_server: MakeServer, client_backend: str, shm: bool) -> None:
    """aio takes shm=True like the sync client: every pairing works, and a
    native pair on Linux moves to the shared-memory path."""
    sizes = [0, 16, 4096, 300 * 1024, 1024 * 1024]

    async def main() -> None:
        async with ipcfast.aio.Client(name, backend=client_backend, shm=shm, timeout=30) as client:
            inner = client._client
            assert inner is not None
            if inner.backend == "native":
                from ipcfast._ipcfast_cffi import lib

                expected = shm and sys.platform.startswith("linux") and server_backend_of(inner) == "native"
                assert bool(lib.ipc_client_uses_shm(inner._client)) == expected  # type: ignore[attr-defined]
            out = bytearray(2 * max(sizes))
            for size in sizes:
                data = bytes(i % 251 for i in range(size))
                assert await client.request(data) == data + data
                assert await client.request_into(data, out) == 2 * size
                assert out[: 2 * size] == data + data
                view = await client.request_view(data)
                assert view == data + data
            await client.request(b"x")
            with pytest.raises(ValueError):
                view.tobytes()  # released by the next request
            with pytest.raises(ipcfast.BufferTooSmall) as caught:
                await client.request_into(b"abc", bytearray(5))
            assert caught.value.response == b"abcabc"
            assert await client.request(b"still") == b"stillstill"

    servers = {}

    def server_backend_of(_: object) -> str:
        return servers["backend"]

    with make_server(name, _doubled, shm=shm) as server:
        servers["backend"] = server.backend
        asyncio.run(main())


def test_a_request_queued_behind_a_cancelled_one_uses_the_new_connection(
    name: str, make_server: MakeServer, client_backend: str
) -> None:
    """The next request is submitted before the cancelled one is aborted
    (the guide's sample): it must run on a fresh connection, not on the one
    the abort closes (it raised ConnectionClosed now and then before)."""

    def handler(request: bytes) -> bytes:
        if request == b"slow":
            time.sleep(0.05)
        return request

    async def main() -> None:
        async with ipcfast.aio.Client(name, backend=client_backend, timeout=10) as client:
            for i in range(20):
                slow = asyncio.ensure_future(client.request(b"slow"))
                await asyncio.sleep(0.001 * (i % 4))
                slow.cancel()
                assert await client.request(b"next %d" % i) == b"next %d" % i

    with make_server(name, handler):
        asyncio.run(main())
