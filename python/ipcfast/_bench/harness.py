"""Running a benchmark: child processes, the C programs, interleaved rounds.

For each round, placement and implementation: a fresh server process, one
latency client (every size), then the concurrency clients (requests/s with
1, 4, 16 of them, and the CPU time each side used per request). Results are
the typed records of stats.py; nothing is hidden in them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .peers import PEERS, CPeer, IMPL_KEYS
from .profiles import (
    C_FLAGS,
    MAINLOOP_BUSY_S,
    MAINLOOP_CASES,
    MAINLOOP_DESCRIPTIONS,
    MAINLOOP_FRAME_S,
    MAINLOOP_GAP_S,
    MAINLOOP_SIZE,
    MAINLOOP_SPIN_WORK,
    PLACEMENTS,
    PROFILES,
    RATE_LEAD_NS,
    RATE_SIZE,
    RATE_WARMUP,
    SIZES,
    Placement,
    Profile,
    csv,
)
from .stats import CpuUse, Load, LoopRound, RateRound, Raw, RoundResult, median_or_none, summarize_mainloop


class BenchError(RuntimeError):
    """One measurement failed (the run goes on without it)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def process_cpu_ns(pid: int) -> Optional[int]:
    """CPU time (user + system, all threads) of another process, in ns.

    Linux's per-process CPU clock (what clock_getcpuclockid returns) has
    nanosecond resolution; /proc/PID/stat's clock ticks are the fallback."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)
    except (OSError, AttributeError, OverflowError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Child:
    """A child process with line-based stdout, read by a thread into a queue."""

    def __init__(self, cmd: List[str], env: Dict[str, str], what: str, cpus: Optional[Set[int]] = None) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        if cpus is not None:
            # Set from outside, right after exec, before the child starts threads.
            os.sched_setaffinity(self.proc.pid, cpus)
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

    def expect(self, prefix: str, timeout: float) -> None:
        line = self.readline(timeout)
        if not line.startswith(prefix):
            raise BenchError(f"{self.what}: unexpected line {line!r}")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def cpu_ns(self) -> Optional[int]:
        return process_cpu_ns(self.proc.pid)

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


def stop_server(server: Child, notes: List[str]) -> None:
    try:
        server.finish(20)
    except BenchError as exc:
        notes.append(f"{exc} (while stopping)")
        log(f"note: {exc} (while stopping)")
    server.kill()


# ---- the machine ------------------------------------------------------------------


def find_source_root(explicit: Optional[str] = None) -> Optional[str]:
    """The source tree holding csrc/ipc.h and bench/floor.c, or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        explicit,
        os.environ.get("IPCFAST_SOURCE_DIR"),
        os.path.dirname(os.path.dirname(os.path.dirname(here))),
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
            log(f"note: --source {explicit}: no csrc/ipc.h and bench/floor.c there")
    return None


def _run_quiet(cmd: List[str], timeout: float = 30) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def loadavg() -> Optional[str]:
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

    def read(self) -> Optional[Load]:
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        wall = end[0] - self.start[0]
        other = (end[1] - self.start[1]) - (end[3] - self.start[3])
        return Load(
            seconds=round(wall, 3),
            other_cpus=round(max(other, 0.0) / wall, 3),
            steal_cpus=round((end[2] - self.start[2]) / wall, 3),
        )


def _cpu_facts(info: Dict[str, Any]) -> None:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        info["cpu_model"] = platform.processor() or "unknown"
        return
    models = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    info["cpu_model"] = models[0] if models else platform.processor() or "unknown"
    info["hypervisor"] = " hypervisor" in text


def _versions(info: Dict[str, Any]) -> None:
    for module in ("ipcfast", "cffi", "zmq", "iceoryx2", "grpc", "matplotlib"):
        try:
            from importlib.metadata import version

            dist = {"zmq": "pyzmq", "grpc": "grpcio"}.get(module, module)
            info[f"{module}_version"] = version(dist)
        except Exception:
            pass
    try:
        import ipcfast

        info["native_extension_error"] = ipcfast.native_import_error()
    except Exception:  # pragma: no cover - reported, not fatal
        pass


def machine_info(source_root: Optional[str], cc: Optional[str]) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "date_utc": utc_now(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    _cpu_facts(info)
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
    _versions(info)
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


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# ---- placements -------------------------------------------------------------------


@dataclass(frozen=True)
class Cpus:
    """The CPUs of one placement: server, latency client, concurrency clients (None: anywhere)."""

    server: Optional[int]
    client: Optional[int]
    rate_clients: Optional[Set[int]]

    def describe(self) -> Dict[str, Any]:
        rate = sorted(self.rate_clients) if self.rate_clients is not None else self.client
        return {"server": self.server, "client": self.client, "rate_clients": rate}


def resolve_placement(placement: Placement, first: int, allowed: Sequence[int]) -> Cpus:
    """CPU numbers for ``placement``, counting allowed CPUs from ``first``."""
    order = sorted(allowed)
    start = order.index(first)

    def cpu(relative: Optional[int]) -> Optional[int]:
        return None if relative is None else order[(start + relative) % len(order)]

    server, client = cpu(placement.server), cpu(placement.client)
    rate: Optional[Set[int]] = None if client is None else {client}
    if placement.rate_clients_elsewhere and server is not None:
        rate = set(order) - {server}
    return Cpus(server, client, rate)


# ---- the harness -------------------------------------------------------------------


@dataclass
class Options:
    profile: str = "full"
    rounds: Optional[int] = None
    modes: Optional[List[str]] = None
    impl: Optional[List[str]] = None
    cpu: int = 0
    source: Optional[str] = None
    no_mainloop: bool = False
    mainloop_only: bool = False


class Harness:
    def __init__(self, options: Options) -> None:
        self.options = options
        profile = PROFILES[options.profile]
        if options.rounds:
            profile = replace(profile, rounds=options.rounds)
        if options.modes:
            profile = replace(profile, modes=tuple(options.modes))
        if options.mainloop_only:
            profile = replace(profile, mainloop=True)
        self.profile: Profile = profile
        self.notes: List[str] = []
        self.skip_reason: Dict[str, str] = {}
        self.bin: Dict[str, str] = {}
        self.tmp = tempfile.mkdtemp(prefix="ipcfast-bench-")
        self.seq = 0
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.source_root = find_source_root(options.source)
        self.cc: Optional[str] = shutil.which(os.environ.get("CC", "cc"))
        self.selected: List[str] = [k for k in IMPL_KEYS if not options.impl or k in options.impl]
        self.placements: Dict[str, Cpus] = {}

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"note: {text}")

    def skip(self, impl: str, reason: str) -> None:
        self.skip_reason[impl] = reason
        self.note(f"{impl} skipped: {reason}")

    # -- setup --

    def build_c(self) -> None:
        wanted = [k for k in self.selected if PEERS[k].compiled]
        if wanted and self.source_root is None:
            reason = "the C sources (csrc/, bench/*.c) were not found: run from a source checkout or pass --source DIR"
        elif wanted and self.cc is None:
            reason = f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH"
        else:
            reason = ""
        for k in wanted:
            if reason:
                self.skip(k, reason)
            else:
                self._compile(k)

    def _compile(self, key: str) -> None:
        """Builds bench/KEY.c (c2c: with every csrc/*.c) with the C compiler.

        Not through CMakeLists.txt (whose bench_floor and bench_c2c targets
        are the same programs), on purpose: this code runs from an installed
        package, also on machines that have a C compiler but no CMake
        (bench/run_device.sh installs wheels on a machine without network),
        and `cc prog.c csrc/*.c` is the vendoring recipe the core promises
        to keep working. C_FLAGS are CMake's Release flags, so both builds
        optimise like the extension."""
        assert self.source_root is not None and self.cc is not None
        peer = PEERS[key]
        csrc = os.path.join(self.source_root, "csrc")
        sources = [os.path.join(self.source_root, "bench", f"{key}.c")]
        if isinstance(peer, CPeer) and peer.uses_core:
            sources += sorted(os.path.join(csrc, f) for f in os.listdir(csrc) if f.endswith(".c"))
        out = os.path.join(self.tmp, key)
        cmd = [self.cc, *C_FLAGS, "-I", csrc, "-o", out, *sources]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            self.skip(key, f"compiling failed: {' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
        else:
            self.bin[key] = out

    def probe_python(self) -> None:
        for key in self.selected:
            if PEERS[key].compiled:
                continue
            reason = PEERS[key].unavailable()
            if reason is None and key == "pure":
                reason = self._probe_pure()
            if reason is not None:
                self.skip(key, reason)

    def _probe_pure(self) -> Optional[str]:
        path = self.address("probe")
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
            return "backend='pure' did not answer a probe request within 60 s"
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            return f"ipcfast.Server(..., backend='pure') does not work yet ({last})"
        return None

    def _check_extension_age(self, measured: List[str]) -> None:
        """Warn when csrc/ changed after the native extension was built: then
        native runs an older C core than c2c (reinstall to rebuild it)."""
        if not ("native" in measured and "c2c" in measured and self.source_root):
            return
        try:
            import ipcfast

            package = os.path.dirname(os.path.abspath(ipcfast.__file__))
            built = max(
                os.path.getmtime(os.path.join(package, f)) for f in os.listdir(package) if f.endswith((".so", ".pyd"))
            )
            csrc = os.path.join(self.source_root, "csrc")
            newest = max(os.path.getmtime(os.path.join(csrc, f)) for f in os.listdir(csrc))
        except (OSError, ValueError):
            return
        if newest > built:
            self.note(
                "csrc/ is newer than the installed native extension: native runs the C core as it was when "
                "ipcfast was last built, c2c the current csrc/ (rebuild: pip install -e . --no-build-isolation)"
            )

    def resolve_modes(self) -> List[str]:
        modes = list(self.profile.modes)
        if not hasattr(os, "sched_setaffinity"):
            dropped = [m for m in modes if m != "unpinned"]
            if dropped:
                self.note(f"{', '.join(dropped)} skipped: os.sched_setaffinity is not available on this platform")
            return [m for m in modes if m == "unpinned"]
        allowed = sorted(os.sched_getaffinity(0))
        if self.options.cpu not in allowed:
            raise SystemExit(f"--cpu {self.options.cpu}: this process may not run on that CPU")
        if "split" in modes and len(allowed) < 2:
            modes.remove("split")
            self.note("split placement skipped: this process may run on one CPU only")
        for mode in modes:
            self.placements[mode] = resolve_placement(PLACEMENTS[mode], self.options.cpu, allowed)
        return modes

    # -- commands --

    def address(self, impl: str) -> str:
        self.seq += 1
        tag = impl.replace(".", "").replace("-", "")[:6]
        return os.path.join(self.tmp, f"{tag}{self.seq}.sock")

    def command(self, impl: str, mode: str, addr: str, extra: List[str], cpu: Optional[int]) -> List[str]:
        if impl in self.bin:
            cmd = [self.bin[impl], mode, addr]
        else:
            cmd = [sys.executable, "-m", "ipcfast._bench", "child", impl, mode, addr]
        cmd += extra
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        return cmd

    # -- measurements --

    def measure(self, impl: str, mode: str) -> Tuple[Dict[str, List[int]], Dict[str, RateRound]]:
        """One round of one implementation: latency per size, then requests/s."""
        cpus = self.placements.get(mode, Cpus(None, None, None))
        addr = self.address(impl)
        server = Child(self.command(impl, "serve", addr, [], cpus.server), self.env, f"{impl} server")
        rates: Dict[str, RateRound] = {}
        try:
            server.expect("READY", 60)
            latency = self._latency(impl, addr, cpus)
            if mode in self.profile.rate_modes:
                rates = self._rates(impl, addr, cpus, server)
        finally:
            stop_server(server, self.notes)
        return latency, rates

    def _latency(self, impl: str, addr: str, cpus: Cpus) -> Dict[str, List[int]]:
        p = self.profile
        args = ["--sizes", csv(SIZES), "--iters", csv(p.iters), "--warmup", csv(p.warmup)]
        client = Child(self.command(impl, "lat", addr, args, cpus.client), self.env, f"{impl} latency client")
        out: Dict[str, List[int]] = {}
        try:
            for _ in SIZES:
                record = json.loads(client.readline(300))
                samples = record["ns"]
                if not samples or min(samples) <= 0:
                    raise BenchError(f"{impl}: bad samples for size {record['size']}")
                out[str(record["size"])] = samples
            client.finish(30)
        finally:
            client.kill()
        return out

    def _rates(self, impl: str, addr: str, cpus: Cpus, server: Child) -> Dict[str, RateRound]:
        """Requests/s with K concurrent clients, for each K of the profile.

        The largest K of client processes is started once (connected and
        warmed up); for K clients, the first K of them run during the same
        window while the others stay connected and idle. The CPU time each
        side used in the window is read from outside, between windows.
        """
        ks = sorted(self.profile.concurrency)
        if not ks:
            return {}
        args = ["--size", str(RATE_SIZE), "--warmup", str(RATE_WARMUP)]
        one_cpu = cpus.client if cpus.rate_clients is not None and len(cpus.rate_clients) == 1 else None
        spread = cpus.rate_clients if one_cpu is None else None
        clients = [
            Child(self.command(impl, "rate", addr, args, one_cpu), self.env, f"{impl} rate client {i + 1}", spread)
            for i in range(ks[-1])
        ]
        out: Dict[str, RateRound] = {}
        try:
            for c in clients:
                c.expect("READY", 120)
            for k in ks:
                out[str(k)] = self._window(clients[:k], server)
            for c in clients:
                c.finish(30)
        finally:
            for c in clients:
                c.kill()
        return out

    def _window(self, active: List[Child], server: Child) -> RateRound:
        window = int(self.profile.rate_seconds * 1e9)
        server_before, clients_before = server.cpu_ns(), [c.cpu_ns() for c in active]
        start = time.monotonic_ns() + RATE_LEAD_NS
        for c in active:
            c.send(f"{start} {start + window}\n")
        per_client = [json.loads(c.readline(120 + self.profile.rate_seconds)) for c in active]
        server_after, clients_after = server.cpu_ns(), [c.cpu_ns() for c in active]
        rps = sum(r["count"] / (r["elapsed_ns"] / 1e9) for r in per_client if r["elapsed_ns"] > 0)
        cpu = CpuUse(
            server_ns=_difference(server_before, server_after),
            clients_ns=_sum_differences(clients_before, clients_after),
            requests=sum(r["count"] for r in per_client),
        )
        return RateRound(clients=per_client, rps=rps, cpu=cpu)

    def measure_round(self, impl: str, mode: str, r: int) -> RoundResult:
        t0 = time.monotonic()
        load, meter = loadavg(), LoadMeter()
        latency: Dict[str, List[int]] = {}
        rates: Dict[str, RateRound] = {}
        error: Optional[str] = None
        try:
            latency, rates = self.measure(impl, mode)
        except BenchError as exc:
            error = str(exc)
        except (ValueError, KeyError) as exc:
            error = f"bad output: {exc!r}"
        if error:
            self.note(f"round {r + 1} {mode} {impl}: {error}")
        seconds = round(time.monotonic() - t0, 3)
        log(
            f"round {r + 1}/{self.profile.rounds} {mode:8s} {impl:14s} {seconds:6.2f} s" + ("  FAILED" if error else "")
        )
        return RoundResult(
            round=r,
            latency=latency,
            rate=rates,
            error=error,
            loadavg_before=load,
            other_load=meter.read(),
            seconds=seconds,
        )

    # -- main-loop cases --

    def measure_mainloop(self, case: str, dispatch: str, style: str) -> Tuple[List[int], Dict[str, float]]:
        """One main-loop case: a loopserve server and a paced client."""
        count = self.profile.mainloop_requests
        addr = self.address("loop")
        server = Child(
            self.command("native", "loopserve", addr, ["--dispatch", dispatch, "--style", style], None),
            self.env,
            f"main-loop server ({case})",
        )
        try:
            server.expect("READY", 60)
            deadline = 30.0 + count * 0.005  # a generous cap: a starving server must not hang the run
            client = Child(
                self.command("native", "paced", addr, ["--count", str(count), "--deadline", str(deadline)], None),
                self.env,
                f"main-loop client ({case})",
            )
            try:
                record = json.loads(client.readline(deadline + 120))
                client.finish(30)
            finally:
                client.kill()
            samples: List[int] = record["ns"]
            if not samples or min(samples) <= 0:
                raise BenchError(f"main-loop client ({case}): bad samples")
            if record.get("truncated"):
                self.note(
                    f"main-loop {case}: the client stopped after {len(samples)} of {count} requests "
                    f"(time cap {deadline:.0f} s)"
                )
            server.close_stdin()
            loop: Dict[str, float] = json.loads(server.readline(30))
        finally:
            stop_server(server, self.notes)
        return samples, loop

    def mainloop_round(self, case: str, dispatch: str, style: str, r: int) -> LoopRound:
        t0, meter = time.monotonic(), LoadMeter()
        samples: List[int] = []
        loop: Optional[Dict[str, float]] = None
        error: Optional[str] = None
        try:
            samples, loop = self.measure_mainloop(case, dispatch, style)
        except (BenchError, ValueError, KeyError) as exc:
            error = str(exc)
            self.note(f"round {r + 1} main-loop {case}: {exc}")
        seconds = round(time.monotonic() - t0, 3)
        log(
            f"round {r + 1}/{self.profile.mainloop_rounds} main-loop {case:14s} {seconds:6.2f} s"
            + ("  FAILED" if error else "")
        )
        return LoopRound(round=r, ns=samples, loop=loop, error=error, other_load=meter.read(), seconds=seconds)

    def run_mainloop(self, measured: List[str]) -> Optional[Dict[str, Any]]:
        """Rounds of every main-loop case (interleaved); None if not run."""
        why_not = self._mainloop_skip(measured)
        if why_not:
            if why_not != "off":
                self.note(f"main-loop cases skipped: {why_not}")
            return None
        rounds = self.profile.mainloop_rounds
        raw: Dict[str, List[LoopRound]] = {case: [] for case, _, _ in MAINLOOP_CASES}
        for r in range(rounds):
            for case, dispatch, style in MAINLOOP_CASES:
                raw[case].append(self.mainloop_round(case, dispatch, style, r))
        return {
            "config": {
                "rounds": rounds,
                "requests": self.profile.mainloop_requests,
                "request_size": MAINLOOP_SIZE,
                "frame_ms": MAINLOOP_FRAME_S * 1e3,
                "busy_ms": MAINLOOP_BUSY_S * 1e3,
                "spin_work": MAINLOOP_SPIN_WORK,
                "client_gap_ms": [g * 1e3 for g in MAINLOOP_GAP_S],
                "switch_interval_ms": sys.getswitchinterval() * 1e3,
            },
            "cases": {
                case: {"dispatch": d, "style": st, "description": MAINLOOP_DESCRIPTIONS[case]}
                for case, d, st in MAINLOOP_CASES
            },
            "summary": summarize_mainloop(raw),
            "raw": raw,
        }

    def _mainloop_skip(self, measured: List[str]) -> str:
        if self.options.no_mainloop or not self.profile.mainloop:
            return "off"
        if "native" in self.skip_reason or "native" not in self.selected:
            return "they need the native backend"
        if sys.platform == "win32":
            return "selectors cannot wait on the Windows event handle"
        return ""

    # -- the run --

    def run(self) -> Tuple[Dict[str, Raw], Optional[Dict[str, Any]], List[str]]:
        """Every round; returns the raw rounds per placement, the main-loop
        results and the implementations measured."""
        if self.options.mainloop_only:
            self.selected = ["native"]
        self.build_c()
        self.probe_python()
        measured = [k for k in self.selected if k not in self.skip_reason]
        self._check_extension_age(measured)
        if "floor" not in measured and not self.options.mainloop_only:
            self.note("without the floor, no ratio to it can be computed")
        modes = [] if self.options.mainloop_only else self.resolve_modes()
        impls = [] if self.options.mainloop_only else measured
        raw: Dict[str, Raw] = {m: {k: [] for k in impls} for m in modes}
        for r in range(self.profile.rounds):
            for mode in modes:
                for impl in impls:
                    raw[mode][impl].append(self.measure_round(impl, mode, r))
        return raw, self.run_mainloop(measured), impls

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _difference(before: Optional[int], after: Optional[int]) -> Optional[int]:
    return None if before is None or after is None else after - before


def _sum_differences(before: List[Optional[int]], after: List[Optional[int]]) -> Optional[int]:
    parts = [_difference(b, a) for b, a in zip(before, after)]
    return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


def other_load_summary(raw: Dict[str, Raw]) -> Dict[str, Any]:
    loads = [res["other_load"] for m in raw.values() for rounds in m.values() for res in rounds if res["other_load"]]
    return {
        "what": "CPU time of other processes (and steal) per second, during each measurement",
        "median_other_cpus": median_or_none([x["other_cpus"] for x in loads]) if loads else None,
        "max_other_cpus": max((x["other_cpus"] for x in loads), default=None),
        "max_steal_cpus": max((x["steal_cpus"] for x in loads), default=None),
    }
