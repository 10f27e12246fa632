"""The server node against cold starts: a command whose imports are slow,
run cold (``python tool.py``), through a warm node with the Python client
(``python -m ipcfast.node run``) and with the C client
(``ipcfast-node-client``), next to the start of an empty C program.

    python bench/node.py [--runs 20] [--import-ms 300]

The tool imports a synthetic package tree (200 modules doing real work at
import, calibrated to about --import-ms milliseconds), then prints a line.
Each invocation is timed from the benchmark process (fork, exec, run, exit,
wait), interleaved round by round. Results: a table on stdout and
bench/results/node.md. Goals (issue #6): the C client within 1.5x of the
empty C program, and at least 20x faster than cold.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
MODULES = 200

MODULE = """
import math

def _work(n):
    total = 0.0
    for i in range(n):
        total += math.sqrt(i) * math.sin(i)
    return total

VALUE = _work({loops})

class Thing{index}:
    def method(self):
        return VALUE
"""

TOOL = """
import sys
import heavy
print("answer", heavy.answer(), sys.argv[1:])
"""


def build_tree(where: Path, loops: int) -> None:
    package = where / "heavy"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    names = [f"m{i}" for i in range(MODULES)]
    for i, name in enumerate(names):
        (package / f"{name}.py").write_text(MODULE.format(loops=loops, index=i))
    imports = "\n".join(f"from . import {name}" for name in names)
    (package / "__init__.py").write_text(
        imports + "\n\ndef answer():\n    return round(sum(m.VALUE for m in (" + ", ".join(names) + ")), 3)\n"
    )
    (where / "tool.py").write_text(TOOL)


def timed(argv: List[str], cwd: Path, env: Dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return elapsed


def calibrate(where: Path, env: Dict[str, str], target_ms: float) -> int:
    loops = 2000
    for _ in range(4):
        build_tree(where, loops)
        cold = statistics.median(timed([sys.executable, "-c", "import heavy"], where, env) for _ in range(3))
        empty = statistics.median(timed([sys.executable, "-c", "pass"], where, env) for _ in range(3))
        import_ms = max(1.0, (cold - empty) * 1000)
        if abs(import_ms - target_ms) < target_ms * 0.15:
            break
        loops = max(10, int(loops * target_ms / import_ms))
    return loops


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
    installed = Path(sys.executable).with_name("ipcfast-node-client")
    if installed.exists():
        return str(installed)
    exe = where / "ipcfast-node-client"
    sources = [str(p) for p in sorted((ROOT / "csrc").glob("*.c"))]
    subprocess.run(
        ["cc", "-std=c99", "-O2", f"-I{ROOT / 'csrc'}", str(ROOT / "csrc/cli/ipcfast_node_client.c"), *sources,
         "-o", str(exe), "-lpthread"],
        check=True,
    )
    return str(exe)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="invocations per case (default 20)")
    parser.add_argument("--import-ms", type=float, default=300.0, help="import time of the synthetic tree")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "node.md"))
    args = parser.parse_args()

    where = Path(tempfile.mkdtemp(prefix="ipcnode"))
    run_dir = Path(tempfile.mkdtemp(prefix="ipn", dir="/tmp"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(where), *[p for p in sys.path if p]]),
               XDG_RUNTIME_DIR=str(run_dir), XDG_CACHE_HOME=str(where / "cache"))
    node = [sys.executable, "-m", "ipcfast.node"]
    options = ["--preload", "heavy", "--idle-timeout", "300"]
    try:
        loops = calibrate(where, env, args.import_ms)
        empty_c = c_program(where, "int main(void) { return 0; }\n", "empty")
        c_words = shlex.split(subprocess.run(node + ["c-command", *options], env=env, cwd=str(where),
                                             capture_output=True, text=True, check=True).stdout)
        c_words[0] = node_client(where)
        cases = {
            "empty C program": [str(empty_c)],
            "empty python -c pass": [sys.executable, "-c", "pass"],
            "cold: python tool.py": [sys.executable, "tool.py", "x"],
            "warm, Python client": node + ["run", *options, "--", "tool.py", "x"],
            "warm, C client": c_words + ["tool.py", "x"],
        }
        first = timed(cases["warm, Python client"], where, env)  # starts the node (and preloads)
        samples: Dict[str, List[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for label, argv in cases.items():
                samples[label].append(timed(argv, where, env))
        subprocess.run(node + ["shutdown", *options], env=env, cwd=str(where), capture_output=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)

    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    cold, c_empty = med["cold: python tool.py"], med["empty C program"]
    lines = [
        "# Server node: cold vs warm",
        "",
        f"`python bench/node.py --runs {args.runs} --import-ms {args.import_ms:g}`: a tool importing a synthetic "
        f"tree of {MODULES} modules ({loops} loop iterations each); median of {args.runs} interleaved "
        "invocations, timed from fork to exit. First invocation (starts the node and preloads): "
        f"{first * 1000:.0f} ms.",
        "",
        "| case | median | ÷ empty C program | cold ÷ case |",
        "|---|---|---|---|",
    ]
    for label, value in med.items():
        lines.append(f"| {label} | {value:.2f} ms | {value / c_empty:.2f}× | {cold / value:.1f}× |")
    lines += [
        "",
        f"Goals: C client ÷ empty C program ≤ 1.5 (measured {med['warm, C client'] / c_empty:.2f}); "
        f"cold ÷ C client ≥ 20 (measured {cold / med['warm, C client']:.1f}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
