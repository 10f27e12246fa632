"""``python -m ipcfast`` (also the ``ipcfast`` console script).

Commands: ``serve``, ``call``, ``ping``, ``bench``, ``demo``; ``--version``;
``--help`` for each. Exit codes: 0 success, 1 the operation failed (the
message says why), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import statistics
import sys
import time
from typing import Callable, List, Optional

from . import IPCError, __version__
from ._base import BACKENDS, BytesLike, Client

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _load_handler(spec: str) -> Callable[[bytes], BytesLike]:
    """``package.module:function`` -> the function (usage error if not)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"ipcfast serve: --module wants MODULE:FUNCTION, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"ipcfast serve: cannot import {module_name!r}: {exc}") from None
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise SystemExit(f"ipcfast serve: {module_name}.{attr} is not a callable")
    return handler  # type: ignore[no-any-return]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _echo(request: bytes) -> bytes:
    return request


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import Server

    handler = _load_handler(args.module) if args.module else _echo
    server = Server(
        args.name,
        handler,
        key=args.key,
        max_clients=args.max_clients,
        access=args.access,
        backend=args.backend,
    )
    server.start()
    if hasattr(signal, "SIGTERM"):
        # Stop cleanly on SIGTERM as on Ctrl-C (serve_forever stops the
        # server on KeyboardInterrupt).
        signal.signal(signal.SIGTERM, _interrupt)
    print(
        f"serving {args.name!r} on {server.address} ({'echo' if not args.module else args.module}); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    server.serve_forever()
    return 0


def _client(args: argparse.Namespace) -> Client:
    return Client(
        args.name,
        key=args.key,
        connect_timeout=args.connect_timeout,
        backend=args.backend,
        wait_for_server=args.wait,
    )


def _cmd_call(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.data == "-" else args.data.encode()
    with _client(args) as client:
        response = client.request(data, timeout=args.timeout)
    sys.stdout.buffer.write(response)
    if sys.stdout.isatty() and not response.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    payload = b"\0" * args.size
    times: List[float] = []
    with _client(args) as client:
        for i in range(args.count):
            started = time.perf_counter()
            client.request(payload, timeout=args.timeout)
            elapsed = (time.perf_counter() - started) * 1e6
            times.append(elapsed)
            if args.verbose:
                print(f"{i + 1}: {len(payload)} bytes, {elapsed:.1f} µs")
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{args.count} round trips of {args.size} bytes to {args.name!r}: "
        f"min {ordered[0]:.1f} µs, median {statistics.median(ordered):.1f} µs, "
        f"p99 {p99:.1f} µs, max {ordered[-1]:.1f} µs"
    )
    return 0


def _cmd_bench(rest: List[str]) -> int:
    from ._bench import main as bench_main

    return bench_main(rest)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipcfast", description="Fast request/response IPC between processes on one machine."
    )
    parser.add_argument("--version", action="version", version=f"ipcfast {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", help="server name (a plain name, or on POSIX a socket path)")
        p.add_argument("--key", default=None, help="application key both sides must agree on")
        p.add_argument("--backend", choices=BACKENDS, default="native", help="implementation (default native)")

    serve = commands.add_parser(
        "serve", help="run a server until Ctrl-C", description="Run a server until Ctrl-C (or SIGTERM)."
    )
    common(serve)
    what = serve.add_mutually_exclusive_group()
    what.add_argument("--echo", action="store_true", help="answer every request with itself (the default)")
    what.add_argument("--module", metavar="MOD:FUNC", help="handler function: bytes in, bytes out")
    serve.add_argument("--max-clients", type=int, default=32, help="connection slots (default 32)")
    serve.add_argument(
        "--access", choices=("user", "world"), default="user", help="who may connect (default: the same user)"
    )
    serve.set_defaults(run=_cmd_serve)

    call = commands.add_parser(
        "call",
        help="send one request, print the response",
        description="Send one request and write the response to stdout.",
    )
    common(call)
    call.add_argument("data", help="the request as text, or - to read bytes from stdin")
    call.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer")
    call.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to find the server (default 5)")
    call.add_argument(
        "--wait", action="store_true", help="wait up to --connect-timeout for a server nobody is starting yet"
    )
    call.set_defaults(run=_cmd_call)

    ping = commands.add_parser(
        "ping",
        help="measure round-trip times",
        description="Measure round-trip times to a server (any handler; the answers are ignored).",
    )
    common(ping)
    ping.add_argument("-c", "--count", type=int, default=100, help="round trips (default 100)")
    ping.add_argument("-s", "--size", type=int, default=16, help="request size in bytes (default 16)")
    ping.add_argument("-v", "--verbose", action="store_true", help="print every round trip")
    ping.add_argument("--timeout", type=float, default=5.0, help="seconds per round trip (default 5)")
    ping.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to find the server (default 5)")
    ping.add_argument(
        "--wait", action="store_true", help="wait up to --connect-timeout for a server nobody is starting yet"
    )
    ping.set_defaults(run=_cmd_ping)

    commands.add_parser("bench", help="run the benchmark (bench --help for its options)", add_help=False)
    commands.add_parser("node", help="run Python commands through a warm server node (node --help)", add_help=False)
    demo = commands.add_parser("demo", help="run a server and a client doing real requests")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list and args_list[0] == "bench":
        return _cmd_bench(args_list[1:])  # the benchmark parses its own options
    if args_list and args_list[0] == "node":
        from .node.__main__ import main as node_main

        return node_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "count", 1) < 1 or getattr(args, "size", 0) < 0:
        parser.error("--count must be >= 1 and --size >= 0")
    try:
        return int(args.run(args))
    except IPCError as exc:
        print(f"ipcfast {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
