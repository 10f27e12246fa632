"""The server node against cold starts, with real tools from PyPI: black,
isort, flake8, pyflakes, pycodestyle, pylint, mypy, pytest and sphinx (those
installed) on a small project, each
run cold (``python -m tool ...``), through a warm node with the Python client
(``python -m ipcfast.node run``) and with the C client
(``ipcfast-node-client``).

    python bench/node.py [--runs 10] [--tools black,isort,...]

Each tool gets its own node, preloading what that tool imports while it
runs (``pkg.*``: the package and all its submodules), not only its top
module. The node's own cost per command is measured too: ``python -c pass``
through a node (the C client; connect, handshake, fork, the child's set-up,
exit, wait), next to an empty C program and a cold ``python -c pass``.
Every invocation is timed from the benchmark process (fork, exec, run, exit,
wait), interleaved round by round; every warm run's exit code and output are
checked against the cold run's. Results: a table on stdout and
bench/results/node.md. Targets (issue 16): the warm C client faster than
cold for every tool, at least 5x for black and isort, 2x for pytest and
sphinx.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent


class Tool(NamedTuple):
    name: str  # the label, starting with the package that must be installed
    preload: List[str]
    args: List[str]  # after `python`
    target: Optional[float]  # the speed-up target for the C client (None: faster than cold)


PYTEST_PRELOAD = ["pytest", "_pytest.*", "@pytest11"]

TOOLS = [
    # black.*: black.concurrency too, with asyncio and the process pool black
    # starts for more than one file.
    Tool("black", ["black.*"], ["-m", "black", "--check", "src"], 5.0),
    Tool("isort", ["isort.*"], ["-m", "isort", "--check-only", "src"], 5.0),
    # flake8's plugins are entry points (flake8.extension, flake8.report) that
    # flake8 imports while it runs.
    Tool(
        "flake8",
        ["flake8.*", "pyflakes.*", "pycodestyle", "@flake8.extension", "@flake8.report"],
        ["-m", "flake8", "src"],
        None,
    ),
    # @pytest11: pytest's plugins (Hypothesis's, installed with the test extra)
    # and their distributions' modules, imported through pytest's own
    # assertion-rewriting hook as pytest would import them. The second row runs
    # pytest without Hypothesis's plugin: what the node does for pytest itself.
    Tool("pytest", PYTEST_PRELOAD, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], 2.0),
    Tool(
        "pytest -p no:hypothesispytest",
        PYTEST_PRELOAD,
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "tests"],
        2.0,
    ),
    # pyflakes and pycodestyle: flake8's two checkers run alone, each a short
    # run where the fork's own cost shows most.
    Tool("pyflakes", ["pyflakes.*"], ["-m", "pyflakes", "src"], None),
    Tool("pycodestyle", ["pycodestyle"], ["-m", "pycodestyle", "src"], None),
    # pylint's checkers and astroid's brain are modules it loads while it runs.
    Tool("pylint", ["pylint.*", "astroid.*"], ["-m", "pylint", "--score=n", "src"], None),
    # mypy ends with os._exit(); its cache (.mypy_cache in the project) is
    # filled by the first run, as a user's would be.
    Tool("mypy", ["mypy.*"], ["-m", "mypy", "src"], None),
    Tool(
        "sphinx",
        ["sphinx.*", "sphinx.builders.text"],
        ["-m", "sphinx", "-q", "-E", "-b", "text", "docs", "_build"],
        2.0,
    ),
]

SOURCE = '''"""Module {i}: a little of everything a linter looks at."""

import os
import sys
from typing import Dict, List


def collect(paths: List[str]) -> Dict[str, int]:
    """Sizes of the files that exist."""
    sizes = {{}}
    for path in paths:
        if os.path.exists(path):
            sizes[path] = os.path.getsize(path)
    return sizes


class Counter{i}:
    """Counts things."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, amount: int = 1) -> int:
        self.count += amount
        return self.count


def main() -> int:
    print(collect(sys.argv[1:]))
    return 0
'''

TEST = """from src.mod{i} import Counter{i}


def test_counts():
    c = Counter{i}()
    assert c.add() == 1
    assert c.add(2) == 3


def test_more():
    assert Counter{i}().add(5) == 5
"""

CONF = """project = "bench"
extensions = []
"""

INDEX = """Bench
=====

.. toctree::

   page1
   page2

Some text with *emphasis* and ``code``.
"""

PAGE = """Page {i}
======

A paragraph about module {i}.

- one
- two

.. code-block:: python

   print({i})
"""


def build_project(where: Path) -> None:
    (where / "src").mkdir()
    (where / "src" / "__init__.py").write_text("")
    (where / "tests").mkdir()
    for i in range(8):
        (where / "src" / f"mod{i}.py").write_text(SOURCE.format(i=i))
        (where / "tests" / f"test_mod{i}.py").write_text(TEST.format(i=i))
    (where / "docs").mkdir()
    (where / "docs" / "conf.py").write_text(CONF)
    (where / "docs" / "index.rst").write_text(INDEX)
    for i in (1, 2):
        (where / "docs" / f"page{i}.rst").write_text(PAGE.format(i=i))


_DURATION = re.compile(rb"in \d+\.\d+s")


def timed(argv: List[str], cwd: Path, env: Dict[str, str]) -> Tuple[float, int, bytes]:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    return elapsed, done.returncode, _DURATION.sub(b"", done.stdout)


def c_program(where: Path, source: str, name: str) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        raise SystemExit("a C compiler (cc) is needed")
    src = where / f"{name}.c"
    src.write_text(source)
    exe = where / name
    subprocess.run([cc, "-O2", str(src), "-o", str(exe)], check=True)
    return exe


def node_client(where: Path) -> str:
    """The node's C client: the one `pip install` put next to this Python,
    else built here from this checkout by CMake (CMakeLists.txt is the one
    description of every C build), optimised like the installed one."""
    installed = Path(sys.executable).with_name("ipcfast-node-client")
    if installed.exists():
        return str(installed)
    cmake = shutil.which("cmake")
    if cmake is None:
        raise SystemExit("ipcfast-node-client is not installed next to this Python, and no cmake to build it")
    build = where / "build-c"
    configure = ["-S", str(ROOT), "-B", str(build), "-DIPCFAST_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release"]
    for step in (configure, ["--build", str(build), "--target", "ipcfast-node-client"]):
        subprocess.run([cmake, *step], check=True, stdout=subprocess.DEVNULL)
    return str(build / "bin" / "ipcfast-node-client")


class Bench:
    def __init__(self, where: Path, env: Dict[str, str]) -> None:
        self.where = where
        self.env = env
        self.client = node_client(where)
        self.started: Dict[str, float] = {}
        self.fork_ms: Dict[str, Optional[float]] = {}

    def options(self, preload: List[str]) -> List[str]:
        return [w for module in preload for w in ("--preload", module)] + ["--idle-timeout", "600"]

    def node(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [sys.executable, "-m", "ipcfast.node", *args],
            env=self.env,
            cwd=str(self.where),
            capture_output=True,
            text=True,
        )

    def cases(self, label: str, preload: List[str], args: List[str]) -> Dict[str, List[str]]:
        options = self.options(preload)
        c_words = shlex.split(self.node("c-command", *options).stdout)
        c_words[0] = self.client
        python = [sys.executable, "-m", "ipcfast.node", "run", *options, "--", *args]
        # The first run starts the node and imports the preloads.
        self.started[label] = timed(python, self.where, self.env)[0]
        return {"cold": [sys.executable, *args], "Python client": python, "C client": c_words + args[:]}

    def fork_median(self, preload: List[str]) -> Optional[float]:
        """The median time os.fork() took in that node (its status)."""
        import json

        done = self.node("status", *self.options(preload))
        return json.loads(done.stdout).get("fork_ms_median") if done.returncode == 0 else None

    def shutdown(self, preload: List[str]) -> None:
        self.node("shutdown", *self.options(preload))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="invocations per case (default 10)")
    parser.add_argument("--tools", default=",".join(t.name for t in TOOLS), help="comma-separated tool names")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "node.md"))
    args = parser.parse_args()

    chosen = [t for t in TOOLS if t.name.split()[0] in args.tools.split(",")]
    missing = [t.name for t in chosen if importlib.util.find_spec(t.name.split()[0]) is None]
    tools = [t for t in chosen if t.name not in missing]
    where = Path(tempfile.mkdtemp(prefix="ipcnode"))
    run_dir = Path(tempfile.mkdtemp(prefix="ipn", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PYTHONUNBUFFERED")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        XDG_RUNTIME_DIR=str(run_dir),
        XDG_CACHE_HOME=str(where / "cache"),
    )
    build_project(where)
    compiled = compile_ipcfast()
    bench = Bench(where, env)
    load_before = os.getloadavg()[0]
    rows: Dict[str, Dict[str, float]] = {}
    try:
        empty_c = c_program(where, "int main(void) { return 0; }\n", "empty")
        all_cases: Dict[str, Dict[str, List[str]]] = {}
        for tool in tools:
            all_cases[tool.name] = bench.cases(tool.name, tool.preload, tool.args)
        overhead = bench.cases("node", [], ["-c", "pass"])
        overhead_black = bench.cases("node+black", ["black"], ["-c", "pass"])
        all_cases["python -c pass"] = {
            "cold": overhead["cold"],
            "C client (empty node)": overhead["C client"],
            "C client (black preloaded)": overhead_black["C client"],
            "empty C program": [str(empty_c)],
        }
        samples: Dict[str, Dict[str, List[float]]] = {k: {c: [] for c in v} for k, v in all_cases.items()}
        for _ in range(args.runs):
            for label, cases in all_cases.items():
                expected: Optional[Tuple[int, bytes]] = None
                for case, argv in cases.items():
                    elapsed, code, output = timed(argv, where, env)
                    samples[label][case].append(elapsed)
                    if case == "cold":
                        expected = (code, output)
                    elif expected is not None and case != "empty C program" and (code, output) != expected:
                        raise SystemExit(
                            f"{label} via {case}: exit {code}, output differs from cold:\n"
                            f"{output.decode()[-1500:]}\n--- cold ---\n{expected[1].decode()[-1500:]}"
                        )
        for tool in tools:
            bench.fork_ms[tool.name] = bench.fork_median(tool.preload)
        bench.fork_ms["node"] = bench.fork_median([])
        bench.fork_ms["node+black"] = bench.fork_median(["black"])
        for tool in tools:
            bench.shutdown(tool.preload)
        bench.shutdown([])
        bench.shutdown(["black"])
        rows = {k: {c: statistics.median(v) * 1000 for c, v in cases.items()} for k, cases in samples.items()}
    finally:
        shutil.rmtree(where, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)

    notes = [
        f"Load average (1 min) {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
        f"({os.cpu_count()} CPUs). PYTHONDONTWRITEBYTECODE is "
        + (
            "set: pytest cannot cache its rewritten modules, so every cold pytest run rewrites "
            "the asserts of every plugin distribution's modules (Hypothesis's) again."
            if env.get("PYTHONDONTWRITEBYTECODE")
            else "unset (bytecode and pytest's rewritten modules are cached)."
        )
    ]
    if compiled:
        notes.append(
            "ipcfast's own modules were compiled to bytecode first, as installing its wheel does "
            "(this editable install had none, so every Python client compiled them again)."
        )
    text = report(args.runs, tools, rows, bench.started, bench.fork_ms, missing, notes)
    print(text)
    report_path = Path(args.output)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text + kept_reading(report_path), encoding="utf-8")
    return 0


def compile_ipcfast() -> bool:
    """Writes the bytecode of ipcfast's modules where an installed wheel would
    have it: the Python client imports them on every run, and with
    PYTHONDONTWRITEBYTECODE set an editable install would compile them every
    time. True if there was any to write."""
    import compileall
    import importlib.util as util

    spec = util.find_spec("ipcfast")
    if spec is None or spec.origin is None:
        return False
    package = Path(spec.origin).parent
    missing = any(not Path(util.cache_from_source(str(source))).exists() for source in package.rglob("*.py"))
    if missing:
        compileall.compile_dir(str(package), quiet=1)
    return missing


READING = "\n## Reading these figures\n"


def kept_reading(output: Path) -> str:
    """The hand-written section of an earlier report (its reading of the
    figures), kept below the new tables."""
    if not output.exists():
        return ""
    old = output.read_text(encoding="utf-8")
    return old[old.index(READING) :] if READING in old else ""


def report(
    runs: int,
    tools: List[Tool],
    rows: Dict[str, Dict[str, float]],
    started: Dict[str, float],
    fork_ms: Dict[str, Optional[float]],
    missing: List[str],
    notes: List[str],
) -> str:
    lines = [
        "# Server node: real tools, cold vs warm",
        "",
        f"`python bench/node.py --runs {runs}`: median of {runs} interleaved invocations per case, timed from "
        "fork to exit (output to a pipe), on a small project (8 modules, 8 test files, a 3-page Sphinx "
        "project). Every warm run's exit code and output equalled the cold run's.",
        "",
        " ".join(notes),
        "",
        "| tool | preloaded | cold | Python client | C client | cold ÷ C client | target | met | first run | fork() |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tool in tools:
        r = rows[tool.name]
        speedup = r["cold"] / r["C client"]
        target = tool.target if tool.target is not None else 1.0
        lines.append(
            f"| {tool.name} | {', '.join(tool.preload)} | {r['cold']:.1f} ms | {r['Python client']:.1f} ms | "
            f"{r['C client']:.1f} ms | {speedup:.1f}× | ≥ {target:g}× | {'yes' if speedup >= target else 'no'} | "
            f"{started[tool.name] * 1000:.0f} ms | {_ms(fork_ms.get(tool.name))} |"
        )
    o = rows["python -c pass"]
    lines += [
        "",
        "The node's own cost per command (`python -c pass`):",
        "",
        "| case | median |",
        "|---|---|",
    ]
    for case, value in o.items():
        lines.append(f"| {case} | {value:.2f} ms |")
    lines += [
        "",
        "`fork()`: the median time `os.fork()` itself took in the node (its `status`; the node forks "
        "each command's child ahead of time, while idle, so a client does not wait for it), for "
        f"comparison: an empty node {_ms(fork_ms.get('node'))}, black preloaded {_ms(fork_ms.get('node+black'))}.",
    ]
    if missing:
        lines += ["", f"Not installed, not measured: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def _ms(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
