"""What docs/protocol.md says, checked against both backends (issue 13, "The
protocol text"): after an ERROR the connection stays usable, except after
the two transport refusals, which the server marks with a reserved prefix
and follows with a close; and the server's own protocol-error ERROR uses
that prefix.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Iterator, List

import pytest

import ipcfast
from conftest import MakeClient, echo, posix_only, recv_exactly
from ipcfast import _codec

pytestmark = posix_only


class _ScriptedServer:
    """A hand-written v1 server: handshakes, answers each REQUEST with the
    next scripted ERROR text, and closes after the texts that ask for it."""

    def __init__(self, path: str, texts: List[bytes], close_after: int) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.texts = texts
        self.close_after = close_after
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            hello = recv_exactly(conn, _codec.HANDSHAKE_MESSAGE_SIZE)
            conn.sendall(_codec.encode_handshake_reply(hello[: _codec.HANDSHAKE_SIZE]))
            for index, text in enumerate(self.texts):
                header = recv_exactly(conn, 5)
                recv_exactly(conn, int.from_bytes(header[1:5], "little"))
                conn.sendall(_codec.encode_header(_codec.PacketType.ERROR, len(text)) + text)
                if index + 1 == self.close_after:
                    return

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def sock_path(tmp_path: "os.PathLike[str]") -> Iterator[str]:
    yield os.path.join(str(tmp_path), "scripted.sock")


def test_handler_error_leaves_the_connection_usable(make_client: MakeClient, sock_path: str) -> None:
    server = _ScriptedServer(sock_path, [b"first failure", b"second failure"], close_after=2)
    try:
        with make_client(sock_path, connect_timeout=5) as client:
            with pytest.raises(ipcfast.RemoteError, match="first failure"):
                client.request(b"a")
            assert not client.closed
            with pytest.raises(ipcfast.RemoteError, match="second failure"):
                client.request(b"b")
    finally:
        server.close()


def test_protocol_error_prefix_ends_the_connection(make_client: MakeClient, sock_path: str) -> None:
    text = _codec.PROTOCOL_ERROR_PREFIX + b"packet type 4 is not accepted by this server"
    server = _ScriptedServer(sock_path, [text], close_after=1)
    try:
        client = make_client(sock_path, connect_timeout=5)
        try:
            with pytest.raises(ipcfast.ProtocolError, match="packet type 4"):
                client.request(b"a")
            with pytest.raises(ipcfast.ConnectionClosed):
                client.request(b"b")
        finally:
            client.close()
    finally:
        server.close()


def test_servers_mark_their_protocol_error_with_the_prefix(make_server: object, name: str) -> None:
    """A CANCEL (a node packet) sent to a plain server: both servers answer
    with the prefixed ERROR and close."""
    assert callable(make_server)
    with make_server(name, echo) as server:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(server.address)
            sock.sendall(_codec.encode_handshake_request(_codec.DEFAULT_HANDSHAKE))
            recv_exactly(sock, _codec.HANDSHAKE_MESSAGE_SIZE)
            sock.sendall(_codec.encode_header(_codec.PacketType.CANCEL, 0))
            header = recv_exactly(sock, 5)
            assert header[0] == _codec.PacketType.ERROR
            text = recv_exactly(sock, int.from_bytes(header[1:5], "little"))
            assert text.startswith(_codec.PROTOCOL_ERROR_PREFIX), text
            assert sock.recv(1) == b""


def test_half_close_after_the_last_request_still_gets_every_answer(make_server: object, name: str) -> None:
    """docs/protocol.md 6.3: a client that half-closes after its requests
    gets an answer to each complete one, then the end of the stream."""
    assert callable(make_server)
    with make_server(name, echo) as server:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(server.address)
            requests = [b"one", b"two", b"three"]
            sock.sendall(
                _codec.encode_handshake_request(_codec.DEFAULT_HANDSHAKE)
                + b"".join(_codec.encode_header(_codec.PacketType.REQUEST, len(r)) + r for r in requests)
            )
            sock.shutdown(socket.SHUT_WR)
            recv_exactly(sock, _codec.HANDSHAKE_MESSAGE_SIZE)
            for request in requests:
                header = recv_exactly(sock, 5)
                assert header[0] == _codec.PacketType.RESPONSE
                assert recv_exactly(sock, int.from_bytes(header[1:5], "little")) == request
            assert sock.recv(1) == b""


@pytest.mark.parametrize("bad", ["x.lock", "dir/x.lock"])
def test_names_ending_in_lock_are_invalid(make_client: MakeClient, make_server: object, bad: str) -> None:
    assert callable(make_server)
    with pytest.raises(ipcfast.InvalidArgument, match=r"\.lock"):
        make_server(bad, echo).start()
    with pytest.raises(ipcfast.InvalidArgument, match=r"\.lock"):
        make_client(bad, connect_timeout=0)
