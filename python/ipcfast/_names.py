"""Deterministic server names and handshake values.

Both are pure functions of their arguments, so a client and a server that
agree on the inputs (a prefix and options, a key) meet, and ones that do not
never do.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Union

__all__ = ["pipe_name", "handshake_value", "PROTOCOL_NAME", "PROTOCOL_VERSION", "HANDSHAKE_SIZE"]

#: Protocol name hashed into the handshake value.
PROTOCOL_NAME = b"ipcfast"
#: Wire protocol version hashed into the handshake value.
PROTOCOL_VERSION = 1
#: Size of a handshake value in bytes; the first byte is always 0x00.
HANDSHAKE_SIZE = 8


def _canonical_options(options: "dict[str, Any]") -> bytes:
    """Canonical, deterministic encoding of keyword options.

    JSON with sorted keys and no whitespace; values JSON cannot encode are
    replaced by their ``repr()``. Tuples encode like lists.
    """
    text = json.dumps(
        options,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=True,
        default=repr,
    )
    return text.encode("utf-8")


def pipe_name(prefix: str, **options: Any) -> str:
    """Return ``"{prefix}-{sha256 hex}"`` for a prefix and keyword options.

    The hash covers a canonical encoding of ``options`` (sorted keys, compact
    JSON, ``repr()`` for values JSON cannot encode), so the name does not
    depend on argument order, and servers started with different options
    (user, tool version, architecture, ...) never share a name::

        >>> pipe_name("mytool", version="1.2", user="ann") == pipe_name("mytool", user="ann", version="1.2")
        True
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
    if not prefix:
        raise ValueError("prefix must not be empty")
    if "\x00" in prefix:
        raise ValueError("prefix must not contain NUL characters")
    digest = hashlib.sha256(_canonical_options(options)).hexdigest()
    return f"{prefix}-{digest}"


def handshake_value(key: Optional[Union[str, bytes, bytearray, memoryview]] = None) -> bytes:
    """Return the 8-byte handshake value for an application ``key``.

    ``0x00 + SHA-256(b"ipcfast\\0" + bytes([1]) + key)[:7]``; a ``str`` key
    is encoded as UTF-8, ``None`` (the default) is the empty key. With
    ``key=None`` this equals the C core's ``IPC_DEFAULT_HANDSHAKE``, so
    C programs and Python tools meet by default.
    """
    if key is None:
        key_bytes = b""
    elif isinstance(key, str):
        key_bytes = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        key_bytes = bytes(key)
    else:
        raise TypeError(f"key must be str, bytes or None, not {type(key).__name__}")
    digest = hashlib.sha256(PROTOCOL_NAME + b"\x00" + bytes([PROTOCOL_VERSION]) + key_bytes).digest()
    return b"\x00" + digest[: HANDSHAKE_SIZE - 1]
