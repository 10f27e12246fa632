"""ipcfast: fast, robust request/response IPC between processes on one machine.

::

    import ipcfast

    def handler(request: bytes) -> bytes:
        return request.upper()

    with ipcfast.Server("demo", handler) as server:   # started on enter, stopped on exit
        with ipcfast.Client("demo") as client:
            assert client.request(b"hi") == b"HI"

A C core does the transport work (Unix-domain sockets on Linux/macOS, named
pipes on Windows); this package is a thin layer over it. Errors are
:class:`IPCError` subclasses; C-level diagnostics go to
``logging.getLogger("ipcfast")``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    AccessDenied,
    AddressInUse,
    BufferTooSmall,
    ClientInUse,
    Interrupted,
    ConnectionClosed,
    HandshakeError,
    InvalidArgument,
    IPCError,
    MessageTooLarge,
    NameTooLong,
    NoMemory,
    ProtocolError,
    RemoteError,
    ServerBusy,
    ServerNotFound,
    Timeout,
)

if TYPE_CHECKING:
    from ._backends import BACKENDS, native_import_error
    from ._base import Client, Server
    from ._names import handshake_value, pipe_name

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BACKENDS",
    "Server",
    "Client",
    "pipe_name",
    "handshake_value",
    "native_import_error",
    "IPCError",
    "ServerNotFound",
    "ServerBusy",
    "HandshakeError",
    "ConnectionClosed",
    "MessageTooLarge",
    "RemoteError",
    "AddressInUse",
    "AccessDenied",
    "Timeout",
    "InvalidArgument",
    "NameTooLong",
    "ProtocolError",
    "NoMemory",
    "ClientInUse",
    "Interrupted",
    "BufferTooSmall",
]

#: Names loaded on first use (PEP 562): ``import ipcfast`` stays cheap for
#: programs that need only part of it, such as the server node's client,
#: whose start-up is paid on every command. The native backend loads (and
#: installs its log bridge, or warns once that it cannot) when a server or
#: client first asks for it.
_LAZY = {
    "Server": "._base",
    "Client": "._base",
    "BACKENDS": "._backends",
    "native_import_error": "._backends",
    "pipe_name": "._names",
    "handshake_value": "._names",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(_LAZY))
