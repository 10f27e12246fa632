"""The native Client: one ``ipc_client_request`` call per request, with the
GIL released (cffi releases it around every call into the library)."""

from __future__ import annotations

from typing import Any, Optional

from .._base import BytesLike, Client, ClientOptions, timeout_ms
from .._errors import ConnectionClosed
from ._ffi import ffi, lib, raise_from_error

__all__ = ["NativeClient"]


class NativeClient(Client):
    """The native implementation of :class:`ipcfast.Client`."""

    backend = "native"

    _client: Any = None

    def _connect(self, options: ClientOptions) -> None:
        c_options = ffi.new("ipc_client_options *")
        lib.ipc_client_options_init(c_options)
        c_options.max_message = options.max_message
        c_options.shm = int(options.shm)
        ffi.memmove(c_options.handshake, options.handshake, lib.IPC_HANDSHAKE_SIZE)
        self._err = ffi.new("ipc_error *")
        self._response = ffi.new("const uint8_t **")
        self._response_size = ffi.new("size_t *")
        out = ffi.new("ipc_client_t **")
        rc = lib.ipc_client_open(out, options.name_bytes, c_options, options.connect_ms, self._err)
        if rc != lib.IPC_OK:
            raise_from_error(self._err)
        self._client = out[0]

    @property
    def closed(self) -> bool:
        return self._client is None

    @property
    def version(self) -> int:
        """The packet version both sides agreed on."""
        with self._lock:
            if self._client is None:
                raise ConnectionClosed("the client is closed", code="IPC_E_CLOSED")
            return int(lib.ipc_client_version(self._client))

    def request(self, data: BytesLike, timeout: Optional[float] = None) -> bytes:
        try:
            buf = ffi.from_buffer(data)
        except TypeError:
            raise TypeError(f"request data must be bytes-like, not {type(data).__name__}") from None
        ms = self._timeout_ms if timeout is None else timeout_ms(timeout)
        with self._lock:
            client = self._client
            if client is None:
                raise ConnectionClosed(
                    f"the client for {self._name!r} is closed: open a new Client", code="IPC_E_CLOSED"
                )
            rc = lib.ipc_client_request(client, buf, len(buf), self._response, self._response_size, ms, self._err)
            if rc != 0:
                raise_from_error(self._err)
            response: bytes = ffi.buffer(self._response[0], self._response_size[0])[:]
            return response

    def close(self) -> None:
        with self._lock:
            client = self._client
            if client is not None:
                self._client = None
                lib.ipc_client_close(client)

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            self._client = None
            try:
                lib.ipc_client_close(client)
            except Exception:
                pass
