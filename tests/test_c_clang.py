"""The C test suite built with clang's UndefinedBehaviorSanitizer, including
-fsanitize=pointer-overflow, which gcc's UBSan (tests/test_c_core.py) does
not check: forming NULL + 0 is undefined in C, and clang traps on it.

Trap mode (-fsanitize-trap=all) needs no sanitizer runtime library, so it
works wherever clang itself is installed: undefined behaviour kills the
program with SIGILL, which fails the test. (Issue 13, item 15: a stream
whose buffer was freed after a message above 8 MiB formed NULL + 0 on its
next read; tests/c/test_client.c: big_then_small.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX compiler toolchain only")


def _clang() -> str:
    for name in ("clang", "clang-14", "clang-15", "clang-16", "clang-17", "clang-18"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("clang is not installed")


def test_c_core_under_clang_ubsan_with_pointer_overflow(tmp_path: Path) -> None:
    exe = tmp_path / "test_ipc_clang_ubsan"
    sources = sorted(str(p) for p in (ROOT / "csrc").glob("*.c"))
    # The C suite's runner and every test file (stress.c is a program of its own).
    tests = sorted(str(p) for p in (ROOT / "tests" / "c").glob("*.c") if p.name != "stress.c")
    flags = [
        "-std=c99",
        "-Wall",
        "-Wextra",
        "-D_POSIX_C_SOURCE=200809L",
        "-g",
        "-O1",
        "-fsanitize=undefined,pointer-overflow",
        "-fsanitize-trap=all",
    ]
    built = subprocess.run(
        [_clang(), *flags, *tests, *sources, "-o", str(exe), "-lpthread"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert built.returncode == 0 and not built.stderr.strip(), f"build failed:\n{built.stderr}"
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
