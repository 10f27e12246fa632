"""The C core on its own: tests/c/test_ipc.c built with sanitizers, and a
warnings-as-errors build of csrc/.

tests/c/test_ipc.c exercises the public C API (csrc/ipc.h) over the real
transport, in one process with threads and across processes. Here it is
compiled together with every csrc/*.c file
  - with AddressSanitizer + UndefinedBehaviorSanitizer (leak checks on), and
  - with ThreadSanitizer (skipped, with the reason, only where the compiler
    or its runtime cannot build or run a ThreadSanitizer program),
and must exit 0 with a last line "N passed, 0 failed".

Where x86_64-w64-mingw32-gcc and wine are on PATH, the same program is also
cross-compiled for Windows and run under wine (the named-pipe transport), in
a private WINEPREFIX under the pytest build folder with WINEDEBUG=-all; the
prefix's wineserver is killed at the end of the session.

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
from typing import Dict, Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
TEST_C = ROOT / "tests" / "c" / "test_ipc.c"
STRESS_C = ROOT / "tests" / "c" / "stress.c"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX compiler toolchain only")

CC = shlex.split(os.environ.get("CC", "cc"))
STD_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-D_POSIX_C_SOURCE=200809L"]
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")
# Tests of the Windows issue that must really have run (and passed), natively
# and under wine.
WINDOWS_ISSUE_TESTS = (
    "idle_connections_survive_wakeups",
    "cancel_race_under_load",
    "windows_acl_readback",
    "two_wine_processes",
)

SANITIZERS: Dict[str, Dict[str, object]] = {
    "asan_ubsan": {
        "flags": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"],
        "env": {
            "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        },
    },
    "tsan": {
        "flags": ["-fsanitize=thread", "-g"],
        "env": {"TSAN_OPTIONS": "halt_on_error=1"},
    },
}


def c_sources() -> List[str]:
    return sorted(str(p) for p in CSRC.glob("*.c"))


def _need_compiler() -> None:
    if shutil.which(CC[0]) is None:
        pytest.skip(f"no C compiler ({CC[0]!r}) on PATH")


def _compile(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(CC + args, cwd=cwd, capture_output=True, text=True, timeout=300)


def _tsan_unusable_reason(tmp: Path) -> Optional[str]:
    """Why ThreadSanitizer cannot be used here, or None if it works."""
    probe = tmp / "tsan_probe.c"
    probe.write_text(
        "#include <pthread.h>\n"
        "static int x;\n"
        "static void *run(void *p) { (void)p; x = 1; return 0; }\n"
        "int main(void) { pthread_t t; pthread_create(&t, 0, run, 0);"
        " pthread_join(t, 0); return x - 1; }\n"
    )
    exe = tmp / "tsan_probe"
    built = _compile(["-fsanitize=thread", "-g", str(probe), "-o", str(exe), "-lpthread"], tmp)
    if built.returncode != 0:
        return f"the compiler cannot build with -fsanitize=thread: {built.stderr.strip()[-500:]}"
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    if ran.returncode != 0:
        return f"the ThreadSanitizer runtime does not run here: {ran.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("c_core")


def _run_test_binary(exe: Path, extra_env: Dict[str, str]) -> None:
    env = dict(os.environ)
    env.update(extra_env)
    try:
        ran = subprocess.run(
            [str(exe)], capture_output=True, text=True, timeout=900, env=env, cwd=exe.parent
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(f"{exe.name} hung; output so far:\n{out[-6000:]}") from None
    output = ran.stdout + ran.stderr
    lines = [line for line in ran.stdout.splitlines() if line.strip()]
    summary = SUMMARY.match(lines[-1]) if lines else None
    failures = "\n".join(line for line in ran.stdout.splitlines() if "FAIL" in line)
    assert ran.returncode == 0 and summary and summary.group(2) == "0", (
        f"{exe.name} exited {ran.returncode}; failures:\n{failures}\n"
        f"--- end of output ---\n{output[-8000:]}"
    )
    assert int(summary.group(1)) > 1000, "suspiciously few checks ran"
    for test in WINDOWS_ISSUE_TESTS:
        assert f"[  OK  ] {test} (" in ran.stdout, f"{test} did not run in {exe.name}"
    # sanitizer reports that did not stop the run still count as failures
    for marker in ("runtime error:", "ERROR: AddressSanitizer", "WARNING: ThreadSanitizer",
                   "ERROR: LeakSanitizer"):
        assert marker not in output, f"{marker!r} in the output of {exe.name}:\n{output[-8000:]}"


def _build_sanitized(source: Path, variant: str, build_dir: Path) -> Path:
    """source + every csrc/*.c built with a SANITIZERS variant, warning-free;
    skips where the toolchain cannot (no compiler, unusable TSan)."""
    _need_compiler()
    if variant == "tsan":
        reason = _tsan_unusable_reason(build_dir)
        if reason:
            pytest.skip(reason)
    exe = build_dir / f"{source.stem}_{variant}"
    flags = list(SANITIZERS[variant]["flags"])  # type: ignore[call-overload]
    built = _compile(STD_FLAGS + flags + [str(source), *c_sources(), "-o", str(exe), "-lpthread"], ROOT)
    assert built.returncode == 0 and not built.stderr.strip(), f"build failed:\n{built.stderr}"
    return exe


@pytest.mark.parametrize("variant", sorted(SANITIZERS))
def test_c_core_under_sanitizer(variant: str, build_dir: Path) -> None:
    exe = _build_sanitized(TEST_C, variant, build_dir)
    _run_test_binary(exe, dict(SANITIZERS[variant]["env"]))  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", sorted(SANITIZERS))
def test_c_stress_under_sanitizer(variant: str, build_dir: Path) -> None:
    """tests/c/stress.c: 12 client threads against servers with 2 listeners and
    8 slots (reconnects, pipelining, a client shared by two threads, handler
    failures, random sizes, every answer checked byte for byte), then a stop
    while they hammer and some sit idle-connected. Under ASan+UBSan (LSan:
    nothing left after stop with clients connected) and under TSan; any
    sanitizer report, failed check or hang fails. IPCFAST_STRESS_ROUNDS sets
    the number of rounds (default 4)."""
    config = SANITIZERS[variant]
    exe = _build_sanitized(STRESS_C, variant, build_dir)
    env = dict(os.environ)
    env.update(config["env"])  # type: ignore[arg-type]
    try:
        ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, env=env,
                             cwd=exe.parent)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exe.name} hung:\n{_output_of(exc)[-6000:]}") from None
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0 and "stress: OK" in ran.stdout, (
        f"{exe.name} exited {ran.returncode}:\n{output[-8000:]}"
    )
    for marker in ("runtime error:", "ERROR: AddressSanitizer", "WARNING: ThreadSanitizer",
                   "ERROR: LeakSanitizer"):
        assert marker not in output, f"{marker!r} in the output of {exe.name}:\n{output[-8000:]}"
    print(ran.stdout.strip().splitlines()[-2])


@pytest.mark.parametrize(
    "defines",
    [[], ["-D_POSIX_C_SOURCE=200809L"]],
    ids=["plain", "posix2008"],
)
def test_c_core_compiles_without_warnings(defines: List[str], build_dir: Path) -> None:
    """`cc csrc/*.c` as a vendoring project would, with every warning an error."""
    _need_compiler()
    flags = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", *defines]
    for source in c_sources() + [str(TEST_C), str(STRESS_C)]:
        obj = build_dir / (Path(source).stem + "_warn.o")
        built = _compile(flags + ["-c", source, "-o", str(obj)], ROOT)
        assert built.returncode == 0 and not built.stderr.strip(), (
            f"{Path(source).relative_to(ROOT)} does not compile cleanly with {' '.join(flags)}:\n"
            f"{built.stderr}"
        )


def test_c_sources_cross_compile_for_windows(build_dir: Path) -> None:
    """With mingw-w64 installed: every csrc/*.c and the C test compile for Windows."""
    mingw = shutil.which("x86_64-w64-mingw32-gcc")
    if mingw is None:
        pytest.skip("x86_64-w64-mingw32-gcc is not installed")
    flags = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"]
    for source in c_sources() + [str(TEST_C)]:
        obj = build_dir / (Path(source).stem + "_win.obj")
        built = subprocess.run(
            [mingw, *flags, "-c", source, "-o", str(obj)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert built.returncode == 0 and not built.stderr.strip(), (
            f"{Path(source).relative_to(ROOT)} does not compile for Windows:\n{built.stderr}"
        )


def _wine_tools() -> Optional[Dict[str, str]]:
    """Paths of the mingw-w64 compiler and wine, or None if either is missing."""
    mingw = shutil.which("x86_64-w64-mingw32-gcc")
    wine = shutil.which("wine") or shutil.which("wine64")
    if mingw is None or wine is None:
        return None
    wineserver = shutil.which("wineserver") or ""
    if not wineserver:
        # not always on PATH (distribution packages keep it beside the loader)
        for candidate in (Path(wine).resolve().parent / "wineserver",
                          Path("/usr/lib/wine/wineserver64"), Path("/usr/lib/wine/wineserver"),
                          Path("/opt/wine-stable/bin/wineserver")):
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
            boot = subprocess.run([tools["wine"], "wineboot", "--init"], env=env,
                                  capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"wine did not initialise {prefix} within 600 s:\n"
                        f"{_output_of(exc)[-4000:]}")
        if tools["wineserver"]:
            # wineboot returns before the prefix is fully written
            subprocess.run([tools["wineserver"], "-w"], env=env, capture_output=True, timeout=600)
        assert (prefix / "system.reg").exists(), (
            f"wineboot did not initialise {prefix} (exit {boot.returncode}):\n"
            f"{(boot.stdout + boot.stderr)[-4000:]}"
        )
        yield prefix
    finally:
        _kill_wineserver(tools, env)
        shutil.rmtree(prefix, ignore_errors=True)


def test_c_core_windows_under_wine(build_dir: Path, wine_prefix: Path) -> None:
    """The Windows transport (named pipes): the C test cross-compiled and run under wine.

    Runs whenever x86_64-w64-mingw32-gcc and wine are on PATH; skipped (by the
    wine_prefix fixture, with the reason) otherwise.
    """
    tools = _wine_tools()
    assert tools is not None
    exe = build_dir / "test_ipc.exe"
    built = subprocess.run(
        [tools["mingw"], "-std=c99", "-Wall", "-Wextra", "-g", str(TEST_C), *c_sources(),
         "-o", str(exe), "-ladvapi32"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, f"build failed:\n{built.stderr}"
    env = _wine_env(wine_prefix)
    started = time.monotonic()
    try:
        ran = subprocess.run([tools["wine"], str(exe)], capture_output=True, text=True,
                             timeout=900, env=env, cwd=build_dir)
    except subprocess.TimeoutExpired as exc:
        _kill_wineserver(tools, env)  # the Windows processes outlive the wine launcher
        raise AssertionError(
            f"test_ipc.exe under wine hung; output so far:\n{_output_of(exc)[-6000:]}"
        ) from None
    elapsed = time.monotonic() - started
    lines = [line for line in ran.stdout.splitlines() if line.strip()]
    summary = SUMMARY.match(lines[-1]) if lines else None
    failures = "\n".join(
        line for line in ran.stdout.splitlines() if "FAIL" in line or line.startswith("      ")
    )
    assert ran.returncode == 0 and summary and summary.group(2) == "0", (
        f"test_ipc.exe under wine exited {ran.returncode} after {elapsed:.1f} s:\n{failures}\n"
        f"--- end of output ---\n{(ran.stdout + ran.stderr)[-6000:]}"
    )
    assert int(summary.group(1)) > 1000, "suspiciously few checks ran"
    for test in WINDOWS_ISSUE_TESTS:
        assert f"[  OK  ] {test} (" in ran.stdout, (
            f"{test} did not run under wine:\n{ran.stdout[-4000:]}"
        )
