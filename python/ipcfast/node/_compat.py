"""What makes two node servers interchangeable, and what tells a node its code
changed.

A node's name is ``pipe_name(prefix, ...)`` over everything that would make
an old node run a command differently from a fresh one: the ipcfast version,
the Python version and executable, the user, a stamp of ipcfast's own files
and of the preloaded modules' files, and the node's options. A client that
computes the name therefore never reaches a node started from other code.

Code can also change while a node runs (a ``pip install``, an edit of the
tool being run through the node), so the node keeps a stamp of every module
file it has loaded and checks it before each command (:class:`CodeWatch`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .._names import pipe_name

__all__ = ["DEFAULT_PREFIX", "CodeWatch", "node_name", "user_id"]

DEFAULT_PREFIX = "ipcfast-node"

_PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "PYTHONUSERBASE")

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_id() -> str:
    """The user a node belongs to (nodes are never shared between users)."""
    if hasattr(os, "geteuid"):
        return str(os.geteuid())
    return os.environ.get("USERNAME", "")


def _file_stamp(path: str) -> Tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _stamp_of(paths: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(set(paths)):
        digest.update(f"{path}\0{_file_stamp(path)}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def ipcfast_files() -> List[str]:
    """ipcfast's own code: its Python files and the compiled C core."""
    files: List[str] = []
    for folder in (_PACKAGE_DIR, os.path.join(_PACKAGE_DIR, "node")):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        files.extend(os.path.join(folder, n) for n in names if n.endswith((".py", ".so", ".pyd")))
    return files


def _preload_origins(preload: Sequence[str]) -> List[str]:
    # Only the top-level package is located: finding a submodule would
    # import its parents, which is the slow start a client must not pay.
    origins = []
    for module in preload:
        try:
            spec = importlib.util.find_spec(module.split(".")[0])
        except (ImportError, ValueError):
            spec = None
        origins.append(spec.origin if spec is not None and spec.origin else f"<missing {module}>")
    return origins


def node_name(
    preload: Sequence[str] = (),
    *,
    prefix: str = DEFAULT_PREFIX,
    options: Optional[Dict[str, object]] = None,
) -> str:
    """The name of the node for these preloaded modules and options.

    ``options`` are the node's other settings (idle timeout, ...): nodes
    with different settings never share a name."""
    from .. import __version__

    # 128 bits of the digest are plenty, and the shorter name leaves room
    # for a long socket directory (sun_path holds 107 bytes).
    full = pipe_name(
        prefix,
        ipcfast=__version__,
        python=sys.version,
        executable=sys.executable,
        user=user_id(),
        code=_stamp_of(ipcfast_files()),
        preload=list(preload),
        preload_code=_stamp_of(_preload_origins(preload)),
        options=options or {},
        # What decides the node's own sys.path and site packages at start.
        environment={k: os.environ.get(k) for k in _PATH_VARIABLES},
    )
    return full[: len(prefix) + 1 + 32]


class CodeWatch:
    """Stamps of the module files a node has loaded, to notice changes.

    Standard-library files are skipped (they change only with the Python
    installation, which is part of the node's name)."""

    def __init__(self) -> None:
        self._stamps: Dict[str, Tuple[int, int]] = {}
        self._ignored: Set[str] = set()  # standard-library files
        self._seen_modules = 0
        stdlib = sysconfig.get_paths().get("stdlib", "")
        self._stdlib = os.path.join(os.path.realpath(stdlib), "") if stdlib else None
        for path in ipcfast_files():
            self._stamps[path] = _file_stamp(path)
        self.update()

    def update(self) -> None:
        """Records the files of modules loaded since the last call."""
        modules = list(sys.modules.values())
        if len(modules) == self._seen_modules:
            return
        self._seen_modules = len(modules)
        for module in modules:
            path = getattr(module, "__file__", None)
            if not isinstance(path, str) or path in self._stamps or path in self._ignored:
                continue
            if self._stdlib and os.path.realpath(path).startswith(self._stdlib):
                self._ignored.add(path)
                continue
            self._stamps[path] = _file_stamp(path)

    def changed(self) -> Optional[str]:
        """The first recorded file whose stamp differs now, or None."""
        for path, stamp in self._stamps.items():
            if _file_stamp(path) != stamp:
                return path
        return None
