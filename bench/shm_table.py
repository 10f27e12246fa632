"""The shared-memory data path against the socket floor, in C.

Runs, in interleaved rounds, four C programs built with
-DIPCFAST_BUILD_BENCH=ON (bench/floor.c: raw Unix sockets, the floor;
bench/c2c.c: ipcfast on the socket path; bench/shm.c: ipcfast on the
shared-memory path, once with the default spin budget and once with
spin_us=0) in two placements: pinned (server and client both on CPU 0) and
split (server on CPU 1, client on CPU 0). Prints a Markdown table of the
medians of the per-round median round trips, and each as a ratio to the
floor of the same placement.

    cmake -S . -B build-bench -DIPCFAST_PYTHON=OFF -DIPCFAST_BUILD_BENCH=ON -DCMAKE_BUILD_TYPE=Release
    cmake --build build-bench
    python bench/shm_table.py build-bench/bin [--rounds 5] [--cpus 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

SIZES = [16, 1024, 64 * 1024, 1024 * 1024]
ITERS = {16: 3000, 1024: 3000, 64 * 1024: 1000, 1024 * 1024: 200}
#: name -> (program, extra environment)
IMPLS: Dict[str, Tuple[str, Dict[str, str]]] = {
    "floor (raw socket)": ("bench_floor", {}),
    "ipcfast socket path": ("bench_c2c", {}),
    "ipcfast shm, spin 0": ("bench_shm", {"IPCFAST_BENCH_SPIN_US": "0"}),
    "ipcfast shm, default spin": ("bench_shm", {}),
}


def one_run(bindir: str, program: str, env: Dict[str, str], server_cpu: int, client_cpu: int) -> Dict[int, float]:
    """Median round trip in µs per size, one server and one client process."""
    full_env = dict(os.environ, **env)
    with tempfile.TemporaryDirectory() as tmp:
        addr = os.path.join(tmp, "s.sock")
        server = subprocess.Popen(
            [os.path.join(bindir, program), "serve", addr, "--cpu", str(server_cpu)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=full_env,
            text=True,
        )
        try:
            assert server.stdout is not None
            ready = server.stdout.readline()
            if not ready.startswith("READY"):
                raise RuntimeError(f"{program} did not start: {ready!r}")
            out = subprocess.run(
                [
                    os.path.join(bindir, program),
                    "lat",
                    addr,
                    "--sizes",
                    ",".join(map(str, SIZES)),
                    "--iters",
                    ",".join(str(ITERS[s]) for s in SIZES),
                    "--warmup",
                    ",".join(str(max(ITERS[s] // 10, 20)) for s in SIZES),
                    "--cpu",
                    str(client_cpu),
                ],
                capture_output=True,
                text=True,
                env=full_env,
                timeout=300,
                check=True,
            ).stdout
        finally:
            if server.stdin:
                server.stdin.close()
            server.wait(30)
    result: Dict[int, float] = {}
    for line in out.splitlines():
        row = json.loads(line)
        result[row["size"]] = statistics.median(row["ns"]) / 1000.0
    return result


def size_label(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size // 1024} KiB" if size < 1 << 20 else f"{size >> 20} MiB"


def fmt_us(us: float) -> str:
    return f"{us:.2f} µs" if us < 100 else f"{us:.0f} µs"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bindir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpus", default="0,1", help="client CPU, server CPU for the split placement")
    args = parser.parse_args(argv)
    client_cpu, other_cpu = (int(c) for c in args.cpus.split(","))
    placements = {"pinned": (client_cpu, client_cpu), "split": (other_cpu, client_cpu)}
    runs: Dict[Tuple[str, str], List[Dict[int, float]]] = {}
    for r in range(args.rounds):
        for placement, (server_cpu, cpu) in placements.items():
            for impl, (program, env) in IMPLS.items():
                runs.setdefault((placement, impl), []).append(one_run(args.bindir, program, env, server_cpu, cpu))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    for placement in placements:
        where = (
            f"both on CPU {client_cpu}"
            if placement == "pinned"
            else f"server on CPU {other_cpu}, client on CPU {client_cpu}"
        )
        print(f"\n{placement} ({where}), medians of {args.rounds} interleaved rounds\n")
        print("| round trip | " + " | ".join(size_label(s) for s in SIZES) + " |")
        print("|---" * (len(SIZES) + 1) + "|")
        floor = {s: statistics.median(run[s] for run in runs[(placement, "floor (raw socket)")]) for s in SIZES}
        for impl in IMPLS:
            medians = {s: statistics.median(run[s] for run in runs[(placement, impl)]) for s in SIZES}
            if impl.startswith("floor"):
                cells = [fmt_us(medians[s]) for s in SIZES]
            else:
                cells = [f"{medians[s] / floor[s]:.2f}× ({fmt_us(medians[s])})" for s in SIZES]
            print(f"| {impl} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
