"""Real third-party tools through the node (SPEC section 10, issue 16): black,
isort, flake8, pyflakes, pycodestyle, pylint, mypy, pytest (with
pytest-xdist and Hypothesis's plugin), coverage, Sphinx and pip from PyPI
(the ``test`` extra), each run cold (``python ...``) and through both
clients (Python and C), compared byte for byte: stdout, stderr and exit
code, or, on a pseudo-terminal or with both streams in one pipe, the merged
output.

Cases: plain runs with findings, piped stdin (``black -``, ``isort -``,
``flake8 -``, ``pyflakes``, ``pycodestyle -``), a pty 123 columns wide with
stdout and stderr on it (``2>&1``), Sphinx's progress and warnings in one
pipe, Ctrl-C in the middle of a pytest run, ``os._exit()`` (mypy ends that
way), multiprocessing inside the command (``pylint -j 2``, ``pytest -n 2``),
tracing (``coverage run -m pytest``), edits between runs (a changed source
file, a changed ``line-length`` in pyproject.toml, a new local module isort
must place, a same-named test file in a second project), logging a command
configures (``pip``), a ``python -m`` traceback, and a command whose forked
child ends with ``sys.exit(0)``.

One node serves the whole module (all tools preloaded, as a user would set
it up); every comparison is against a fresh cold run. The only
normalisations: pytest's duration (``in 0.12s``) and, on a terminal, its
"collecting N items" progress rewrites (written only when collecting takes
longer than half a second), which two cold runs also differ in.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import pytest

from conftest import installed_node_client, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the node forks and passes POSIX descriptors")

ROOT = Path(__file__).resolve().parent.parent
# Preloaded by the module's node, as a user would set it up for these tools.
TOOLS = ["black", "isort", "flake8", "pyflakes", "pycodestyle", "pytest", "pylint", "mypy", "coverage", "sphinx"]
INSTALLED = [tool for tool in TOOLS if importlib.util.find_spec(tool) is not None]
# What those tools load while they run, preloaded too: pytest's plugins (through
# pytest's rewriting hook: Hypothesis's, xdist's) and flake8's.
PLUGIN_GROUPS = {"pytest": ["@pytest11"], "flake8": ["@flake8.extension", "@flake8.report"]}

Result = Tuple[int, bytes, bytes]

BAD = """import os, sys
def f( x ):
    y = 1
    return x+1
class Thing :
    pass
"""

OTHER = '''"""Another module."""


def g(value):
    """Doubles."""
    return value * 2
'''

TYPED = """def add(a: int, b: int) -> int:
    return a + b


add(1, "two")
"""

TESTS = """import sys


def test_passes():
    print("to stdout")
    print("to stderr", file=sys.stderr)
    assert 1 + 1 == 2


def test_fails():
    assert [1, 2, 3] == [1, 2, 4], "lists differ"
"""

HYPOTHESIS_TESTS = """from hypothesis import given, settings, strategies as st


@given(st.integers())
@settings(database=None, deadline=None)
def test_holds(n):
    assert n + 0 == n


@given(st.lists(st.integers()))
@settings(database=None, deadline=None)
def test_fails_and_shrinks(xs):
    assert sum(xs) < 10
"""

SIGTERM_CONFTEST = """import os, signal, sys


def _report_and_die(signum, frame):
    sys.stdout.write("pytest got SIGTERM\\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


signal.signal(signal.SIGTERM, _report_and_die)
"""

SLOW_TEST = """import os, time


def test_slow():
    open(os.environ["SLOW_MARKER"], "w").close()
    time.sleep(60)
"""

FORKER = """import os, sys
print("parent before fork", flush=True)
pid = os.fork()
if pid == 0:
    print("child", flush=True)
    sys.exit(0)
os.waitpid(pid, 0)
print("parent after the child")
sys.exit(5)
"""

SIGNALLED = """import os, signal, sys, time


def on_term(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up, however many come
    print("terminated: cleaning up", flush=True)
    sys.exit(3)


def on_winch(signum, frame):
    size = os.get_terminal_size(1) if os.isatty(1) else "no terminal"
    print("window changed:", size, flush=True)
    open(os.environ["SLOW_MARKER"] + ".winch", "w").close()


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGWINCH, on_winch)
print("ready", flush=True)
open(os.environ["SLOW_MARKER"], "w").close()
time.sleep(60)
print("never signalled")
"""

COVERED = """def f():
    return 1


def g(x):
    if x:
        return 2
    return 3
"""

COVERED_TESTS = """from pkg.mod import f


def test_f():
    assert f() == 1
"""

INDEX_RST = """Title
=====

Text with :ref:`missing` and a broken `link <nowhere>`_ reference.

.. toctree::

   other
   absent
"""

_DURATION = re.compile(rb"in \d+\.\d+s")
# pytest rewrites "collecting N items" in place on a terminal, but only once
# collecting has taken 0.5 s: on a loaded machine a cold run shows it too.
_COLLECTING = re.compile(rb"(?:\x1b\[1m)?\rcollecting \d+ items? *(?:\x1b\[0m)?")


def normalise(data: bytes) -> bytes:
    """What two cold runs differ in: pytest's duration and its timed progress rewrites."""
    return _COLLECTING.sub(b"", _DURATION.sub(b"in N.NNs", data))


class Tools:
    """A small project, one node with every tool preloaded, and the three
    ways to run a command: cold, the Python client, the C client."""

    def __init__(self, tmp: Path) -> None:
        self.project = tmp / "project"
        self.project.mkdir()
        for name, text in (
            ("bad.py", BAD),
            ("other.py", OTHER),
            ("typed.py", TYPED),
            ("test_sample.py", TESTS),
            ("slow_test.py", SLOW_TEST),
            ("test_hyp.py", HYPOTHESIS_TESTS),
            ("forker.py", FORKER),
            ("failing_mod.py", "raise ValueError('boom')\n"),
            ("signalled.py", SIGNALLED),
            ("sigterm/conftest.py", SIGTERM_CONFTEST),
            ("sigterm/test_slow.py", SLOW_TEST),
            ("pkg/__init__.py", ""),
            ("pkg/mod.py", COVERED),
            ("test_cov.py", COVERED_TESTS),
            ("docs/conf.py", "project = 'sample'\n"),
            ("docs/index.rst", INDEX_RST),
            ("docs/other.rst", "Other\n=====\n\nText.\n"),
        ):
            (self.project / name).parent.mkdir(exist_ok=True)
            (self.project / name).write_text(text, encoding="utf-8")
        (self.project / "pyproject.toml").write_text("[tool.black]\nline-length = 88\n", encoding="utf-8")
        self.run_dir = Path(tempfile.mkdtemp(prefix="ipt", dir="/tmp"))
        self.env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PYTHONUNBUFFERED")}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.env["XDG_RUNTIME_DIR"] = str(self.run_dir)
        self.env["XDG_CACHE_HOME"] = str(tmp / "cache")
        self.env["SLOW_MARKER"] = str(tmp / "slow-started")
        preloads = [p for tool in INSTALLED for p in [tool, *PLUGIN_GROUPS.get(tool, [])]]
        self.options = [w for p in preloads for w in ("--preload", p)] + ["--idle-timeout", "600"]
        self.c_words = self._c_words(tmp)

    def _c_words(self, tmp: Path) -> Optional[List[str]]:
        line = self.node_cli("c-command", *self.options).stdout.decode().strip()
        words = shlex.split(line)
        client = installed_node_client()
        if client is None:
            return None
        words[0] = client
        return words[:-1]  # without the interpreter: argv() adds it

    def node_cli(self, *args: str) -> "subprocess.CompletedProcess[bytes]":
        return subprocess.run(
            [sys.executable, "-m", "ipcfast.node", *args],
            cwd=str(self.project),
            env=self.env,
            capture_output=True,
            timeout=120,
        )

    def argv(self, how: str, args: List[str]) -> List[str]:
        if how == "cold":
            return [sys.executable, *args]
        if how == "python":
            return [sys.executable, "-m", "ipcfast.node", "run", *self.options, "--", *args]
        if self.c_words is None:
            pytest.skip("no C client (neither installed nor a C compiler)")
        return [*self.c_words, sys.executable, *args]

    def run(self, how: str, args: List[str], stdin: Optional[bytes] = None, cwd: Optional[Path] = None) -> Result:
        done = subprocess.run(
            self.argv(how, args),
            cwd=str(cwd or self.project),
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=300,
        )
        return done.returncode, normalise(done.stdout), normalise(done.stderr)

    def run_merged(self, how: str, args: List[str], wrapper: Sequence[str] = ()) -> Tuple[int, bytes]:
        """Runs with stdout and stderr into one pipe (``2>&1``), stdin empty,
        under ``wrapper`` (such as ``timeout 2``) if given."""
        done = subprocess.run(
            [*wrapper, *self.argv(how, args)],
            cwd=str(self.project),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
        return done.returncode, normalise(done.stdout)

    def pid(self) -> Optional[int]:
        done = self.node_cli("status", *self.options)
        if done.returncode != 0:
            return None
        import json

        return int(json.loads(done.stdout)["pid"])

    def close(self) -> None:
        pid = self.pid()
        self.node_cli("shutdown", *self.options)
        if pid is not None and not wait_for(lambda: not _alive(pid), timeout=15):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    if not INSTALLED:
        pytest.skip("none of black, flake8, pytest, pylint, mypy is installed (pip install '.[test]')")
    t = Tools(tmp_path_factory.mktemp("tools"))
    # The first command starts the node (and imports every tool once).
    t.run("python", ["-c", "pass"])
    assert t.pid() is not None
    try:
        yield t
    finally:
        t.close()


def need(tool: str) -> None:
    if tool not in INSTALLED:
        pytest.skip(f"{tool} is not installed (it is in the test extra: pip install '.[test]')")


CLIENTS = ["python", "c"]


def same_as_cold(tools: Tools, args: List[str], stdin: Optional[bytes] = None, cwd: Optional[Path] = None) -> Result:
    cold = tools.run("cold", args, stdin, cwd)
    for how in CLIENTS:
        warm = tools.run(how, args, stdin, cwd)
        assert warm[0] == cold[0], f"{how} client: exit code {warm[0]}, cold {cold[0]}\n{warm[2]!r}"
        assert warm[1] == cold[1], f"{how} client: stdout differs"
        assert warm[2] == cold[2], f"{how} client: stderr differs"
    return cold


# ---- plain runs ------------------------------------------------------------------


def test_black_check(tools: Tools) -> None:
    need("black")
    cold = same_as_cold(tools, ["-m", "black", "--check", "bad.py", "other.py"])
    assert cold[0] == 1 and b"would reformat bad.py" in cold[2]


def test_flake8(tools: Tools) -> None:
    need("flake8")
    cold = same_as_cold(tools, ["-m", "flake8", "bad.py", "other.py"])
    assert cold[0] == 1 and b"bad.py:1:1: F401" in cold[1]


def test_pytest(tools: Tools) -> None:
    need("pytest")
    cold = same_as_cold(tools, ["-m", "pytest", "-p", "no:cacheprovider", "test_sample.py"])
    assert cold[0] == 1 and b"1 failed, 1 passed" in cold[1] and b"lists differ" in cold[1]


def test_pytest_with_hypothesis_and_its_plugin_preloaded(tools: Tools) -> None:
    need("pytest")
    if importlib.util.find_spec("hypothesis") is None:
        pytest.skip("hypothesis is not installed (it is in the test extra: pip install '.[test]')")
    args = ["-m", "pytest", "-p", "no:cacheprovider", "-v", "--hypothesis-seed=0", "test_hyp.py"]
    cold = same_as_cold(tools, args)
    assert cold[0] == 1 and b"assert 10 < 10" in cold[1] and b"plugins: " in cold[1] and b"hypothesis-" in cold[1]
    assert b"cannot be rewritten" not in cold[1] + cold[2]


def test_pylint_with_two_worker_processes(tools: Tools) -> None:
    need("pylint")
    cold = same_as_cold(tools, ["-m", "pylint", "-j", "2", "--score=n", "bad.py", "other.py"])
    assert cold[0] not in (0, 1) and b"bad.py:1:0" in cold[1]


def test_mypy_which_ends_with_os_exit(tools: Tools) -> None:
    need("mypy")
    cache = ["--cache-dir", str(tools.project / ".mypy_cache")]
    tools.run("cold", ["-m", "mypy", *cache, "typed.py"])  # fills the cache: every later run reads it
    cold = same_as_cold(tools, ["-m", "mypy", *cache, "typed.py"])
    assert cold[0] == 1 and b'incompatible type "str"' in cold[1]
    clean = same_as_cold(tools, ["-m", "mypy", *cache, "other.py"])
    assert clean[0] == 0 and clean[1].startswith(b"Success")


def test_a_forked_child_that_exits_does_not_answer_for_the_command(tools: Tools) -> None:
    cold = same_as_cold(tools, ["forker.py"])
    assert cold[0] == 5 and cold[1].endswith(b"parent after the child\n")


# ---- stdin -------------------------------------------------------------------------


def test_black_and_flake8_read_piped_stdin(tools: Tools) -> None:
    need("black")
    need("flake8")
    source = BAD.encode()
    formatted = same_as_cold(tools, ["-m", "black", "-q", "-"], stdin=source)
    assert formatted[0] == 0 and b"def f(x):" in formatted[1]
    linted = same_as_cold(tools, ["-m", "flake8", "-"], stdin=source)
    assert linted[0] == 1 and b"stdin:1:1: F401" in linted[1]


# ---- edits between runs -----------------------------------------------------------------


def test_edits_between_runs_are_seen(tools: Tools) -> None:
    need("black")
    need("flake8")
    (tools.project / "edited.py").write_text("import os\n", encoding="utf-8")
    assert same_as_cold(tools, ["-m", "flake8", "edited.py"])[0] == 1
    (tools.project / "edited.py").write_text("print('clean')\n", encoding="utf-8")
    assert same_as_cold(tools, ["-m", "flake8", "edited.py"])[0] == 0
    long_line = "x = [" + ", ".join(f'"item{i}"' for i in range(12)) + "]\n"
    (tools.project / "long.py").write_text(long_line, encoding="utf-8")
    assert same_as_cold(tools, ["-m", "black", "--check", "long.py"])[0] == 1
    pyproject = tools.project / "pyproject.toml"
    pyproject.write_text("[tool.black]\nline-length = 200\n", encoding="utf-8")
    try:
        assert same_as_cold(tools, ["-m", "black", "--check", "long.py"])[0] == 0
    finally:
        pyproject.write_text("[tool.black]\nline-length = 88\n", encoding="utf-8")


# ---- a terminal ------------------------------------------------------------------------


def run_in_pty(argv: List[str], tools: Tools, columns: int = 123) -> Tuple[int, bytes]:
    """Runs argv with stdin, stdout and stderr on one pseudo-terminal that is
    ``columns`` wide (so 2>&1: both streams, in the order written)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = dict(tools.env, TERM="xterm-256color")
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=str(tools.project), env=env, start_new_session=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every holder of the terminal is gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), normalise(b"".join(chunks))


def test_a_terminal_123_columns_wide_with_both_streams(tools: Tools) -> None:
    need("pytest")
    need("black")
    colds = []
    for args in (
        ["-m", "pytest", "-p", "no:cacheprovider", "-v", "-s", "test_sample.py"],
        ["-m", "black", "--check", "bad.py", "other.py"],
    ):
        cold = run_in_pty(tools.argv("cold", args), tools)
        colds.append(cold[1])
        for how in CLIENTS:
            assert run_in_pty(tools.argv(how, args), tools) == cold, f"{how} client on a pty: {args}"
    # The terminal reached the tools: colours, and pytest's rules span the 123 columns.
    assert b"\x1b[" in colds[0] and b"\x1b[" in colds[1]
    plain = re.sub(rb"\x1b\[[0-9;]*m", b"", colds[0])
    assert any(len(line) == 123 for line in plain.split(b"\r\n") if line.startswith(b"====")), plain[:400]


def test_both_streams_into_one_pipe_keep_their_order(tools: Tools) -> None:
    need("pytest")
    args = ["-m", "pytest", "-p", "no:cacheprovider", "-s", "-q", "test_sample.py"]
    results = {how: tools.run_merged(how, args)[1] for how in ["cold", *CLIENTS]}
    assert results["python"] == results["cold"]
    assert results["c"] == results["cold"]
    # stdout is a pipe here, so block-buffered: stderr's line comes first, as cold.
    assert b"to stderr\nto stdout\n" in results["cold"]


# ---- Ctrl-C --------------------------------------------------------------------------------


def test_ctrl_c_in_the_middle_of_a_pytest_run(tools: Tools) -> None:
    need("pytest")
    args = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "slow_test.py"]
    marker = Path(tools.env["SLOW_MARKER"])
    results = {}
    for how in ["cold", *CLIENTS]:
        if marker.exists():
            marker.unlink()
        proc = subprocess.Popen(
            tools.argv(how, args), cwd=str(tools.project), env=tools.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert wait_for(marker.exists, timeout=60), how
        time.sleep(0.5)  # well into the sleep: the interrupted line is the same in every run
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        results[how] = (proc.returncode, normalise(out), normalise(err))
    assert results["cold"][0] == 2 and b"KeyboardInterrupt" in results["cold"][1]
    assert results["python"] == results["cold"]
    assert results["c"] == results["cold"]


# ---- more tools: isort, pyflakes, pycodestyle, xdist, coverage, Sphinx, pip ----------------

IMPORTS = b"import sys\nimport os\nimport localmod\nimport requests\n"


def test_isort_reads_stdin_and_sees_a_new_local_module(tools: Tools) -> None:
    need("isort")
    local = tools.project / "localmod.py"
    if local.exists():
        local.unlink()
    before = same_as_cold(tools, ["-m", "isort", "-"], stdin=IMPORTS)
    local.write_text("X = 1\n", encoding="utf-8")
    try:
        after = same_as_cold(tools, ["-m", "isort", "-"], stdin=IMPORTS)
    finally:
        local.unlink()
    # The new module is first-party now: isort gives it a section of its own.
    assert before[0] == 0 and after[0] == 0 and before[1] != after[1]
    assert after[1].endswith(b"\nimport localmod\n")
    checked = same_as_cold(tools, ["-m", "isort", "--check-only", "bad.py", "other.py"])
    assert checked[0] == 1 and b"bad.py Imports are incorrectly sorted" in checked[2]


def test_pyflakes_and_pycodestyle_on_files_and_stdin(tools: Tools) -> None:
    need("pyflakes")
    need("pycodestyle")
    source = BAD.encode()
    for args, stdin in (
        (["-m", "pyflakes", "bad.py"], None),
        (["-m", "pyflakes"], source),
        (["-m", "pycodestyle", "bad.py"], None),
        (["-m", "pycodestyle", "-"], source),
    ):
        cold = same_as_cold(tools, args, stdin=stdin)
        assert cold[0] == 1 and b":1:" in cold[1], args


def test_pytest_with_xdist_workers(tools: Tools) -> None:
    need("pytest")
    if importlib.util.find_spec("xdist") is None:
        pytest.skip("pytest-xdist is not installed (it is in the test extra: pip install '.[test]')")
    cold = same_as_cold(tools, ["-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "test_sample.py", "test_cov.py"])
    assert cold[0] == 1 and b"1 failed, 2 passed" in cold[1] and b"2 workers" in cold[1]


def test_coverage_run_of_pytest_measures_what_a_cold_run_does(tools: Tools) -> None:
    need("coverage")
    need("pytest")
    reports = {}
    for how in ["cold", *CLIENTS]:
        data = tools.project / f".coverage-{how}"
        ran = tools.run(
            how,
            [
                "-m",
                "coverage",
                "run",
                f"--data-file={data}",
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "test_cov.py",
            ],
        )
        assert ran[0] == 0, (how, ran)
        report = tools.run(how, ["-m", "coverage", "report", f"--data-file={data}", "--include=pkg/*"])
        reports[how] = report
    assert reports["python"] == reports["cold"]
    assert reports["c"] == reports["cold"]
    # pkg/mod.py: f() ran, g() did not.
    assert re.search(rb"pkg/mod\.py +\d+ +3 +\d+%", reports["cold"][1]), reports["cold"][1]


def test_sphinx_progress_and_warnings_in_one_pipe(tools: Tools) -> None:
    need("sphinx")
    out = tools.project / "_build"
    results = {}
    for how in ["cold", *CLIENTS]:
        shutil.rmtree(out, ignore_errors=True)
        results[how] = tools.run_merged(how, ["-m", "sphinx", "-E", "-b", "text", "docs", "_build"])
    assert results["python"] == results["cold"]
    assert results["c"] == results["cold"]
    code, merged = results["cold"]
    # Where stderr's warnings land among stdout's progress depends only on the
    # buffering both have in a cold run (a pipe: block-buffered stdout).
    assert code == 0 and b"WARNING: undefined label: 'missing'" in merged and b"build succeeded" in merged
    assert (out / "index.txt").exists()


def test_logging_that_pip_configures_does_not_reach_the_next_command(tools: Tools) -> None:
    need("flake8")
    pip = same_as_cold(tools, ["-m", "pip", "list", "--disable-pip-version-check", "--format=freeze"])
    assert pip[0] == 0 and b"flake8==" in pip[1]
    assert same_as_cold(tools, ["-m", "flake8", "bad.py"])[0] == 1


def test_a_python_m_traceback_keeps_runpy_frames(tools: Tools) -> None:
    cold = same_as_cold(tools, ["-m", "failing_mod"])
    assert cold[0] == 1 and b"<frozen runpy>" in cold[2] and cold[2].endswith(b"ValueError: boom\n")


def test_same_named_test_files_in_two_projects(tools: Tools) -> None:
    need("pytest")
    second = tools.project.parent / "second"
    second.mkdir(exist_ok=True)
    (second / "test_sample.py").write_text("def test_other():\n    assert True\n", encoding="utf-8")
    for _ in range(2):
        first = same_as_cold(tools, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"])
        assert first[0] == 1
        other = same_as_cold(tools, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"], cwd=second)
        assert other[0] == 0 and b"1 passed" in other[1]


# ---- signals the client gets -----------------------------------------------------------


def signalled_run(tools: Tools, how: str, args: List[str], columns: Optional[int] = None) -> Tuple[int, bytes]:
    """Runs args, and once the command has started (SLOW_MARKER), resizes the
    terminal to ``columns`` (on a pty) and sends SIGWINCH, then SIGTERM, to
    the process we started, as a terminal and ``kill`` would: the exit status
    and everything written to stdout and stderr (one pipe or the pty)."""
    marker = Path(tools.env["SLOW_MARKER"])
    winched = Path(str(marker) + ".winch")
    for old in (marker, winched):
        if old.exists():
            old.unlink()
    master = slave = None
    if columns is not None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 123, 0, 0))
        out: int = slave
    else:
        out = subprocess.PIPE
    proc = subprocess.Popen(
        tools.argv(how, args),
        cwd=str(tools.project),
        env=dict(tools.env, TERM="xterm-256color"),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(marker.exists, timeout=60), how
        time.sleep(0.3)
        if master is not None:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns or 80, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        if args == ["signalled.py"]:  # it says when it has seen the change: then SIGTERM
            assert wait_for(winched.exists, timeout=30), how
        else:
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        if master is None:
            output = proc.communicate(timeout=60)[0]
            return proc.returncode, normalise(output)
        assert slave is not None
        os.close(slave)
        slave = None
        chunks = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not select.select([master], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal is gone
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=60), normalise(b"".join(chunks))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)


def test_sigterm_and_sigwinch_reach_the_command_as_they_would_cold(tools: Tools) -> None:
    results = {how: signalled_run(tools, how, ["signalled.py"]) for how in ["cold", *CLIENTS]}
    assert results["cold"] == (3, b"ready\nwindow changed: no terminal\nterminated: cleaning up\n")
    assert results["python"] == results["cold"]
    assert results["c"] == results["cold"]


def test_a_resized_terminal_is_seen_by_the_command(tools: Tools) -> None:
    results = {how: signalled_run(tools, how, ["signalled.py"], columns=90) for how in ["cold", *CLIENTS]}
    assert b"window changed: os.terminal_size(columns=90, lines=40)" in results["cold"][1]
    assert results["python"] == results["cold"]
    assert results["c"] == results["cold"]


def test_a_tool_that_dies_of_sigterm_ends_its_client_the_same_way(tools: Tools) -> None:
    need("pytest")
    # The project's conftest reports the SIGTERM, then dies of it: the warm
    # run must show that pytest itself got it (not only that the client died).
    args = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", "sigterm"]
    results = {how: signalled_run(tools, how, args) for how in ["cold", *CLIENTS]}
    assert results["cold"][0] == -signal.SIGTERM and b"pytest got SIGTERM\n" in results["cold"][1]
    assert results["python"] == results["cold"]
    assert results["c"] == results["cold"]


def test_timeout_sends_sigterm_twice_and_the_command_still_cleans_up(tools: Tools) -> None:
    timeout = shutil.which("timeout")
    if timeout is None:
        pytest.skip("no timeout(1) on this machine")
    results = {how: tools.run_merged(how, ["signalled.py"], wrapper=[timeout, "2"]) for how in ["cold", *CLIENTS]}
    # timeout(1) signals the command and then its own process group: the
    # client gets both, and the command's clean-up runs as it does cold.
    assert results["cold"] == (124, b"ready\nterminated: cleaning up\n")
    assert results["python"] == results["cold"]
    assert results["c"] == results["cold"]
