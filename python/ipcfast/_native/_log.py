"""The C core's log callback, forwarded to ``logging.getLogger("ipcfast")``."""

from __future__ import annotations

import logging
from typing import Any

from ._ffi import NULL, ffi, lib

__all__ = ["install_log_handler", "uninstall_log_handler"]

logger = logging.getLogger("ipcfast")


def _ipcfast_log(user_data: Any, level: int, message: Any) -> None:
    """C log callback: forwards to logging.getLogger("ipcfast")."""
    try:
        if logger.isEnabledFor(level):
            text = ffi.string(message).decode("utf-8", "replace") if message != NULL else ""
            logger.log(level, "%s", text)
    except BaseException:  # never propagate into C
        pass


# Registered without decorator syntax: cffi's decorators are untyped.
ffi.def_extern(name="_ipcfast_log")(_ipcfast_log)


def install_log_handler() -> None:
    lib.ipc_set_log_handler(lib._ipcfast_log, NULL)


def uninstall_log_handler() -> None:
    lib.ipc_set_log_handler(NULL, NULL)
