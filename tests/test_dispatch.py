"""dispatch="manual": requests are received and framed by the transport,
queued, and handled on the application's thread when it calls dispatch()."""

from __future__ import annotations

import selectors
import threading
import time
from typing import List

import pytest

import ipcfast
from conftest import MakeClient, MakeServer, echo


def _request_in_thread(make_client: MakeClient, name: str, data: bytes, out: List[object]) -> threading.Thread:
    def run() -> None:
        try:
            with make_client(name) as client:
                out.append(client.request(data))
        except Exception as exc:  # recorded for the assertions
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_handler_runs_only_inside_dispatch_on_the_calling_thread(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    seen: List[int] = []

    def handler(request: bytes) -> bytes:
        seen.append(threading.get_ident())
        return request.upper()

    with make_server(name, handler, dispatch="manual") as server:
        answers: List[object] = []
        threads = [_request_in_thread(make_client, name, b"r%d" % i, answers) for i in range(4)]
        time.sleep(0.3)
        assert seen == [] and answers == []  # nothing runs until we dispatch
        handled = 0
        deadline = time.monotonic() + 10
        while handled < 4 and time.monotonic() < deadline:
            handled += server.dispatch(timeout=0.2)
        for t in threads:
            t.join(10)
    assert handled == 4
    assert sorted(answers) == [b"R0", b"R1", b"R2", b"R3"]  # type: ignore[type-var]
    assert set(seen) == {threading.get_ident()}


def test_fileno_is_ready_exactly_while_requests_are_pending(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    with make_server(name, echo, dispatch="manual") as server:
        sel = selectors.DefaultSelector()
        sel.register(server.fileno(), selectors.EVENT_READ)
        assert sel.select(timeout=0.1) == []
        answers: List[object] = []
        thread = _request_in_thread(make_client, name, b"ping", answers)
        assert sel.select(timeout=5.0) != []
        assert server.dispatch() == 1
        thread.join(10)
        assert answers == [b"ping"]
        assert sel.select(timeout=0.1) == []  # drained
        assert server.dispatch(timeout=0) == 0
        sel.close()


def test_a_select_loop_never_spins_on_fileno(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    """A loop that waits on fileno() and dispatches while four clients keep
    sending: every request is answered, and a wake with nothing to dispatch
    (a request taken while it was being announced) is followed by a real one
    or by a wait, never a run of empty wakes longer than the clients that
    could have caused them. Afterwards the descriptor is quiet."""
    clients, per_client = 4, 100
    answers: List[object] = []

    def send(index: int) -> None:
        try:
            with make_client(name) as client:
                for i in range(per_client):
                    data = b"%d-%d" % (index, i)
                    answers.append(client.request(data) == data)
        except Exception as exc:  # recorded for the assertions
            answers.append(exc)

    with make_server(name, echo, dispatch="manual") as server:
        sel = selectors.DefaultSelector()
        sel.register(server.fileno(), selectors.EVENT_READ)
        threads = [threading.Thread(target=send, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        handled, empty_in_a_row, most_empty_in_a_row = 0, 0, 0
        deadline = time.monotonic() + 60
        while handled < clients * per_client and time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                continue
            got = server.dispatch(0)
            handled += got
            empty_in_a_row = 0 if got else empty_in_a_row + 1
            most_empty_in_a_row = max(most_empty_in_a_row, empty_in_a_row)
        for t in threads:
            t.join(10)
        assert handled == clients * per_client
        assert answers == [True] * (clients * per_client)
        assert most_empty_in_a_row <= clients
        # A late announcement may still land: one more dispatch clears it.
        quiet_deadline = time.monotonic() + 5
        while sel.select(timeout=0.05) and time.monotonic() < quiet_deadline:
            assert server.dispatch(0) == 0
        assert sel.select(timeout=0.05) == []
        sel.close()


def test_errors_and_wrong_returns_reach_the_client(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    def handler(request: bytes) -> object:
        if request == b"raise":
            raise KeyError("nope")
        if request == b"str":
            return "text"
        return request

    with make_server(name, handler, dispatch="manual") as server:
        stop = threading.Event()
        pump = threading.Thread(target=lambda: [server.dispatch(0.05) for _ in iter(stop.is_set, True)])
        pump.start()
        try:
            with make_client(name) as client:
                with pytest.raises(ipcfast.RemoteError, match="KeyError"):
                    client.request(b"raise")
                with pytest.raises(ipcfast.RemoteError, match="str"):
                    client.request(b"str")
                assert client.request(b"fine") == b"fine"
        finally:
            stop.set()
            pump.join(10)


def test_stop_wakes_a_waiting_dispatch_and_drops_queued_requests(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    server = make_server(name, echo, dispatch="manual")
    server.start()
    answers: List[object] = []
    thread = _request_in_thread(make_client, name, b"never handled", answers)
    time.sleep(0.3)  # queued, nobody dispatches
    started = time.monotonic()
    server.stop()
    thread.join(10)
    assert time.monotonic() - started < 3.0
    assert len(answers) == 1 and isinstance(answers[0], ipcfast.ConnectionClosed)

    server = make_server(name, echo, dispatch="manual")
    server.start()
    result: List[int] = []
    waiter = threading.Thread(target=lambda: result.append(server.dispatch(timeout=None)))
    waiter.start()
    time.sleep(0.2)
    server.stop()
    waiter.join(5)
    assert not waiter.is_alive() and result == [0]


def test_dispatch_needs_manual_mode_and_a_running_server(name: str, make_server: MakeServer) -> None:
    with make_server(name, echo) as server:
        with pytest.raises(RuntimeError, match="manual"):
            server.dispatch()
        with pytest.raises(RuntimeError, match="manual"):
            server.fileno()
    idle = make_server(name, echo, dispatch="manual")
    with pytest.raises(RuntimeError, match="not running"):
        idle.dispatch()
    with pytest.raises(ValueError):
        make_server(name, echo, dispatch="sometimes")


def test_stop_from_inside_a_dispatched_handler_is_refused(
    name: str, make_server: MakeServer, make_client: MakeClient
) -> None:
    errors: List[BaseException] = []

    def handler(request: bytes) -> bytes:
        try:
            server.stop()
        except RuntimeError as exc:
            errors.append(exc)
        return request

    server = make_server(name, handler, dispatch="manual")
    with server:
        answers: List[object] = []
        thread = _request_in_thread(make_client, name, b"x", answers)
        deadline = time.monotonic() + 10
        while not answers and time.monotonic() < deadline:
            server.dispatch(0.1)
        thread.join(10)
    assert answers == [b"x"]
    assert errors and "deadlock" in str(errors[0])


def test_serve_forever_dispatches_on_its_thread(name: str, make_server: MakeServer, make_client: MakeClient) -> None:
    seen: List[int] = []

    def handler(request: bytes) -> bytes:
        seen.append(threading.get_ident())
        return request

    server = make_server(name, handler, dispatch="manual")
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while not server.running and time.monotonic() < deadline:
            time.sleep(0.01)
        with make_client(name) as client:
            assert client.request(b"a") == b"a"
    finally:
        server.stop()
        loop.join(5)
    assert seen == [loop.ident]
