"""The report of a run: Markdown tables, the JSON file and the plot.

Everything here reads a finished Results record; no process is started, so
tests can render made-up results."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List, Optional, TypedDict

from .profiles import PLACEMENTS, SIZE_NAMES, SIZES
from .stats import ImplSummary, Raw, TargetResult


class Results(TypedDict):
    schema: int
    profile: str
    config: Dict[str, Any]
    machine: Dict[str, Any]
    placements: Dict[str, Any]
    implementations: Dict[str, Dict[str, Any]]
    source_root: Optional[str]
    notes: List[str]
    summary: Dict[str, Dict[str, ImplSummary]]
    targets: List[TargetResult]
    mainloop: Optional[Dict[str, Any]]
    raw: Dict[str, Raw]
    elapsed_seconds: float
    other_load: Dict[str, Any]


def fmt_ns(ns: Optional[float]) -> str:
    if ns is None:
        return "-"
    us = ns / 1000.0
    if abs(us) >= 1000:
        return f"{us / 1000:.2f} ms"
    if abs(us) >= 100:
        return f"{us:.0f} µs"
    return f"{us:.1f} µs"


def fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}×"


def fmt_rps(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x / 1000:.1f} k/s" if x >= 1000 else f"{x:.0f}/s"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _clients(summary: Dict[str, ImplSummary]) -> List[int]:
    return sorted({int(k) for s in summary.values() for k in s["rate"]})


def _client_names(ks: List[int]) -> List[str]:
    return [f"{k} client{'s' if k > 1 else ''}" for k in ks]


def _ratio_rows(summary: Dict[str, ImplSummary], metric: str, ks: List[int]) -> List[List[str]]:
    """Ratios to the floor; the floor's own row is absolute."""
    rows = []
    for impl, s in summary.items():
        row = [impl]
        for size in SIZES:
            e = s["latency"].get(str(size))
            if impl == "floor":
                row.append(fmt_ns(e["p50_ns"] if metric == "p50" else e["p99_ns"]) if e else "-")
            else:
                row.append(fmt_ratio((e["ratio_p50"] if metric == "p50" else e["ratio_p99"]) if e else None))
        if metric == "p50":
            tp = s["throughput_1MiB_MiBps"]
            row.append("-" if tp is None else f"{tp:.0f}")
            for k in ks:
                r = s["rate"].get(str(k))
                row.append((fmt_rps(r["rps"]) if impl == "floor" else fmt_ratio(r["ratio"])) if r else "-")
        rows.append(row)
    return rows


def _native_rows(summary: Dict[str, ImplSummary], ks: List[int]) -> List[List[str]]:
    rows = []
    for impl, s in summary.items():
        row = [impl] + [
            fmt_ratio(s["latency"][str(n)]["ratio_native_p50"]) if str(n) in s["latency"] else "-" for n in SIZES
        ]
        row += [fmt_ratio(s["rate"][str(k)]["ratio_native"]) if str(k) in s["rate"] else "-" for k in ks]
        rows.append(row)
    return rows


def _absolute_rows(summary: Dict[str, ImplSummary], ks: List[int]) -> List[List[str]]:
    rows = []
    for impl, s in summary.items():
        row = [impl]
        for size in SIZES:
            e = s["latency"].get(str(size))
            row.append(f"{fmt_ns(e['p50_ns'])} / {fmt_ns(e['p99_ns'])}" if e else "-")
        row += [fmt_rps(s["rate"][str(k)]["rps"]) if str(k) in s["rate"] else "-" for k in ks]
        rows.append(row)
    return rows


def _cpu_rows(summary: Dict[str, ImplSummary], ks: List[int]) -> List[List[str]]:
    rows = []
    for impl, s in summary.items():
        row = [impl]
        for k in ks:
            r = s["rate"].get(str(k))
            row.append(f"{fmt_ns(r['cpu_server_ns'])} / {fmt_ns(r['cpu_client_ns'])}" if r else "-")
        rows.append(row)
    return rows


def render_placement(mode: str, summary: Dict[str, ImplSummary], cpus: Optional[Dict[str, Any]]) -> List[str]:
    title = PLACEMENTS[mode].title if mode in PLACEMENTS else mode
    ks = _clients(summary)
    names = [SIZE_NAMES[s] for s in SIZES]
    where = (
        f" CPUs: server {cpus['server']}, latency client {cpus['client']}, concurrency clients {cpus['rate_clients']}."
        if cpus
        else ""
    )
    lines = [f"## {title}: median RTT", ""]
    if where:
        lines[1:1] = ["", where.strip()]
    lines += _table(["impl"] + names + ["1 MiB MiB/s"] + _client_names(ks), _ratio_rows(summary, "p50", ks))
    lines += [f"## {title}: p99 RTT", ""]
    lines += _table(["impl"] + names, _ratio_rows(summary, "p99", ks))
    lines += [f"## {title}: ratios to ipcfast native (median RTT ÷ native's; req/s ÷ native's)", ""]
    lines += _table(["impl"] + names + _client_names(ks), _native_rows(summary, ks))
    lines += [f"## {title}: absolute figures", ""]
    header = ["impl"] + [f"{n} p50 / p99" for n in names] + [f"req/s ×{k}" for k in ks]
    lines += _table(header, _absolute_rows(summary, ks))
    lines += [f"## {title}: CPU time per request, server / clients (16 B, during the req/s windows)", ""]
    lines += _table(["impl"] + _client_names(ks), _cpu_rows(summary, ks))
    return lines


def render_mainloop(mainloop: Optional[Dict[str, Any]]) -> List[str]:
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
    ]
    rows = []
    for case, s in mainloop["summary"].items():
        if not s.get("samples"):
            rows.append([case, "-", "-", "-", "-", "-", "failed"])
            continue
        base = case == "idle"
        rows.append(
            [
                case,
                fmt_ns(s["p50_ns"]),
                fmt_ns(s["p99_ns"]),
                fmt_ns(s["max_ns"]),
                "baseline" if base else fmt_ns(s["added_p50_ns"]),
                "baseline" if base else fmt_ns(s["added_p99_ns"]),
                mainloop["cases"][case]["description"],
            ]
        )
    lines += _table(["case", "median RTT", "p99 RTT", "max", "added p50", "added p99", "main loop"], rows)
    summary = mainloop["summary"]
    for style in ("frame", "spin"):
        t, m = summary.get(f"{style}/thread", {}), summary.get(f"{style}/manual", {})
        if t.get("p50_ns") and m.get("p50_ns"):
            lines.append(
                f"- {style}: thread dispatch median RTT ÷ manual dispatch median RTT: "
                f"{t['p50_ns'] / m['p50_ns']:.1f}×; p99: {t['p99_ns'] / m['p99_ns']:.1f}×"
            )
    return lines + [""]


def render_targets(targets: List[TargetResult]) -> List[str]:
    rows = []
    for t in targets:
        verdict = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        if t["unit"] == "ns":
            value, limit = fmt_ns(t["value"]), fmt_ns(t["limit"])
        else:
            value, limit = fmt_ratio(t["value"]), f"{t['limit']:g}"
        rows.append([f"#{t['issue']}", t["target"], t["mode"], value, f"{t['op']} {limit}", verdict])
    met = sum(1 for t in targets if t["met"])
    missed = sum(1 for t in targets if t["met"] is False)
    lines = [
        "## Targets",
        "",
        f"{met} met, {missed} missed, {len(targets) - met - missed} not measured or not for this machine "
        "(n/a: a goal set for a machine with more CPUs shows its figure without a verdict).",
        "",
    ]
    return lines + _table(["issue", "target", "placement", "measured", "goal", "met"], rows)


def _header(results: Results) -> List[str]:
    m = results["machine"]
    lines = [
        f"# ipcfast benchmark ({results['profile']} run, {results['config']['rounds']} round(s))",
        "",
        f"Machine: {m.get('cpu_model', '?')}, {m.get('nproc')} CPUs, Linux {m.get('kernel')}, "
        f"Python {m.get('python')}, started {m.get('date_utc')} UTC"
        + (f", commit {m['git_commit']}" if "git_commit" in m else "")
        + (
            f"; load average {m['loadavg_start']} at the start, {m['loadavg_end']} at the end"
            if "loadavg_start" in m
            else ""
        ),
        "",
    ]
    load = results["other_load"]
    if load.get("max_other_cpus") is not None:
        lines += [
            f"Other work on the machine while measuring (CPUs busy outside this run): median "
            f"{load['median_other_cpus']:.2f}, max {load['max_other_cpus']:.2f}; hypervisor steal max "
            f"{load['max_steal_cpus']:.2f}.",
            "",
        ]
    lines += [
        "Latency columns: round-trip time ÷ the floor's in the same round (median over rounds; lower is "
        "better). Concurrency columns: requests/s ÷ the floor's (higher is better). The floor row gives its "
        "absolute figures.",
        "",
    ]
    return lines


def render_markdown(results: Results) -> str:
    lines = _header(results)
    for mode, summary in results["summary"].items():
        lines += render_placement(mode, summary, results["placements"].get(mode))
    lines += render_mainloop(results["mainloop"])
    lines += render_targets(results["targets"])
    skipped = [f"{k} skipped: {v['skipped']}" for k, v in results["implementations"].items() if "skipped" in v]
    notes = results["notes"] + [s for s in skipped if not any(s in n for n in results["notes"])]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def to_json(results: Results) -> str:
    """Indented JSON, but every list of plain numbers on one line (the raw samples)."""
    text = json.dumps(results, indent=1, ensure_ascii=False)
    one_line: Callable[[Any], str] = lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", ")  # noqa: E731
    return re.sub(r"\[[-0-9.eE+,\snul]*\]", one_line, text) + "\n"


def plot(results: Results, path: str) -> Optional[str]:
    """latency_vs_size.png, one panel per placement; returns a note if it could not be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'ipcfast[bench]')"
    modes = list(results["summary"])
    if not modes:
        return "no plot: no latency-versus-size figures in this run"
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 5.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        _plot_panel(ax, mode, results["summary"][mode])
    m = results["machine"]
    fig.suptitle(f"ipcfast round-trip latency: {m.get('cpu_model', '?')}, {m.get('nproc')} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _plot_panel(ax: Any, mode: str, summary: Dict[str, ImplSummary]) -> None:
    for impl, s in summary.items():
        xs = [size for size in SIZES if str(size) in s["latency"]]
        if not xs:
            continue
        p50 = [(s["latency"][str(x)]["p50_ns"] or 0) / 1000 for x in xs]
        p99 = [s["latency"][str(x)]["p99_ns"] / 1000 for x in xs]
        (line,) = ax.plot(xs, p50, marker="o", label=f"{impl} (median)")
        ax.plot(xs, p99, linestyle=":", color=line.get_color(), alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(SIZES)
    ax.set_xticklabels([SIZE_NAMES[s] for s in SIZES])
    ax.set_xlabel("request = response size")
    ax.set_ylabel("round-trip time (µs); dotted: p99")
    ax.set_title(PLACEMENTS[mode].title if mode in PLACEMENTS else mode)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
