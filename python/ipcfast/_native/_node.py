"""Typed wrappers for the server node (ipcfast.node) over the C core.

The node needs three things from the native backend: commands queued by a
node server (:class:`NodeCall`, from :meth:`NativeServer.next_command`), the
call's console and exit packets, and a client-side packet connection
(:class:`PacketConnection`). Nothing here exposes cffi objects.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

from .._codec import Command
from ._ffi import NULL, ffi, lib, raise_from_error

__all__ = ["STREAM_STDERR", "STREAM_STDOUT", "NodeCall", "PacketConnection", "decode_command"]

STREAM_STDOUT: int = lib.IPC_STREAM_STDOUT
STREAM_STDERR: int = lib.IPC_STREAM_STDERR


class NodeCall:
    """One COMMAND call queued by a node server; valid until :meth:`finish`.

    Two NodeCall objects for the same C call compare equal (the cancel
    listener gets a new wrapper of the call it cancels)."""

    __slots__ = ("_call", "payload")

    def __init__(self, call: Any, payload: bytes = b"") -> None:
        self._call = call
        #: The COMMAND packet's payload (see :func:`decode_command`).
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeCall) and self._call == other._call

    def __hash__(self) -> int:
        return hash(int(ffi.cast("uintptr_t", self._call)))

    def console_write(self, stream: int, data: Any) -> bool:
        """Sends text to the client's ``stream`` (STREAM_STDOUT/STDERR);
        False if the client is gone."""
        view = ffi.from_buffer(data)
        return bool(lib.ipc_call_console_write(self._call, stream, view, len(view), NULL) == lib.IPC_OK)

    def exit(self, exit_code: int, exit_type: int) -> bool:
        """Sends the command's EXIT packet; False if the client is gone."""
        return bool(lib.ipc_call_exit(self._call, exit_code, exit_type, NULL) == lib.IPC_OK)

    @property
    def cancelled(self) -> bool:
        """True once the client sent CANCEL for this call, or vanished."""
        return bool(lib.ipc_call_cancelled(self._call))

    def finish(self) -> None:
        """Releases the call (the C core may free it now)."""
        call, self._call = self._call, NULL
        if call != NULL:
            lib.ipc_call_finish(call)


def decode_command(payload: bytes) -> Command:
    """A COMMAND payload decoded by the C codec; ValueError if malformed."""
    c = ffi.new("ipc_command *")
    err = ffi.new("ipc_error *")
    try:
        if lib.ipc_command_decode(payload, len(payload), c, err) != lib.IPC_OK:
            raise ValueError(ffi.string(err.message).decode("utf-8", "replace") if err.message else "bad command")
        s = ffi.string
        argv: List[bytes] = [s(c.argv[i]) for i in range(c.argc)]
        env: List[bytes] = [s(c.env[i]) for i in range(c.envc)]
        return Command(argv, s(c.cwd), env, s(c.locale), int(c.flags))
    finally:
        lib.ipc_command_free(c)
        lib.ipc_error_clear(err)


class PacketConnection:
    """A client connection that reads and writes raw packets (node clients:
    COMMAND, CANCEL, REQUEST out; CONSOLE_WRITE, EXIT, RESPONSE in)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._err = ffi.new("ipc_error *")
        self._type = ffi.new("uint8_t *")
        self._payload = ffi.new("const uint8_t **")
        self._size = ffi.new("size_t *")

    @classmethod
    def open(cls, name: str, timeout_ms: int) -> Optional["PacketConnection"]:
        """Connects to ``name`` (default key); None if no server answered in
        time (not found, busy or gone)."""
        options = ffi.new("ipc_client_options *")
        lib.ipc_client_options_init(options)
        out = ffi.new("ipc_client_t **")
        err = ffi.new("ipc_error *")
        if lib.ipc_client_open(out, os.fsencode(name), options, max(0, timeout_ms), err) != lib.IPC_OK:
            lib.ipc_error_clear(err)
            return None
        return cls(out[0])

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            lib.ipc_client_close(client)

    def send_command(self, command: Command, timeout_ms: int) -> None:
        """Sends a COMMAND packet (the C codec encodes it)."""
        argv, env = list(command.argv), list(command.env)
        keep = [ffi.new("char[]", bytes(a)) for a in argv + env]
        c = ffi.new("ipc_command *")
        argv_array = ffi.new("char *[]", keep[: len(argv)])
        env_array = ffi.new("char *[]", keep[len(argv) :] or 1)
        cwd_c = ffi.new("char[]", bytes(command.cwd))
        locale_c = ffi.new("char[]", bytes(command.locale))
        c.flags = command.flags
        c.argc, c.argv, c.envc, c.env = len(argv), argv_array, len(env), env_array
        c.cwd, c.locale = cwd_c, locale_c
        if lib.ipc_client_send_command(self._client, c, timeout_ms, self._err) != lib.IPC_OK:
            raise_from_error(self._err)

    def write_packet(self, packet_type: int, data: bytes, timeout_ms: int) -> None:
        if lib.ipc_client_write_packet(self._client, packet_type, data, len(data), timeout_ms, self._err):
            raise_from_error(self._err)

    def read_packet(self, timeout_ms: int) -> Tuple[int, bytes]:
        """The next packet (type, payload); type 0 if none came in time."""
        rc = lib.ipc_client_read_packet(self._client, self._type, self._payload, self._size, timeout_ms, self._err)
        if rc == lib.IPC_E_TIMEOUT:
            lib.ipc_error_clear(self._err)
            return 0, b""
        if rc != lib.IPC_OK:
            raise_from_error(self._err)
        return int(self._type[0]), bytes(ffi.buffer(self._payload[0], self._size[0]))
