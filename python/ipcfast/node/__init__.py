"""The server node: a warm Python process that runs commands for short-lived
clients (the "build server" pattern, SPEC section 7).

A tool whose start is slow (heavy imports, loaded caches) starts once; every
later invocation is a fast client that hands its command line, working
directory and environment to the warm process and streams back the output::

    python -m ipcfast.node run --preload numpy -- -m mytool args...
    python -m ipcfast.node run -- script.py args...

The first run starts the node (detached; it exits after ``--idle-timeout``
seconds without a command); later runs reuse it. When the node is busy with
another command, the client runs the command itself. ``status`` and
``shutdown`` inspect and stop a node; ``c-command`` prints the command line
for the C client (``ipcfast-node-client``), whose start costs about a
millisecond instead of a Python interpreter's. Wire format: docs/protocol.md
section 10. POSIX only for now (the node captures output through fds 1/2).
"""

from __future__ import annotations

from .._codec import ExitType
from ._client import NodeConnection, connect, run, run_in_process, start_node
from ._compat import DEFAULT_PREFIX, node_name
from ._runner import PythonCommand, UnsupportedCommand, parse_python_argv
from ._server import NodeServer

__all__ = [
    "DEFAULT_PREFIX",
    "ExitType",
    "NodeConnection",
    "NodeServer",
    "PythonCommand",
    "UnsupportedCommand",
    "connect",
    "node_name",
    "parse_python_argv",
    "run",
    "run_in_process",
    "start_node",
]
