"""User-space instructions per request on the server side, counted with callgrind.

    python bench/server_instructions.py [--size 16] [--path socket|shm] [--workers 0]
                                        [--zero-copy] [--annotate 30]

Runs an echo server (``ipcfast.Server(name, lambda r: r)`` with the options
given) under ``valgrind --tool=callgrind`` twice, and a client that is not
counted: once serving 1 request and once serving 1 + N. The difference
divided by N is the server's cost per request in user space (the kernel's
share is not counted), which stays still on a noisy machine where timings
do not. The handler is an echo, so what is counted is the binding and the
core, not the handler's work.

Both sides wait without spinning (``shm_spin_us=0``): a spin's instruction
count depends on how long the peer takes, which a count must not. ``--path
shm`` therefore counts the futex path's instructions, which are the spin
path's minus the spin loop.

``--annotate K`` prints, per request, the K functions whose instructions
grew the most between the two runs (``callgrind_annotate`` of each, then
the difference divided by N), both inclusive and self: where they go.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from typing import Dict

# The sibling script (this directory is on sys.path when run as a script).
from client_instructions import FIXED_HASHES, callgrind_total

SERVER = textwrap.dedent(
    """
    import sys, ipcfast
    name, shm, workers, zero_copy = sys.argv[1], sys.argv[2] == "shm", int(sys.argv[3]), sys.argv[4] == "1"
    server = ipcfast.Server(name, lambda r: r, shm=shm, shm_spin_us=0, workers=workers, zero_copy=zero_copy)
    server.start()
    print("READY", flush=True)
    sys.stdin.read()
    server.stop()
    """
)

CLIENT = textwrap.dedent(
    """
    import sys, ipcfast
    name, count, size, shm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "shm"
    client = ipcfast.Client(name, shm=shm, shm_spin_us=0, connect_timeout=120)
    data = b"x" * size
    request = client.request
    for _ in range(count):
        assert len(request(data)) == size
    client.close()
    """
)


def serve_under_callgrind(args: argparse.Namespace, count: int, out: str) -> int:
    name = f"sinstr-{os.getpid()}-{count}"
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            SERVER,
            name,
            args.path,
            str(args.workers),
            "1" if args.zero_copy else "0",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=FIXED_HASHES,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"the server did not start: {line!r}")
        subprocess.run([sys.executable, "-c", CLIENT, name, str(count), str(args.size), args.path], check=True)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(300)
    return callgrind_total(out)


def per_function(out: str, inclusive: bool) -> Dict[str, int]:
    shown = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", out],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts: Dict[str, int] = {}
    for line in shown.splitlines():
        match = re.match(r"^\s*([\d,]+) \([^)]*\)\s+(.*?)(?: \[.*\])?$", line)
        if match:
            where = match.group(2)
            name = where.rsplit(":", 1)[-1] if ":" in where else where
            counts[name] = counts.get(name, 0) + int(match.group(1).replace(",", ""))
    return counts


def print_growth(one_out: str, many_out: str, count: int, top: int) -> None:
    for inclusive in (True, False):
        one, many = per_function(one_out, inclusive), per_function(many_out, inclusive)
        growth = sorted(((many[k] - one.get(k, 0)) / count, k) for k in many)
        print(f"\n{'inclusive' if inclusive else 'self'} instructions per request, top {top}:")
        for value, name in reversed(growth[-top:]):
            print(f"{value:10,.0f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--path", choices=("socket", "shm"), default="socket")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--zero-copy", action="store_true")
    parser.add_argument("--annotate", type=int, default=0, metavar="K")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = serve_under_callgrind(args, 1, os.path.join(tmp, "one.out"))
        many_out = os.path.join(tmp, "many.out")
        many = serve_under_callgrind(args, 1 + args.count, many_out)
        print(
            f"server, {args.path} path, workers={args.workers}, zero_copy={args.zero_copy}, {args.size} B: "
            f"{(many - one) / args.count:,.0f} instructions per request"
        )
        if args.annotate:
            print_growth(os.path.join(tmp, "one.out"), many_out, args.count, args.annotate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
