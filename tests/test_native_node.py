"""The native package's typed server-node wrappers (ipcfast._native:
NativeServer.enable_node/next_command, NodeCall, PacketConnection,
decode_command), over a real server and a real connection."""

from __future__ import annotations

import threading
from typing import List

import pytest

import ipcfast
from ipcfast._codec import Command, ExitType, PacketType, decode_console_write, decode_exit
from ipcfast._native import STREAM_STDERR, STREAM_STDOUT, NativeServer, NodeCall, PacketConnection, decode_command

from conftest import echo, posix_only, wait_for

COMMAND = Command([b"python", b"-c", b"pass"], b"/tmp", [b"A=1", b"B=2"], b"C.UTF-8", 0x2)


def _read(conn: PacketConnection, want: int) -> bytes:
    kind, payload = conn.read_packet(5000)
    assert kind == want, (kind, payload)
    return payload


@posix_only
def test_command_console_and_exit(name: str) -> None:
    cancelled: List[NodeCall] = []
    server = NativeServer(name, echo)
    server.enable_node(cancelled.append)
    with server:
        assert server.next_command(0) is None  # nothing queued
        conn = PacketConnection.open(name, 5000)
        assert conn is not None
        try:
            # REQUESTs still go to the handler.
            conn.write_packet(PacketType.REQUEST, b"ping", 5000)
            assert _read(conn, PacketType.RESPONSE) == b"ping"
            conn.send_command(COMMAND, 5000)
            call = server.next_command(5000)
            assert call is not None
            try:
                assert decode_command(call.payload) == COMMAND
                assert not call.cancelled
                assert call.console_write(STREAM_STDOUT, b"out\n")
                assert call.console_write(STREAM_STDERR, memoryview(b"err\n"))
                assert call.exit(3, ExitType.COMPLETED)
            finally:
                call.finish()
            assert decode_console_write(_read(conn, PacketType.CONSOLE_WRITE)) == (STREAM_STDOUT, b"out\n")
            assert decode_console_write(_read(conn, PacketType.CONSOLE_WRITE)) == (STREAM_STDERR, b"err\n")
            assert decode_exit(_read(conn, PacketType.EXIT)) == (3, ExitType.COMPLETED)
            assert conn.read_packet(50) == (0, b"")  # nothing more: a timeout, not an error
        finally:
            conn.close()
    assert cancelled == []
    with pytest.raises(ipcfast.ConnectionClosed):
        server.next_command(0)  # stopped


@posix_only
def test_cancel_reaches_the_listener_with_the_same_call(name: str) -> None:
    cancelled: List[NodeCall] = []
    got_cancel = threading.Event()

    def on_cancel(call: NodeCall) -> None:  # on a C connection thread
        cancelled.append(call)
        got_cancel.set()

    server = NativeServer(name, echo)
    server.enable_node(on_cancel)
    with server:
        conn = PacketConnection.open(name, 5000)
        assert conn is not None
        try:
            conn.send_command(COMMAND, 5000)
            call = server.next_command(5000)
            assert call is not None
            try:
                conn.write_packet(PacketType.CANCEL, b"", 5000)
                assert got_cancel.wait(5)
                assert cancelled == [call]  # equal wrappers of one C call
                assert wait_for(lambda: call.cancelled)
                assert call.exit(130, ExitType.CANCELLED)
            finally:
                call.finish()
            assert decode_exit(_read(conn, PacketType.EXIT)) == (130, ExitType.CANCELLED)
        finally:
            conn.close()


def test_packet_connection_open_answers_none_without_a_server(name: str) -> None:
    assert PacketConnection.open(name, 0) is None


def test_decode_command_refuses_a_malformed_payload() -> None:
    with pytest.raises(ValueError):
        decode_command(b"\x00\x00")
