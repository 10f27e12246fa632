"""The client's zero-copy API against the C socket floor (issue 15): Python
client and Python echo handler (native backend), 16 B and 1 MiB round trips,
on the socket path and the shared-memory path, with ``request()`` (bytes),
``request_into()`` and ``request_view()``; the floor (bench/floor.c, compiled
here) measured in the same interleaved rounds. Pinned (both on one CPU) and
split (server on the second CPU) placements. Linux.

    python bench/zero_copy.py [--rounds 3] [--cpus 0,1] [--iters 16=4000,1048576=300] [--server python|c]

``--server c`` answers with the C echo server of bench/shm.c (compiled
here; shared memory accepted) instead of a Python handler, so that the
difference between the client's calls is not drowned by the handler's
copies (a Python handler gets the request as bytes and returns bytes; the
last two cases give it a view instead, ``Server(zero_copy=True)``).

The shared-memory runs offer a 2 MiB slot (``shm_slot_size``, the
default since issue 15's last step; it was 256 KiB), so 1 MiB travels
through the region.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOT = 2 * 1024 * 1024

SERVER = r"""
import os, sys, ipcfast
os.sched_setaffinity(0, {int(sys.argv[3])})
with ipcfast.Server(sys.argv[1], lambda r: r, shm=sys.argv[2] == "1", zero_copy=sys.argv[4] == "1"):
    print("READY", flush=True)
    sys.stdin.read()
"""

#: (label, shared memory, client API, zero-copy handler (Server(zero_copy=True)))
CASES: List[Tuple[str, bool, str, bool]] = [
    ("socket, request()", False, "bytes", False),
    ("socket, request_into()", False, "into", False),
    ("shm, request()", True, "bytes", False),
    ("shm, request_into()", True, "into", False),
    ("shm, request_view()", True, "view", False),
    ("shm, request(), zero-copy handler", True, "bytes", True),
    ("shm, request_into(), zero-copy handler", True, "into", True),
]


def build_floor(work: str) -> str:
    exe = os.path.join(work, "floor")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-pthread", os.path.join(ROOT, "bench", "floor.c"), "-o", exe], check=True)
    return exe


def build_c_server(work: str) -> str:
    exe = os.path.join(work, "bench_shm")
    cc = os.environ.get("CC", "cc")
    csrc = os.path.join(ROOT, "csrc")
    sources = [os.path.join(csrc, f) for f in sorted(os.listdir(csrc)) if f.endswith(".c")]
    subprocess.run(
        [cc, "-O2", "-pthread", "-I" + csrc, os.path.join(ROOT, "bench", "shm.c"), *sources, "-o", exe], check=True
    )
    return exe


def floor_round(
    exe: str, work: str, sizes: List[int], iters: Dict[int, int], cpus: Tuple[int, int]
) -> Dict[int, float]:
    client_cpu, server_cpu = cpus
    addr = os.path.join(work, "floor.sock")
    server = subprocess.Popen([exe, "serve", addr, "--cpu", str(server_cpu)], stdin=subprocess.PIPE)
    try:
        for _ in range(200):
            if os.path.exists(addr):
                break
            time.sleep(0.01)
        out = subprocess.run(
            [
                exe,
                "lat",
                addr,
                "--sizes",
                ",".join(str(s) for s in sizes),
                "--iters",
                ",".join(str(iters[s]) for s in sizes),
                "--warmup",
                ",".join(str(max(iters[s] // 10, 5)) for s in sizes),
                "--cpu",
                str(client_cpu),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        if server.stdin:
            server.stdin.close()
        server.kill()
        server.wait(30)
        if os.path.exists(addr):
            os.unlink(addr)
    result = {}
    for line in out.splitlines():
        record = json.loads(line)
        result[record["size"]] = statistics.median(record["ns"]) / 1000.0
    return result


def ipcfast_round(
    name: str,
    shm: bool,
    api: str,
    zero_copy: bool,
    sizes: List[int],
    iters: Dict[int, int],
    cpus: Tuple[int, int],
    c_server: Optional[str],
) -> Dict[int, float]:
    import ipcfast

    client_cpu, server_cpu = cpus
    command = [sys.executable, "-c", SERVER, name, "1" if shm else "0", str(server_cpu), "1" if zero_copy else "0"]
    if c_server:
        command = [c_server, "serve", name, "--cpu", str(server_cpu)]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    result: Dict[int, float] = {}
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("READY")
        os.sched_setaffinity(0, {client_cpu})
        with ipcfast.Client(name, shm=shm, shm_slot_size=SLOT if shm else 0) as client:
            for size in sizes:
                call = _caller(client, api, b"x" * size, bytearray(size))
                for _ in range(max(iters[size] // 10, 5)):
                    call()
                samples: List[int] = []
                for _ in range(iters[size]):
                    t0 = time.perf_counter_ns()
                    call()
                    samples.append(time.perf_counter_ns() - t0)
                result[size] = statistics.median(samples) / 1000.0
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)
    return result


def _caller(client: Any, api: str, payload: bytes, out: bytearray) -> Callable[[], Any]:
    if api == "bytes":
        return lambda: client.request(payload)
    if api == "into":
        return lambda: client.request_into(payload, out)
    return lambda: client.request_view(payload)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", default="0,1", help="client CPU, server CPU for the split placement")
    parser.add_argument("--iters", default="16=4000,1048576=300", help="SIZE=ITERATIONS,...")
    parser.add_argument("--placements", default="pinned,split")
    parser.add_argument("--server", default="python", choices=["python", "c"])
    args = parser.parse_args(argv)
    iters = {int(k): int(v) for k, v in (item.split("=") for item in args.iters.split(","))}
    sizes = sorted(iters)
    client_cpu, server_cpu = (int(c) for c in args.cpus.split(","))
    placements = {"pinned": (client_cpu, client_cpu), "split": (client_cpu, server_cpu)}
    work = tempfile.mkdtemp(prefix="ipcfast-zc-")
    try:
        floor = build_floor(work)
        c_server = build_c_server(work) if args.server == "c" else None
        for placement in args.placements.split(","):
            cpus = placements[placement]
            figures: Dict[str, Dict[int, List[float]]] = {"floor": {s: [] for s in sizes}}
            cases = [case for case in CASES if not (c_server and case[3])]  # the C server copies nothing anyway
            figures.update({label: {s: [] for s in sizes} for label, _, _, _ in cases})
            for r in range(args.rounds):
                for size, us in floor_round(floor, work, sizes, iters, cpus).items():
                    figures["floor"][size].append(us)
                for label, shm, api, zero_copy in cases:
                    name = f"zc-bench-{os.getpid()}-{placement}-{r}-{api}-{int(shm)}-{int(zero_copy)}"
                    rtts = ipcfast_round(name, shm, api, zero_copy, sizes, iters, cpus, c_server)
                    for size, us in rtts.items():
                        figures[label][size].append(us)
            medians = {label: {s: statistics.median(v) for s, v in by.items()} for label, by in figures.items()}
            print(
                f"\n{placement} (client CPU {cpus[0]}, server CPU {cpus[1]}), Python client + {args.server} echo "
                f"server, medians of {args.rounds} interleaved rounds; ratio to the C socket floor of the same run"
            )
            print("| | " + " | ".join(_size(s) for s in sizes) + " |")
            print("|---|" + "---|" * len(sizes))
            print("| C socket floor | " + " | ".join(f"{medians['floor'][s]:.2f} µs" for s in sizes) + " |")
            for label, _, _, _ in cases:
                cells = [f"{medians[label][s] / medians['floor'][s]:.2f}× ({medians[label][s]:.2f} µs)" for s in sizes]
                print(f"| {label} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _size(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 else f"{size} B"


if __name__ == "__main__":
    sys.exit(main())
