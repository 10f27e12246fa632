"""Exceptions raised by ipcfast, and the one table mapping C results to them.

Every failure of the C core arrives as an :class:`IPCError` (an ``OSError``)
or one of its subclasses. Each carries:

* ``str(exc)``: the message (from the C core: what happened, what to do);
* ``exc.code``: the C result name, e.g. ``"IPC_E_TIMEOUT"``;
* ``exc.system_error``: the OS error number behind it (``errno`` on POSIX,
  ``GetLastError()`` on Windows), 0 if none.

``errno`` is deliberately left ``None``: ``system_error`` is not always an
``errno`` value (on Windows it is a Win32 error code).

Where a C result corresponds to a built-in exception the class also inherits
from it, so generic ``except`` clauses work: :class:`Timeout` is a
``TimeoutError``, :class:`ServerNotFound` a ``FileNotFoundError``,
:class:`MessageTooLarge` and :class:`InvalidArgument` are ``ValueError`` s,
:class:`NoMemory` is a ``MemoryError`` and :class:`ClientInUse` a
``RuntimeError``.
"""

from __future__ import annotations

from typing import Any, Dict, NoReturn, Optional, Type

__all__ = [
    "IPCError",
    "InvalidArgument",
    "NameTooLong",
    "AddressInUse",
    "AccessDenied",
    "ServerNotFound",
    "ServerBusy",
    "Timeout",
    "ConnectionClosed",
    "HandshakeError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteError",
    "NoMemory",
    "ClientInUse",
    "ERROR_CLASSES",
    "error_for_code",
    "raise_from_error",
]


class IPCError(OSError):
    """Base class of every ipcfast error (an ``OSError``).

    Also raised as is for ``IPC_E_SYSTEM`` (another OS failure; see
    :attr:`system_error`).
    """

    code: str
    system_error: int

    def __init__(self, message: str, *, code: str = "IPC_E_SYSTEM", system_error: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.system_error = system_error

    def __reduce__(self) -> Any:
        # Keep the keyword attributes when pickled (e.g. across processes).
        return (_rebuild, (type(self), str(self), self.code, self.system_error))


def _rebuild(cls: Type[IPCError], message: str, code: str, system_error: int) -> IPCError:
    return cls(message, code=code, system_error=system_error)


class InvalidArgument(IPCError, ValueError):
    """A bad argument, or a call in the wrong state (``IPC_E_INVALID``)."""


class NameTooLong(IPCError, ValueError):
    """The name does not fit the platform's limit (``IPC_E_NAME_TOO_LONG``)."""


class AddressInUse(IPCError):
    """A live server already serves this name (``IPC_E_ADDRESS_IN_USE``)."""


class AccessDenied(IPCError, PermissionError):
    """Permissions, or an unsafe socket directory (``IPC_E_ACCESS_DENIED``)."""


class ServerNotFound(IPCError, FileNotFoundError):
    """No server is listening under this name (``IPC_E_NOT_FOUND``)."""


class ServerBusy(IPCError):
    """A server exists but did not take the connection in time (``IPC_E_BUSY``)."""


class Timeout(IPCError, TimeoutError):
    """The operation's time budget ran out (``IPC_E_TIMEOUT``)."""


class ConnectionClosed(IPCError, ConnectionResetError):
    """The peer closed the connection, or the client was closed (``IPC_E_CLOSED``)."""


class HandshakeError(IPCError, ConnectionError):
    """The peer refused or failed the handshake: wrong key, incompatible
    version, or refused as another user (``IPC_E_HANDSHAKE``)."""


class MessageTooLarge(IPCError, ValueError):
    """A message above ``max_message`` (``IPC_E_TOO_LARGE``)."""


class ProtocolError(IPCError):
    """Malformed or unexpected bytes on the wire (``IPC_E_PROTOCOL``)."""


class RemoteError(IPCError):
    """The server's handler failed; the message is its text (``IPC_E_REMOTE``)."""


class NoMemory(IPCError, MemoryError):
    """The C core ran out of memory (``IPC_E_NO_MEMORY``)."""


class ClientInUse(IPCError, RuntimeError):
    """A client was used from two threads at once (``IPC_E_IN_USE``).

    The Python :class:`~ipcfast.Client` serializes calls with a lock, so this
    is not normally seen.
    """


#: The one table from C result names (``ipc_result_name()``) to exceptions.
ERROR_CLASSES: Dict[str, Type[IPCError]] = {
    "IPC_E_INVALID": InvalidArgument,
    "IPC_E_NAME_TOO_LONG": NameTooLong,
    "IPC_E_ADDRESS_IN_USE": AddressInUse,
    "IPC_E_ACCESS_DENIED": AccessDenied,
    "IPC_E_NOT_FOUND": ServerNotFound,
    "IPC_E_BUSY": ServerBusy,
    "IPC_E_TIMEOUT": Timeout,
    "IPC_E_CLOSED": ConnectionClosed,
    "IPC_E_HANDSHAKE": HandshakeError,
    "IPC_E_TOO_LARGE": MessageTooLarge,
    "IPC_E_PROTOCOL": ProtocolError,
    "IPC_E_REMOTE": RemoteError,
    "IPC_E_NO_MEMORY": NoMemory,
    "IPC_E_IN_USE": ClientInUse,
    "IPC_E_SYSTEM": IPCError,
}


def error_for_code(code: str, message: str, system_error: int = 0) -> IPCError:
    """Build the exception for C result name ``code`` (unknown names give
    a plain :class:`IPCError`)."""
    cls = ERROR_CLASSES.get(code, IPCError)
    return cls(message, code=code, system_error=system_error)


def raise_from_error(err: Any, context: Optional[str] = None) -> NoReturn:
    """Raise the exception described by a filled ``ipc_error *``.

    Reads its code, system error and message, releases it with
    ``ipc_error_clear()`` (so the struct can be reused), and raises.
    ``context``, if given, is prefixed to the message.
    """
    from ._ipcfast_cffi import ffi, lib

    code_number = int(err.code)
    system_error = int(err.system_error)
    message = ""
    if err.message != ffi.NULL:
        message = ffi.string(err.message).decode("utf-8", "replace")
    lib.ipc_error_clear(err)
    code = ffi.string(lib.ipc_result_name(code_number)).decode("ascii", "replace")
    if not message:
        message = f"{code} (error code {code_number})"
    if context:
        message = f"{context}: {message}"
    raise error_for_code(code, message, system_error)
