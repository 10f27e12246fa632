"""The lean request path of the native client (issue 14): responses on
both sides of the inline-copy boundary, every bytes-like request type, and
one client shared by threads (requests take turns, answers never cross)."""

from __future__ import annotations

import threading
from typing import List

import pytest

import ipcfast
from conftest import MakeClient, MakeServer

INLINE = 4096  # IPC_REPLY_INLINE_SIZE in csrc/ipc.h


@pytest.mark.parametrize("size", [0, 1, INLINE - 1, INLINE, INLINE + 1, 65536, 1 << 20])
def test_every_response_size_comes_back_whole(
    size: int, name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    with make_server(name, lambda r: r), make_client(name) as client:
        data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        assert client.request(data) == data
        # A small answer after a large one (and back) is not stale.
        assert client.request(b"x") == b"x"
        assert client.request(data) == data


def test_bytes_like_requests(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    with make_server(name, lambda r: r), make_client(name) as client:
        assert client.request(bytearray(b"abc")) == b"abc"
        assert client.request(memoryview(b"xabcx")[1:4]) == b"abc"
        assert client.request(memoryview(bytearray(b"\x01\x00\x00\x00")).cast("I")) == b"\x01\x00\x00\x00"
        with pytest.raises(TypeError, match="bytes-like"):
            client.request("text")  # type: ignore[arg-type]


def test_threads_sharing_a_client_take_turns(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    crossed: List[bytes] = []
    with make_server(name, lambda r: r), make_client(name) as client:

        def work(tag: int) -> None:
            for i in range(300):
                data = b"%d:%d;" % (tag, i) * (1 + i % 60)
                if client.request(data) != data:
                    crossed.append(data)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not crossed
        assert client.request(b"after") == b"after"
        assert isinstance(client, ipcfast.Client)
