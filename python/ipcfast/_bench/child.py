"""The server and client processes (``python -m ipcfast._bench child IMPL MODE ADDR``).

The same modes and output lines as the C programs (bench/bench_driver.h):

serve      start IMPL's echo server, print "READY <addr>", stop when stdin closes
lat        per size: warm-up round trips, then timed ones; one JSON line per size
rate       warm up, print "READY"; per stdin line "START_NS END_NS", round trips
           until END and print {"count", "elapsed_ns"}
loopserve  a native server whose main thread runs a main loop (idle/frame/spin)
paced      a client with random pauses between requests (the main-loop cases)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import sys
import threading
import time
from typing import Any, Callable, List, Optional

from .peers import PEERS, Connection
from .profiles import (
    MAINLOOP_BUSY_S,
    MAINLOOP_FRAME_S,
    MAINLOOP_GAP_S,
    MAINLOOP_SIZE,
    MAINLOOP_SPIN_WORK,
    MAINLOOP_WARMUP,
    RATE_SIZE,
    RATE_WARMUP,
    ints,
)


def payload(size: int) -> bytes:
    """size bytes of a-z, the same pattern the C programs send."""
    return (b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]


def _check(response: bytes, size: int) -> None:
    if len(response) != size:
        raise SystemExit(f"bad echo: {len(response)} bytes for {size}")


def _connect(impl: str, addr: str) -> Connection:
    if impl not in PEERS:
        raise SystemExit(f"unknown implementation {impl!r}")
    return PEERS[impl].connect(addr)


def serve(impl: str, addr: str) -> None:
    stop = PEERS[impl].serve(addr)
    print(f"READY {addr}", flush=True)
    sys.stdin.read()
    stop()
    sys.stdout.flush()
    os._exit(0)  # daemon threads of the peers block in their own loops


def latency(impl: str, addr: str, sizes: List[int], iters: List[int], warmups: List[int]) -> None:
    roundtrip, close = _connect(impl, addr)
    perf = time.perf_counter_ns
    for size, n, w in zip(sizes, iters, warmups):
        data = payload(size)
        for _ in range(w):
            _check(roundtrip(data), size)
        ns = [0] * n
        response = b""
        for i in range(n):
            t0 = perf()
            response = roundtrip(data)
            ns[i] = perf() - t0
        _check(response, size)
        print(json.dumps({"size": size, "ns": ns}), flush=True)
    close()


def _window(roundtrip: Callable[[bytes], bytes], data: bytes, start: int, end: int) -> str:
    mono = time.monotonic_ns
    delay = (start - mono()) / 1e9
    if delay > 0:
        time.sleep(delay)
    count = 0
    now = mono()
    while now < end:
        roundtrip(data)
        count += 1
        now = mono()
    return json.dumps({"count": count, "elapsed_ns": now - start})


def rate(impl: str, addr: str, size: int, warmup: int) -> None:
    roundtrip, close = _connect(impl, addr)
    data = payload(size)
    for _ in range(warmup):
        _check(roundtrip(data), size)
    print("READY", flush=True)
    for line in sys.stdin:
        start, end = (int(x) for x in line.split())
        print(_window(roundtrip, data, start, end), flush=True)
    close()


# ---- main-loop cases ----------------------------------------------------------------


class LoopCounters:
    def __init__(self) -> None:
        self.turns = 0
        self.handled = 0
        self.late_frames = 0


def _busy_until(deadline: float) -> int:
    """Python work that holds the GIL until ``deadline`` (perf_counter)."""
    perf = time.perf_counter
    x = 0
    while perf() < deadline:
        x += 1
    return x


def _wait_rest_of_frame(server: Any, selector: Optional[selectors.BaseSelector], frame_end: float) -> int:
    """Sleep (thread dispatch), or wait on the server's handle and dispatch (manual)."""
    perf = time.perf_counter
    if selector is None:
        remaining = frame_end - perf()
        if remaining > 0:
            time.sleep(remaining)
        return 0
    handled = 0
    remaining = frame_end - perf()
    while remaining > 0:
        if selector.select(remaining):
            handled += server.dispatch(0)
        remaining = frame_end - perf()
    return handled + int(server.dispatch(0))


def frame_loop(server: Any, manual: bool, done: threading.Event, counters: LoopCounters) -> None:
    """1 kHz frames: MAINLOOP_BUSY_S of busy Python, then the rest of the frame waiting."""
    selector: Optional[selectors.BaseSelector] = None
    if manual:
        selector = selectors.DefaultSelector()
        selector.register(server.fileno(), selectors.EVENT_READ)
    perf = time.perf_counter
    frame_start = perf()
    while not done.is_set():
        frame_end = frame_start + MAINLOOP_FRAME_S
        _busy_until(frame_start + MAINLOOP_BUSY_S)
        counters.handled += _wait_rest_of_frame(server, selector, frame_end)
        counters.turns += 1
        now = perf()
        late = now - frame_end > MAINLOOP_FRAME_S
        counters.late_frames += late
        frame_start = now if late else frame_end  # a whole frame behind: do not try to catch up


def spin_loop(server: Any, manual: bool, done: threading.Event, counters: LoopCounters) -> None:
    """A tight Python loop that never releases the GIL on its own; dispatches every turn (manual)."""
    work = range(MAINLOOP_SPIN_WORK)
    dispatch_now: Callable[[float], int] = server.dispatch if manual else (lambda timeout: 0)
    while not done.is_set():
        for _ in work:
            pass
        counters.handled += dispatch_now(0)
        counters.turns += 1


def idle_loop(server: Any, manual: bool, done: threading.Event, counters: LoopCounters) -> None:
    done.wait()


LOOPS = {"idle": idle_loop, "frame": frame_loop, "spin": spin_loop}


def loop_serve(addr: str, dispatch: str, style: str) -> None:
    """A native echo server whose main thread runs the ``style`` loop until
    stdin closes (watched by a thread), then prints the loop's counters."""
    import ipcfast

    server = ipcfast.Server(addr, lambda request: request, dispatch=dispatch)
    server.start()
    done = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {server.address}", flush=True)
    counters = LoopCounters()
    started = time.perf_counter()
    try:
        LOOPS[style](server, dispatch == "manual", done, counters)
    finally:
        server.stop()
    record = {**vars(counters), "seconds": time.perf_counter() - started}
    print(json.dumps(record), flush=True)


def paced(addr: str, count: int, deadline_s: float) -> None:
    """``count`` 16-byte requests with a random pause (MAINLOOP_GAP_S) before
    each; prints the round-trip times (ns). Stops early after ``deadline_s``."""
    import ipcfast

    rng = random.Random(7)
    client = ipcfast.Client(addr, connect_timeout=30)
    data = payload(MAINLOOP_SIZE)
    perf = time.perf_counter_ns
    low, high = MAINLOOP_GAP_S
    for _ in range(MAINLOOP_WARMUP):
        time.sleep(rng.uniform(low, high))
        _check(client.request(data), MAINLOOP_SIZE)
    ns: List[int] = []
    end = time.monotonic() + deadline_s
    while len(ns) < count and time.monotonic() <= end:
        time.sleep(rng.uniform(low, high))
        t0 = perf()
        response = client.request(data)
        ns.append(perf() - t0)
        _check(response, MAINLOOP_SIZE)
    client.close()
    print(json.dumps({"ns": ns, "truncated": len(ns) < count}), flush=True)


def child_main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(prog="ipcfast._bench child")
    p.add_argument("impl")
    p.add_argument("mode", choices=["serve", "lat", "rate", "loopserve", "paced"])
    p.add_argument("addr")
    p.add_argument("--cpu", type=int)
    p.add_argument("--sizes", type=ints)
    p.add_argument("--iters", type=ints)
    p.add_argument("--warmup", type=ints)
    p.add_argument("--size", type=int, default=RATE_SIZE)
    p.add_argument("--dispatch", choices=["thread", "manual"], default="thread")
    p.add_argument("--style", choices=list(LOOPS), default="idle")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--deadline", type=float, default=60.0)
    a = p.parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    if a.mode == "serve":
        serve(a.impl, a.addr)
    elif a.mode == "loopserve":
        loop_serve(a.addr, a.dispatch, a.style)
    elif a.mode == "paced":
        paced(a.addr, a.count, a.deadline)
    elif a.mode == "lat":
        latency(a.impl, a.addr, a.sizes, a.iters, a.warmup)
    else:
        rate(a.impl, a.addr, a.size, (a.warmup or [RATE_WARMUP])[0])
