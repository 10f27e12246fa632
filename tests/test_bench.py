"""Smoke test of the benchmark harness (bench/, ipcfast._bench).

Runs ``python -m ipcfast bench --smoke`` for real (real server and client
processes, the C programs compiled on the fly) and checks that every figure
it reports is a finite positive number. No speed is asserted here: speed
goals are checked by reading the benchmark's own output.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from conftest import child_env, posix_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ["16", "1024", "65536", "1048576"]


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "ipcfast", "bench", "--smoke", "--source", ROOT, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=child_env(),
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    with open(out / "results.json") as f:
        results = json.load(f)
    return {"results": results, "out": out, "stdout": proc.stdout}


def _expected() -> list:
    impls = ["native", "mp.connection"]
    if shutil.which(os.environ.get("CC", "cc")):
        impls += ["floor", "c2c"]
    return impls


@posix_only
@pytest.mark.parametrize("impl", ["floor", "c2c", "native", "mp.connection"])
def test_smoke_figures_are_finite_and_positive(smoke: dict, impl: str) -> None:
    results = smoke["results"]
    if impl not in _expected():
        reason = results["implementations"][impl].get("skipped", "")
        assert "compiler" in reason
        pytest.skip(f"{impl}: {reason}")
    assert results["implementations"][impl]["measured"], results["implementations"][impl]
    summary = results["summary"]["unpinned"][impl]
    assert summary["failed_rounds"] == 0
    for size in SIZES:
        entry = summary["latency"][size]
        for key in ("p50_ns", "p99_ns", "mean_ns", "min_ns"):
            assert _positive(entry[key]), (size, key, entry[key])
        assert entry["p99_ns"] >= entry["p50_ns"] >= entry["min_ns"]
        assert entry["samples"] == results["config"]["iters"][SIZES.index(size)]
        if "floor" in _expected():
            assert _positive(entry["ratio_p50"]) and _positive(entry["ratio_p99"])
        raw = results["raw"]["unpinned"][impl][0]["latency"][size]
        assert len(raw) == entry["samples"] and all(_positive(x) for x in raw)
    for k in ("1", "4"):
        rate = summary["rate"][k]
        assert _positive(rate["rps"]), (k, rate)
        clients = results["raw"]["unpinned"][impl][0]["rate"][k]["clients"]
        assert len(clients) == int(k)
        assert all(c["count"] > 0 and c["elapsed_ns"] > 0 for c in clients)
    assert _positive(summary["throughput_1MiB_MiBps"])


@posix_only
def test_smoke_report(smoke: dict) -> None:
    results, out = smoke["results"], smoke["out"]
    machine = results["machine"]
    for key in ("cpu_model", "nproc", "kernel", "python"):
        assert machine.get(key), key
    table = (out / "results.md").read_text()
    assert "| native |" in table and "## Targets" in table
    assert "| native |" in smoke["stdout"]
    # Every target of the issue is listed, with a verdict or n/a.
    assert len(results["targets"]) == 13
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latency_vs_size.png").stat().st_size > 0
    else:
        assert any("matplotlib" in note for note in results["notes"])
    # Optional implementations are either measured or skipped with a reason.
    for impl in ("pure", "pyzmq"):
        info = results["implementations"][impl]
        assert info["measured"] or info["skipped"]


@posix_only
def test_smoke_mainloop(smoke: dict) -> None:
    """The main-loop cases ran: every case has samples, the added latency is
    reported against the idle baseline, and the table is in results.md."""
    mainloop = smoke["results"]["mainloop"]
    assert mainloop is not None
    summary = mainloop["summary"]
    assert set(summary) == {"idle", "frame/thread", "frame/manual", "spin/thread", "spin/manual"}
    for case, entry in summary.items():
        assert entry["failed_rounds"] == 0, case
        assert entry["samples"] > 0, case
        assert _positive(entry["p50_ns"]) and entry["p99_ns"] >= entry["p50_ns"], case
        assert isinstance(entry["added_p50_ns"], float) and math.isfinite(entry["added_p50_ns"]), case
    loops = {case: rounds[0]["loop"] for case, rounds in mainloop["raw"].items()}
    assert loops["frame/manual"]["handled"] > 0 and loops["spin/manual"]["handled"] > 0
    assert loops["frame/thread"]["turns"] > 0 and loops["spin/thread"]["turns"] > 0
    table = (smoke["out"] / "results.md").read_text()
    assert "## Main-loop dispatch" in table and "| spin/manual |" in table
    units = [t for t in smoke["results"]["targets"] if t.get("unit") == "ns"]
    assert len(units) == 2 and all(t["value"] is not None for t in units)


def test_run_script_help() -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout
