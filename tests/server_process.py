"""A server in its own process, driven by tests (see conftest.ServerProcess).

    python tests/server_process.py NAME [max_clients] [--backend=native|pure]

Prints "READY <address>", serves until its stdin is closed, then stops the
server and prints "STOPPED". Requests:

    b"pid"        -> the process id
    b"sleep:<s>"  -> prints "HANDLING sleep", sleeps s seconds, answers b"slept"
    b"stats"      -> JSON: open descriptors, OS threads, Python threads
    anything else -> the request reversed
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import ipcfast


def stats() -> dict:
    result = {"active_count": threading.active_count()}
    if os.path.isdir("/proc/self/fd"):
        result["fds"] = len(os.listdir("/proc/self/fd"))
        result["tasks"] = len(os.listdir("/proc/self/task"))
    return result


def handler(request: bytes) -> bytes:
    if request == b"pid":
        return str(os.getpid()).encode()
    if request.startswith(b"sleep:"):
        print("HANDLING sleep", flush=True)
        time.sleep(float(request[6:]))
        return b"slept"
    if request == b"stats":
        return json.dumps(stats()).encode()
    return request[::-1]


def main() -> int:
    backend = "native"
    args = []
    for arg in sys.argv[1:]:
        if arg.startswith("--backend="):
            backend = arg.split("=", 1)[1]
        else:
            args.append(arg)
    name = args[0]
    max_clients = int(args[1]) if len(args) > 1 else 32
    server = ipcfast.Server(name, handler, max_clients=max_clients, backend=backend)
    server.start()
    print("READY", server.address, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop()
    print("STOPPED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
