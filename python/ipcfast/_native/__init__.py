"""The native backend: Server and Client over the C core (cffi, API mode).

The one cffi boundary of ipcfast. ``_ffi`` is the only module that imports
the compiled module ``ipcfast._ipcfast_cffi``; the others wrap it:

* ``_server``: :class:`NativeServer` and its handler trampoline;
* ``_client``: :class:`NativeClient`;
* ``_node``: typed wrappers for server nodes (:class:`NodeCall`,
  :class:`PacketConnection`, :func:`decode_command`);
* ``_log``: the C log callback.

A backend module (see ``ipcfast._backends``): it defines ``ServerImpl`` and
``ClientImpl``.
"""

from __future__ import annotations

import atexit

from ._ffi import extension_path, ffi, lib, raise_from_error, result_name
from ._log import install_log_handler, uninstall_log_handler
from ._node import STREAM_STDERR, STREAM_STDOUT, NodeCall, PacketConnection, decode_command
from ._server import NativeServer
from ._client import NativeClient
from .._base import stop_running_servers

__all__ = [
    "NativeServer",
    "NativeClient",
    "ServerImpl",
    "ClientImpl",
    "NodeCall",
    "PacketConnection",
    "STREAM_STDOUT",
    "STREAM_STDERR",
    "decode_command",
    "extension_path",
    "raise_from_error",
    "result_name",
    # Temporary: node/ and _bench.py reach cffi through these; the lead
    # removes them once those modules use the wrappers above.
    "ffi",
    "lib",
]

ServerImpl = NativeServer
ClientImpl = NativeClient


def _shutdown() -> None:
    """atexit: stop running servers (bounded: handlers stuck past the grace
    are abandoned), then detach the log callback (this runs before _base's
    own stop_running_servers, registered earlier)."""
    stop_running_servers()
    uninstall_log_handler()


install_log_handler()
atexit.register(_shutdown)
