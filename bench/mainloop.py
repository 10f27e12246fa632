"""Added latency of a request when the server's main thread is busy running
Python: thread dispatch (handler on a C thread, which must win the GIL from
the busy main thread) against manual dispatch (the main loop calls
server.dispatch(0) once per frame of a 1 kHz loop).

    python bench/mainloop.py [--requests N] [--frame-ms 1.0]

Prints the median and p99 round trip seen by a client in another process.
The benchmark harness measures this in more detail, as latency added over an
idle server, for a 1 kHz frame loop and a spinning main thread:
``python bench/run.py --mainloop-only`` (bench/README.md).

Measured here (2 vCPUs, Python 3.11, 1 ms frames): manual dispatch median
about 275 µs, p99 about 330 µs; thread dispatch about the same median but a
p99 of 2.4 s, with single requests waiting up to 27 s. The frame loop releases
the GIL briefly every frame (here in Popen.poll's waitpid): it takes the GIL
back before the waiting connection thread wakes, and CPython's GIL only forces
a hand-over after a whole switch interval passes without any release, so the
connection thread can starve. Main loops that do I/O should use
dispatch="manual".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import ipcfast

CLIENT = r"""
import sys, time, ipcfast
name, count = sys.argv[1], int(sys.argv[2])
with ipcfast.Client(name) as client:
    for _ in range(20):
        client.request(b"warm")
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client.request(b"x" * 16)
        samples.append((time.perf_counter() - started) * 1e6)
        time.sleep(0.0007)  # not in lockstep with the server's frames
print(" ".join(f"{s:.1f}" for s in samples))
"""


def busy(seconds: float) -> None:
    """Python work that holds the GIL, like a game's or editor's frame."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def measure(mode: str, requests: int, frame_ms: float) -> list:
    name = f"mainloop-{os.getpid()}-{mode}"
    server = ipcfast.Server(name, lambda r: r, dispatch=mode)
    server.start()
    client = subprocess.Popen([sys.executable, "-c", CLIENT, name, str(requests)], stdout=subprocess.PIPE, text=True)
    try:
        while client.poll() is None:
            busy(frame_ms / 1000.0)
            if mode == "manual":
                server.dispatch(0)
        out = client.stdout.read() if client.stdout else ""
    finally:
        server.stop()
    return [float(v) for v in out.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--frame-ms", type=float, default=1.0)
    args = parser.parse_args()
    print(f"server main thread busy in {args.frame_ms} ms frames; {args.requests} requests of 16 B")
    for mode in ("thread", "manual"):
        samples = sorted(measure(mode, args.requests, args.frame_ms))
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        print(f"dispatch={mode:7s} median {statistics.median(samples):8.1f} µs   p99 {p99:8.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
