"""The libFuzzer harness tests/fuzz/fuzz_codec.c, built with clang.

The harness runs the C core's handshake reader, packet header parser and
the packet reassembly of the server's request loop and of the client, over
split reads whose sizes the input chooses (see the comment at the top of the
file). Both programs here are CMake targets (CMakeLists.txt), built by
tests/c_build.py:

  - every file in tests/fuzz/corpus (seeds and the inputs of past findings,
    kept as regression tests) is replayed once; and
  - the fuzzer (fuzz_codec, the fuzz variant) runs for IPCFAST_FUZZ_SECONDS
    (default 60) from that corpus, with a fixed random seed
    (IPCFAST_FUZZ_SEED, default 1; "random" lets libFuzzer pick one), so
    that every test run of a commit explores nearly the same inputs (libFuzzer
    is not strictly deterministic: two runs with one seed drift apart by an
    execution here and there) rather than a new random walk each time.
    Exploring further is the long run's job (below).
    It runs with AddressSanitizer and
    UndefinedBehaviorSanitizer. Any crash, leak, sanitizer report or failed
    check fails the test; the crashing input is copied to
    tests/fuzz/corpus/crash-* so it becomes a regression test.

The corpus is also replayed through tests/fuzz/replay_main.c (fuzz_replay,
in the asan_ubsan variant: ASan + UBSan, no libFuzzer), so the seeds and
past findings run wherever a C compiler with sanitizers is installed. The
libFuzzer tests are skipped, with the reason, when clang cannot link a
-fsanitize=fuzzer program (CMake says so at configure time; Debian/Ubuntu:
`apt-get install clang libclang-rt-NN-dev`). IPCFAST_FUZZ_CC picks the
clang; IPCFAST_FUZZ_SECONDS=0 keeps only the replay.

A long run with a random seed (the goal is 10 million executions without a
finding; run one after every change to the harness or the readers):

    cmake -S . -B /tmp/fuzz-build -DIPCFAST_PYTHON=OFF -DIPCFAST_BUILD_FUZZ=ON \
        -DCMAKE_C_COMPILER=clang
    cmake --build /tmp/fuzz-build --target fuzz_codec
    mkdir -p /tmp/fuzz_corpus && cp tests/fuzz/corpus/* /tmp/fuzz_corpus/
    /tmp/fuzz-build/bin/fuzz_codec -runs=10000000 -max_len=4096 -rss_limit_mb=2048 \
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
CORPUS = ROOT / "tests" / "fuzz" / "corpus"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="clang/libFuzzer on POSIX only")

ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"}


@pytest.fixture(scope="module")
def fuzzer(c_build: BuildC) -> Path:
    return c_build("fuzz").program("fuzz_codec")


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
    seed = os.environ.get("IPCFAST_FUZZ_SEED", "1")
    ran = subprocess.run(
        [
            str(fuzzer),
            f"-max_total_time={seconds}",
            *([] if seed == "random" else [f"-seed={int(seed)}"]),
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
