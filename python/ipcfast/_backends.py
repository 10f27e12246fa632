"""The backend registry: backend name -> module, imported lazily and checked.

A backend is a module that defines every name in :data:`BACKEND_API`:
``ServerImpl`` (a subclass of :class:`ipcfast.Server`) and ``ClientImpl`` (of
:class:`ipcfast.Client`). The facades in ``_base`` ask this registry for the
class to build; the registry imports a backend only when it is first asked
for, so the import graph runs one way: backends import ``_base``, and
``_base`` reaches a backend only through a function call here.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from types import ModuleType
from typing import Dict, Optional

__all__ = ["BACKENDS", "BACKEND_API", "backend_module", "native_import_error"]

#: Backends known to the facades, and the module implementing each.
_MODULES: Dict[str, str] = {"native": "ipcfast._native", "pure": "ipcfast._pure"}
BACKENDS = tuple(_MODULES)

#: The names a backend module must define.
BACKEND_API = ("ServerImpl", "ClientImpl")

_loaded: Dict[str, ModuleType] = {}
_errors: Dict[str, ImportError] = {}
_lock = threading.Lock()


def _import(backend: str, warn: bool) -> Optional[ModuleType]:
    """Import ``backend`` once; remember (and warn once about) failure."""
    with _lock:
        if backend in _loaded or backend in _errors:
            return _loaded.get(backend)
        try:
            module = importlib.import_module(_MODULES[backend])
        except ImportError as exc:
            _errors[backend] = exc
            if warn:
                warnings.warn(
                    f"ipcfast: the native extension module could not be imported "
                    f"({type(exc).__name__}: {exc}); backend='native' is unavailable. "
                    f"Reinstall ipcfast (pip install --force-reinstall ipcfast) to build it.",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return None
        missing = [name for name in BACKEND_API if not hasattr(module, name)]
        if missing:
            raise TypeError(f"backend {backend!r} ({module.__name__}) lacks {', '.join(missing)}")
        _loaded[backend] = module
        return module


def load_native(warn: bool = True) -> Optional[ModuleType]:
    """The native backend module, or None if it cannot be imported."""
    return _import("native", warn)


def native_import_error() -> Optional[BaseException]:
    """The exception that prevented importing the native backend, or None."""
    load_native()
    return _errors.get("native")


def backend_module(backend: str) -> ModuleType:
    """The module implementing ``backend`` (checked against BACKEND_API)."""
    if backend not in _MODULES:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(map(repr, BACKENDS))}")
    module = _import(backend, warn=True)
    if module is None:
        cause = _errors[backend]
        raise ImportError(
            f"ipcfast's native backend is unavailable: the extension module "
            f"ipcfast._ipcfast_cffi could not be imported ({type(cause).__name__}: {cause})"
        ) from cause
    return module
