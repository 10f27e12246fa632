"""The command line: ``python -m ipcfast bench`` and ``bench/run.py``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Tuple

from .harness import Harness, Options, log, loadavg, machine_info, other_load_summary, utc_now
from .peers import IMPL_KEYS, PEERS
from .profiles import MODE_NAMES, RATE_SIZE, RATE_WARMUP, SIZES
from .report import Results, plot, render_markdown, to_json
from .stats import evaluate_targets, summarize


def default_out(source_root: Optional[str]) -> str:
    if source_root:
        return os.path.join(source_root, "bench", "results")
    return os.path.abspath("ipcfast-bench-results")


def _split(text: str) -> List[str]:
    return [x for x in text.split(",") if x]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ipcfast bench",
        description="Measure ipcfast against a C floor, the C core alone, a hand-written Python socket server, "
        "multiprocessing.connection, pyzmq, iceoryx2 and gRPC: interleaved rounds, pinned to one CPU and split "
        "over two.",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--quick",
        dest="profile",
        action="store_const",
        const="quick",
        help="one round, fewer samples, both placements, every figure but the main-loop cases: under a minute",
    )
    kind.add_argument(
        "--smoke",
        dest="profile",
        action="store_const",
        const="smoke",
        help="a few seconds: unpinned only, 1 and 4 clients (the test suite's run)",
    )
    p.set_defaults(profile="full")
    p.add_argument("--out", help="output directory (default: bench/results in the source tree)")
    p.add_argument("--source", help="the source tree with csrc/ and bench/*.c (default: found from here)")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--impl", type=_split, help=f"comma-separated subset of: {','.join(IMPL_KEYS)}")
    p.add_argument(
        "--modes", type=_split, help=f"comma-separated placements: {','.join(MODE_NAMES)} (default pinned,split)"
    )
    p.add_argument(
        "--cpu",
        type=int,
        default=0,
        help="the CPU for pinned mode and split mode's clients; split's server takes the next one (default 0)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw latency_vs_size.png")
    loop = p.add_mutually_exclusive_group()
    loop.add_argument(
        "--no-mainloop",
        action="store_true",
        help="skip the main-loop cases (a request while the server's main thread runs Python)",
    )
    loop.add_argument(
        "--mainloop-only",
        action="store_true",
        help="run only the main-loop cases (thread vs manual dispatch, busy main thread)",
    )
    a = p.parse_args(argv)
    for impl in a.impl or []:
        if impl not in PEERS:
            p.error(f"unknown implementation {impl!r}: choose from {', '.join(IMPL_KEYS)}")
    for mode in a.modes or []:
        if mode not in MODE_NAMES:
            p.error(f"unknown placement {mode!r}: choose from {', '.join(MODE_NAMES)}")
    return a


def run(options: Options) -> Results:
    harness = Harness(options)
    t_start, started, load_start = time.monotonic(), utc_now(), loadavg()
    try:
        raw, mainloop, impls = harness.run()
    finally:
        harness.cleanup()
    machine = machine_info(harness.source_root, harness.cc if harness.bin else None)
    machine.update(finished_utc=machine["date_utc"], date_utc=started, loadavg_start=load_start, loadavg_end=loadavg())
    summary = {mode: summarize(by_impl) for mode, by_impl in raw.items()}
    profile = harness.profile
    return Results(
        schema=2,
        profile=options.profile,
        config={
            **vars(profile),
            "sizes": SIZES,
            "rate_request_size": RATE_SIZE,
            "rate_warmup": RATE_WARMUP,
            "cpu": options.cpu,
        },
        machine=machine,
        placements={mode: cpus.describe() for mode, cpus in harness.placements.items()},
        implementations={
            k: {
                "description": PEERS[k].description,
                "measured": k in impls,
                **({"skipped": harness.skip_reason[k]} if k in harness.skip_reason else {}),
            }
            for k in harness.selected
        },
        source_root=harness.source_root,
        notes=harness.notes,
        summary=summary,
        targets=evaluate_targets(raw, mainloop["summary"] if mainloop else None, os.cpu_count()),
        mainloop=mainloop,
        raw=raw,
        elapsed_seconds=round(time.monotonic() - t_start, 1),
        other_load=other_load_summary(raw),
    )


def write(results: Results, out: str, draw: bool) -> Tuple[str, bool]:
    """results.json, results.md and the plot into ``out``; returns the Markdown
    and whether the plot was drawn."""
    os.makedirs(out, exist_ok=True)
    text = render_markdown(results)
    note = plot(results, os.path.join(out, "latency_vs_size.png")) if draw else None
    if note:
        results["notes"].append(note)
        log(f"note: {note}")
        text += f"\n- {note}\n"
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write(to_json(results))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    return text, draw and note is None


def main(argv: Optional[List[str]] = None, source_root: Optional[str] = None) -> int:
    args = parse_args(argv)
    options = Options(
        profile=args.profile,
        rounds=args.rounds,
        modes=args.modes,
        impl=args.impl,
        cpu=args.cpu,
        source=args.source or source_root,
        no_mainloop=args.no_mainloop,
        mainloop_only=args.mainloop_only,
    )
    results = run(options)
    out = os.path.abspath(args.out or default_out(results["source_root"]))
    text, drawn = write(results, out, not args.no_plot)
    print(text)
    log(
        f"wrote {out}/results.json, results.md"
        + (", latency_vs_size.png" if drawn else "")
        + f" in {results['elapsed_seconds']} s"
    )
    failed = [impl for summary in results["summary"].values() for impl, s in summary.items() if s["failed_rounds"]]
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover - python -m ipcfast._bench is the entry point
    sys.exit(main(sys.argv[1:]))
