"""``python -m ipcfast.node``: run Python commands through a warm node.

python -m ipcfast.node run [--preload MOD]... [--idle-timeout S] -- -m module args...
python -m ipcfast.node run [...] -- script.py args...
python -m ipcfast.node status|shutdown|name [--preload MOD]... [--idle-timeout S]
python -m ipcfast.node c-command [--preload MOD]... [--idle-timeout S]
python -m ipcfast.node serve --name NAME [--preload MOD]... [--idle-timeout S] [--log FILE]
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    import argparse

DEFAULT_IDLE_TIMEOUT = 600.0


def _node_options(parser: "argparse.ArgumentParser") -> None:
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE once when the node starts (repeatable; MODULE.* also imports every submodule, "
        "@GROUP the modules of an entry-point group such as @pytest11); part of the node's identity",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"the node exits after this long without a command (default {DEFAULT_IDLE_TIMEOUT:g}; 0: never)",
    )


def _parser() -> "argparse.ArgumentParser":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ipcfast.node",
        epilog="`ipcfast node ...` is the same.",
        description="Run Python commands through a warm server process (ipcfast server node).",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser(
        "run",
        help="run a Python command line through the node, starting it if needed",
        description="Runs `python ARGS` through the warm node: output, exit code and Ctrl-C behave as "
        "in a cold run. ARGS: `-m module args...`, `script.py args...` or `-c code args...`.",
    )
    _node_options(run)
    run.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a new node to start (default 60)",
    )
    run.add_argument("--no-start", action="store_true", help="never start a node: run python itself if none runs")
    run.add_argument(
        "--stream",
        action="store_true",
        help="get the output as packets instead of passing this process's stdin/stdout/stderr "
        "(the path of clients that cannot pass descriptors; see docs/protocol.md 10)",
    )
    run.add_argument("args", nargs=argparse.REMAINDER, help="-- then the arguments for python")
    for action, text in (
        ("status", "print the node's status as JSON (exit 1 if none runs)"),
        ("shutdown", "stop the node (exit 1 if none runs)"),
        ("name", "print the node's name"),
        ("c-command", "print the command line that runs commands through this node with the C client"),
    ):
        _node_options(sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + "."))
    serve = sub.add_parser("serve", help="run a node in the foreground (what `run` starts)")
    serve.add_argument("--name", required=True, help="the name to listen on")
    serve.add_argument("--log", help="append the node's log to this file")
    _node_options(serve)
    return parser


def _idle(value: float) -> Optional[float]:
    return None if value == 0 else value


def _name(args: "argparse.Namespace") -> str:
    from ._compat import node_name

    return node_name(args.preload, options={"idle_timeout": _idle(args.idle_timeout)})


def _python_argv(rest: List[str]) -> List[str]:
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        raise SystemExit("python -m ipcfast.node run: give the python arguments after --, e.g. -- -m module args")
    return [sys.executable, *rest]


def _c_client() -> Optional[str]:
    import shutil

    here = os.path.dirname(os.path.abspath(sys.executable))
    for candidate in (os.path.join(here, "ipcfast-node-client"), shutil.which("ipcfast-node-client")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _serve(args: "argparse.Namespace") -> int:
    import logging

    from .._errors import AddressInUse
    from ._server import NodeServer

    if args.log:
        handler: logging.Handler = logging.FileHandler(args.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        logging.getLogger("ipcfast").addHandler(handler)  # ipcfast.node propagates to it
        logging.getLogger("ipcfast").setLevel(logging.INFO)
    server = NodeServer(args.name, preload=args.preload, idle_timeout=_idle(args.idle_timeout))
    try:
        server.serve_forever()
    except AddressInUse:
        logging.getLogger("ipcfast.node").info("node %s: another node already serves this name", args.name)
        return 0
    return 0


def _control(args: "argparse.Namespace", request: bytes) -> int:
    import json

    from ._client import connect

    conn = connect(_name(args), 2.0)
    if conn is None:
        print("no node is running for these options", file=sys.stderr)
        return 1
    try:
        reply = conn.request(request)
    except (OSError, RuntimeError) as exc:
        print(f"the node did not answer: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if request == b"status":
        print(json.dumps(json.loads(reply), indent=2))
    else:
        print(reply.decode())
    return 0


_RUN_FLAGS = {"--no-start": "no_start", "--stream": "stream"}
_RUN_VALUES = {"--preload": "preload", "--idle-timeout": "idle_timeout", "--start-timeout": "start_timeout"}


def _quick_run_args(argv: List[str]) -> Optional[Any]:
    """The arguments of a well-formed ``run`` without argparse (which costs
    a client more than the rest of its start); None for anything else
    (help, mistakes), which argparse then handles."""
    if not argv or argv[0] != "run" or "--" not in argv:
        return None
    values: Dict[str, Any] = {
        "preload": [],
        "idle_timeout": DEFAULT_IDLE_TIMEOUT,
        "start_timeout": 60.0,
        "no_start": False,
        "stream": False,
    }
    i = 1
    try:
        while argv[i] != "--":
            word = argv[i]
            option, eq, inline = word.partition("=")
            if word in _RUN_FLAGS:
                values[_RUN_FLAGS[word]] = True
            elif option in _RUN_VALUES:
                value = inline if eq else argv[i + 1]
                i += 0 if eq else 1
                key = _RUN_VALUES[option]
                if key == "preload":
                    values[key].append(value)
                else:
                    values[key] = float(value)
            else:
                return None
            i += 1
    except (IndexError, ValueError):
        return None
    if i + 1 >= len(argv):
        return None
    values["args"] = argv[i:]
    values["action"] = "run"
    return type("Args", (), values)()


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = _quick_run_args(words) or _parser().parse_args(words)
    if args.action == "run":
        from ._client import run

        return run(
            _python_argv(args.args),
            preload=args.preload,
            idle_timeout=_idle(args.idle_timeout),
            start_timeout=args.start_timeout,
            start=not args.no_start,
            stream=args.stream,
        )
    if args.action == "serve":
        return _serve(args)
    if args.action == "name":
        print(_name(args))
        return 0
    if args.action == "c-command":
        import shlex

        client = _c_client() or "ipcfast-node-client"
        serve = [sys.executable, "-m", "ipcfast.node", "serve", "--name", _name(args)]
        for module in args.preload:
            serve += ["--preload", module]
        serve += ["--idle-timeout", repr(args.idle_timeout)]
        from ._client import log_path

        words = [client, "--name", _name(args), "--log", log_path(_name(args))]
        words += ["--server", " ".join(shlex.quote(w) for w in serve), "--"]
        print(" ".join(shlex.quote(w) for w in words) + " " + shlex.quote(sys.executable))
        return 0
    return _control(args, args.action.encode())


if __name__ == "__main__":
    sys.exit(main())
