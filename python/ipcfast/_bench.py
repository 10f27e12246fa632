"""The ipcfast benchmark harness (``python -m ipcfast bench``, ``bench/run.py``).

Every implementation is measured as a pair of processes, a server and one or
more clients, exchanging echo requests:

========== =================================================================
floor      bench/floor.c: minimal C ping-pong, AF_UNIX SOCK_STREAM, 4-byte
           length prefix, default socket options (no ipcfast code)
c2c        bench/c2c.c: C server and C clients through csrc/'s public API
native     Python client -> C core -> Python handler (backend="native")
pure       the pure-Python backend (backend="pure"), when it works
mp.conn    multiprocessing.connection, AF_UNIX, send_bytes / recv_bytes
pyzmq      pyzmq REQ/REP over ipc://, when pyzmq is installed
========== =================================================================

Rounds are interleaved (every implementation once per round, in a fixed
order, then the next round), in two modes: unpinned, and pinned (every
process of the pair on one CPU). Figures per round: round-trip latency
samples for each size, and requests/s with 1, 4, 16 concurrent client
processes. Summary: the median of the per-round medians, p99 over all
samples, and ratios to the floor measured in the same round.

The C programs are compiled on the fly with ``cc`` from the source tree
(csrc/ and bench/ are not part of the installed package): run from a
checkout, or pass ``--source DIR``. Without sources or a compiler the C
implementations are skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

KIB = 1024
MIB = 1024 * 1024

#: Implementations in round order: (key, kind, description).
IMPLEMENTATIONS: List[Tuple[str, str, str]] = [
    ("floor", "c", "minimal C ping-pong over AF_UNIX SOCK_STREAM (bench/floor.c, no ipcfast code)"),
    ("c2c", "c", "C server and C clients through the public C API of csrc/ (bench/c2c.c)"),
    ("native", "py", "Python client -> C core -> Python echo handler (ipcfast, backend='native')"),
    ("pure", "py", "the pure-Python path (ipcfast, backend='pure') on both sides"),
    ("mp.connection", "py", "multiprocessing.connection, AF_UNIX, send_bytes/recv_bytes, thread per client"),
    ("pyzmq", "py", "pyzmq REQ/REP over ipc:// (one REP socket serves every client)"),
]
IMPL_KEYS = [key for key, _, _ in IMPLEMENTATIONS]
DESCRIPTIONS = {key: text for key, _, text in IMPLEMENTATIONS}

SIZES = [16, KIB, 64 * KIB, MIB]

#: Settings per run kind. iters / warmup are per size, in SIZES order.
PROFILES: Dict[str, Dict[str, Any]] = {
    "full": {
        "rounds": 5,
        "modes": ["unpinned", "pinned"],
        "iters": [3000, 3000, 1500, 250],
        "warmup": [1000, 300, 150, 25],
        "concurrency": [1, 4, 16],
        "rate_seconds": 1.0,
        "mainloop_rounds": 3,
        "mainloop_requests": 2000,
    },
    "quick": {
        "rounds": 1,
        "modes": ["unpinned", "pinned"],
        "iters": [600, 600, 300, 40],
        "warmup": [200, 60, 30, 5],
        "concurrency": [1, 4, 16],
        "rate_seconds": 0.25,
        "mainloop_rounds": 1,
        "mainloop_requests": 600,
    },
    "smoke": {
        "rounds": 1,
        "modes": ["unpinned"],
        "iters": [100, 100, 50, 8],
        "warmup": [20, 20, 10, 2],
        "concurrency": [1, 4],
        "rate_seconds": 0.1,
        "mainloop_rounds": 1,
        "mainloop_requests": 40,
    },
}
RATE_SIZE = 16          # request size in the concurrency test
RATE_WARMUP = 50        # untimed requests per client before the timed window
RATE_LEAD_NS = 50_000_000  # time from "go" to the start of the timed window
C_FLAGS = ["-O3", "-DNDEBUG", "-pthread"]  # CMake's Release flags, as the extension is built

#: Main-loop cases: (key, dispatch, loop style). "idle" is the baseline: a
#: thread-dispatch server whose main thread only waits. The others keep the
#: server's main thread busy running Python (see _loop_serve).
MAINLOOP_CASES: List[Tuple[str, str, str]] = [
    ("idle", "thread", "idle"),
    ("frame/thread", "thread", "frame"),
    ("frame/manual", "manual", "frame"),
    ("spin/thread", "thread", "spin"),
    ("spin/manual", "manual", "spin"),
]
MAINLOOP_DESCRIPTIONS = {
    "idle": "baseline: thread dispatch, the main thread idle (blocked reading stdin)",
    "frame/thread": "1 kHz frames: 0.5 ms of busy Python, then time.sleep for the rest of the frame; "
    "the handler runs on a C connection thread",
    "frame/manual": "1 kHz frames: 0.5 ms of busy Python, then selectors on server.fileno() for the rest of "
    "the frame, server.dispatch(0) when ready and at frame end",
    "spin/thread": "the main thread spins in a Python loop (never releases the GIL on its own); "
    "the handler runs on a C connection thread",
    "spin/manual": "the main thread spins in a Python loop calling server.dispatch(0) every iteration",
}
MAINLOOP_FRAME_S = 0.001   # a 1 kHz main loop
MAINLOOP_BUSY_S = 0.0005   # busy Python work per frame
MAINLOOP_SPIN_WORK = 100   # Python loop iterations per spin iteration (a few µs)
MAINLOOP_GAP_S = (0.0002, 0.0013)  # client pause between requests: uniform, not in step with frames
MAINLOOP_WARMUP = 50
MAINLOOP_SIZE = 16


class BenchError(RuntimeError):
    """One measurement failed (the run goes on without it)."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- statistics ---------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def _median_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return float(statistics.median(present)) if present else None


# ---- child processes ----------------------------------------------------------


class Child:
    """A child process with line-based stdout, read by a thread into a queue."""

    def __init__(self, cmd: List[str], env: Dict[str, str], what: str) -> None:
        self.what = what
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.stderr: List[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def _fail(self, why: str) -> BenchError:
        self.kill()
        time.sleep(0.05)
        tail = " | ".join(self.stderr[-5:])
        return BenchError(f"{self.what}: {why}" + (f" (stderr: {tail})" if tail else ""))

    def readline(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise self._fail(f"no output within {timeout:.0f} s") from None
        if line is None:
            self.proc.wait()
            raise self._fail(f"exited with code {self.proc.returncode} before answering")
        return line

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass

    def finish(self, timeout: float) -> None:
        """Close stdin and wait for a clean exit; raise if it does not come."""
        self.close_stdin()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"did not exit within {timeout:.0f} s") from None
        if code != 0:
            raise self._fail(f"exited with code {code}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.close_stdin()


# ---- the harness ----------------------------------------------------------------


def find_source_root(explicit: Optional[str] = None) -> Optional[str]:
    """The source tree holding csrc/ipc.h and bench/floor.c, or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        explicit,
        os.environ.get("IPCFAST_SOURCE_DIR"),
        os.path.dirname(os.path.dirname(here)),  # python/ipcfast/ in a checkout
        os.getcwd(),
    ]
    for root in candidates:
        if not root:
            continue
        root = os.path.abspath(root)
        if os.path.isfile(os.path.join(root, "csrc", "ipc.h")) and os.path.isfile(
            os.path.join(root, "bench", "floor.c")
        ):
            return root
        if explicit and root == os.path.abspath(explicit):
            _log(f"note: --source {explicit}: no csrc/ipc.h and bench/floor.c there")
    return None


def _run_quiet(cmd: List[str], timeout: float = 30) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _loadavg() -> Optional[str]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews every figure)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


class LoadMeter:
    """CPU time spent by processes other than this run's, over an interval.

    System-wide busy time (/proc/stat) minus the CPU time of this process and
    of its waited-for children: what other work on the machine took while we
    measured. Also the hypervisor's steal time. Linux only (None elsewhere).
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> Optional[Tuple[float, float, float, float]]:
        try:
            import resource

            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError, ImportError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal ...
        busy = (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / tick
        steal = (fields[7] if len(fields) > 7 else 0) / tick
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            own += ru.ru_utime + ru.ru_stime
        return time.monotonic(), busy, steal, own

    def read(self) -> Optional[Dict[str, float]]:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        if wall <= 0:
            return None
        other = (end[1] - self.start[1]) - (end[3] - self.start[3])
        return {
            "seconds": round(wall, 3),
            "other_cpus": round(max(other, 0.0) / wall, 3),
            "steal_cpus": round((end[2] - self.start[2]) / wall, 3),
        }


def machine_info(source_root: Optional[str], cc: Optional[str]) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        info["hypervisor"] = " hypervisor" in text
    except OSError:
        info["cpu_model"] = platform.processor() or "unknown"
    try:
        with open("/proc/meminfo") as f:
            info["mem_total"] = f.readline().split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    for name in ("wmem_default", "rmem_default", "wmem_max", "rmem_max"):
        try:
            with open(f"/proc/sys/net/core/{name}") as f:
                info[f"net_core_{name}"] = int(f.read().strip())
        except (OSError, ValueError):
            pass
    try:
        import ipcfast

        info["ipcfast"] = ipcfast.__version__
    except Exception:  # pragma: no cover - reported, not fatal
        pass
    try:
        from . import _ipcfast_cffi

        ext = _ipcfast_cffi.__file__
        info["native_extension"] = ext
        info["native_extension_mtime"] = datetime.datetime.fromtimestamp(
            os.path.getmtime(ext), datetime.timezone.utc
        ).strftime("%Y-%m-%d %H:%M:%S")
    except (ImportError, OSError, TypeError):
        pass
    for module in ("cffi", "zmq", "matplotlib"):
        try:
            mod = __import__(module)
            info[f"{module}_version"] = getattr(mod, "__version__", "?")
        except Exception:
            pass
    if cc:
        version = _run_quiet([cc, "--version"])
        if version:
            info["cc"] = version.splitlines()[0]
        info["c_flags"] = " ".join(C_FLAGS)
    if source_root and shutil.which("git"):
        commit = _run_quiet(["git", "-C", source_root, "rev-parse", "HEAD"])
        if commit:
            dirty = _run_quiet(["git", "-C", source_root, "status", "--porcelain", "--", "csrc", "python"])
            info["git_commit"] = commit + ("+dirty" if dirty else "")
    return info


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        profile = dict(PROFILES[args.profile])
        if args.rounds:
            profile["rounds"] = args.rounds
        if args.modes:
            profile["modes"] = args.modes
        self.profile = profile
        self.notes: List[str] = []
        self.available: Dict[str, bool] = {}
        self.skip_reason: Dict[str, str] = {}
        self.bin: Dict[str, str] = {}
        self.tmp = tempfile.mkdtemp(prefix="ipcfast-bench-")
        self.seq = 0
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.source_root = find_source_root(args.source)
        self.cc: Optional[str] = shutil.which(os.environ.get("CC", "cc"))
        self.cpu = args.cpu

    # -- setup --

    def note(self, text: str) -> None:
        self.notes.append(text)
        _log(f"note: {text}")

    def skip(self, impl: str, reason: str) -> None:
        self.available[impl] = False
        self.skip_reason[impl] = reason
        self.note(f"{impl} skipped: {reason}")

    def build_c(self) -> None:
        wanted = [k for k in ("floor", "c2c") if k in self.selected]
        if not wanted:
            return
        if self.source_root is None:
            for k in wanted:
                self.skip(k, "the C sources (csrc/, bench/*.c) were not found: run from a source "
                          "checkout or pass --source DIR")
            return
        if self.cc is None:
            for k in wanted:
                self.skip(k, f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH")
            return
        bench = os.path.join(self.source_root, "bench")
        csrc = os.path.join(self.source_root, "csrc")
        sources = {
            "floor": [os.path.join(bench, "floor.c")],
            "c2c": [os.path.join(bench, "c2c.c")]
            + sorted(os.path.join(csrc, f) for f in os.listdir(csrc) if f.endswith(".c")),
        }
        for k in wanted:
            out = os.path.join(self.tmp, k)
            cmd = [self.cc, *C_FLAGS, "-I", csrc, "-o", out, *sources[k]]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                self.skip(k, f"compiling failed: {' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
            else:
                self.bin[k] = out
                self.available[k] = True

    def probe_python(self) -> None:
        import importlib.util

        import ipcfast

        if "native" in self.selected:
            error = ipcfast.native_import_error()
            if error is not None:
                self.skip("native", f"the native extension cannot be imported: {error}")
            else:
                self.available["native"] = True
        if "pure" in self.selected:
            self._probe_pure()
        if "mp.connection" in self.selected:
            if sys.platform == "win32":
                self.skip("mp.connection", "AF_UNIX is not available on Windows")
            else:
                self.available["mp.connection"] = True
        if "pyzmq" in self.selected:
            if importlib.util.find_spec("zmq") is None:
                self.skip("pyzmq", "pyzmq is not installed (pip install 'ipcfast[bench]')")
            else:
                self.available["pyzmq"] = True

    def _check_extension_age(self) -> None:
        """Warn when csrc/ changed after the native extension was built: then
        native runs an older C core than c2c (reinstall to rebuild it)."""
        if not (self.available.get("native") and self.available.get("c2c") and self.source_root):
            return
        try:
            from . import _ipcfast_cffi

            built = os.path.getmtime(_ipcfast_cffi.__file__)
            csrc = os.path.join(self.source_root, "csrc")
            newest = max(os.path.getmtime(os.path.join(csrc, f)) for f in os.listdir(csrc))
        except (ImportError, OSError, TypeError, ValueError):
            return
        if newest > built:
            self.note(
                "csrc/ is newer than the installed native extension: native runs the C core as it was "
                "when ipcfast was last built, c2c the current csrc/ (rebuild: pip install -e . "
                "--no-build-isolation)"
            )

    def _probe_pure(self) -> None:
        path = self._address("probe")
        code = (
            "import sys, ipcfast\n"
            "p = sys.argv[1]\n"
            "with ipcfast.Server(p, lambda r: r, backend='pure') as s:\n"
            "    with ipcfast.Client(p, backend='pure', connect_timeout=10) as c:\n"
            "        for n in (16, 70000):\n"
            "            assert c.request(b'x' * n) == b'x' * n\n"
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60, env=self.env
            )
        except subprocess.TimeoutExpired:
            self.skip("pure", "backend='pure' did not answer a probe request within 60 s")
            return
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            self.skip("pure", f"ipcfast.Server(..., backend='pure') does not work yet ({last})")
        else:
            self.available["pure"] = True

    # -- commands --

    def _address(self, impl: str) -> str:
        self.seq += 1
        tag = impl.replace(".", "")[:6]
        return os.path.join(self.tmp, f"{tag}{self.seq}.sock")

    def _cmd(self, impl: str, mode: str, addr: str, extra: List[str], pinned: bool) -> List[str]:
        if impl in self.bin:
            cmd = [self.bin[impl], mode, addr]
        else:
            cmd = [sys.executable, "-m", "ipcfast._bench", "child", impl, mode, addr]
        cmd += extra
        if pinned:
            cmd += ["--cpu", str(self.cpu)]
        return cmd

    # -- measurements --

    def measure(self, impl: str, pinned: bool) -> Dict[str, Any]:
        """One round of one implementation: latency per size, then requests/s."""
        profile = self.profile
        addr = self._address(impl)
        server = Child(self._cmd(impl, "serve", addr, [], pinned), self.env, f"{impl} server")
        result: Dict[str, Any] = {"latency": {}, "rate": {}}
        try:
            line = server.readline(60)
            if not line.startswith("READY"):
                raise BenchError(f"{impl} server: unexpected first line {line!r}")
            lat_args = [
                "--sizes", ",".join(str(s) for s in SIZES),
                "--iters", ",".join(str(n) for n in profile["iters"]),
                "--warmup", ",".join(str(n) for n in profile["warmup"]),
            ]
            client = Child(self._cmd(impl, "lat", addr, lat_args, pinned), self.env, f"{impl} latency client")
            try:
                for _ in SIZES:
                    record = json.loads(client.readline(300))
                    samples = record["ns"]
                    if not samples or min(samples) <= 0:
                        raise BenchError(f"{impl}: bad samples for size {record['size']}")
                    result["latency"][str(record["size"])] = samples
                client.finish(30)
            finally:
                client.kill()
            self._rates(impl, addr, pinned, result["rate"])
        finally:
            try:
                server.finish(20)
            except BenchError as exc:
                self.note(f"{exc} (while stopping)")
            server.kill()
        return result

    def _rates(self, impl: str, addr: str, pinned: bool, out: Dict[str, Any]) -> None:
        """Requests/s with K concurrent clients, for each K of the profile.

        The largest K of client processes is started once (connected and
        warmed up); for K clients, the first K of them run during the same
        window while the others stay connected and idle.
        """
        ks = sorted(self.profile["concurrency"])
        if not ks:
            return
        args = ["--size", str(RATE_SIZE), "--warmup", str(RATE_WARMUP)]
        clients = [
            Child(self._cmd(impl, "rate", addr, args, pinned), self.env, f"{impl} rate client {i + 1}")
            for i in range(ks[-1])
        ]
        window = int(self.profile["rate_seconds"] * 1e9)
        try:
            for c in clients:
                line = c.readline(120)
                if line != "READY":
                    raise BenchError(f"{c.what}: unexpected line {line!r}")
            for k in ks:
                active = clients[:k]
                start = time.monotonic_ns() + RATE_LEAD_NS
                for c in active:
                    c.send(f"{start} {start + window}\n")
                per_client = [json.loads(c.readline(120 + self.profile["rate_seconds"])) for c in active]
                rps = sum(r["count"] / (r["elapsed_ns"] / 1e9) for r in per_client if r["elapsed_ns"] > 0)
                out[str(k)] = {"clients": per_client, "rps": rps}
            for c in clients:
                c.finish(30)
        finally:
            for c in clients:
                c.kill()

    def measure_mainloop(self, case: str, dispatch: str, style: str) -> Dict[str, Any]:
        """One main-loop case: a loopserve server and a paced client."""
        count = int(self.profile["mainloop_requests"])
        addr = self._address("loop")
        server = Child(
            self._cmd("native", "loopserve", addr, ["--dispatch", dispatch, "--style", style], False),
            self.env,
            f"main-loop server ({case})",
        )
        result: Dict[str, Any] = {}
        try:
            line = server.readline(60)
            if not line.startswith("READY"):
                raise BenchError(f"main-loop server ({case}): unexpected first line {line!r}")
            # A generous cap: a starving server must not hang the run.
            deadline = 30.0 + count * 0.005
            client = Child(
                self._cmd("native", "paced", addr, ["--count", str(count), "--deadline", str(deadline)], False),
                self.env,
                f"main-loop client ({case})",
            )
            try:
                record = json.loads(client.readline(deadline + 120))
                client.finish(30)
            finally:
                client.kill()
            samples = record["ns"]
            if not samples or min(samples) <= 0:
                raise BenchError(f"main-loop client ({case}): bad samples")
            result["ns"] = samples
            if record.get("truncated"):
                self.note(f"main-loop {case}: the client stopped after {len(samples)} of {count} requests "
                          f"(time cap {deadline:.0f} s)")
            server.close_stdin()
            result["loop"] = json.loads(server.readline(30))
        finally:
            try:
                server.finish(20)
            except BenchError as exc:
                self.note(f"{exc} (while stopping)")
            server.kill()
        return result

    def run_mainloop(self) -> Optional[Dict[str, Any]]:
        """Rounds of every main-loop case (interleaved); None if not run."""
        if getattr(self.args, "no_mainloop", False):
            return None
        if not self.available.get("native"):
            self.note("main-loop cases skipped: they need the native backend")
            return None
        if sys.platform == "win32":
            self.note("main-loop cases skipped: selectors cannot wait on the Windows event handle")
            return None
        rounds = int(self.profile["mainloop_rounds"])
        raw: Dict[str, List[Dict[str, Any]]] = {case: [] for case, _, _ in MAINLOOP_CASES}
        for r in range(rounds):
            for case, dispatch, style in MAINLOOP_CASES:
                t0 = time.monotonic()
                meter = LoadMeter()
                try:
                    res = self.measure_mainloop(case, dispatch, style)
                    res["error"] = None
                except (BenchError, ValueError, KeyError) as exc:
                    res = {"ns": [], "error": str(exc)}
                    self.note(f"round {r + 1} main-loop {case}: {exc}")
                res["round"] = r
                res["other_load"] = meter.read()
                res["seconds"] = round(time.monotonic() - t0, 3)
                raw[case].append(res)
                _log(f"round {r + 1}/{rounds} main-loop {case:14s} {res['seconds']:6.2f} s"
                     + ("" if res["error"] is None else "  FAILED"))
        return {
            "config": {
                "rounds": rounds,
                "requests": int(self.profile["mainloop_requests"]),
                "request_size": MAINLOOP_SIZE,
                "frame_ms": MAINLOOP_FRAME_S * 1e3,
                "busy_ms": MAINLOOP_BUSY_S * 1e3,
                "spin_work": MAINLOOP_SPIN_WORK,
                "client_gap_ms": [g * 1e3 for g in MAINLOOP_GAP_S],
                "switch_interval_ms": sys.getswitchinterval() * 1e3,
            },
            "cases": {case: {"dispatch": d, "style": st, "description": MAINLOOP_DESCRIPTIONS[case]}
                      for case, d, st in MAINLOOP_CASES},
            "summary": summarize_mainloop(raw),
            "raw": raw,
        }

    # -- the run --

    def run(self) -> Dict[str, Any]:
        args = self.args
        self.selected = [k for k in IMPL_KEYS if not args.impl or k in args.impl]
        mainloop_only = getattr(args, "mainloop_only", False)
        if mainloop_only:
            self.selected = ["native"]
        t_start = time.monotonic()
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        load_start = _loadavg()
        self.build_c()
        self.probe_python()
        self._check_extension_age()
        if "floor" not in self.selected or not self.available.get("floor"):
            self.note("without the floor, no ratio can be computed (absolute figures only)")
        pinned_possible = hasattr(os, "sched_setaffinity")
        modes = list(self.profile["modes"])
        if "pinned" in modes and not pinned_possible:
            modes.remove("pinned")
            self.note("pinned mode skipped: os.sched_setaffinity is not available on this platform")
        if "pinned" in modes and pinned_possible and self.cpu not in os.sched_getaffinity(0):
            raise SystemExit(f"--cpu {self.cpu}: this process may not run on that CPU")
        impls = [k for k in self.selected if self.available.get(k)]
        if mainloop_only:
            impls, modes = [], []
        raw: Dict[str, Dict[str, List[Dict[str, Any]]]] = {m: {k: [] for k in impls} for m in modes}
        for r in range(self.profile["rounds"]):
            for mode in modes:
                for impl in impls:
                    t0 = time.monotonic()
                    load = _loadavg()
                    meter = LoadMeter()
                    try:
                        res = self.measure(impl, pinned=(mode == "pinned"))
                        res["error"] = None
                    except BenchError as exc:
                        res = {"latency": {}, "rate": {}, "error": str(exc)}
                        self.note(f"round {r + 1} {mode} {impl}: {exc}")
                    except (ValueError, KeyError) as exc:
                        res = {"latency": {}, "rate": {}, "error": f"bad output: {exc!r}"}
                        self.note(f"round {r + 1} {mode} {impl}: bad output: {exc!r}")
                    res["round"] = r
                    res["loadavg_before"] = load
                    res["other_load"] = meter.read()
                    res["seconds"] = round(time.monotonic() - t0, 3)
                    raw[mode][impl].append(res)
                    _log(f"round {r + 1}/{self.profile['rounds']} {mode:8s} {impl:14s} {res['seconds']:6.2f} s"
                         + ("" if res["error"] is None else "  FAILED"))
        mainloop = self.run_mainloop()
        summary = {mode: summarize(raw[mode], impls) for mode in modes}
        loads = [res["other_load"] for m in raw.values() for rounds in m.values() for res in rounds
                 if res.get("other_load")]
        machine = machine_info(self.source_root, self.cc if self.bin else None)
        machine["finished_utc"] = machine["date_utc"]
        machine["date_utc"] = started
        if load_start is not None:
            machine["loadavg_start"] = load_start
            machine["loadavg_end"] = _loadavg()
        results = {
            "schema": 1,
            "profile": args.profile,
            "config": {
                **{k: v for k, v in self.profile.items()},
                "sizes": SIZES,
                "rate_request_size": RATE_SIZE,
                "rate_warmup": RATE_WARMUP,
                "pinned_cpu": self.cpu,
            },
            "machine": machine,
            "implementations": {
                k: {
                    "description": DESCRIPTIONS[k],
                    "measured": k in impls,
                    **({"skipped": self.skip_reason[k]} if k in self.skip_reason else {}),
                }
                for k in self.selected
            },
            "source_root": self.source_root,
            "notes": self.notes,
            "summary": summary,
            "targets": evaluate_targets(summary, mainloop),
            "mainloop": mainloop,
            "raw": raw,
            "elapsed_seconds": round(time.monotonic() - t_start, 1),
            "other_load": {
                "what": "CPU time of other processes (and steal) per second, during each measurement",
                "median_other_cpus": _median_or_none([x["other_cpus"] for x in loads]) if loads else None,
                "max_other_cpus": max((x["other_cpus"] for x in loads), default=None),
                "max_steal_cpus": max((x["steal_cpus"] for x in loads), default=None),
            },
        }
        return results

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- summaries ------------------------------------------------------------------


def _round_latency_medians(rounds: List[Dict[str, Any]], size: int) -> List[Optional[float]]:
    out: List[Optional[float]] = []
    for res in rounds:
        samples = res["latency"].get(str(size))
        out.append(float(statistics.median(samples)) if samples else None)
    return out


def _round_rps(rounds: List[Dict[str, Any]], k: int) -> List[Optional[float]]:
    return [res["rate"][str(k)]["rps"] if str(k) in res["rate"] else None for res in rounds]


def _paired_ratio(a: List[Optional[float]], b: List[Optional[float]]) -> Optional[float]:
    """Median over rounds of a[r] / b[r], using rounds where both exist."""
    ratios = [x / y for x, y in zip(a, b) if x is not None and y is not None and y > 0]
    return _median_or_none(ratios)


def summarize(raw: Dict[str, List[Dict[str, Any]]], impls: List[str]) -> Dict[str, Any]:
    summary: Dict[str, Any] = {}
    floor = raw.get("floor")
    for impl in impls:
        rounds = raw[impl]
        lat: Dict[str, Any] = {}
        for size in SIZES:
            medians = _round_latency_medians(rounds, size)
            pooled = sorted(x for res in rounds for x in res["latency"].get(str(size), []))
            if not pooled:
                continue
            entry: Dict[str, Any] = {
                "p50_ns": _median_or_none(medians),
                "p99_ns": percentile(pooled, 99),
                "mean_ns": float(statistics.fmean(pooled)),
                "min_ns": float(pooled[0]),
                "samples": len(pooled),
                "round_p50_ns": medians,
            }
            if floor:
                entry["ratio_p50"] = _paired_ratio(medians, _round_latency_medians(floor, size))
                floor_pooled = sorted(x for res in floor for x in res["latency"].get(str(size), []))
                entry["ratio_p99"] = entry["p99_ns"] / percentile(floor_pooled, 99) if floor_pooled else None
            lat[str(size)] = entry
        rate: Dict[str, Any] = {}
        ks = sorted({int(k) for res in rounds for k in res["rate"]})
        for k in ks:
            per_round = _round_rps(rounds, k)
            entry = {"rps": _median_or_none(per_round), "round_rps": per_round}
            if floor:
                entry["ratio"] = _paired_ratio(per_round, _round_rps(floor, k))
            rate[str(k)] = entry
        throughput = []
        for res in rounds:
            samples = res["latency"].get(str(MIB))
            if samples:
                throughput.append(len(samples) * MIB / (sum(samples) / 1e9) / MIB)
        summary[impl] = {
            "latency": lat,
            "rate": rate,
            "throughput_1MiB_MiBps": _median_or_none(throughput),
            "round_throughput_1MiB_MiBps": throughput,
            "failed_rounds": sum(1 for res in rounds if res.get("error")),
        }
    summary["_raw_rounds"] = {impl: raw[impl] for impl in impls}  # removed before saving
    return summary


def summarize_mainloop(raw: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Per case: median RTT (median over rounds), p99 (all samples), and the
    added latency: the case's p50 / p99 minus the idle baseline's in the same
    round, median over rounds."""
    def per_round(case: str, q: float) -> List[Optional[float]]:
        return [percentile(sorted(res["ns"]), q) if res.get("ns") else None for res in raw.get(case, [])]

    base50, base99 = per_round("idle", 50), per_round("idle", 99)
    out: Dict[str, Any] = {}
    for case, rounds in raw.items():
        pooled = sorted(x for res in rounds for x in res.get("ns", []))
        if not pooled:
            out[case] = {"samples": 0, "failed_rounds": sum(1 for res in rounds if res.get("error"))}
            continue
        p50s, p99s = per_round(case, 50), per_round(case, 99)
        added50 = [a - b for a, b in zip(p50s, base50) if a is not None and b is not None]
        added99 = [a - b for a, b in zip(p99s, base99) if a is not None and b is not None]
        out[case] = {
            "p50_ns": _median_or_none(p50s),
            "p99_ns": percentile(pooled, 99),
            "max_ns": float(pooled[-1]),
            "samples": len(pooled),
            "added_p50_ns": _median_or_none(added50) if case != "idle" else 0.0,
            "added_p99_ns": _median_or_none(added99) if case != "idle" else 0.0,
            "round_p50_ns": p50s,
            "round_p99_ns": p99s,
            "failed_rounds": sum(1 for res in rounds if res.get("error")),
        }
    return out


def _pair(summary: Dict[str, Any], a: str, b: str, metric: str, key: int) -> Optional[float]:
    """Median over rounds of a's figure / b's figure in the same round."""
    raw = summary.get("_raw_rounds", {})
    if a not in raw or b not in raw:
        return None
    if metric == "latency":
        return _paired_ratio(_round_latency_medians(raw[a], key), _round_latency_medians(raw[b], key))
    return _paired_ratio(_round_rps(raw[a], key), _round_rps(raw[b], key))


def evaluate_targets(summary: Dict[str, Dict[str, Any]], mainloop: Optional[Dict[str, Any]] = None
                     ) -> List[Dict[str, Any]]:
    """The speed goals of the benchmark issue (and of main-loop dispatch,
    issue #7), checked against this run."""
    targets: List[Dict[str, Any]] = []

    def add(text: str, mode: str, value: Optional[float], op: str, limit: float, unit: str = "ratio") -> None:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        targets.append({"target": text, "mode": mode, "value": value, "op": op, "limit": limit, "met": met,
                        "unit": unit})

    pinned = summary.get("pinned", {})
    unpinned = summary.get("unpinned", {})
    names = {16: "16 B", KIB: "1 KiB", 64 * KIB: "64 KiB", MIB: "1 MiB"}
    for size in SIZES:
        limit = 1.15 if size == MIB else 1.10
        add(f"native RTT / floor RTT at {names[size]}", "pinned",
            _pair(pinned, "native", "floor", "latency", size), "<=", limit)
    for size in SIZES:
        limit = 5.0 if size == MIB else 1.5
        add(f"mp.connection RTT / native RTT at {names[size]}", "pinned",
            _pair(pinned, "mp.connection", "native", "latency", size), ">=", limit)
    add("native RTT / floor RTT at 1 MiB (default socket buffers)", "unpinned",
        _pair(unpinned, "native", "floor", "latency", MIB), "<=", 0.6)
    add("native req/s / c2c req/s, 16 clients", "pinned", _pair(pinned, "native", "c2c", "rate", 16), ">=", 0.6)
    add("native req/s / pure req/s, 16 clients", "pinned", _pair(pinned, "native", "pure", "rate", 16), ">=", 2.0)
    loops = (mainloop or {}).get("summary", {})
    for case, what in (("frame/manual", "1 kHz frame loop"), ("spin/manual", "spinning main thread")):
        add(f"manual dispatch, {what}: added p50 latency", "unpinned",
            loops.get(case, {}).get("added_p50_ns"), "<=", 50_000.0, unit="ns")
    return targets


# ---- report -------------------------------------------------------------------


def _fmt_ns(ns: Optional[float]) -> str:
    if ns is None:
        return "-"
    us = ns / 1000.0
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    if us >= 100:
        return f"{us:.0f} µs"
    return f"{us:.1f} µs"


def _fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}×"


def _fmt_rps(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x / 1000:.1f} k/s" if x >= 1000 else f"{x:.0f}/s"


def _render_mainloop(mainloop: Optional[Dict[str, Any]]) -> List[str]:
    if not mainloop:
        return []
    c = mainloop["config"]
    lines = [
        "## Main-loop dispatch: a request while the server's main thread runs Python",
        "",
        f"Unpinned; {c['rounds']} round(s) of {c['requests']} requests of {c['request_size']} B per case, one "
        f"client pausing {c['client_gap_ms'][0]:g}-{c['client_gap_ms'][1]:g} ms (uniform) before each request. "
        f"Added = the case's figure minus the idle server's in the same round (median over rounds). "
        f"GIL switch interval {c['switch_interval_ms']:g} ms.",
        "",
        "| case | median RTT | p99 RTT | max | added p50 | added p99 | main loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, s in mainloop["summary"].items():
        if not s.get("samples"):
            lines.append(f"| {case} | - | - | - | - | - | failed |")
            continue
        lines.append(
            f"| {case} | {_fmt_ns(s['p50_ns'])} | {_fmt_ns(s['p99_ns'])} | {_fmt_ns(s['max_ns'])} | "
            f"{_fmt_ns(s['added_p50_ns']) if case != 'idle' else 'baseline'} | "
            f"{_fmt_ns(s['added_p99_ns']) if case != 'idle' else 'baseline'} | "
            f"{mainloop['cases'][case]['description']} |"
        )
    lines.append("")
    summary = mainloop["summary"]
    for style in ("frame", "spin"):
        t, m = summary.get(f"{style}/thread", {}), summary.get(f"{style}/manual", {})
        if t.get("p50_ns") and m.get("p50_ns"):
            lines.append(f"- {style}: thread dispatch median RTT ÷ manual dispatch median RTT: "
                         f"{t['p50_ns'] / m['p50_ns']:.1f}×; p99: {t['p99_ns'] / m['p99_ns']:.1f}×")
    lines.append("")
    return lines


def render_markdown(results: Dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# ipcfast benchmark ({results['profile']} run, {results['config']['rounds']} round(s))",
        "",
        f"Machine: {m.get('cpu_model', '?')}, {m.get('nproc')} CPUs, Linux {m.get('kernel')}, "
        f"Python {m.get('python')}, started {m.get('date_utc')} UTC"
        + (f", commit {m['git_commit']}" if "git_commit" in m else "")
        + (f"; load average {m['loadavg_start']} at the start, {m['loadavg_end']} at the end"
           if "loadavg_start" in m else ""),
        "",
        "Latency columns: round-trip time ÷ the floor's in the same round (median over rounds; "
        "lower is better). Concurrency columns: requests/s ÷ the floor's (higher is better). "
        "The floor row gives its absolute figures.",
        "",
    ]
    load = results.get("other_load") or {}
    if load.get("max_other_cpus") is not None:
        lines[4:4] = [
            f"Other work on the machine while measuring (CPUs busy outside this run): median "
            f"{load['median_other_cpus']:.2f}, max {load['max_other_cpus']:.2f}; hypervisor steal max "
            f"{load['max_steal_cpus']:.2f}.",
            "",
        ]
    size_names = ["16 B", "1 KiB", "64 KiB", "1 MiB"]
    for mode, summary in results["summary"].items():
        ks = sorted({int(k) for impl in summary.values() for k in impl.get("rate", {})})
        title = "pinned (server and clients on one CPU)" if mode == "pinned" else "unpinned"
        for metric in ("p50", "p99"):
            lines.append(f"## {title}: {'median' if metric == 'p50' else 'p99'} RTT")
            lines.append("")
            header = ["impl"] + size_names
            if metric == "p50":
                header += ["1 MiB MiB/s"] + [f"{k} client{'s' if k > 1 else ''}" for k in ks]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            for impl, s in summary.items():
                row = [impl]
                for size in SIZES:
                    e = s["latency"].get(str(size), {})
                    if impl == "floor":
                        row.append(_fmt_ns(e.get(f"{metric}_ns")))
                    else:
                        row.append(_fmt_ratio(e.get(f"ratio_{metric}")))
                if metric == "p50":
                    tp = s.get("throughput_1MiB_MiBps")
                    row.append("-" if tp is None else f"{tp:.0f}")
                    for k in ks:
                        e = s["rate"].get(str(k), {})
                        row.append(_fmt_rps(e.get("rps")) if impl == "floor" else _fmt_ratio(e.get("ratio")))
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
        lines.append(f"## {title}: absolute figures")
        lines.append("")
        header = ["impl"] + [f"{n} p50 / p99" for n in size_names] + [f"req/s ×{k}" for k in ks]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for impl, s in summary.items():
            row = [impl]
            for size in SIZES:
                e = s["latency"].get(str(size), {})
                row.append(f"{_fmt_ns(e.get('p50_ns'))} / {_fmt_ns(e.get('p99_ns'))}")
            for k in ks:
                row.append(_fmt_rps(s["rate"].get(str(k), {}).get("rps")))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines.extend(_render_mainloop(results.get("mainloop")))
    lines.append("## Targets")
    lines.append("")
    lines.append("| target | mode | measured | goal | met |")
    lines.append("|---|---|---|---|---|")
    for t in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        if t.get("unit") == "ns":
            value, limit = _fmt_ns(t["value"]), _fmt_ns(t["limit"])
        else:
            value, limit = _fmt_ratio(t["value"]), f"{t['limit']:g}"
        lines.append(f"| {t['target']} | {t['mode']} | {value} | {t['op']} {limit} | {met} |")
    lines.append("")
    skipped = {k: v["skipped"] for k, v in results["implementations"].items() if "skipped" in v}
    if skipped or results["notes"]:
        lines.append("## Notes")
        lines.append("")
        for note in results["notes"]:
            lines.append(f"- {note}")
        lines.append("")
    return "\n".join(lines)


def plot(results: Dict[str, Any], path: str) -> Optional[str]:
    """latency_vs_size.png; returns a note if it could not be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'ipcfast[bench]')"
    modes = list(results["summary"])
    if not modes:
        return "no plot: no latency-versus-size figures in this run"
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for impl, s in results["summary"][mode].items():
            xs = [size for size in SIZES if str(size) in s["latency"]]
            if not xs:
                continue
            p50 = [s["latency"][str(x)]["p50_ns"] / 1000 for x in xs]
            p99 = [s["latency"][str(x)]["p99_ns"] / 1000 for x in xs]
            (line,) = ax.plot(xs, p50, marker="o", label=f"{impl} (median)")
            ax.plot(xs, p99, linestyle=":", color=line.get_color(), alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(SIZES)
        ax.set_xticklabels(["16 B", "1 KiB", "64 KiB", "1 MiB"])
        ax.set_xlabel("request = response size")
        ax.set_ylabel("round-trip time (µs); dotted: p99")
        ax.set_title(f"{mode}" + (" (one CPU)" if mode == "pinned" else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"ipcfast round-trip latency: {m.get('cpu_model', '?')}, {m.get('nproc')} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---- child side (server and client processes) -----------------------------------


def _pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _echo(request: bytes) -> bytes:
    return request


def _serve(impl: str, addr: str) -> None:
    if impl in ("native", "pure"):
        import ipcfast

        server = ipcfast.Server(addr, _echo, backend=impl, max_clients=64)
        server.start()
        print(f"READY {server.address}", flush=True)
        sys.stdin.read()
        server.stop()
        return
    if impl == "mp.connection":
        from multiprocessing.connection import Listener

        listener = Listener(addr, family="AF_UNIX")

        def echo_loop(conn: Any) -> None:
            try:
                while True:
                    conn.send_bytes(conn.recv_bytes())
            except (EOFError, OSError):
                pass

        def accept_loop() -> None:
            while True:
                conn = listener.accept()
                threading.Thread(target=echo_loop, args=(conn,), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
    elif impl == "pyzmq":
        import zmq

        ctx = zmq.Context()
        rep = ctx.socket(zmq.REP)
        rep.bind("ipc://" + addr)

        def rep_loop() -> None:
            while True:
                rep.send(rep.recv(copy=False), copy=False)

        threading.Thread(target=rep_loop, daemon=True).start()
    else:
        raise SystemExit(f"unknown implementation {impl!r}")
    print(f"READY {addr}", flush=True)
    sys.stdin.read()
    os._exit(0)


def _connect(impl: str, addr: str) -> Tuple[Callable[[bytes], bytes], Callable[[], None]]:
    """A round-trip function and a close function for one client."""
    if impl in ("native", "pure"):
        import ipcfast

        client = ipcfast.Client(addr, backend=impl, connect_timeout=30)
        return client.request, client.close
    if impl == "mp.connection":
        from multiprocessing.connection import Client as MPClient

        conn = MPClient(addr, family="AF_UNIX")
        send, recv = conn.send_bytes, conn.recv_bytes

        def mp_roundtrip(data: bytes) -> bytes:
            send(data)
            return recv()

        return mp_roundtrip, conn.close
    if impl == "pyzmq":
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.REQ)
        sock.connect("ipc://" + addr)
        zsend, zrecv = sock.send, sock.recv

        def zmq_roundtrip(data: bytes) -> bytes:
            zsend(data)
            reply: bytes = zrecv()
            return reply

        def zmq_close() -> None:
            sock.close(linger=0)
            ctx.term()

        return zmq_roundtrip, zmq_close
    raise SystemExit(f"unknown implementation {impl!r}")


def _payload(size: int) -> bytes:
    """size bytes of a-z, the same pattern the C programs send."""
    return (b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]


def _check(response: bytes, size: int) -> None:
    if len(response) != size:
        raise SystemExit(f"bad echo: {len(response)} bytes for {size}")


def _latency(impl: str, addr: str, sizes: List[int], iters: List[int], warmups: List[int]) -> None:
    roundtrip, close = _connect(impl, addr)
    perf = time.perf_counter_ns
    for size, n, w in zip(sizes, iters, warmups):
        payload = _payload(size)
        for _ in range(w):
            _check(roundtrip(payload), size)
        ns = [0] * n
        response = b""
        for i in range(n):
            t0 = perf()
            response = roundtrip(payload)
            ns[i] = perf() - t0
        _check(response, size)
        print(json.dumps({"size": size, "ns": ns}), flush=True)
    close()


def _rate(impl: str, addr: str, size: int, warmup: int) -> None:
    roundtrip, close = _connect(impl, addr)
    payload = _payload(size)
    for _ in range(warmup):
        _check(roundtrip(payload), size)
    print("READY", flush=True)
    mono = time.monotonic_ns
    for line in sys.stdin:
        start, end = (int(x) for x in line.split())
        delay = (start - mono()) / 1e9
        if delay > 0:
            time.sleep(delay)
        count = 0
        while True:
            roundtrip(payload)
            count += 1
            now = mono()
            if now >= end:
                break
        print(json.dumps({"count": count, "elapsed_ns": now - start}), flush=True)
    close()


def _busy_until(deadline: float) -> int:
    """Python work that holds the GIL until ``deadline`` (perf_counter)."""
    perf = time.perf_counter
    x = 0
    while perf() < deadline:
        x += 1
    return x


def _loop_serve(addr: str, dispatch: str, style: str) -> None:
    """A native echo server whose main thread runs a main loop of ``style``:

    idle   the main thread waits for stdin to close (the baseline);
    frame  1 kHz frames: MAINLOOP_BUSY_S of busy Python, then the rest of the
           frame waiting: manual dispatch waits on server.fileno() with
           selectors and calls server.dispatch(0) when it is ready and once at
           the frame's end; thread dispatch sleeps (the GIL is free meanwhile);
    spin   a tight Python loop (MAINLOOP_SPIN_WORK iterations of work per
           turn) that calls server.dispatch(0) every turn with manual dispatch.

    Stops when stdin closes (watched by a thread that waits in read() without
    the GIL), then prints the loop's counters as JSON.
    """
    import selectors

    import ipcfast

    server = ipcfast.Server(addr, _echo, dispatch=dispatch)
    server.start()
    done = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {server.address}", flush=True)
    manual = dispatch == "manual"
    perf = time.perf_counter
    turns = handled = late_frames = 0
    started = perf()
    try:
        if style == "idle":
            done.wait()
        elif style == "frame":
            selector: Optional[selectors.BaseSelector] = None
            if manual:
                selector = selectors.DefaultSelector()
                selector.register(server.fileno(), selectors.EVENT_READ)
            frame_start = perf()
            while not done.is_set():
                frame_end = frame_start + MAINLOOP_FRAME_S
                _busy_until(frame_start + MAINLOOP_BUSY_S)
                if selector is not None:
                    while True:
                        remaining = frame_end - perf()
                        if remaining <= 0:
                            break
                        if selector.select(remaining):
                            handled += server.dispatch(0)
                    handled += server.dispatch(0)
                else:
                    remaining = frame_end - perf()
                    if remaining > 0:
                        time.sleep(remaining)
                turns += 1
                now = perf()
                if now - frame_end > MAINLOOP_FRAME_S:
                    late_frames += 1
                    frame_start = now  # fell behind by a whole frame: do not try to catch up
                else:
                    frame_start = frame_end
        elif style == "spin":
            work = range(MAINLOOP_SPIN_WORK)
            if manual:
                dispatch_now = server.dispatch
                while not done.is_set():
                    for _ in work:
                        pass
                    handled += dispatch_now(0)
                    turns += 1
            else:
                while not done.is_set():
                    for _ in work:
                        pass
                    turns += 1
        else:
            raise SystemExit(f"unknown main-loop style {style!r}")
    finally:
        server.stop()
    elapsed = perf() - started
    print(json.dumps({"turns": turns, "handled": handled, "late_frames": late_frames, "seconds": elapsed}),
          flush=True)


def _paced(addr: str, count: int, deadline_s: float) -> None:
    """A client that sends ``count`` 16-byte requests with a random pause
    (uniform in MAINLOOP_GAP_S) before each, so requests land anywhere in the
    server's frames; prints the round-trip times (ns) as JSON. Stops early,
    with the samples it has, after ``deadline_s`` seconds."""
    import random

    import ipcfast

    rng = random.Random(7)
    client = ipcfast.Client(addr, connect_timeout=30)
    payload = _payload(MAINLOOP_SIZE)
    perf = time.perf_counter_ns
    sleep = time.sleep
    low, high = MAINLOOP_GAP_S
    for _ in range(MAINLOOP_WARMUP):
        sleep(rng.uniform(low, high))
        _check(client.request(payload), MAINLOOP_SIZE)
    ns: List[int] = []
    end = time.monotonic() + deadline_s
    for _ in range(count):
        sleep(rng.uniform(low, high))
        t0 = perf()
        response = client.request(payload)
        ns.append(perf() - t0)
        _check(response, MAINLOOP_SIZE)
        if time.monotonic() > end:
            break
    client.close()
    print(json.dumps({"ns": ns, "truncated": len(ns) < count}), flush=True)


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def child_main(argv: List[str]) -> None:
    """``python -m ipcfast._bench child IMPL MODE ADDR ...``: same modes as the C programs."""
    p = argparse.ArgumentParser(prog="ipcfast._bench child")
    p.add_argument("impl")
    p.add_argument("mode", choices=["serve", "lat", "rate", "loopserve", "paced"])
    p.add_argument("addr")
    p.add_argument("--cpu", type=int)
    p.add_argument("--sizes", type=_ints)
    p.add_argument("--iters", type=_ints)
    p.add_argument("--warmup", type=_ints)
    p.add_argument("--size", type=int, default=RATE_SIZE)
    p.add_argument("--dispatch", choices=["thread", "manual"], default="thread")
    p.add_argument("--style", choices=["idle", "frame", "spin"], default="idle")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--deadline", type=float, default=60.0)
    a = p.parse_args(argv)
    _pin(a.cpu)
    if a.mode == "serve":
        _serve(a.impl, a.addr)
    elif a.mode == "loopserve":
        _loop_serve(a.addr, a.dispatch, a.style)
    elif a.mode == "paced":
        _paced(a.addr, a.count, a.deadline)
    elif a.mode == "lat":
        _latency(a.impl, a.addr, a.sizes, a.iters, a.warmup)
    else:
        _rate(a.impl, a.addr, a.size, (a.warmup or [RATE_WARMUP])[0])


# ---- command line -----------------------------------------------------------------


def _default_out(source_root: Optional[str]) -> str:
    if source_root:
        return os.path.join(source_root, "bench", "results")
    return os.path.abspath("ipcfast-bench-results")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ipcfast bench",
        description="Measure ipcfast against a C floor, the C core alone, multiprocessing.connection "
        "and pyzmq: interleaved rounds, unpinned and pinned to one CPU.",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--quick", dest="profile", action="store_const", const="quick",
                      help="one round, fewer samples, both modes, every figure: under a minute")
    kind.add_argument("--smoke", dest="profile", action="store_const", const="smoke",
                      help="a few seconds: unpinned only, 1 and 4 clients (the test suite's run)")
    p.set_defaults(profile="full")
    p.add_argument("--out", help="output directory (default: bench/results in the source tree)")
    p.add_argument("--source", help="the source tree with csrc/ and bench/*.c (default: found from here)")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--impl", type=lambda s: s.split(","), help=f"comma-separated subset of: {','.join(IMPL_KEYS)}")
    p.add_argument("--modes", type=lambda s: s.split(","), help="comma-separated subset of: unpinned,pinned")
    p.add_argument("--cpu", type=int, default=0, help="the CPU for pinned mode (default 0)")
    p.add_argument("--no-plot", action="store_true", help="do not draw latency_vs_size.png")
    loop = p.add_mutually_exclusive_group()
    loop.add_argument("--no-mainloop", action="store_true",
                      help="skip the main-loop cases (a request while the server's main thread runs Python)")
    loop.add_argument("--mainloop-only", action="store_true",
                      help="run only the main-loop cases (thread vs manual dispatch, busy main thread)")
    a = p.parse_args(argv)
    for impl in a.impl or []:
        if impl not in IMPL_KEYS:
            p.error(f"unknown implementation {impl!r}: choose from {', '.join(IMPL_KEYS)}")
    for mode in a.modes or []:
        if mode not in ("unpinned", "pinned"):
            p.error(f"unknown mode {mode!r}: choose from unpinned, pinned")
    return a


def _to_json(results: Dict[str, Any]) -> str:
    """Indented JSON, but every list of plain numbers on one line (the raw samples)."""
    text = json.dumps(results, indent=1, ensure_ascii=False)
    return re.sub(r"\[[-0-9.eE+,\snul]*\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text) + "\n"


def main(argv: Optional[List[str]] = None, source_root: Optional[str] = None) -> int:
    args = parse_args(argv)
    if args.source is None and source_root is not None:
        args.source = source_root
    harness = Harness(args)
    out = os.path.abspath(args.out or _default_out(harness.source_root))
    os.makedirs(out, exist_ok=True)
    try:
        results = harness.run()
    finally:
        harness.cleanup()
    for mode_summary in results["summary"].values():
        mode_summary.pop("_raw_rounds", None)
    text = render_markdown(results)
    if not args.no_plot:
        note = plot(results, os.path.join(out, "latency_vs_size.png"))
        if note:
            results["notes"].append(note)
            _log(f"note: {note}")
            text += f"\n- {note}\n"
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write(_to_json(results))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text)
    _log(f"wrote {out}/results.json, results.md" + ("" if args.no_plot else ", latency_vs_size.png")
         + f" in {results['elapsed_seconds']} s")
    failed = [
        f"{mode}/{impl}"
        for mode, summary in results["summary"].items()
        for impl, s in summary.items()
        if s.get("failed_rounds")
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
