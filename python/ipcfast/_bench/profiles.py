"""What a run measures, as data: sizes, run profiles, placements, main-loop
cases and the speed targets the run is checked against.

Nothing here runs anything; harness.py reads these tables, stats.py checks
the targets and report.py prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

KIB = 1024
MIB = 1024 * 1024

SIZES: List[int] = [16, KIB, 64 * KIB, MIB]
SIZE_NAMES: Dict[int, str] = {16: "16 B", KIB: "1 KiB", 64 * KIB: "64 KiB", MIB: "1 MiB"}

RATE_SIZE = 16  # request size in the concurrency test
RATE_WARMUP = 50  # untimed requests per client before the timed window
RATE_LEAD_NS = 50_000_000  # time from "go" to the start of the timed window
C_FLAGS = ["-O3", "-DNDEBUG", "-pthread"]  # CMake's Release flags, as the extension is built


@dataclass(frozen=True)
class Profile:
    """Settings of one kind of run. iters / warmup are per size, in SIZES order."""

    rounds: int
    modes: Tuple[str, ...]
    iters: Tuple[int, ...]
    warmup: Tuple[int, ...]
    concurrency: Tuple[int, ...]
    rate_seconds: float
    mainloop_rounds: int
    mainloop_requests: int
    mainloop: bool = True
    rate_modes: Tuple[str, ...] = ("pinned", "split", "unpinned")  # placements where req/s is measured


PROFILES: Dict[str, Profile] = {
    "full": Profile(
        rounds=5,
        modes=("pinned", "split"),
        iters=(3000, 3000, 1500, 250),
        warmup=(1000, 300, 150, 25),
        concurrency=(1, 4, 16),
        rate_seconds=1.0,
        mainloop_rounds=3,
        mainloop_requests=2000,
    ),
    # Under a minute on two CPUs: one round, few samples, every figure but
    # the main-loop cases (run them with --mainloop-only --quick).
    "quick": Profile(
        rounds=1,
        modes=("pinned", "split"),
        iters=(300, 300, 150, 20),
        warmup=(100, 30, 15, 3),
        concurrency=(1, 4, 16),
        rate_seconds=0.15,
        mainloop_rounds=1,
        mainloop_requests=600,
        mainloop=False,
        rate_modes=("split",),  # starting 16 clients per peer twice would take most of the minute
    ),
    "smoke": Profile(
        rounds=1,
        modes=("unpinned",),
        iters=(100, 100, 50, 8),
        warmup=(20, 20, 10, 2),
        concurrency=(1, 4),
        rate_seconds=0.1,
        mainloop_rounds=1,
        mainloop_requests=40,
    ),
}


@dataclass(frozen=True)
class Placement:
    """Where a pair's processes may run.

    ``server`` / ``client`` are CPU indexes relative to the run's --cpu
    (0 = that CPU, 1 = the next allowed one); None = wherever the scheduler
    likes. ``rate_clients_elsewhere``: the concurrency clients may use every
    allowed CPU but the server's (the realistic multi-core case)."""

    name: str
    title: str
    server: Optional[int]
    client: Optional[int]
    rate_clients_elsewhere: bool = False


PLACEMENTS: Dict[str, Placement] = {
    "pinned": Placement("pinned", "pinned (server and clients on one CPU)", 0, 0),
    "split": Placement(
        "split",
        "split (server on one CPU, clients on another)",
        1,
        0,
        rate_clients_elsewhere=True,
    ),
    "unpinned": Placement("unpinned", "unpinned", None, None),
}
MODE_NAMES = list(PLACEMENTS)

#: Main-loop cases: (key, dispatch, loop style). "idle" is the baseline: a
#: thread-dispatch server whose main thread only waits. The others keep the
#: server's main thread busy running Python (see child.py).
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
MAINLOOP_FRAME_S = 0.001  # a 1 kHz main loop
MAINLOOP_BUSY_S = 0.0005  # busy Python work per frame
MAINLOOP_SPIN_WORK = 100  # Python loop iterations per spin iteration (a few µs)
MAINLOOP_GAP_S = (0.0002, 0.0013)  # client pause between requests: uniform, not in step with frames
MAINLOOP_WARMUP = 50
MAINLOOP_SIZE = 16

#: The Python peers ipcfast must beat (issue 14, SPEC §9): what users would
#: pick instead. The "best-peer" targets compare with the fastest of them.
PYTHON_PEERS: Tuple[str, ...] = ("socket", "mp.connection", "pyzmq", "iceoryx2", "grpc")
#: Issue 15 compares against every Python peer, iceoryx2 busy-polling included
#: (Target.other "best-peer-all").
ALL_PYTHON_PEERS: Tuple[str, ...] = PYTHON_PEERS + ("iceoryx2-poll",)


@dataclass(frozen=True)
class Target:
    """One speed goal: ``impl``'s figure ÷ ``other``'s in the same round.

    ``other`` is an implementation key, or "best-peer" (the fastest of
    PYTHON_PEERS in that round: least latency, most requests/s), or
    "best-peer-all" (the same over ALL_PYTHON_PEERS), or "self@K"
    (the same implementation's rate with K clients). ``metric`` is "latency"
    (median round trip, ``key`` = size) or "rate" (requests/s, ``key`` =
    clients)."""

    text: str
    mode: str
    impl: str
    other: str
    metric: str
    key: int
    op: str
    limit: float
    issue: int = 14
    #: The fewest CPUs a machine needs for this goal to apply (the figure is
    #: still reported on a smaller one, with no verdict).
    min_cpus: int = 0


def _targets() -> List[Target]:
    out: List[Target] = []
    for size in (16, KIB):
        name = SIZE_NAMES[size]
        out.append(Target(f"native RTT / floor RTT at {name}", "pinned", "native", "floor", "latency", size, "<=", 1.2))
        out.append(
            Target(f"native RTT / socket RTT at {name}", "pinned", "native", "socket", "latency", size, "<=", 0.85)
        )
    for size in SIZES:
        out.append(
            Target(
                f"native RTT / fastest Python peer's RTT at {SIZE_NAMES[size]}",
                "split",
                "native",
                "best-peer",
                "latency",
                size,
                "<=",
                0.9,
            )
        )
    # the iceoryx2 peer copies in and out of its own loans; ipcfast's
    # counterpart is its zero-copy calls (the bytes row above stays)
    out.append(
        Target(
            "native-zc (zero-copy calls) RTT / fastest Python peer's RTT at 1 MiB",
            "split",
            "native-zc",
            "best-peer",
            "latency",
            MIB,
            "<=",
            0.9,
        )
    )
    for mode in ("pinned", "split"):
        out.append(Target("native RTT / socket RTT at 1 MiB", mode, "native", "socket", "latency", MIB, "<=", 0.9))
    out.append(
        Target(
            "native req/s / best Python peer's req/s, 4 clients", "split", "native", "best-peer", "rate", 4, ">=", 1.3
        )
    )
    out.append(
        Target("native req/s with 16 clients / with 4 clients", "split", "native", "self@4", "rate", 16, ">=", 1.0)
    )
    out.append(
        Target(
            "native req/s / pyzmq req/s, 16 clients (16-core machine)",
            "split",
            "native",
            "pyzmq",
            "rate",
            16,
            ">=",
            1.0,
            min_cpus=16,
        )
    )
    return out + _shm_targets()


def _shm_targets() -> List[Target]:
    """Issue 15: the default settings (the shared-memory data path where it
    is negotiated) against the floor and every Python peer; the socket path
    (shm=False) must not regress."""
    return [
        Target("native RTT / floor RTT at 16 B", "split", "native", "floor", "latency", 16, "<=", 0.15, 15),
        Target(
            "native RTT / fastest Python peer's RTT (iceoryx2 busy-poll included) at 16 B",
            "split",
            "native",
            "best-peer-all",
            "latency",
            16,
            "<=",
            0.2,
            15,
        ),
        Target("native RTT / floor RTT at 16 B", "pinned", "native", "floor", "latency", 16, "<=", 0.8, 15),
        Target(
            "native RTT / floor RTT at 1 MiB (bytes API)", "split", "native", "floor", "latency", MIB, "<=", 1.1, 15
        ),
        Target(
            "native-zc RTT / floor RTT at 1 MiB (zero-copy API)",
            "split",
            "native-zc",
            "floor",
            "latency",
            MIB,
            "<=",
            0.5,
            15,
        ),
        Target(
            "native-socket (shm=False) RTT / floor RTT at 16 B",
            "pinned",
            "native-socket",
            "floor",
            "latency",
            16,
            "<=",
            1.2,
            15,
        ),
    ]


TARGETS: List[Target] = _targets()

#: Main-loop goals (issue 7): added median latency of manual dispatch, in ns.
MAINLOOP_TARGETS: List[Tuple[str, str, float]] = [
    ("frame/manual", "1 kHz frame loop", 50_000.0),
    ("spin/manual", "spinning main thread", 50_000.0),
]


def ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def csv(values: Sequence[object]) -> str:
    return ",".join(str(v) for v in values)
