"""The package stays lint-clean (ruff), formatted (ruff format) and fully
typed (mypy --strict); the C sources (csrc/, tests/c) keep .clang-format.

ruff and mypy come with the `test` extra (configured in pyproject.toml);
clang-format is a system package (.ci/run installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install '.[test]')")
    return subprocess.run([tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    ran = _run("ruff", "check", "python", "tests", "bench")
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_ruff_format_holds() -> None:
    ran = _run("ruff", "format", "--check", "python", "tests", "bench")
    assert ran.returncode == 0, f"run `ruff format python tests bench`:\n{ran.stdout}{ran.stderr}"


def test_mypy_strict_is_clean() -> None:
    # The sources, not the installed copy: mypy reads python/ipcfast directly.
    ran = _run("mypy", "--strict", "python/ipcfast")
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_c_sources_are_clang_formatted() -> None:
    """csrc/ (the core, the platforms, the node client) and tests/c follow the
    repository's .clang-format."""
    folders = [ROOT / "csrc", ROOT / "csrc" / "cli", ROOT / "tests" / "c"]
    sources = sorted(str(p.relative_to(ROOT)) for folder in folders for p in folder.glob("*.[ch]"))
    assert sources
    ran = _run("clang-format", "--dry-run", "-Werror", *sources)
    assert ran.returncode == 0, f"run `clang-format -i {' '.join(sources)}`:\n{ran.stderr[-6000:]}"
