"""The package stays lint-clean (ruff) and fully typed (mypy --strict).

Both tools come with the `test` extra; the configuration is in pyproject.toml.
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


def test_mypy_strict_is_clean() -> None:
    # The sources, not the installed copy: mypy reads python/ipcfast directly.
    ran = _run("mypy", "--strict", "python/ipcfast")
    assert ran.returncode == 0, ran.stdout + ran.stderr
