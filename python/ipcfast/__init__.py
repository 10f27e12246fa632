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

from ._backends import BACKENDS, load_native, native_import_error
from ._base import Client, Server
from ._errors import (
    AccessDenied,
    AddressInUse,
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
]

# Import the native backend now (installs the log bridge); if it cannot be
# imported, warn once here and let backend="native" raise ImportError.
load_native(warn=True)
