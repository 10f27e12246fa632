"""Build the cffi FFI for ipcfast (API / out-of-line mode).

Used by CMakeLists.txt at build time:

    python tools/ffi_build.py OUT_DIR

writes OUT_DIR/_ipcfast_cffi.c (the C source of the ``ipcfast._ipcfast_cffi``
extension module). CMake compiles it together with csrc/*.c.

The declarations come from python/ipcfast/_ipc_cdef.h, a hand-written cffi
cdef mirroring csrc/ipc.h (tests/test_cdef.py checks that they agree).
"""

from __future__ import annotations

import os
import sys

import cffi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CDEF_PATH = os.path.join(ROOT, "python", "ipcfast", "_ipc_cdef.h")
CSRC_DIR = os.path.join(ROOT, "csrc")
MODULE_NAME = "ipcfast._ipcfast_cffi"
C_FILE_NAME = "_ipcfast_cffi.c"


def read_cdef(path: str = CDEF_PATH) -> str:
    """Return the text of the cdef file."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def make_ffi() -> cffi.FFI:
    """Return an FFI with the cdef and the C source set."""
    ffi = cffi.FFI()
    ffi.cdef(read_cdef())
    ffi.set_source(
        MODULE_NAME,
        '#include "ipc.h"\n',
        include_dirs=[CSRC_DIR],
    )
    return ffi


ffi = make_ffi()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, C_FILE_NAME)
    ffi.emit_c_code(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
