"""The C programs the tests run, built through CMake: CMakeLists.txt is the
one description of every C build, and a variant here is only a set of its
options (sanitizers, warnings as errors, the mingw-w64 toolchain).

Each variant is configured and built at most once per test session, in a
build folder under the pytest cache (so a later session rebuilds only what
changed), or under the session's temporary folder when the cache is off.
The ``c_build`` fixture of conftest.py hands out ``CBuild`` objects:

    build = c_build("asan_ubsan")
    exe = build.program("ipcfast_c_tests")

A variant the machine cannot build (no compiler, no mingw-w64, no clang, a
ThreadSanitizer runtime that does not run here) is skipped with the reason;
any other configure or build failure fails the test, and so does a
warning in every variant but "release" (they build with IPCFAST_WERROR:
-pedantic -Werror).

Set CC to use another compiler than CMake's default (`cc`); the clang
variants use clang whatever CC says.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINGW_TOOLCHAIN = ROOT / "cmake" / "mingw-w64-x86_64.cmake"
MINGW_CC = "x86_64-w64-mingw32-gcc"
# How CMakeLists' message starts when an option cannot be used here (a
# sanitizer runtime, libFuzzer): the variant is skipped, not failed.
UNUSABLE = re.compile(r"IPCFAST_\w+ unusable:")

_COMMON = {
    "IPCFAST_PYTHON": "OFF",  # the C programs need no Python headers
    "IPCFAST_BUILD_TESTS": "ON",
    "IPCFAST_WERROR": "ON",
    "CMAKE_BUILD_TYPE": "Debug",
}
_POSIX_2008 = "-D_POSIX_C_SOURCE=200809L"


# clang by its plain name or a versioned one (Debian installs clang-NN).
CLANG_NAMES = ("clang", "clang-14", "clang-15", "clang-16", "clang-17", "clang-18")
# The libFuzzer build's compiler: IPCFAST_FUZZ_CC, else the first clang found.
FUZZ_CC = (os.environ["IPCFAST_FUZZ_CC"],) if os.environ.get("IPCFAST_FUZZ_CC") else CLANG_NAMES


class Variant(NamedTuple):
    options: Dict[str, str]
    cross: bool = False  # built with the mingw-w64 toolchain
    compilers: Tuple[str, ...] = ()  # the first of these on PATH, instead of CC / cc


VARIANTS: Dict[str, Variant] = {
    # `cc -std=c99 -pedantic -Werror` as a vendoring project would; also the
    # docs/examples programs that test_docs.py runs.
    "strict": Variant({**_COMMON, "IPCFAST_BUILD_EXAMPLES": "ON"}),
    # the same with _POSIX_C_SOURCE set from outside, as many builds do
    "posix2008": Variant({**_COMMON, "IPCFAST_BUILD_EXAMPLES": "ON", "CMAKE_C_FLAGS": _POSIX_2008}),
    # also the fuzz harness's corpus replay (tests/test_fuzz.py)
    "asan_ubsan": Variant(
        {
            **_COMMON,
            "IPCFAST_SANITIZE": "address;undefined",
            "CMAKE_C_FLAGS": _POSIX_2008,
            "IPCFAST_BUILD_FUZZ_REPLAY": "ON",
        }
    ),
    "tsan": Variant({**_COMMON, "IPCFAST_SANITIZE": "thread", "CMAKE_C_FLAGS": _POSIX_2008}),
    # optimised like the extension (-O3 -DNDEBUG): the node client and the
    # bench programs (bench_floor, bench_c2c) for timing tests. Not -Werror:
    # at -O3 gcc 12 warns (maybe-uninitialized) in csrc/ipc_node.c today.
    "release": Variant(
        {
            **_COMMON,
            "CMAKE_BUILD_TYPE": "Release",
            "IPCFAST_WERROR": "OFF",
            "IPCFAST_BUILD_TESTS": "OFF",
            "IPCFAST_BUILD_BENCH": "ON",
        }
    ),
    # clang's UBSan with pointer-overflow, which gcc's does not check, in trap
    # mode (no runtime library needed: undefined behaviour is a SIGILL); -O1
    # as the sanitizers are meant to run. tests/test_c_clang.py runs it.
    "clang_ubsan": Variant(
        {
            **_COMMON,
            "CMAKE_C_FLAGS": f"{_POSIX_2008} -O1 -fsanitize=undefined,pointer-overflow -fsanitize-trap=all",
        },
        compilers=CLANG_NAMES,
    ),
    # the libFuzzer harness tests/fuzz/fuzz_codec.c (ASan + UBSan, its own
    # flags in CMakeLists.txt), run by tests/test_fuzz.py
    "fuzz": Variant(
        {"IPCFAST_PYTHON": "OFF", "IPCFAST_BUILD_FUZZ": "ON", "CMAKE_BUILD_TYPE": "Debug"},
        compilers=FUZZ_CC,
    ),
    # Windows (named pipes), run under wine by test_c_core.py
    "mingw": Variant({**_COMMON, "CMAKE_TOOLCHAIN_FILE": str(MINGW_TOOLCHAIN)}, cross=True),
}


class CBuild(NamedTuple):
    variant: str
    build_dir: Path
    cross: bool

    def program(self, target: str) -> Path:
        """The executable of a CMake target of this build."""
        exe = self.build_dir / "bin" / (target + (".exe" if self.cross else ""))
        assert exe.is_file(), f"{self.variant}: CMake built no {exe.name} in {exe.parent}"
        return exe


def _generator() -> List[str]:
    """Ninja where installed (the `test` extra brings it), else CMake's default."""
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def _compiler_missing(variant: Variant) -> Optional[str]:
    if variant.cross:
        if shutil.which(MINGW_CC) is None:
            return f"{MINGW_CC} is not installed (Debian: gcc-mingw-w64-x86-64)"
        return None
    if variant.compilers:
        return None if _chosen_compiler(variant) else f"none of {', '.join(variant.compilers)} is installed"
    cc = os.environ.get("CC", "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc!r}) on PATH"
    return None


def _chosen_compiler(variant: Variant) -> Optional[str]:
    """The compiler a variant asks for by name (None: CMake's choice, CC or cc)."""
    for name in variant.compilers:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(cmd: List[str], what: str, timeout: int = 600) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} took more than {timeout} s: {' '.join(cmd)}") from None


def build_variant(name: str, root: Path) -> CBuild:
    """Configures and builds VARIANTS[name] under root; skips where the
    machine lacks the tools for it."""
    variant = VARIANTS[name]
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (pip install '.[test]')")
    missing = _compiler_missing(variant)
    if missing:
        pytest.skip(missing)
    # Another compiler or option set gets another folder (CMake keeps the
    # compiler it found first).
    options = dict(variant.options)
    compiler = _chosen_compiler(variant)
    if compiler:
        options["CMAKE_C_COMPILER"] = compiler
    key = repr((sorted(options.items()), os.environ.get("CC", ""), _generator()))
    build_dir = root / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    defines = [f"-D{k}={v}" for k, v in sorted(options.items())]
    configured = _run(
        [cmake, "-S", str(ROOT), "-B", str(build_dir), *_generator(), *defines], f"configuring the {name} C build"
    )
    output = configured.stdout + configured.stderr
    unusable = UNUSABLE.search(output)
    if configured.returncode != 0 and unusable:
        pytest.skip(output[unusable.start() :].strip()[:500])
    assert configured.returncode == 0, f"cmake could not configure the {name} C build:\n{output[-6000:]}"
    built = _run([cmake, "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2)], f"the {name} C build")
    assert built.returncode == 0, (
        f"the {name} C build failed (warnings are errors):\n{(built.stdout + built.stderr)[-8000:]}"
    )
    return CBuild(name, build_dir, variant.cross)
