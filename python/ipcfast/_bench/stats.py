"""Typed results and the arithmetic on them: per-round figures, summaries,
ratios paired round by round, and the target checks. No processes here, so
everything can be tested with made-up rounds."""

from __future__ import annotations

import math
import statistics
from typing import Dict, List, Optional, Sequence, Tuple, TypedDict

from .profiles import ALL_PYTHON_PEERS, MAINLOOP_TARGETS, MIB, PYTHON_PEERS, SIZES, TARGETS, Target


class Load(TypedDict):
    seconds: float
    other_cpus: float
    steal_cpus: float


class RateClient(TypedDict):
    count: int
    elapsed_ns: int


class CpuUse(TypedDict):
    """CPU time (user + system, every thread) used during one timed window."""

    server_ns: Optional[int]
    clients_ns: Optional[int]
    requests: int


class RateRound(TypedDict):
    clients: List[RateClient]
    rps: float
    cpu: CpuUse


class RoundResult(TypedDict):
    """One implementation, one placement, one round."""

    round: int
    latency: Dict[str, List[int]]  # size -> every round trip (ns)
    rate: Dict[str, RateRound]  # clients -> figures
    error: Optional[str]
    loadavg_before: Optional[str]
    other_load: Optional[Load]
    seconds: float


Raw = Dict[str, List[RoundResult]]  # impl -> rounds


class LatencySummary(TypedDict):
    p50_ns: Optional[float]
    p99_ns: float
    mean_ns: float
    min_ns: float
    samples: int
    round_p50_ns: List[Optional[float]]
    ratio_p50: Optional[float]  # ÷ floor, paired by round
    ratio_p99: Optional[float]
    ratio_native_p50: Optional[float]  # ÷ ipcfast native, paired by round


class RateSummary(TypedDict):
    rps: Optional[float]
    round_rps: List[Optional[float]]
    ratio: Optional[float]
    ratio_native: Optional[float]
    cpu_server_ns: Optional[float]  # per request, median over rounds
    cpu_client_ns: Optional[float]


class ImplSummary(TypedDict):
    latency: Dict[str, LatencySummary]
    rate: Dict[str, RateSummary]
    throughput_1MiB_MiBps: Optional[float]
    round_throughput_1MiB_MiBps: List[float]
    failed_rounds: int


class TargetResult(TypedDict):
    target: str
    mode: str
    value: Optional[float]
    op: str
    limit: float
    met: Optional[bool]
    unit: str
    issue: int


class LoopSummary(TypedDict, total=False):
    p50_ns: Optional[float]
    p99_ns: float
    max_ns: float
    samples: int
    added_p50_ns: Optional[float]
    added_p99_ns: Optional[float]
    round_p50_ns: List[Optional[float]]
    round_p99_ns: List[Optional[float]]
    failed_rounds: int


class LoopRound(TypedDict):
    round: int
    ns: List[int]
    loop: Optional[Dict[str, float]]
    error: Optional[str]
    other_load: Optional[Load]
    seconds: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def median_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return float(statistics.median(present)) if present else None


def paired_ratio(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> Optional[float]:
    """Median over rounds of a[r] / b[r], using rounds where both exist."""
    return median_or_none([x / y for x, y in zip(a, b) if x is not None and y is not None and y > 0])


# ---- per-round figures -------------------------------------------------------------


def round_medians(rounds: List[RoundResult], size: int) -> List[Optional[float]]:
    out: List[Optional[float]] = []
    for res in rounds:
        samples = res["latency"].get(str(size))
        out.append(float(statistics.median(samples)) if samples else None)
    return out


def round_rps(rounds: List[RoundResult], clients: int) -> List[Optional[float]]:
    return [res["rate"][str(clients)]["rps"] if str(clients) in res["rate"] else None for res in rounds]


def round_figures(rounds: List[RoundResult], metric: str, key: int) -> List[Optional[float]]:
    return round_medians(rounds, key) if metric == "latency" else round_rps(rounds, key)


def _cpu_per_request(rounds: List[RoundResult], clients: int, side: str) -> Optional[float]:
    """CPU ns per request of the server (``side`` "server") or of all clients together."""
    per_round: List[Optional[float]] = []
    for res in rounds:
        entry = res["rate"].get(str(clients))
        if entry is None or entry["cpu"]["requests"] <= 0:
            continue
        cpu = entry["cpu"]
        used = cpu["server_ns"] if side == "server" else cpu["clients_ns"]
        per_round.append(None if used is None else used / cpu["requests"])
    return median_or_none(per_round)


# ---- summaries -------------------------------------------------------------------


def _pooled(rounds: List[RoundResult], size: int) -> List[int]:
    return sorted(x for res in rounds for x in res["latency"].get(str(size), []))


def _latency_summary(rounds: List[RoundResult], raw: Raw, size: int) -> Optional[LatencySummary]:
    medians = round_medians(rounds, size)
    pooled = _pooled(rounds, size)
    if not pooled:
        return None
    floor = raw.get("floor", [])
    floor_pooled = _pooled(floor, size)
    p99 = percentile(pooled, 99)
    return LatencySummary(
        p50_ns=median_or_none(medians),
        p99_ns=p99,
        mean_ns=float(statistics.fmean(pooled)),
        min_ns=float(pooled[0]),
        samples=len(pooled),
        round_p50_ns=medians,
        ratio_p50=paired_ratio(medians, round_medians(floor, size)) if floor else None,
        ratio_p99=p99 / percentile(floor_pooled, 99) if floor_pooled else None,
        ratio_native_p50=paired_ratio(medians, round_medians(raw["native"], size)) if "native" in raw else None,
    )


def _rate_summary(rounds: List[RoundResult], raw: Raw, clients: int) -> RateSummary:
    per_round = round_rps(rounds, clients)
    floor, native = raw.get("floor"), raw.get("native")
    return RateSummary(
        rps=median_or_none(per_round),
        round_rps=per_round,
        ratio=paired_ratio(per_round, round_rps(floor, clients)) if floor else None,
        ratio_native=paired_ratio(per_round, round_rps(native, clients)) if native else None,
        cpu_server_ns=_cpu_per_request(rounds, clients, "server"),
        cpu_client_ns=_cpu_per_request(rounds, clients, "clients"),
    )


def _throughput(rounds: List[RoundResult]) -> List[float]:
    """Payload MiB/s one way at 1 MiB: samples × 1 MiB / the sum of their round trips."""
    out = []
    for res in rounds:
        samples = res["latency"].get(str(MIB))
        if samples:
            out.append(len(samples) / (sum(samples) / 1e9))
    return out


def summarize(raw: Raw) -> Dict[str, ImplSummary]:
    """Per implementation of one placement: latency per size, rates, throughput."""
    summary: Dict[str, ImplSummary] = {}
    for impl, rounds in raw.items():
        latency = {str(s): e for s in SIZES if (e := _latency_summary(rounds, raw, s)) is not None}
        clients = sorted({int(k) for res in rounds for k in res["rate"]})
        throughput = _throughput(rounds)
        summary[impl] = ImplSummary(
            latency=latency,
            rate={str(k): _rate_summary(rounds, raw, k) for k in clients},
            throughput_1MiB_MiBps=median_or_none(throughput),
            round_throughput_1MiB_MiBps=throughput,
            failed_rounds=sum(1 for res in rounds if res["error"]),
        )
    return summary


def summarize_mainloop(raw: Dict[str, List[LoopRound]]) -> Dict[str, LoopSummary]:
    """Per case: median RTT (median over rounds), p99 (all samples), and the
    added latency: the case's p50 / p99 minus the idle baseline's in the same
    round, median over rounds."""

    def per_round(case: str, q: float) -> List[Optional[float]]:
        return [percentile(sorted(res["ns"]), q) if res["ns"] else None for res in raw.get(case, [])]

    def added(case: str, q: float) -> Optional[float]:
        if case == "idle":
            return 0.0
        return paired_difference(per_round(case, q), per_round("idle", q))

    out: Dict[str, LoopSummary] = {}
    for case, rounds in raw.items():
        failed = sum(1 for res in rounds if res["error"])
        pooled = sorted(x for res in rounds for x in res["ns"])
        if not pooled:
            out[case] = LoopSummary(samples=0, failed_rounds=failed)
            continue
        out[case] = LoopSummary(
            p50_ns=median_or_none(per_round(case, 50)),
            p99_ns=percentile(pooled, 99),
            max_ns=float(pooled[-1]),
            samples=len(pooled),
            added_p50_ns=added(case, 50),
            added_p99_ns=added(case, 99),
            round_p50_ns=per_round(case, 50),
            round_p99_ns=per_round(case, 99),
            failed_rounds=failed,
        )
    return out


def paired_difference(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> Optional[float]:
    return median_or_none([x - y for x, y in zip(a, b) if x is not None and y is not None])


# ---- targets -------------------------------------------------------------------------


def best_peer_rounds(raw: Raw, metric: str, key: int, peers: Tuple[str, ...] = PYTHON_PEERS) -> List[Optional[float]]:
    """Per round, the best figure among the Python peers measured: the least
    latency, or the most requests/s."""
    columns = [round_figures(raw[p], metric, key) for p in peers if p in raw]
    pick = min if metric == "latency" else max
    out: List[Optional[float]] = []
    for figures in zip(*columns):
        present = [f for f in figures if f is not None]
        out.append(pick(present) if present else None)
    return out


def target_value(target: Target, raw: Raw) -> Optional[float]:
    if target.impl not in raw:
        return None
    mine = round_figures(raw[target.impl], target.metric, target.key)
    if target.other == "best-peer":
        theirs = best_peer_rounds(raw, target.metric, target.key)
    elif target.other == "best-peer-all":
        theirs = best_peer_rounds(raw, target.metric, target.key, ALL_PYTHON_PEERS)
    elif target.other.startswith("self@"):
        theirs = round_figures(raw[target.impl], target.metric, int(target.other[5:]))
    elif target.other in raw:
        theirs = round_figures(raw[target.other], target.metric, target.key)
    else:
        return None
    return paired_ratio(mine, theirs)


def _verdict(value: Optional[float], op: str, limit: float) -> Optional[bool]:
    if value is None:
        return None
    return value <= limit if op == "<=" else value >= limit


def evaluate_targets(
    raw: Dict[str, Raw], mainloop: Optional[Dict[str, LoopSummary]], cpus: Optional[int] = None
) -> List[TargetResult]:
    """Every target of profiles.TARGETS and MAINLOOP_TARGETS, checked against
    this run on a machine with ``cpus`` CPUs (None: not known). A target meant
    for a bigger machine than this one gets its figure and no verdict."""
    out: List[TargetResult] = []
    for t in TARGETS:
        value = target_value(t, raw[t.mode]) if t.mode in raw else None
        applies = (cpus or 0) >= t.min_cpus
        out.append(
            TargetResult(
                target=t.text,
                mode=t.mode,
                value=value,
                op=t.op,
                limit=t.limit,
                met=_verdict(value, t.op, t.limit) if applies else None,
                unit="ratio",
                issue=t.issue,
            )
        )
    for case, what, limit in MAINLOOP_TARGETS:
        loop = (mainloop or {}).get(case)
        value = loop.get("added_p50_ns") if loop else None
        out.append(
            TargetResult(
                target=f"manual dispatch, {what}: added p50 latency",
                mode="unpinned",
                value=value,
                op="<=",
                limit=limit,
                met=_verdict(value, "<=", limit),
                unit="ns",
                issue=7,
            )
        )
    return out
