"""The one module that imports the compiled cffi module.

Everything else in ipcfast reaches the C core through this package's typed
wrappers; tests/test_imports.py checks that no other module imports
``ipcfast._ipcfast_cffi``.
"""

from __future__ import annotations

from typing import Any, NoReturn, Optional

from .. import _ipcfast_cffi
from .._errors import error_for_code
from .._ipcfast_cffi import ffi, lib

__all__ = ["NULL", "extension_path", "ffi", "lib", "raise_from_error", "result_name"]

NULL = ffi.NULL


def extension_path() -> str:
    """The compiled module's file (e.g. to see when it was built)."""
    path: str = _ipcfast_cffi.__file__
    return path


def result_name(code: int) -> str:
    """The C name of result ``code`` (``ipc_result_name()``)."""
    name: str = ffi.string(lib.ipc_result_name(code)).decode("ascii", "replace")
    return name


def raise_from_error(err: Any, context: Optional[str] = None) -> NoReturn:
    """Raise the exception described by a filled ``ipc_error *``.

    Reads its code, system error and message, releases it with
    ``ipc_error_clear()`` (so the struct can be reused), and raises.
    ``context``, if given, is prefixed to the message.
    """
    code_number = int(err.code)
    system_error = int(err.system_error)
    message = ""
    if err.message != NULL:
        message = ffi.string(err.message).decode("utf-8", "replace")
    lib.ipc_error_clear(err)
    code = result_name(code_number)
    if not message:
        message = f"{code} (error code {code_number})"
    if context:
        message = f"{context}: {message}"
    raise error_for_code(code, message, system_error)
