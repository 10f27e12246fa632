"""Failures: every one arrives as a clear ipcfast exception, never a crash or
a hang, and the server keeps serving everyone else."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Dict, List

import pytest

import ipcfast
from ipcfast import _errors
from ipcfast._errors import Result
from ipcfast._native import ffi, lib, raise_from_error

from conftest import BACKENDS, LogCatcher, MakeClient, MakeServer, echo, posix_only, wait_for

# ---- the exception classes ---------------------------------------------------


@pytest.mark.parametrize(
    "cls, bases",
    [
        (ipcfast.IPCError, (OSError,)),
        (ipcfast.ServerNotFound, (ipcfast.IPCError, FileNotFoundError, OSError)),
        (ipcfast.ServerBusy, (ipcfast.IPCError,)),
        (ipcfast.HandshakeError, (ipcfast.IPCError, ConnectionError)),
        (ipcfast.ConnectionClosed, (ipcfast.IPCError, ConnectionResetError, ConnectionError)),
        (ipcfast.MessageTooLarge, (ipcfast.IPCError, ValueError)),
        (ipcfast.RemoteError, (ipcfast.IPCError,)),
        (ipcfast.AddressInUse, (ipcfast.IPCError,)),
        (ipcfast.AccessDenied, (ipcfast.IPCError, PermissionError)),
        (ipcfast.Timeout, (ipcfast.IPCError, TimeoutError)),
        (ipcfast.InvalidArgument, (ipcfast.IPCError, ValueError)),
        (ipcfast.NameTooLong, (ipcfast.IPCError, ValueError)),
        (ipcfast.NoMemory, (ipcfast.IPCError, MemoryError)),
        (ipcfast.ClientInUse, (ipcfast.IPCError, RuntimeError)),
        (ipcfast.ProtocolError, (ipcfast.IPCError,)),
    ],
)
def test_exception_hierarchy(cls: type, bases: tuple) -> None:
    exc = cls("what happened; what to do")
    for base in bases:
        assert isinstance(exc, base), (cls, base)
    assert isinstance(exc, OSError)
    assert str(exc) == "what happened; what to do"
    assert exc.code == "IPC_E_SYSTEM" and exc.system_error == 0
    with pytest.raises(ipcfast.IPCError):
        raise exc


def test_result_enum_matches_the_built_module() -> None:
    """Result mirrors the C enum: the same names and numbers as the built
    module's IPC_... constants, and c_name is what ipc_result_name() says."""
    c_names = [name for name in dir(lib) if name == "IPC_OK" or name.startswith("IPC_E_")]
    assert sorted(c_names) == sorted(result.c_name for result in Result)
    for result in Result:
        assert getattr(lib, result.c_name) == result.value, result
        assert ffi.string(lib.ipc_result_name(result)).decode() == result.c_name


def test_error_table_covers_every_c_result() -> None:
    assert set(_errors.ERROR_CLASSES) == set(Result) - {Result.OK}
    for result, cls in _errors.ERROR_CLASSES.items():
        for code in (result, result.c_name):  # a Result or its C name
            exc = _errors.error_for_code(code, "msg", 7)
            assert type(exc) is cls
            assert (exc.code, exc.system_error, str(exc)) == (result.c_name, 7, "msg")
    assert type(_errors.error_for_code("IPC_E_SYSTEM", "m")) is ipcfast.IPCError
    unknown = _errors.error_for_code("IPC_E_FUTURE", "m")
    assert type(unknown) is ipcfast.IPCError and unknown.code == "IPC_E_FUTURE"


def test_raise_from_error_reads_and_clears() -> None:
    err = ffi.new("ipc_error *")
    # A heap message the C core can free: make one through a real C failure.
    out = ffi.new("ipc_client_t **")
    rc = lib.ipc_client_open(out, b"", ffi.NULL, 0, err)
    assert rc == lib.IPC_E_INVALID and err.message != ffi.NULL
    with pytest.raises(ipcfast.InvalidArgument) as info:
        raise_from_error(err)
    assert info.value.code == "IPC_E_INVALID"
    assert "name" in str(info.value)
    assert err.code == 0 and err.message == ffi.NULL  # cleared
    # Without a message, the code name is used.
    err.code = lib.IPC_E_TIMEOUT
    err.system_error = 110
    with pytest.raises(ipcfast.Timeout) as info2:
        raise_from_error(err)
    assert "IPC_E_TIMEOUT" in str(info2.value) and info2.value.system_error == 110


def test_exceptions_pickle() -> None:
    import pickle

    exc = _errors.error_for_code("IPC_E_BUSY", "busy; retry later", 11)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is ipcfast.ServerBusy
    assert (str(back), back.code, back.system_error) == ("busy; retry later", "IPC_E_BUSY", 11)


# ---- handler failures ----------------------------------------------------------


def test_handler_exception_is_remote_error(
    name: str, ipc_log: LogCatcher, make_server: MakeServer, make_client: MakeClient
) -> None:
    def handler(request: bytes) -> bytes:
        if request == b"boom":
            raise ValueError("boom happened")
        return request

    with make_server(name, handler):
        with make_client(name) as client:
            with pytest.raises(ipcfast.RemoteError) as info:
                client.request(b"boom")
            assert "ValueError: boom happened" in str(info.value)
            assert info.value.code == "IPC_E_REMOTE"
            # The connection and the server stay usable.
            assert client.request(b"fine") == b"fine"
        with make_client(name) as other:
            assert other.request(b"other") == b"other"
    record = ipc_log.find("the handler raised", logging.ERROR)
    assert record is not None, ipc_log.messages()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


@pytest.mark.parametrize(
    "value, expected",
    [
        ("text", "handler returned str, expected bytes-like"),
        (None, "handler returned NoneType, expected bytes-like"),
        (42, "handler returned int, expected bytes-like"),
    ],
)
def test_handler_returning_a_non_bytes_value(
    name: str, value: Any, expected: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    with make_server(name, lambda r: value if r == b"bad" else r):
        with make_client(name) as client:
            with pytest.raises(ipcfast.RemoteError, match=expected):
                client.request(b"bad")
            assert client.request(b"good") == b"good"


def test_handler_raising_base_exceptions_does_not_kill_the_server(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    def handler(request: bytes) -> bytes:
        if request == b"exit":
            raise SystemExit(3)
        if request == b"interrupt":
            raise KeyboardInterrupt
        return request

    with make_server(name, handler):
        with make_client(name) as client:
            with pytest.raises(ipcfast.RemoteError, match="SystemExit"):
                client.request(b"exit")
            with pytest.raises(ipcfast.RemoteError, match="KeyboardInterrupt"):
                client.request(b"interrupt")
            assert client.request(b"ok") == b"ok"


# ---- connecting ---------------------------------------------------------------------


def test_no_server_is_server_not_found_within_the_budget(name: str, make_client: MakeClient) -> None:
    t0 = time.monotonic()
    with pytest.raises(ipcfast.ServerNotFound) as info:
        make_client(name, connect_timeout=0.5, wait_for_server=True)
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 3.0, elapsed
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.code == "IPC_E_NOT_FOUND"
    assert name in str(info.value) and "start one" in str(info.value)


def test_no_server_with_zero_budget_fails_at_once(name: str, make_client: MakeClient) -> None:
    t0 = time.monotonic()
    with pytest.raises(ipcfast.ServerNotFound):
        make_client(name, connect_timeout=0)
    assert time.monotonic() - t0 < 1.0


def test_wrong_key_is_handshake_error(
    name: str, ipc_log: LogCatcher, make_server: MakeServer, make_client: MakeClient
) -> None:
    with make_server(name, echo, key="right"):
        t0 = time.monotonic()
        with pytest.raises(ipcfast.HandshakeError) as info:
            make_client(name, key="wrong", connect_timeout=5)
        assert time.monotonic() - t0 < 4.0, "a wrong key should fail fast, not time out"
        assert isinstance(info.value, ConnectionError)
        assert info.value.code == "IPC_E_HANDSHAKE"
        with pytest.raises(ipcfast.HandshakeError):
            make_client(name, connect_timeout=5)  # no key vs a key
        with make_client(name, key="right") as client:
            assert client.request(b"ok") == b"ok"
    assert wait_for(lambda: ipc_log.find("handshake mismatch") is not None)


def test_second_server_on_one_name_is_address_in_use(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    for backend in BACKENDS:  # a live server's name is never taken over, whatever the backends
        second = ipcfast.Server(echo_server.name, echo, backend=backend)
        with pytest.raises(ipcfast.AddressInUse) as info:
            second.start()
        assert info.value.code == "IPC_E_ADDRESS_IN_USE"
        assert "already serving" in str(info.value)
        assert not second.running
        second.stop()  # harmless
    # The first server is untouched.
    with make_client(echo_server.name) as client:
        assert client.request(b"first") == b"first"


def test_name_too_long(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    with pytest.raises(ipcfast.NameTooLong) as info:
        make_server(name + "x" * 300, echo).start()
    assert isinstance(info.value, ValueError)
    assert info.value.code == "IPC_E_NAME_TOO_LONG"
    with pytest.raises(ipcfast.NameTooLong):
        make_client(name + "x" * 300, connect_timeout=0.2)


# ---- raw sockets: foreign and wrong handshakes ----------------------------------------


def raw_connect(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@posix_only
def test_foreign_first_byte_gets_ff_then_eof(
    echo_server: ipcfast.Server, ipc_log: LogCatcher, make_client: MakeClient
) -> None:
    with raw_connect(echo_server.address) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        t0 = time.monotonic()
        assert recv_all(sock) == b"\xff"
        assert time.monotonic() - t0 < 3.0, "the refusal must not wait for the handshake timeout"
    with make_client(echo_server.name) as client:
        assert client.request(b"others still served") == b"others still served"
    # The server's warning reaches logging.getLogger("ipcfast") (native: the
    # C core's, through the log bridge; pure: logged there directly).
    assert wait_for(lambda: ipc_log.find("foreign client", logging.WARNING) is not None), ipc_log.messages()
    assert ipc_log.find("foreign client").name == "ipcfast"  # type: ignore[union-attr]


@posix_only
def test_single_foreign_byte_is_refused_at_once(echo_server: ipcfast.Server) -> None:
    with raw_connect(echo_server.address) as sock:
        sock.sendall(b"G")
        assert recv_all(sock) == b"\xff"


@posix_only
def test_wrong_handshake_bytes_get_eof(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    good = ipcfast.handshake_value()
    wrong = b"\x00" + bytes(b ^ 0xFF for b in good[1:])
    with raw_connect(echo_server.address) as sock:
        sock.sendall(wrong + b"\x01")
        assert recv_all(sock) == b""
    with make_client(echo_server.name) as client:
        assert client.request(b"x") == b"x"


@posix_only
def test_raw_handshake_and_packets(echo_server: ipcfast.Server) -> None:
    """The wire protocol by hand: handshake reply, a request, a response."""
    value = ipcfast.handshake_value()
    with raw_connect(echo_server.address) as sock:
        sock.sendall(value + b"\x01")
        reply = b""
        while len(reply) < 9:
            chunk = sock.recv(9 - len(reply))
            assert chunk
            reply += chunk
        assert reply[:8] == bytes(b ^ 0x5A for b in value)
        # Vs, the server's highest version: 2 where it offers shared memory
        # (the native server's default), else 1.
        assert reply[8] == (2 if echo_server.backend == "native" else 1)
        body = b"raw\x00request"
        sock.sendall(bytes([lib.IPC_PACKET_REQUEST]) + len(body).to_bytes(4, "little") + body)
        header = b""
        while len(header) < 5:
            header += sock.recv(5 - len(header))
        assert header[0] == lib.IPC_PACKET_RESPONSE
        length = int.from_bytes(header[1:5], "little")
        data = b""
        while len(data) < length:
            data += sock.recv(length - len(data))
        assert data == body


@posix_only
def test_garbage_packet_closes_only_that_connection(echo_server: ipcfast.Server, make_client: MakeClient) -> None:
    value = ipcfast.handshake_value()
    with raw_connect(echo_server.address) as sock:
        sock.sendall(value + b"\x01")
        got = b""
        while len(got) < 9:
            got += sock.recv(9 - len(got))
        sock.sendall(b"\x3f\x01\x00\x00\x00x")  # unknown packet type 63
        rest = recv_all(sock)  # an ERROR packet at most, then EOF
        assert rest == b"" or rest[0] == lib.IPC_PACKET_ERROR
    with make_client(echo_server.name) as client:
        assert client.request(b"fine") == b"fine"


@posix_only
def test_silent_client_is_dropped_after_the_handshake_timeout(name: str, make_server: MakeServer) -> None:
    with make_server(name, echo, handshake_timeout=0.3) as server:
        with raw_connect(server.address) as sock:
            sock.sendall(b"\x00")  # a valid first byte, then nothing
            t0 = time.monotonic()
            assert recv_all(sock) == b""
            assert time.monotonic() - t0 < 3.0


# ---- sizes -----------------------------------------------------------------------------


def test_oversize_request_is_message_too_large(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    with make_server(name, echo, max_message=1024):
        with make_client(name) as client:
            assert client.request(b"a" * 1024) == b"a" * 1024  # the limit itself is fine
            with pytest.raises(ipcfast.MessageTooLarge) as info:
                client.request(b"a" * 4096)
            text = str(info.value)
            assert "4096" in text and "1024" in text, text
            assert isinstance(info.value, ValueError)
            # The connection is closed after that...
            with pytest.raises(ipcfast.ConnectionClosed):
                client.request(b"small")
        # ...but the server keeps serving.
        with make_client(name) as client:
            assert client.request(b"small") == b"small"


def test_oversize_request_refused_while_the_client_is_still_writing(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    """8 MiB against max_message=1024: the server refuses on the header and
    closes while the client is blocked writing; the client still reports
    why (the ERROR packet waiting for it), not just a broken pipe."""
    with make_server(name, echo, max_message=1024):
        with make_client(name) as client:
            t0 = time.monotonic()
            with pytest.raises(ipcfast.MessageTooLarge) as info:
                client.request(b"b" * (8 * 1024 * 1024), timeout=10)
            assert time.monotonic() - t0 < 5
            assert str(info.value) == ("the request of 8388608 bytes exceeds the server's max_message of 1024 bytes"), (
                str(info.value)
            )
            with pytest.raises(ipcfast.ConnectionClosed):
                client.request(b"small")
        with make_client(name) as client:
            assert client.request(b"small") == b"small"


def test_oversize_response_from_the_handler(
    name: str, ipc_log: LogCatcher, make_server: MakeServer, make_client: MakeClient
) -> None:
    with make_server(name, lambda r: r * 1000, max_message=4096):
        with make_client(name) as client:
            assert client.request(b"abc") == b"abc" * 1000  # 3000 bytes: fine
            with pytest.raises(ipcfast.MessageTooLarge) as info:
                client.request(b"abcdefgh")  # 8000 bytes: above the server's max
            assert "8000" in str(info.value)
        with make_client(name) as client:
            assert client.request(b"x") == b"x" * 1000
    assert wait_for(lambda: ipc_log.find("exceeds the server's max_message", logging.ERROR) is not None)
    assert ipc_log.find("above max_message") is not None  # the Python layer's note, with the name


def test_response_above_client_max_message(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    with make_server(name, lambda r: b"z" * 5000):
        with make_client(name, max_message=4096) as client:
            with pytest.raises(ipcfast.MessageTooLarge) as info:
                client.request(b"x")
            assert "5000" in str(info.value) and "4096" in str(info.value)
            with pytest.raises(ipcfast.ConnectionClosed):
                client.request(b"x")
        with make_client(name, max_message=5000) as client:
            assert client.request(b"x") == b"z" * 5000


# ---- timeouts and stopping ----------------------------------------------------------------


def test_request_timeout(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    release = threading.Event()

    def slow(request: bytes) -> bytes:
        if request == b"slow":
            release.wait(10)
        return request

    with make_server(name, slow):
        try:
            with make_client(name) as client:
                t0 = time.monotonic()
                with pytest.raises(ipcfast.Timeout) as info:
                    client.request(b"slow", timeout=0.2)
                elapsed = time.monotonic() - t0
                assert 0.15 <= elapsed < 3.0, elapsed
                assert isinstance(info.value, TimeoutError)
                assert info.value.code == "IPC_E_TIMEOUT"
                # A late answer would be read by the next request: closed instead.
                with pytest.raises(ipcfast.ConnectionClosed):
                    client.request(b"next")
            with make_client(name, timeout=0.2) as client:  # the client's default
                with pytest.raises(ipcfast.Timeout):
                    client.request(b"slow")
            with make_client(name, timeout=0.2) as client:  # per call overrides it
                assert client.request(b"quick", timeout=5) == b"quick"
        finally:
            release.set()


def test_stop_while_a_request_is_in_flight(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    entered = threading.Event()

    def slow(request: bytes) -> bytes:
        entered.set()
        time.sleep(0.5)
        return b"done"

    outcome: Dict[str, Any] = {}

    def call() -> None:
        try:
            with make_client(name) as client:
                outcome["response"] = client.request(b"work")
        except BaseException as exc:
            outcome["error"] = exc

    server = make_server(name, slow)
    server.start()
    thread = threading.Thread(target=call)
    thread.start()
    assert entered.wait(10)
    t0 = time.monotonic()
    server.stop()
    stop_time = time.monotonic() - t0
    thread.join(10)
    assert not thread.is_alive(), "the client hung after the server stopped"
    assert stop_time < 5.0
    if "error" in outcome:
        assert isinstance(outcome["error"], ipcfast.ConnectionClosed), outcome
    else:
        assert outcome["response"] == b"done"


def test_stop_with_idle_clients_connected(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    server = make_server(name, echo)
    server.start()
    clients = [make_client(name) for _ in range(5)]
    for c in clients:
        assert c.request(b"hi") == b"hi"
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 5.0
    for c in clients:
        with pytest.raises(ipcfast.ConnectionClosed):
            c.request(b"hi", timeout=5)
        c.close()


def test_client_blocked_in_a_request_sees_stop(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    """A handler that never finishes by itself: stop still returns (after the
    grace period) and the client gets ConnectionClosed, not a hang."""
    release = threading.Event()
    entered = threading.Event()

    def stuck(request: bytes) -> bytes:
        entered.set()
        release.wait(3)
        return b"late"

    outcome: List[Any] = []

    def call() -> None:
        try:
            with make_client(name) as client:
                outcome.append(client.request(b"x"))
        except BaseException as exc:
            outcome.append(exc)

    server = make_server(name, stuck)
    server.start()
    thread = threading.Thread(target=call)
    thread.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    thread.join(8)
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert not thread.is_alive(), "client hung"
    assert len(outcome) == 1
    assert outcome[0] == b"late" or isinstance(outcome[0], ipcfast.ConnectionClosed), outcome


# ---- slots ---------------------------------------------------------------------------------


def test_max_clients_full_then_a_slot_frees(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    with make_server(name, echo, max_clients=2):
        first = make_client(name)
        second = make_client(name)
        assert first.request(b"1") == b"1" and second.request(b"2") == b"2"

        t0 = time.monotonic()
        with pytest.raises(ipcfast.ServerBusy) as info:
            make_client(name, connect_timeout=0.5)
        assert 0.4 <= time.monotonic() - t0 < 4.0
        assert info.value.code == "IPC_E_BUSY"

        result: Dict[str, Any] = {}

        def third() -> None:
            try:
                client = make_client(name, connect_timeout=15)
                result["answer"] = client.request(b"3")
                client.close()
            except BaseException as exc:
                result["error"] = exc

        thread = threading.Thread(target=third)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and not result, "the third client got in while both slots were taken"
        first.close()
        thread.join(10)
        assert not thread.is_alive()
        assert result == {"answer": b"3"}, result
        assert second.request(b"2") == b"2"
        second.close()


def test_a_client_waiting_for_a_slot_sees_the_stop(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    """All slots taken, a client waits in the backlog; stopping the server
    ends its wait at once with a clear error instead of the whole budget."""
    server = make_server(name, echo, max_clients=1)
    server.start()
    holder = make_client(name)
    assert holder.request(b"mine") == b"mine"
    outcome: List[Any] = []

    def wait_for_slot() -> None:
        try:
            outcome.append(make_client(name, connect_timeout=20))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait_for_slot)
    thread.start()
    try:
        time.sleep(0.3)
        assert thread.is_alive() and not outcome
        t0 = time.monotonic()
        server.stop()
        thread.join(10)
        assert not thread.is_alive(), "the waiting client hung after the stop"
        assert time.monotonic() - t0 < 5
    finally:
        server.stop()
        holder.close()
    assert len(outcome) == 1 and isinstance(outcome[0], ipcfast.HandshakeError), outcome
    assert "is stopping" in str(outcome[0])


def test_an_interrupted_request_closes_the_connection(name: str, make_server: MakeServer) -> None:
    """A pure client interrupted mid-request (KeyboardInterrupt from a signal
    handler) must not leave the late answer for the next request to read."""
    import signal

    if not hasattr(signal, "setitimer"):
        pytest.skip("needs setitimer")

    def slow(request: bytes) -> bytes:
        time.sleep(0.3)
        return request

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with make_server(name, slow):
            with ipcfast.Client(name, backend="pure") as client:
                signal.setitimer(signal.ITIMER_REAL, 0.1)
                with pytest.raises(KeyboardInterrupt):
                    client.request(b"first")
                with pytest.raises(ipcfast.ConnectionClosed, match="interrupted by KeyboardInterrupt"):
                    client.request(b"second")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_error_text_with_nul_bytes_arrives_whole(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    # A NUL inside the handler's error text used to cut the native client's
    # message short; both clients now show it as U+FFFD and keep the rest.
    def handler(request: bytes) -> bytes:
        raise ValueError("before\x00after")

    with make_server(name, handler):
        with make_client(name) as client:
            with pytest.raises(ipcfast.RemoteError) as info:
                client.request(b"x")
    assert str(info.value) == "ValueError: before\ufffdafter"


def test_zero_connect_timeout_means_one_attempt(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    # connect_timeout=0 used to leave no time for the handshake, so it could
    # never reach even an idle live server.
    with make_server(name, echo):
        with make_client(name, connect_timeout=0) as client:
            assert client.request(b"ping") == b"ping"
    started = time.monotonic()
    with pytest.raises(ipcfast.ServerNotFound):
        make_client(name, connect_timeout=0)
    assert time.monotonic() - started < 1.0


def test_a_long_failure_text_is_cut_to_64_kib(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    """A failure text is cut to its first 64 KiB (docs/protocol.md 5), and
    the connection stays in step (issue 13, item 15)."""

    def handler(request: bytes) -> bytes:
        if request == b"fail":
            raise ValueError("x" * 100_000)
        return request

    with make_server(name, handler):
        with make_client(name) as client:
            with pytest.raises(ipcfast.RemoteError) as info:
                client.request(b"fail")
            text = str(info.value)
            assert text.startswith("ValueError: xxx") and len(text.encode()) == 64 * 1024, len(text)
            assert client.request(b"in step") == b"in step"
