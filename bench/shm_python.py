"""Python client + Python handler, 16 B round trips, on the socket path and
on the shared-memory path, split placement (server process on one CPU,
client on another), interleaved rounds. Native backend; Linux.

    python bench/shm_python.py [--rounds 5] [--cpus 0,1] [--iters 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

SERVER = r"""
import os, sys, ipcfast
os.sched_setaffinity(0, {int(sys.argv[3])})
with ipcfast.Server(sys.argv[1], lambda r: r, shm=sys.argv[2] == "1"):
    print("READY", flush=True)
    sys.stdin.read()
"""


def one_run(name: str, shm: bool, iters: int, server_cpu: int, client_cpu: int) -> float:
    import ipcfast

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, name, "1" if shm else "0", str(server_cpu)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("READY")
        os.sched_setaffinity(0, {client_cpu})
        with ipcfast.Client(name, shm=shm) as client:
            payload = b"x" * 16
            for _ in range(iters // 10):
                client.request(payload)
            samples: List[int] = []
            for _ in range(iters):
                t0 = time.perf_counter_ns()
                client.request(payload)
                samples.append(time.perf_counter_ns() - t0)
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)
    return statistics.median(samples) / 1000.0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpus", default="0,1", help="client CPU, server CPU")
    parser.add_argument("--iters", type=int, default=5000)
    args = parser.parse_args(argv)
    client_cpu, server_cpu = (int(c) for c in args.cpus.split(","))
    results: Dict[str, List[float]] = {"socket": [], "shm": []}
    for r in range(args.rounds):
        for kind in results:
            name = f"shm-py-bench-{os.getpid()}-{r}-{kind}"
            results[kind].append(one_run(name, kind == "shm", args.iters, server_cpu, client_cpu))
    socket_us = statistics.median(results["socket"])
    shm_us = statistics.median(results["shm"])
    print(
        f"Python client + Python handler, 16 B, split (server CPU {server_cpu}, client CPU {client_cpu}), "
        f"medians of {args.rounds} rounds"
    )
    print(f"| socket path | {socket_us:.2f} µs |")
    print(f"| shared memory | {shm_us:.2f} µs ({shm_us / socket_us:.2f}× the socket path) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
