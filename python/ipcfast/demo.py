"""A short, real demonstration: ``python -m ipcfast.demo``.

Starts a server whose handler upper-cases requests, connects a client, does
a few real round trips (a small one, a 1 MiB one, one the handler fails on),
prints what happened with timings, and exits 0.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid

import ipcfast


def _handler(request: bytes) -> bytes:
    if request.startswith(b"fail"):
        raise ValueError(f"the demo handler refuses {request[:20]!r}")
    return request.upper()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def main() -> int:
    """Run the demo; returns the exit status."""
    # Show what the server logs (the handler's traceback, C-core messages).
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.WARNING,
        format="  [log %(name)s %(levelname)s] %(message)s",
    )
    name = f"ipcfast-demo-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    print(f"ipcfast {ipcfast.__version__} demo")
    t0 = time.perf_counter()
    with ipcfast.Server(name, _handler) as server:
        print(f"server started on {server.address} in {_ms(time.perf_counter() - t0)}")

        t0 = time.perf_counter()
        with ipcfast.Client(name, connect_timeout=5.0, timeout=10.0) as client:
            print(f"client connected in {_ms(time.perf_counter() - t0)}")

            t0 = time.perf_counter()
            answer = client.request(b"hello, ipcfast")
            print(f"request b'hello, ipcfast' -> {answer!r} in {_ms(time.perf_counter() - t0)}")
            if answer != b"HELLO, IPCFAST":
                print("unexpected answer", file=sys.stderr)
                return 1

            rounds = 1000
            t0 = time.perf_counter()
            for _ in range(rounds):
                client.request(b"x" * 16)
            per_call = (time.perf_counter() - t0) / rounds
            print(f"{rounds} requests of 16 bytes: {per_call * 1e6:.1f} us per round trip")

            big = bytes(range(97, 123)) * (1024 * 1024 // 26 + 1)
            big = big[: 1024 * 1024]
            t0 = time.perf_counter()
            answer = client.request(big)
            elapsed = time.perf_counter() - t0
            ok = answer == big.upper()
            print(
                f"request of 1 MiB -> {len(answer)} bytes in {_ms(elapsed)} "
                f"({2 * len(big) / elapsed / 1e6:.0f} MB/s both ways), content {'ok' if ok else 'WRONG'}"
            )
            if not ok:
                return 1

            t0 = time.perf_counter()
            try:
                client.request(b"fail please")
            except ipcfast.RemoteError as exc:
                print(f"handler error -> RemoteError({str(exc)!r}) in {_ms(time.perf_counter() - t0)}")
            else:
                print("expected a RemoteError", file=sys.stderr)
                return 1

            answer = client.request(b"still connected")
            print(f"after the error the same connection still works: {answer!r}")

        t0 = time.perf_counter()
    print(f"server stopped in {_ms(time.perf_counter() - t0)}")
    try:
        ipcfast.Client(name, connect_timeout=0.1)
    except ipcfast.ServerNotFound as exc:
        print(f"connecting after stop -> ServerNotFound: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
