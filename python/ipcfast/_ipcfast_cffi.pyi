"""Type stub for the cffi extension module built from tools/ffi_build.py."""

from typing import Any

ffi: Any
lib: Any
