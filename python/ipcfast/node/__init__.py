"""The server node: a warm Python process that runs commands for short-lived
clients (the "build server" pattern, SPEC sections 7 and 10).

A tool whose start is slow (heavy imports) starts once; every later
invocation is a fast client that hands its command to the warm process::

    python -m ipcfast.node run --preload black -- -m black --check src/
    python -m ipcfast.node run -- script.py args...

The node imports the preloads once, then forks a fresh child from that warm
state for each command; the child gets the client's own stdin, stdout and
stderr (passed over the socket), argv, working directory, environment,
umask, locale and time zone, and its exit status (or the signal it died of)
is the client's. The first run starts the node (detached; it exits after
``--idle-timeout`` seconds without a command, or when a module it loaded
changes on disk); a busy or refusing node makes the client exec ``python``
itself. ``status`` and ``shutdown`` inspect and stop a node; ``c-command``
prints the command line for the C client (``ipcfast-node-client``), whose
start costs about a millisecond instead of a Python interpreter's. Wire
format: docs/protocol.md section 10. POSIX only.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are loaded on first use: a client run imports this package, and must
# not pay for the server side (selectors, fork machinery) it never uses.
_EXPORTS = {
    "DEFAULT_PREFIX": "._compat",
    "ExitType": ".._codec",
    "NodeConnection": "._client",
    "NodeServer": "._server",
    "PythonCommand": "._runner",
    "UnsupportedCommand": "._runner",
    "connect": "._client",
    "node_name": "._compat",
    "parse_python_argv": "._runner",
    "run": "._client",
    "start_node": "._client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
