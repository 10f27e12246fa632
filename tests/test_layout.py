"""The C core's shape: one concept per file, and a link graph without cycles.

Every csrc/*.c file is compiled on its own (host cc, and the Windows
cross-compiler where installed) and `nm` tells which symbols each object
defines and which it needs. That gives the file dependency graph, which must
be acyclic (docs/design.md draws it), with the error helpers a true leaf
and the layers above the server core (the server node, the original API)
unknown to the files below them.

Each platform is one node of the graph: its files (ipc_posix*.c, or
ipc_win32*.c) implement ipc_platform.h together and share private helpers
(ipc_posix_internal.h, ipc_win32_internal.h), so they may need each other.

One mutual reference is known and allowed, and only that one: the platform
files report through ipc__log (ipc_log.c), and ipc_log.c guards its
callback with the platform's global lock. Breaking it needs a change in the
platform files (see docs/design.md, "Known debts").

No .c file, platform files included, is longer than MAX_FILE_LINES: one
concept per file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set, Tuple

import pytest
from conftest import find_cycle

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
# The graph node of each platform stands for all of its files.
POSIX, WIN32 = "ipc_posix*.c", "ipc_win32*.c"
PLATFORM_PREFIXES = {"ipc_posix": POSIX, "ipc_win32": WIN32}
ERROR_LEAF = "ipc_error.c"
# (from, to) edges allowed to close a cycle; see the module docstring.
ALLOWED_BACK_EDGES = {("ipc_log.c", POSIX), ("ipc_log.c", WIN32)}
MAX_FILE_LINES = 800

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX toolchain (cc, nm) only")

Graph = Dict[str, Set[str]]


def _symbols(obj: Path, nm: str) -> Tuple[Set[str], Set[str]]:
    """(defined global symbols, undefined symbols) of one object file."""
    out = subprocess.run([nm, "-P", str(obj)], capture_output=True, text=True, check=True).stdout
    defined: Set[str] = set()
    needed: Set[str] = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if name.startswith(".refptr."):  # mingw's per-object indirection stubs
            continue
        if kind == "U":
            needed.add(name)
        elif kind.isupper():
            defined.add(name)
    return defined, needed


def node(file_name: str) -> str:
    """The graph node of a csrc file: its own name, or its platform's."""
    for prefix, platform in PLATFORM_PREFIXES.items():
        if file_name.startswith(prefix):
            return platform
    return file_name


def link_graph(cc: str, nm: str, tmp: Path) -> Graph:
    """node -> the nodes whose symbols it needs (a node: a file, or a platform)."""
    owners: Dict[str, str] = {}
    needs: Dict[str, Set[str]] = {}
    for source in sorted(CSRC.glob("*.c")):
        obj = tmp / (source.stem + ".o")
        subprocess.run(
            [cc, "-std=c99", f"-I{CSRC}", "-c", str(source), "-o", str(obj)], check=True, capture_output=True, text=True
        )
        defined, needed = _symbols(obj, nm)
        for symbol in defined:
            assert symbol not in owners, f"{symbol} is defined by {owners[symbol]} and {source.name}"
            owners[symbol] = source.name
        needs.setdefault(node(source.name), set()).update(needed)
    return {name: {node(owners[s]) for s in needed if s in owners} - {name} for name, needed in needs.items()}


def without_allowed(graph: Graph) -> Graph:
    return {n: {d for d in deps if (n, d) not in ALLOWED_BACK_EDGES} for n, deps in graph.items()}


def _toolchain(cc: str, nm: str) -> None:
    if shutil.which(cc) is None or shutil.which(nm) is None:
        pytest.skip(f"{cc} or {nm} is not installed")


@pytest.fixture(scope="module")
def host_graph(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    _toolchain("cc", "nm")
    return link_graph("cc", "nm", tmp_path_factory.mktemp("objs"))


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_link_graph_is_acyclic(host_graph: Graph) -> None:
    assert find_cycle(without_allowed(host_graph)) == []


def test_the_allowed_back_edge_is_the_only_mutual_reference(host_graph: Graph) -> None:
    # If ipc_log.c stops needing the platform, drop the allowance; if another
    # file starts needing the platform back, this is the place that says so.
    for source, deps in host_graph.items():
        for dep in deps:
            if source in host_graph.get(dep, set()):
                assert (source, dep) in ALLOWED_BACK_EDGES or (dep, source) in ALLOWED_BACK_EDGES, (
                    f"{source} and {dep} need each other"
                )


def test_the_error_helpers_are_a_leaf(host_graph: Graph) -> None:
    assert host_graph[ERROR_LEAF] == set()


def test_lower_layers_do_not_know_the_upper_ones(host_graph: Graph) -> None:
    upper = {"ipc_server_node.c", "ipc_compat.c"}
    for lower in (
        "ipc_error.c",
        "ipc_codec.c",
        "ipc_stream.c",
        "ipc_dispatch.c",
        "ipc.c",
        "ipc_server_stop.c",
        "ipc_client.c",
        "ipc_client_connect.c",
    ):
        assert not host_graph[lower] & upper, f"{lower} needs {host_graph[lower] & upper}"
    assert host_graph["ipc_codec.c"] <= {ERROR_LEAF}
    for client in ("ipc_client.c", "ipc_client_connect.c"):
        assert "ipc.c" not in host_graph[client], "the client must not need the server"
    assert "ipc_client_connect.c" not in host_graph["ipc_client.c"], "calls must not need connecting"


def test_the_original_api_uses_the_public_api(tmp_path: Path) -> None:
    _toolchain("cc", "nm")
    obj = tmp_path / "ipc_compat.o"
    subprocess.run(["cc", "-std=c99", f"-I{CSRC}", "-c", str(CSRC / "ipc_compat.c"), "-o", str(obj)], check=True)
    _, needed = _symbols(obj, "nm")
    internal = {s for s in needed if s.startswith("ipc__")}
    # Errors and logs, and the one attached pointer per server and client.
    assert internal <= {"ipc__fail", "ipc__log", "ipc__client_attach", "ipc__client_attached", "ipc__server_attach"}


def test_windows_objects_are_acyclic_too(tmp_path: Path) -> None:
    cc, nm = "x86_64-w64-mingw32-gcc", "x86_64-w64-mingw32-nm"
    _toolchain(cc, nm)
    graph = link_graph(cc, nm, tmp_path)
    assert WIN32 in graph["ipc_stream.c"] and not graph[POSIX]
    assert find_cycle(without_allowed(graph)) == []
    assert graph[ERROR_LEAF] == set()


def test_platform_files_are_grouped_by_prefix() -> None:
    assert node("ipc_posix.c") == node("ipc_posix_socket.c") == POSIX
    assert node("ipc_win32_pipe.c") == WIN32 and node("ipc_stream.c") == "ipc_stream.c"


def test_the_host_platform_is_one_node(host_graph: Graph) -> None:
    host = WIN32 if sys.platform == "win32" else POSIX
    assert host in host_graph["ipc_stream.c"]
    assert not any(name.startswith(tuple(PLATFORM_PREFIXES)) for name in host_graph if name not in (POSIX, WIN32))


def test_no_file_is_a_monolith() -> None:
    for source in sorted(CSRC.glob("*.c")):
        lines = len(source.read_text(encoding="utf-8").splitlines())
        assert lines <= MAX_FILE_LINES, f"{source.name}: {lines} lines"


def test_every_platform_file_guards_its_whole_body() -> None:
    # Vendoring compiles every csrc/*.c: a platform file must be empty elsewhere.
    for prefix, guard in (("ipc_posix", "#if !defined(_WIN32)"), ("ipc_win32", "#if defined(_WIN32)")):
        files = sorted(CSRC.glob(prefix + "*"))
        assert len(files) > 1
        for source in files:
            text = source.read_text(encoding="utf-8")
            code = [line for line in text.splitlines() if line.startswith("#")]
            assert guard in text, f"{source.name} has no {guard} guard"
            first = next(line for line in code if not line.startswith(("#ifndef IPC_", "#define IPC_")))
            assert first == guard, f"{source.name}: {first!r} comes before the {guard} guard"
            assert code[-1].startswith("#endif"), f"{source.name} does not end its guard last"
