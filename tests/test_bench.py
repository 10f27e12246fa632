"""The benchmark harness (bench/, ipcfast._bench).

Runs ``python -m ipcfast bench --smoke`` for real (real server and client
processes, the C programs compiled on the fly) and checks that every figure
it reports is a finite positive number; then checks the statistics and the
report on made-up rounds, without processes. No speed is asserted here: speed
goals are checked by reading the benchmark's own output.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from conftest import child_env, posix_only
from ipcfast._bench.harness import resolve_placement
from ipcfast._bench.peers import PEERS
from ipcfast._bench.profiles import MAINLOOP_TARGETS, PLACEMENTS, SIZES as SIZE_VALUES, TARGETS
from ipcfast._bench.report import Results, render_markdown, to_json
from ipcfast._bench.stats import RoundResult, evaluate_targets, summarize

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


# The peers from PyPI (the `bench` extra; the `test` extra brings them too
# where they have wheels): measured when installed, else skipped with the reason.
OPTIONAL_PEERS = ["pyzmq", "iceoryx2", "iceoryx2-poll", "grpc"]


def _expected() -> list:
    impls = ["native", "socket", "mp.connection"]
    if shutil.which(os.environ.get("CC", "cc")):
        impls += ["floor", "c2c"]
    return impls + [key for key in OPTIONAL_PEERS if PEERS[key].unavailable() is None]


@posix_only
@pytest.mark.parametrize("impl", ["floor", "c2c", "native", "socket", "mp.connection", *OPTIONAL_PEERS])
def test_smoke_figures_are_finite_and_positive(smoke: dict, impl: str) -> None:
    results = smoke["results"]
    if impl not in _expected():
        reason = results["implementations"][impl].get("skipped", "")
        assert ("not installed" if impl in OPTIONAL_PEERS else "compiler") in reason, reason
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
        cpu = results["raw"]["unpinned"][impl][0]["rate"][k]["cpu"]
        assert cpu["requests"] == sum(c["count"] for c in clients)
        assert _positive(rate["cpu_server_ns"]) and _positive(rate["cpu_client_ns"]), rate
    assert _positive(summary["throughput_1MiB_MiBps"])


@posix_only
def test_smoke_report(smoke: dict) -> None:
    results, out = smoke["results"], smoke["out"]
    machine = results["machine"]
    for key in ("cpu_model", "nproc", "kernel", "python", "date_utc"):
        assert machine.get(key), key
    table = (out / "results.md").read_text()
    assert "| native |" in table and "## Targets" in table
    assert "| native |" in smoke["stdout"]
    # Every target of the issues is listed, with a verdict or n/a.
    assert len(results["targets"]) == len(TARGETS) + len(MAINLOOP_TARGETS)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latency_vs_size.png").stat().st_size > 0
    else:
        assert any("matplotlib" in note for note in results["notes"])
    # Optional implementations are either measured or skipped with a reason.
    for impl in ("pure", *OPTIONAL_PEERS):
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


# ---- statistics and report on made-up rounds (no processes) -------------------------


def _round(r: int, latency_us: float, rps: float) -> RoundResult:
    """One made-up round: every size takes ``latency_us`` × (1, 1, 2, 10), 3 samples."""
    scale = {16: 1, 1024: 1, 65536: 2, 1048576: 10}
    latency = {str(s): [int(latency_us * scale[s] * 1000) + d for d in (0, 100, 200)] for s in SIZE_VALUES}
    rate = {
        str(k): {
            "clients": [{"count": int(rps / k), "elapsed_ns": 1_000_000_000}] * k,
            "rps": rps,
            "cpu": {"server_ns": int(rps) * 5000, "clients_ns": int(rps) * 7000, "requests": int(rps)},
        }
        for k in (1, 4, 16)
    }
    return RoundResult(
        round=r, latency=latency, rate=rate, error=None, loadavg_before=None, other_load=None, seconds=1.0
    )  # type: ignore[typeddict-item]


def _raw() -> dict:
    """floor 10 µs, native 12 µs, socket 15 µs, pyzmq 40 µs, iceoryx2 11 µs: two rounds each."""
    figures = {
        "floor": (10, 90e3),
        "native": (12, 50e3),
        "socket": (15, 40e3),
        "pyzmq": (40, 20e3),
        "iceoryx2": (11, 45e3),
    }
    return {impl: [_round(r, us, rps) for r in range(2)] for impl, (us, rps) in figures.items()}


def test_summary_ratios_are_paired_with_floor_and_native() -> None:
    summary = summarize(_raw())
    native = summary["native"]["latency"]["16"]
    assert native["samples"] == 6 and native["p50_ns"] == 12_100
    assert native["ratio_p50"] == pytest.approx(12_100 / 10_100)
    assert summary["socket"]["latency"]["16"]["ratio_native_p50"] == pytest.approx(15_100 / 12_100)
    rate = summary["pyzmq"]["rate"]["4"]
    assert rate["ratio"] == pytest.approx(20e3 / 90e3) and rate["ratio_native"] == pytest.approx(20e3 / 50e3)
    assert rate["cpu_server_ns"] == pytest.approx(5000) and rate["cpu_client_ns"] == pytest.approx(7000)
    assert summary["floor"]["failed_rounds"] == 0


def test_targets_pick_the_best_peer_per_round() -> None:
    results = {t["target"] + "/" + t["mode"]: t for t in evaluate_targets({"pinned": _raw(), "split": _raw()}, None)}
    # The fastest Python peer at 16 B is iceoryx2 (11 µs): native is slower, the target is missed.
    best = results["native RTT / fastest Python peer's RTT at 16 B/split"]
    assert best["value"] == pytest.approx(12_100 / 11_100) and best["met"] is False
    socket = results["native RTT / socket RTT at 16 B/pinned"]
    assert socket["value"] == pytest.approx(12_100 / 15_100) and socket["met"] is True
    # Rates: the best peer has the most requests/s (iceoryx2, 45k).
    assert results["native req/s / best Python peer's req/s, 4 clients/split"]["value"] == pytest.approx(50 / 45)
    assert results["native req/s with 16 clients / with 4 clients/split"]["value"] == pytest.approx(1.0)
    loop = results["manual dispatch, spinning main thread: added p50 latency/unpinned"]
    assert loop["value"] is None and loop["met"] is None


def test_a_goal_for_a_bigger_machine_gets_its_figure_and_no_verdict() -> None:
    row = "native req/s / pyzmq req/s, 16 clients (16-core machine)/split"
    raw = {"pinned": _raw(), "split": _raw()}
    small = {t["target"] + "/" + t["mode"]: t for t in evaluate_targets(raw, None, 2)}
    big = {t["target"] + "/" + t["mode"]: t for t in evaluate_targets(raw, None, 16)}
    assert small[row]["value"] is not None and small[row]["met"] is None
    assert big[row]["value"] == small[row]["value"] and big[row]["met"] is not None
    # Every other goal is judged on the small machine as well.
    assert small["native req/s with 16 clients / with 4 clients/split"]["met"] is not None


def test_report_renders_every_placement_and_target_without_processes() -> None:
    raw = {"pinned": _raw(), "split": _raw()}
    results = Results(
        schema=2,
        profile="quick",
        config={"rounds": 2},
        machine={"cpu_model": "test CPU", "nproc": 2},
        placements={
            "pinned": {"server": 0, "client": 0, "rate_clients": [0]},
            "split": {"server": 1, "client": 0, "rate_clients": [0]},
        },
        implementations={
            "socket": {"description": "x", "measured": True},
            "iceoryx2-poll": {"description": "y", "measured": False, "skipped": "not installed"},
        },
        source_root=None,
        notes=[],
        summary={m: summarize(r) for m, r in raw.items()},
        targets=evaluate_targets(raw, None),
        mainloop=None,
        raw=raw,
        elapsed_seconds=1.0,
        other_load={"max_other_cpus": None},
    )
    text = render_markdown(results)
    for title in (
        "pinned (server and clients on one CPU): median RTT",
        "split (server on one CPU, clients on another): absolute figures",
        "CPU time per request",
        "ratios to ipcfast native",
        "## Targets",
    ):
        assert title in text, title
    assert "| floor | 10.1 µs |" in text and "| socket | 1.50× |" in text
    assert "| native | 5.0 µs / 7.0 µs |" in text  # CPU per request, server / clients
    assert "iceoryx2-poll skipped: not installed" in text
    assert json.loads(to_json(results))["raw"]["pinned"]["native"][0]["latency"]["16"] == [12000, 12100, 12200]


def test_every_peer_is_one_adapter_in_the_table() -> None:
    assert list(PEERS)[:2] == ["floor", "c2c"]
    for key, peer in PEERS.items():
        assert peer.key == key and peer.description
    assert {"socket", "mp.connection", "native", "pure", *OPTIONAL_PEERS} <= set(PEERS)


@posix_only
@pytest.mark.parametrize("key", ["socket", "mp.connection", *OPTIONAL_PEERS])
def test_peer_echoes_every_size(key: str, tmp_path: Any) -> None:
    """A new peer's server and client, in this process over a real socket or shared memory."""
    peer = PEERS[key]
    reason = peer.unavailable()
    if reason is not None:
        pytest.skip(reason)
    addr = str(tmp_path / "peer.sock")
    stop = peer.serve(addr)
    conn = peer.connect(addr)
    try:
        for size in (0, 16, 70_000, 1 << 20):
            data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            assert conn.request(data) == data
    finally:
        conn.close()
        stop()


@posix_only
def test_grpc_peer_takes_messages_above_grpc_default_limit(tmp_path: Any) -> None:
    """gRPC refuses messages above 4 MiB unless told otherwise; the peer raises
    the limit on both sides, so no size the benchmark may add fails there."""
    peer = PEERS["grpc"]
    reason = peer.unavailable()
    if reason is not None:
        pytest.skip(reason)
    addr = str(tmp_path / "grpc.sock")
    stop = peer.serve(addr)
    conn = peer.connect(addr)
    try:
        data = b"g" * (5 << 20)
        assert conn.request(data) == data
    finally:
        conn.close()
        stop()


@posix_only
@pytest.mark.parametrize("key", ["socket", "mp.connection"])
def test_thread_per_client_peers_stop_their_accept_thread(key: str, tmp_path: Any) -> None:
    """stop() ends the accepting thread before closing the listener. Before,
    the thread stayed blocked in accept() on a closed descriptor and failed
    with ENOTSOCK once another file reused the number."""
    import threading

    peer = PEERS[key]
    before = {t.ident for t in threading.enumerate()}
    addr = str(tmp_path / "peer.sock")
    stop = peer.serve(addr)
    conn = peer.connect(addr)
    assert conn.request(b"x") == b"x"
    conn.close()
    stop()
    lingering = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    # Serving threads end with their client; the accept thread with stop().
    for thread in lingering:
        thread.join(2)
    assert not [t for t in lingering if t.is_alive()], lingering


def test_bench_package_is_formatted_and_leaves_the_binding_alone() -> None:
    """ruff format holds for the package, and it reaches ipcfast only through its public API."""
    package = os.path.join(ROOT, "python", "ipcfast", "_bench")
    for name in os.listdir(package):
        if name.endswith(".py"):
            with open(os.path.join(package, name)) as f:
                text = f.read()
            assert "_ipcfast_cffi" not in text and not re.search(r"\b(ffi|lib)\.", text), name
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install '.[test]')")
    ran = subprocess.run(["ruff", "format", "--check", package], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_placements_on_two_and_sixteen_cpus() -> None:
    """Split: server on the next allowed CPU, latency client on --cpu, concurrency clients
    on every CPU but the server's; pinned: all on --cpu; unpinned: anywhere."""
    two = resolve_placement(PLACEMENTS["split"], 0, [0, 1])
    assert (two.server, two.client, two.rate_clients) == (1, 0, {0})
    sixteen = resolve_placement(PLACEMENTS["split"], 0, list(range(16)))
    assert sixteen.server == 1 and sixteen.client == 0 and sixteen.rate_clients == set(range(16)) - {1}
    wrapped = resolve_placement(PLACEMENTS["split"], 7, [3, 7])  # the next allowed CPU wraps around
    assert (wrapped.server, wrapped.client) == (3, 7)
    pinned = resolve_placement(PLACEMENTS["pinned"], 2, [0, 1, 2, 3])
    assert (pinned.server, pinned.client, pinned.rate_clients) == (2, 2, {2})
    anywhere = resolve_placement(PLACEMENTS["unpinned"], 0, [0, 1])
    assert (anywhere.server, anywhere.client, anywhere.rate_clients) == (None, None, None)


@posix_only
def test_node_bench_builds_the_node_client_through_cmake(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/node.py uses the installed ipcfast-node-client, and builds the
    CMake target from the checkout when none is installed next to Python."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed (pip install '.[test]')")
    spec = importlib.util.spec_from_file_location("bench_node", os.path.join(ROOT, "bench", "node.py"))
    assert spec is not None and spec.loader is not None
    node_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(node_bench)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here" / "python"))
    client = node_bench.node_client(tmp_path)
    assert client.startswith(str(tmp_path)) and os.access(client, os.X_OK)
    assert (tmp_path / "build-c" / "CMakeCache.txt").is_file()  # CMake built it, not a compiler line of its own
    ran = subprocess.run([client], capture_output=True, text=True, timeout=30)
    assert ran.returncode != 0 and "usage" in (ran.stdout + ran.stderr).lower(), ran
