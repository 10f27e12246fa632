"""User-space instructions per client request, counted with callgrind.

    python bench/client_instructions.py [--size 16] [--backend native] [--mode request]
                                        [--path socket|shm]

Starts an echo server in another process (not counted), then runs a client
process under ``valgrind --tool=callgrind`` twice: doing 1 request and doing
1 + N requests. The difference divided by N is the client's cost per request
in user space (the kernel's share is not counted), a figure that stays
stable on a noisy machine where timings do not.

Neither side spins while it waits (``shm_spin_us=0``): a spin's instruction
count depends on how long the peer takes, which a count must not. ``--path``
picks the socket (the default) or shared memory.

``--mode`` picks what the client loop does:

* ``request``: ``Client.request(data)``, what applications call;
* ``raw``: the bare ``lib.ipc_client_call`` and the slice of the reply's
  inline buffer over the same client (responses up to 240 bytes), the floor
  of what the binding's ``request()`` adds to it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap

SERVER = textwrap.dedent(
    """
    import sys, ipcfast
    server = ipcfast.Server(sys.argv[1], lambda r: r, shm=sys.argv[2] == "shm", shm_spin_us=0)
    server.start()
    print("READY", flush=True)
    sys.stdin.read()
    server.stop()
    """
)

CLIENT = textwrap.dedent(
    """
    import sys, ipcfast
    name, count, size, backend, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    shm = sys.argv[6] == "shm"
    client = ipcfast.Client(name, backend=backend, shm=shm, shm_spin_us=0) if backend == "native" else (
        ipcfast.Client(name, backend=backend))
    data = b"x" * size
    if mode == "raw":
        from ipcfast._native._ffi import ffi, lib
        c, reply = client._client, ffi.new("ipc_client_reply *")
        call, inline = lib.ipc_client_call, ffi.buffer(reply.inline_data)
        for _ in range(count):
            inline[:call(c, data, size, -1, reply)]
    else:
        request = client.request
        for _ in range(count):
            request(data)
    client.close()
    """
)


#: Both runs hash strings alike: with random hashes the interpreter's start-up
#: (dict probes) differs by about a million instructions between runs, which
#: would show as hundreds per request.
FIXED_HASHES = {**os.environ, "PYTHONHASHSEED": "0"}


def instructions(name: str, count: int, size: int, backend: str, mode: str, path: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                CLIENT,
                name,
                str(count),
                str(size),
                backend,
                mode,
                path,
            ],
            check=True,
            capture_output=True,
            env=FIXED_HASHES,
        )
        return callgrind_total(out)


def callgrind_total(out: str) -> int:
    """The instruction total of a callgrind output file (also used by
    server_instructions.py)."""
    with open(out, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE) or re.search(r"^totals:\s+(\d+)", text, re.MULTILINE)
    if not match:
        raise RuntimeError("no instruction total in callgrind's output")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--backend", default="native")
    parser.add_argument("--mode", choices=("request", "raw"), default="request")
    parser.add_argument("--path", choices=("socket", "shm"), default="socket")
    args = parser.parse_args()
    name = f"instr-{os.getpid()}"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, name, args.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("READY")
        one = instructions(name, 1, args.size, args.backend, args.mode, args.path)
        many = instructions(name, 1 + args.count, args.size, args.backend, args.mode, args.path)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(30)
    print(
        f"{args.backend} {args.mode}, {args.path} path, {args.size} B: "
        f"{(many - one) / args.count:,.0f} instructions per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
