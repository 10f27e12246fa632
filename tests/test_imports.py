"""The package's import structure, read from the sources (AST), not by
importing them.

* The module-level import graph of ``python/ipcfast`` has no cycle: the
  facade (``_base``) reaches a backend only through the registry
  (``_backends``), by name, at call time.
* Imports inside functions (lazy ones) are listed here, each with its reason,
  so a new one is a visible decision.
* One module, ``ipcfast._native._ffi``, imports the compiled module, and
  ``ffi``/``lib`` appear only inside the ``ipcfast._native`` package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import os
from typing import Dict, Iterator, List, Set, Tuple

from conftest import find_cycle

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "ipcfast")
COMPILED = "ipcfast._ipcfast_cffi"
BINDING = "ipcfast._native._ffi"
NATIVE_PACKAGE = "ipcfast._native"

#: Exceptions to the cffi rules (none: every module reaches the extension
#: through ipcfast._native).
TEMPORARY_CFFI_USERS: Tuple[str, ...] = ()

#: Every import inside a function, and why it is lazy.
EXPECTED_LAZY = {
    # The node's client must start fast: it reads ipcfast's version only
    # when it names a node, and the node takes its listener (the lock-file
    # protocol of docs/protocol.md 2.1) from the pure backend only to serve.
    ("ipcfast.node._compat", "ipcfast"),
    ("ipcfast.node._server", "ipcfast._pure"),
    # The benchmark imports the library under test only where a peer runs
    # it, so the harness and the other peers never load it.
    ("ipcfast._bench.child", "ipcfast"),
    ("ipcfast._bench.harness", "ipcfast"),
    ("ipcfast._bench.peers", "ipcfast"),
}


def _module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))
    parts = relative[: -len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> Dict[str, ast.Module]:
    trees = {}
    for directory, _, files in os.walk(PACKAGE_DIR):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(directory, file)
                with open(path, encoding="utf-8") as source:
                    trees[_module_name(path)] = ast.parse(source.read(), path)
    return trees


def _is_package(module: str, trees: Dict[str, ast.Module]) -> bool:
    return any(other.startswith(module + ".") for other in trees)


def _imports(node: ast.AST, lazy: bool = False) -> Iterator[Tuple[ast.AST, bool]]:
    """Every import statement under node, with whether it runs only when a
    function is called (class bodies run at import)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, lazy
        inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _imports(child, inner)


def _targets(module: str, statement: ast.AST, trees: Dict[str, ast.Module]) -> List[str]:
    """The ipcfast modules an import statement loads."""
    if isinstance(statement, ast.Import):
        return [alias.name for alias in statement.names]
    assert isinstance(statement, ast.ImportFrom)
    base = statement.module or ""
    if statement.level:
        anchor = module.split(".")
        if not _is_package(module, trees):
            anchor = anchor[:-1]
        anchor = anchor[: len(anchor) - (statement.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    found = [base]
    for alias in statement.names:
        submodule = f"{base}.{alias.name}"
        if submodule in trees or submodule == COMPILED:
            found.append(submodule)
    return found


def _graph() -> Tuple[Dict[str, Set[str]], Set[Tuple[str, str]], Dict[str, ast.Module]]:
    trees = _sources()
    eager: Dict[str, Set[str]] = {module: set() for module in trees}
    lazy: Set[Tuple[str, str]] = set()
    for module, tree in trees.items():
        for statement, is_lazy in _imports(tree):
            for target in _targets(module, statement, trees):
                if not target.startswith("ipcfast") or target == module:
                    continue
                if is_lazy:
                    lazy.add((module, target))
                else:
                    eager[module].add(target)
    return eager, lazy, trees


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _temporary(module: str) -> bool:
    return any(_in(module, allowed) for allowed in TEMPORARY_CFFI_USERS)


def test_the_graph_reader_sees_the_known_edges() -> None:
    # Guards the reader itself: a graph with no edges would have no cycle.
    eager, _, trees = _graph()
    assert "ipcfast._backends" in eager["ipcfast._base"]
    assert "ipcfast._base" in eager["ipcfast._pure"]
    assert BINDING in eager["ipcfast._native._server"]
    assert COMPILED in eager[BINDING]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert len(trees) > 15


def test_module_level_imports_have_nofind_cycle() -> None:
    eager, _, _ = _graph()
    assert find_cycle(eager) == []


def test_facade_does_not_import_a_backend() -> None:
    eager, lazy, _ = _graph()
    for facade in ("ipcfast._base", "ipcfast._backends", "ipcfast._errors", "ipcfast._codec"):
        reached = eager[facade] | {target for source, target in lazy if source == facade}
        backends = {t for t in reached if _in(t, NATIVE_PACKAGE) or t == "ipcfast._pure"}
        if facade == "ipcfast._errors":
            backends -= {target for source, target in EXPECTED_LAZY if source == facade}
        assert not backends, (facade, backends)


def _entry_point(module: str) -> bool:
    # Command lines (python -m ...) load a subcommand only when it runs.
    return module.endswith(".__main__")


def test_lazy_imports_are_the_listed_ones() -> None:
    _, lazy, _ = _graph()
    unlisted = {edge for edge in lazy if not _temporary(edge[0]) and not _entry_point(edge[0])} - EXPECTED_LAZY
    assert not unlisted, f"new lazy imports: list them in EXPECTED_LAZY with a reason: {sorted(unlisted)}"


def test_only_the_binding_module_imports_the_compiled_module() -> None:
    eager, lazy, _ = _graph()
    importers = {module for module, targets in eager.items() if COMPILED in targets}
    importers |= {source for source, target in lazy if target == COMPILED}
    assert {m for m in importers if not _temporary(m)} == {BINDING}


def _cffi_names(tree: ast.Module) -> Set[str]:
    """Where a module touches cffi: the names ffi/lib, read or imported."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ("ffi", "lib"):
            used.add(node.id)
        elif isinstance(node, ast.alias) and node.name in ("ffi", "lib"):
            used.add(node.name)
        elif isinstance(node, ast.Attribute) and node.attr in ("ffi", "lib"):
            used.add(node.attr)
    return used


def test_ffi_and_lib_are_used_only_in_the_native_package() -> None:
    _, _, trees = _graph()
    users = {module for module, tree in trees.items() if _cffi_names(tree)}
    assert BINDING in users and "ipcfast._native._server" in users  # the check sees them
    outside = {m for m in users if not _in(m, NATIVE_PACKAGE) and not _temporary(m)}
    assert not outside, outside


def test_the_node_client_imports_neither_the_binding_nor_the_facades() -> None:
    """The node's Python client pays its imports on every command: `import
    ipcfast` must not load cffi, the native backend or the Server/Client
    facades until something asks for them (PEP 562 names in __init__)."""
    code = (
        "import sys, ipcfast.node._client\n"
        "heavy = ('cffi', 'ipcfast._native', 'ipcfast._base', 'ipcfast._ipcfast_cffi')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy)\n"
        "import ipcfast\n"
        "assert ipcfast.Server.__name__ == 'Server' and callable(ipcfast.pipe_name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
