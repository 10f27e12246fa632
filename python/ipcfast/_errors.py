"""Exceptions raised by ipcfast, the C result codes, and the one table
mapping one to the other. Pure Python: the native package reads a C
``ipc_error`` and builds its exception through :func:`error_for_code`.

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

import enum
from typing import Any, Dict, Type, Union

__all__ = [
    "Result",
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
    "Interrupted",
    "BufferTooSmall",
    "ERROR_CLASSES",
    "error_for_code",
]


class Result(enum.IntEnum):
    """The C enum ``ipc_result`` (same numbers; the names without the
    ``IPC_`` prefix). tests/test_errors.py checks it against the built
    module."""

    OK = 0
    E_INVALID = 1  #: a bad argument, or a call in the wrong state
    E_NAME_TOO_LONG = 2  #: the name does not fit the platform's limit
    E_ADDRESS_IN_USE = 3  #: a live server already serves this name
    E_ACCESS_DENIED = 4  #: permissions, or an unsafe socket directory
    E_NOT_FOUND = 5  #: no server is listening under this name
    E_BUSY = 6  #: the server exists but has no free slot
    E_TIMEOUT = 7  #: the operation's time budget ran out
    E_CLOSED = 8  #: the peer closed the connection
    E_HANDSHAKE = 9  #: the peer refused or failed the handshake
    E_TOO_LARGE = 10  #: a message above max_message
    E_PROTOCOL = 11  #: malformed or unexpected bytes on the wire
    E_REMOTE = 12  #: the server's handler failed (ERROR packet)
    E_NO_MEMORY = 13
    E_IN_USE = 14  #: a client used from two threads at once
    E_SYSTEM = 15  #: another OS failure; see system_error
    E_INTERRUPTED = 16  #: the client's interrupt hook ended the wait

    @property
    def c_name(self) -> str:
        """The C name, e.g. ``"IPC_E_TIMEOUT"`` (``ipc_result_name()``);
        also what :attr:`IPCError.code` holds."""
        return "IPC_" + self.name


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


class Interrupted(IPCError, InterruptedError):
    """A wait of the C client was ended by its interrupt hook
    (``IPC_E_INTERRUPTED``). The Python :class:`~ipcfast.Client` raises the
    signal handler's own exception instead (e.g. KeyboardInterrupt), so
    Python code sees this only from the C API's hook."""


class BufferTooSmall(InvalidArgument):
    """:meth:`ipcfast.Client.request_into`: the response did not fit the
    buffer given. Not a failure of the connection, which stays usable; the
    response is not lost either: :attr:`response` holds it (bytes) and
    :attr:`needed` its size, so a caller can retry with a larger buffer for
    the next request and use this one's answer as it is. The buffer was
    not written to."""

    needed: int
    response: bytes

    def __init__(
        self,
        message: str,
        *,
        code: str = "IPC_E_INVALID",
        system_error: int = 0,
        needed: int = 0,
        response: bytes = b"",
    ) -> None:
        super().__init__(message, code=code, system_error=system_error)
        self.needed = needed
        self.response = response

    def __reduce__(self) -> Any:
        return (_rebuild_too_small, (str(self), self.needed, self.response))


def _rebuild_too_small(message: str, needed: int, response: bytes) -> "BufferTooSmall":
    return BufferTooSmall(message, needed=needed, response=response)


#: The one table from C results to exceptions.
ERROR_CLASSES: Dict[Result, Type[IPCError]] = {
    Result.E_INVALID: InvalidArgument,
    Result.E_NAME_TOO_LONG: NameTooLong,
    Result.E_ADDRESS_IN_USE: AddressInUse,
    Result.E_ACCESS_DENIED: AccessDenied,
    Result.E_NOT_FOUND: ServerNotFound,
    Result.E_BUSY: ServerBusy,
    Result.E_TIMEOUT: Timeout,
    Result.E_CLOSED: ConnectionClosed,
    Result.E_HANDSHAKE: HandshakeError,
    Result.E_TOO_LARGE: MessageTooLarge,
    Result.E_PROTOCOL: ProtocolError,
    Result.E_REMOTE: RemoteError,
    Result.E_NO_MEMORY: NoMemory,
    Result.E_IN_USE: ClientInUse,
    Result.E_SYSTEM: IPCError,
    Result.E_INTERRUPTED: Interrupted,
}


_BY_C_NAME: Dict[str, Result] = {result.c_name: result for result in Result}


def error_for_code(code: Union[Result, str], message: str, system_error: int = 0) -> IPCError:
    """Build the exception for C result ``code`` (a :class:`Result` or its C
    name; unknown names give a plain :class:`IPCError`)."""
    if isinstance(code, str):
        result = _BY_C_NAME.get(code)
        if result is None:
            return IPCError(message, code=code, system_error=system_error)
        code = result
    cls = ERROR_CLASSES.get(code, IPCError)
    return cls(message, code=code.c_name, system_error=system_error)
