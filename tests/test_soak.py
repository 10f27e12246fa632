"""Load and soak (SPEC section 8): nothing lost, crossed or corrupted under
load; descriptors, threads and memory flat over many cycles.

The default run does the issue's soak figures and a reduced load;
IPCFAST_SOAK=1 runs the full load and ten times the soak:

  - load: 64 concurrent clients x 100 requests (IPCFAST_SOAK=1: x 10,000),
    random sizes 0 B - 256 KiB, content of each client's own (a third of
    the requests for pairings with a pure client);
  - 10,000 connect/request/close cycles for native-native, 3,000 for the
    pairings with a pure side (IPCFAST_SOAK=1: 100,000 / 30,000);
  - a server started and stopped 1,000 times with one client served and
    one connected across the stop (IPCFAST_SOAK=1: 10,000).

The soak tests print their before/after figures (run pytest with -s to see
them) and assert flatness: open descriptors and OS threads back to the
baseline, RSS within a small margin.
"""

from __future__ import annotations

import json
import os
import random
import threading
from typing import Dict, List


import ipcfast
from conftest import MakeClient, ServerProcess, linux_only, posix_only, run_python, wait_for

pytestmark = [posix_only, linux_only]

SOAK = os.environ.get("IPCFAST_SOAK", "") not in ("", "0")
LOAD_CLIENTS = 64
LOAD_REQUESTS = 10_000 if SOAK else 100
CONNECT_CYCLES = 100_000 if SOAK else 10_000
START_STOP_CYCLES = 10_000 if SOAK else 1_000
RSS_MARGIN_KIB = 8 * 1024


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _own_stats() -> Dict[str, int]:
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(os.listdir("/proc/self/task")),
        "rss_kib": _rss_kib(os.getpid()),
    }


def test_load_no_lost_crossed_or_corrupted_responses(name: str, server_backend: str, client_backend: str) -> None:
    """64 clients at once, each with its own random sizes (0 B - 256 KiB) and
    content that names the client and the request: every response is the
    exact reversed request of that same client and request."""
    requests = LOAD_REQUESTS if client_backend == "native" else max(5, LOAD_REQUESTS // 3)
    errors: List[str] = []
    done = [0] * LOAD_CLIENTS
    with ServerProcess(name, "64", backend=server_backend) as server:

        def run(i: int) -> None:
            rng = random.Random(i)
            try:
                with ipcfast.Client(name, connect_timeout=30, backend=client_backend) as client:
                    for j in range(requests):
                        size = rng.choice((0, 1, rng.randint(0, 256 * 1024)))
                        tag = b"<%d:%d>" % (i, j)
                        body = (tag + rng.randbytes(max(0, size - 2 * len(tag))) + tag)[:size] if size else b""
                        answer = client.request(body, timeout=60)
                        if answer != body[::-1]:
                            errors.append(f"client {i} request {j}: {len(answer)} bytes, expected {len(body)}")
                            return
                        done[i] += 1
            except BaseException as exc:  # noqa: BLE001
                errors.append(f"client {i}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(LOAD_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(3600 if SOAK else 300)
        assert not any(t.is_alive() for t in threads), "clients hang"
        assert not errors, errors[:10]
        assert sum(done) == LOAD_CLIENTS * requests
        assert server.stop() == 0


def test_connect_cycles_keep_descriptors_threads_and_memory_flat(
    name: str, server_backend: str, make_client: MakeClient, client_backend: str
) -> None:
    native = (server_backend, client_backend) == ("native", "native")
    cycles = CONNECT_CYCLES if native else CONNECT_CYCLES * 3 // 10
    with ServerProcess(name, backend=server_backend) as server:
        pid = server.proc.pid

        def stats() -> Dict[str, int]:
            with make_client(name) as client:
                result = json.loads(client.request(b"stats"))
            result["rss_kib"] = _rss_kib(pid)
            return result

        for _ in range(200):  # warm up: allocator arenas, thread stacks, caches
            with make_client(name) as client:
                client.request(b"warm")
        baseline = stats()
        client_before = _own_stats()
        for i in range(cycles):
            with make_client(name) as client:
                assert client.request(b"%d" % i) == (b"%d" % i)[::-1]
        final: Dict[str, int] = {}

        def settled() -> bool:
            final.update(stats())
            return all(final[k] <= baseline[k] for k in ("fds", "tasks", "active_count"))

        assert wait_for(settled, timeout=10, interval=0.2), (baseline, final)
        client_after = _own_stats()
        print(
            f"\n{cycles} connect/request/close cycles; server before {baseline} after {final}; "
            f"client process before {client_before} after {client_after}"
        )
        assert final["rss_kib"] - baseline["rss_kib"] < RSS_MARGIN_KIB, (baseline, final)
        assert client_after["fds"] <= client_before["fds"]
        assert server.stop() == 0


START_STOP = r"""
import json, os, sys, threading, ipcfast
name, backend, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])

def stats():
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return {"fds": len(os.listdir("/proc/self/fd")), "tasks": len(os.listdir("/proc/self/task")),
            "active_count": threading.active_count(), "rss_kib": rss}

def cycle(i):
    with ipcfast.Server(name, lambda r: r, backend=backend):
        idle = ipcfast.Client(name, backend=backend)         # connected through the stop
        with ipcfast.Client(name, backend=backend) as c:
            assert c.request(b"%d" % i) == b"%d" % i
        assert idle.request(b"idle") == b"idle"
    try:
        idle.request(b"after stop", timeout=5)
        raise AssertionError("a request after stop succeeded")
    except ipcfast.ConnectionClosed:
        pass
    idle.close()

for i in range(30):
    cycle(i)
before = stats()
for i in range(cycles):
    cycle(i)
after = stats()
print(json.dumps({"before": before, "after": after}))
"""


def test_server_start_stop_cycles_keep_descriptors_threads_and_memory_flat(name: str, server_backend: str) -> None:
    """A server started and stopped many times in one process, each time with
    a client served and another connected across the stop (which then sees
    ConnectionClosed): descriptors, threads and RSS end where they began."""
    result = run_python(START_STOP, name, server_backend, str(START_STOP_CYCLES), timeout=3600 if SOAK else 300)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    before, after = figures["before"], figures["after"]
    print(f"\n{START_STOP_CYCLES} server start/stop cycles ({server_backend}): before {before} after {after}")
    for key in ("fds", "tasks", "active_count"):
        assert after[key] <= before[key], (key, before, after)
    assert after["rss_kib"] - before["rss_kib"] < RSS_MARGIN_KIB, (before, after)
