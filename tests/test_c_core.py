"""The C core on its own: the C test suite (tests/c: one runner over the
tests of every area, see tests/c/test_list.h) and tests/c/stress.c, built
through CMake (tests/c_build.py) in several variants of the one build
description:
  - with AddressSanitizer + UndefinedBehaviorSanitizer (leak checks on),
  - with ThreadSanitizer (skipped, with the reason, only where the compiler
    or its runtime cannot build or run a ThreadSanitizer program),
each of which must exit 0 with a last line "N passed, 0 failed";
  - with -std=c99 -pedantic -Werror (every variant has it), plain and with
    _POSIX_C_SOURCE set from outside, and with plain `cc csrc/*.c` as a
    vendoring project builds it, without CMake.

Where x86_64-w64-mingw32-gcc is on PATH, the same suite is also built for
Windows (cmake/mingw-w64-x86_64.cmake) and, where wine is too, run under wine
(the named-pipe transport), in a private WINEPREFIX under the pytest build
folder with WINEDEBUG=-all; the prefix's wineserver is killed at the end of
the session.

Set CC to use another compiler than `cc`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest
from conftest import BuildC

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EXAMPLES = ROOT / "docs" / "examples"
TESTS = "ipcfast_c_tests"  # the CMake targets (CMakeLists.txt)
STRESS = "ipcfast_c_stress"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX compiler toolchain only")

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")
# Tests of the Windows issue that must really have run (and passed), natively
# and under wine.
WINDOWS_ISSUE_TESTS = (
    "idle_connections_survive_wakeups",
    "cancel_race_under_load",
    "windows_acl_readback",
    "two_wine_processes",
)

# The sanitizer variants of tests/c_build.py and their runtime options.
SANITIZERS: Dict[str, Dict[str, str]] = {
    "asan_ubsan": {
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    },
    "tsan": {"TSAN_OPTIONS": "halt_on_error=1"},
}


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("c_core")


def _run_test_binary(exe: Path, extra_env: Dict[str, str]) -> None:
    env = dict(os.environ)
    env.update(extra_env)
    try:
        ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, env=env, cwd=exe.parent)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(f"{exe.name} hung; output so far:\n{out[-6000:]}") from None
    output = ran.stdout + ran.stderr
    lines = [line for line in ran.stdout.splitlines() if line.strip()]
    summary = SUMMARY.match(lines[-1]) if lines else None
    failures = "\n".join(line for line in ran.stdout.splitlines() if "FAIL" in line)
    assert ran.returncode == 0 and summary and summary.group(2) == "0", (
        f"{exe.name} exited {ran.returncode}; failures:\n{failures}\n--- end of output ---\n{output[-8000:]}"
    )
    assert int(summary.group(1)) > 1000, "suspiciously few checks ran"
    for test in WINDOWS_ISSUE_TESTS:
        assert f"[  OK  ] {test} (" in ran.stdout, f"{test} did not run in {exe.name}"
    # sanitizer reports that did not stop the run still count as failures
    for marker in ("runtime error:", "ERROR: AddressSanitizer", "WARNING: ThreadSanitizer", "ERROR: LeakSanitizer"):
        assert marker not in output, f"{marker!r} in the output of {exe.name}:\n{output[-8000:]}"


@pytest.mark.parametrize("variant", sorted(SANITIZERS))
def test_c_core_under_sanitizer(variant: str, c_build: BuildC) -> None:
    _run_test_binary(c_build(variant).program(TESTS), SANITIZERS[variant])


@pytest.mark.parametrize("variant", sorted(SANITIZERS))
def test_c_stress_under_sanitizer(variant: str, c_build: BuildC) -> None:
    """tests/c/stress.c: 12 client threads against servers with 2 listeners and
    8 slots (reconnects, pipelining, a client shared by two threads, handler
    failures, random sizes, every answer checked byte for byte), then a stop
    while they hammer and some sit idle-connected; handlers, connection loops
    and manual dispatch (a thread on the ready handle and a batch taker), on
    sockets and shared memory. Under ASan+UBSan (LSan: nothing left after
    stop with clients connected) and under TSan; any sanitizer report, failed
    check or hang fails. IPCFAST_STRESS_ROUNDS sets the number of rounds
    (default 6)."""
    exe = c_build(variant).program(STRESS)
    env = dict(os.environ)
    env.update(SANITIZERS[variant])
    try:
        ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, env=env, cwd=exe.parent)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exe.name} hung:\n{_output_of(exc)[-6000:]}") from None
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0 and "stress: OK" in ran.stdout, f"{exe.name} exited {ran.returncode}:\n{output[-8000:]}"
    for marker in ("runtime error:", "ERROR: AddressSanitizer", "WARNING: ThreadSanitizer", "ERROR: LeakSanitizer"):
        assert marker not in output, f"{marker!r} in the output of {exe.name}:\n{output[-8000:]}"
    print(ran.stdout.strip().splitlines()[-2])


@pytest.mark.parametrize("variant", ["strict", "posix2008"])
def test_c_core_compiles_without_warnings(variant: str, c_build: BuildC) -> None:
    """csrc/, the C tests, stress.c and the examples with -std=c99 -pedantic
    -Wall -Wextra -Werror (the build fails on any warning); as is, and with
    _POSIX_C_SOURCE=200809L from the command line."""
    built = c_build(variant)
    for target in (TESTS, STRESS, "echo_server", "echo_client"):
        built.program(target)


def test_c_core_vendors_with_plain_cc(build_dir: Path) -> None:
    """Vendoring needs no build system: `cc prog.c csrc/*.c -lpthread`, here
    with every warning an error, builds a program (the CMake builds above
    cannot show this: the promise is that no build logic is needed)."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    if shutil.which(cc[0]) is None:
        pytest.skip(f"no C compiler ({cc[0]!r}) on PATH")
    exe = build_dir / "vendored_echo_client"
    cmd = [
        *cc,
        "-std=c99",
        "-pedantic",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{CSRC}",
        str(EXAMPLES / "echo_client.c"),
        *sorted(str(p) for p in CSRC.glob("*.c")),
        "-o",
        str(exe),
        "-lpthread",
    ]
    built = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0 and not built.stderr.strip(), f"{' '.join(cmd)}\n{built.stderr}"
    assert exe.is_file()


def test_c_sources_cross_compile_for_windows(c_build: BuildC) -> None:
    """With mingw-w64 installed: every csrc/*.c and the C tests build for
    Windows with -pedantic -Werror (the program test_c_core_windows_under_wine runs)."""
    c_build("mingw").program(TESTS)


def _wine_tools() -> Optional[Dict[str, str]]:
    """Paths of the mingw-w64 compiler and wine, or None if either is missing."""
    mingw = shutil.which("x86_64-w64-mingw32-gcc")
    wine = shutil.which("wine") or shutil.which("wine64")
    if mingw is None or wine is None:
        return None
    wineserver = shutil.which("wineserver") or ""
    if not wineserver:
        # not always on PATH (distribution packages keep it beside the loader)
        for candidate in (
            Path(wine).resolve().parent / "wineserver",
            Path("/usr/lib/wine/wineserver64"),
            Path("/usr/lib/wine/wineserver"),
            Path("/opt/wine-stable/bin/wineserver"),
        ):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                wineserver = str(candidate)
                break
    return {"mingw": mingw, "wine": wine, "wineserver": wineserver}


def _wine_env(prefix: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["WINEPREFIX"] = str(prefix)
    env["WINEDEBUG"] = "-all"
    # no Mono / Gecko install prompts while the prefix is created
    env["WINEDLLOVERRIDES"] = "mscoree,mshtml="
    return env


def _kill_wineserver(tools: Dict[str, str], env: Dict[str, str]) -> None:
    """`wineserver -k` for the prefix in env: ends everything still running in it."""
    if not tools["wineserver"]:
        return  # an idle wineserver exits on its own a few seconds later
    try:
        subprocess.run([tools["wineserver"], "-k"], env=env, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pass


def _output_of(exc: subprocess.TimeoutExpired) -> str:
    parts = []
    for stream in (exc.stdout, exc.stderr):
        if isinstance(stream, bytes):
            stream = stream.decode(errors="replace")
        parts.append(stream or "")
    return "".join(parts)


@pytest.fixture(scope="session")
def wine_prefix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private WINEPREFIX under the pytest build folder, initialised once.

    Creating a prefix takes wine some seconds; it is done here, up front, so
    the test's own time limit covers only the test. At the end the prefix's
    wineserver (and anything still running in it) is killed and the prefix
    (some 700 MB) is deleted.
    """
    tools = _wine_tools()
    if tools is None:
        pytest.skip("needs x86_64-w64-mingw32-gcc and wine on PATH to run the C test under wine")
    prefix = tmp_path_factory.mktemp("wine") / "prefix"  # wine creates it
    env = _wine_env(prefix)
    try:
        try:
            boot = subprocess.run(
                [tools["wine"], "wineboot", "--init"], env=env, capture_output=True, text=True, timeout=600
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"wine did not initialise {prefix} within 600 s:\n{_output_of(exc)[-4000:]}")
        if tools["wineserver"]:
            # wineboot returns before the prefix is fully written
            subprocess.run([tools["wineserver"], "-w"], env=env, capture_output=True, timeout=600)
        assert (prefix / "system.reg").exists(), (
            f"wineboot did not initialise {prefix} (exit {boot.returncode}):\n{(boot.stdout + boot.stderr)[-4000:]}"
        )
        yield prefix
    finally:
        _kill_wineserver(tools, env)
        shutil.rmtree(prefix, ignore_errors=True)


def test_c_core_windows_under_wine(c_build: BuildC, wine_prefix: Path) -> None:
    """The Windows transport (named pipes): the C tests cross-compiled and run under wine.

    Runs whenever x86_64-w64-mingw32-gcc and wine are on PATH; skipped (by the
    wine_prefix fixture, with the reason) otherwise.
    """
    tools = _wine_tools()
    assert tools is not None
    exe = c_build("mingw").program(TESTS)
    env = _wine_env(wine_prefix)
    started = time.monotonic()
    try:
        ran = subprocess.run(
            [tools["wine"], str(exe)], capture_output=True, text=True, timeout=900, env=env, cwd=exe.parent
        )
    except subprocess.TimeoutExpired as exc:
        _kill_wineserver(tools, env)  # the Windows processes outlive the wine launcher
        raise AssertionError(f"{exe.name} under wine hung; output so far:\n{_output_of(exc)[-6000:]}") from None
    elapsed = time.monotonic() - started
    lines = [line for line in ran.stdout.splitlines() if line.strip()]
    summary = SUMMARY.match(lines[-1]) if lines else None
    failures = "\n".join(line for line in ran.stdout.splitlines() if "FAIL" in line or line.startswith("      "))
    assert ran.returncode == 0 and summary and summary.group(2) == "0", (
        f"{exe.name} under wine exited {ran.returncode} after {elapsed:.1f} s:\n{failures}\n"
        f"--- end of output ---\n{(ran.stdout + ran.stderr)[-6000:]}"
    )
    assert int(summary.group(1)) > 1000, "suspiciously few checks ran"
    for test in WINDOWS_ISSUE_TESTS:
        assert f"[  OK  ] {test} (" in ran.stdout, f"{test} did not run under wine:\n{ran.stdout[-4000:]}"
