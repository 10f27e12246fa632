"""What the shared-memory default costs, beside its latency (bench/run.py):
CPU of an idle server with 32 connected idle clients, CPU per request at one
request per millisecond, and memory per connection, for the default settings
(shared memory, where negotiated) and for shm=False (the socket path).

    python bench/shm_cost.py [--idle-seconds 10] [--paced-seconds 5] [--clients 32]

CPU is read from /proc/<pid>/stat (utime + stime) of the server process and
of the client process, so it counts every thread. The server runs on CPU 1
and the client on CPU 0 where both exist (the split placement of bench/run.py).
Linux only (it reads /proc). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Dict, List

import ipcfast

SERVER = """
import os, sys, ipcfast
if len(os.sched_getaffinity(0)) > 1:
    os.sched_setaffinity(0, {int(sys.argv[3])})
with ipcfast.Server(sys.argv[1], lambda r: r, shm=sys.argv[2] == "1", max_clients=int(sys.argv[4])):
    print("READY", flush=True)
    sys.stdin.read()
"""

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def measure(shm: bool, clients: int, idle_s: float, paced_s: float) -> Dict[str, float]:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[1], cpus[0]) if len(cpus) > 1 else (cpus[0], cpus[0])
    os.sched_setaffinity(0, {client_cpu})
    name = f"shm-cost-{os.getpid()}-{int(shm)}"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, name, "1" if shm else "0", str(server_cpu), str(clients)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        before_pss = pss_kib(server.pid)
        open_clients: List[ipcfast.Client] = []
        for _ in range(clients):
            client = ipcfast.Client(name, shm=shm, timeout=30)
            client.request(b"x" * 16)  # every connection has carried a request
            open_clients.append(client)
        time.sleep(2.0)  # past the waits' busy second: idle from here on
        pss_per_connection = (pss_kib(server.pid) - before_pss) / clients
        start = cpu_seconds(server.pid)
        time.sleep(idle_s)
        idle_share = (cpu_seconds(server.pid) - start) / idle_s

        client = open_clients[0]
        payload = b"x" * 16
        server_start, client_start = cpu_seconds(server.pid), cpu_seconds(os.getpid())
        count, next_at = 0, time.monotonic()
        until = next_at + paced_s
        while next_at < until:
            client.request(payload)
            count += 1
            next_at += 0.001
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        server_cpu_s = cpu_seconds(server.pid) - server_start
        client_cpu_s = cpu_seconds(os.getpid()) - client_start
        for c in open_clients:
            c.close()
        return {
            "idle_share": idle_share,
            "server_us_per_request": server_cpu_s / count * 1e6,
            "client_us_per_request": client_cpu_s / count * 1e6,
            "requests": float(count),
            "pss_kib_per_connection": pss_per_connection,
        }
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--paced-seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=32)
    a = p.parse_args()
    from ipcfast._ipcfast_cffi import lib

    region_kib = lib.ipc_shm_region_size(lib.IPC_SHM_DEFAULT_SLOT) / 1024
    rows = {
        "shared memory (default)": measure(True, a.clients, a.idle_seconds, a.paced_seconds),
        "socket (shm=False)": measure(False, a.clients, a.idle_seconds, a.paced_seconds),
    }
    print(
        f"{a.clients} idle clients for {a.idle_seconds:g} s; then one client at 1 request/ms for {a.paced_seconds:g} s"
    )
    print(f"region mapped per shared-memory connection: {region_kib:.0f} KiB (virtual; pages touched on use)\n")
    print(
        "| path | idle server, % of one CPU | server CPU / request | client CPU / request | server Pss / connection |"
    )
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(
            f"| {label} | {r['idle_share'] * 100:.2f} % | {r['server_us_per_request']:.1f} µs "
            f"| {r['client_us_per_request']:.1f} µs | {r['pss_kib_per_connection']:.0f} KiB |"
        )
    shm, sock = rows["shared memory (default)"], rows["socket (shm=False)"]
    total_shm = shm["server_us_per_request"] + shm["client_us_per_request"]
    total_sock = sock["server_us_per_request"] + sock["client_us_per_request"]
    print(f"\nCPU per request, both sides: {total_shm / total_sock:.2f}× the socket path's (target: within 3×)")
    print(f"idle server: {shm['idle_share'] * 100:.2f} % of one CPU (target: < 1 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
