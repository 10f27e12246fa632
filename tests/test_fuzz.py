"""The libFuzzer harness tests/fuzz/fuzz_codec.c, built with clang.

The harness runs the C core's handshake reader, packet header parser and
the packet reassembly of the server's request loop and of the client, over
split reads whose sizes the input chooses (see the comment at the top of the
file). Here:

  - every file in tests/fuzz/corpus (seeds and the inputs of past findings,
    kept as regression tests) is replayed once; and
  - the fuzzer runs for IPCFAST_FUZZ_SECONDS (default 60) from that corpus,
    with AddressSanitizer and UndefinedBehaviorSanitizer. Any crash, leak,
    sanitizer report or failed check fails the test; the crashing input is
    copied to tests/fuzz/corpus/crash-* so it becomes a regression test.

The corpus is also replayed through tests/fuzz/replay_main.c (the CMake
target fuzz_replay of the asan_ubsan variant of tests/c_build.py: ASan +
UBSan, no libFuzzer), so the seeds and past findings run wherever a C
compiler with sanitizers is installed. The libFuzzer tests are skipped,
with the reason, when clang cannot build a -fsanitize=fuzzer
program (Debian/Ubuntu: `apt-get install clang`, which brings
libclang-rt-*-dev with the libFuzzer runtime). IPCFAST_FUZZ_SECONDS=0 keeps
only the replay.

A long run (the goal is 10 million executions without a finding):

    clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -Icsrc tests/fuzz/fuzz_codec.c $(ls csrc/*.c | grep -v -e _posix -e _win32) \
        -o /tmp/fuzz_codec
    mkdir -p /tmp/fuzz_corpus && cp tests/fuzz/corpus/* /tmp/fuzz_corpus/
    /tmp/fuzz_codec -runs=10000000 -max_len=4096 -rss_limit_mb=2048 \
        -artifact_prefix=tests/fuzz/corpus/crash- /tmp/fuzz_corpus
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BuildC

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "fuzz" / "fuzz_codec.c"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="clang/libFuzzer on POSIX only")

CLANG = os.environ.get("IPCFAST_FUZZ_CC", "clang")
# The harness brings its own in-memory platform in place of these
# (ipc_posix*.c, ipc_win32*.c).
PLATFORM_PREFIXES = ("ipc_posix", "ipc_win32")
FLAGS = ["-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined"]
ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"}


def core_sources() -> list[str]:
    """Every portable core file of csrc/: all .c files but the platform ones."""
    return [str(p) for p in sorted((ROOT / "csrc").glob("*.c")) if not p.name.startswith(PLATFORM_PREFIXES)]


def test_core_sources_exclude_only_the_platform() -> None:
    names = {Path(p).name for p in core_sources()}
    assert "ipc.c" in names and "ipc_stream.c" in names
    assert not any(name.startswith(PLATFORM_PREFIXES) for name in names)
    assert "ipc_client_connect.c" in names and "ipc_server_stop.c" in names


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which(CLANG) is None:
        pytest.skip(f"{CLANG!r} is not installed (apt-get install clang): cannot build the libFuzzer harness")
    out = tmp_path_factory.mktemp("fuzz") / "fuzz_codec"
    built = subprocess.run(
        [CLANG, *FLAGS, f"-I{ROOT / 'csrc'}", str(HARNESS), *core_sources(), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode != 0 and "fuzzer" in built.stderr and "cannot find" in built.stderr.lower():
        pytest.skip(f"clang has no libFuzzer runtime (install libclang-rt-dev): {built.stderr[-300:]}")
    assert built.returncode == 0, f"the fuzz harness does not build:\n{built.stderr}"
    return out


def _env() -> dict:
    env = dict(os.environ)
    env.update(ENV)
    return env


def test_corpus_replays_cleanly(fuzzer: Path) -> None:
    """Every seed and every kept crash input runs without a finding."""
    inputs = sorted(str(p) for p in CORPUS.iterdir() if p.is_file())
    assert inputs, "tests/fuzz/corpus is empty"
    ran = subprocess.run([str(fuzzer), *inputs], capture_output=True, text=True, timeout=300, env=_env())
    assert ran.returncode == 0, f"a corpus input fails:\n{ran.stderr[-6000:]}"
    assert f"Executed {inputs[-1]}" in ran.stderr


def test_corpus_replays_without_libfuzzer(c_build: BuildC) -> None:
    """The corpus under ASan + UBSan without libFuzzer (replay_main.c)."""
    replay = c_build("asan_ubsan").program("fuzz_replay")
    inputs = sorted(str(p) for p in CORPUS.iterdir() if p.is_file())
    # halt_on_error: the variant's UBSan reports and goes on unless told to stop.
    env = {**_env(), "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    ran = subprocess.run([str(replay), *inputs], capture_output=True, text=True, timeout=300, env=env)
    assert ran.returncode == 0, f"a corpus input fails:\n{ran.stderr[-6000:]}"
    assert f"Executed {inputs[-1]}" in ran.stderr


def test_fuzz_for_a_minute(fuzzer: Path, tmp_path: Path) -> None:
    seconds = int(os.environ.get("IPCFAST_FUZZ_SECONDS", "60"))
    if seconds <= 0:
        pytest.skip("IPCFAST_FUZZ_SECONDS=0")
    work = tmp_path / "corpus"
    shutil.copytree(CORPUS, work)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    ran = subprocess.run(
        [
            str(fuzzer),
            f"-max_total_time={seconds}",
            "-max_len=4096",
            "-rss_limit_mb=2048",
            "-timeout=10",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 300,
        env=_env(),
    )
    found = sorted(artifacts.iterdir())
    for path in found:  # keep every finding as a regression input
        shutil.copy(path, CORPUS / path.name)
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", ran.stderr)
    assert ran.returncode == 0 and not found, (
        f"the fuzzer found a problem (inputs kept in tests/fuzz/corpus: {[p.name for p in found]}):\n"
        f"{ran.stderr[-6000:]}"
    )
    assert runs and int(runs.group(1)) > 1000, f"the fuzzer hardly ran:\n{ran.stderr[-3000:]}"
    print(f"fuzz_codec: {runs.group(1)} executions in {seconds} s without a finding")
