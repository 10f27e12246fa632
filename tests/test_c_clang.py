"""The C test suite built with clang's UndefinedBehaviorSanitizer, including
-fsanitize=pointer-overflow, which gcc's UBSan (tests/test_c_core.py) does
not check: forming NULL + 0 is undefined in C, and clang traps on it.

Trap mode (-fsanitize-trap=all) needs no sanitizer runtime library, so it
works wherever clang itself is installed: undefined behaviour kills the
program with SIGILL, which fails the test. (Issue 13, item 15: a stream
whose buffer was freed after a message above 8 MiB formed NULL + 0 on its
next read; tests/c/test_client.c: big_then_small.)

Built through CMake as the clang_ubsan variant of tests/c_build.py, with
-pedantic -Werror like the other variants (so clang's warnings fail it too).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BuildC

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX compiler toolchain only")


def test_c_core_under_clang_ubsan_with_pointer_overflow(c_build: BuildC, tmp_path: Path) -> None:
    exe = c_build("clang_ubsan").program("ipcfast_c_tests")
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    lines = [line for line in ran.stdout.splitlines() if line.strip()]
    summary = SUMMARY.match(lines[-1]) if lines else None
    failures = "\n".join(line for line in ran.stdout.splitlines() if "FAIL" in line)
    # A trap (SIGILL, returncode -4) names no test: the last "[ RUN  ]" line does.
    assert ran.returncode == 0 and summary and summary.group(2) == "0", (
        f"exited {ran.returncode}; failures:\n{failures}\n"
        f"--- end of output ---\n{ran.stdout[-4000:]}{ran.stderr[-2000:]}"
    )
    assert "[  OK  ] big_then_small (" in ran.stdout
