"""The command line (python -m ipcfast), driven as a shell user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

import ipcfast
from conftest import child_env

CLI = [sys.executable, "-m", "ipcfast"]


def run(*args: str, input: Optional[bytes] = None, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), input=input, capture_output=True, timeout=60, env=env or child_env())


@pytest.fixture
def served(name: str) -> Iterator[Callable[..., subprocess.Popen]]:
    """Yields a function that starts `ipcfast serve NAME *extra` and waits until it listens."""
    procs: List[subprocess.Popen] = []

    def start(*extra: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        proc = subprocess.Popen(CLI + ["serve", name, *extra], stderr=subprocess.PIPE, env=env or child_env())
        procs.append(proc)
        line = proc.stderr.readline().decode()  # type: ignore[union-attr]
        assert line.startswith("serving"), line
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def test_version_and_help() -> None:
    ran = run("--version")
    assert ran.returncode == 0 and ran.stdout.decode().strip() == f"ipcfast {ipcfast.__version__}"
    for command in ([], ["serve"], ["call"], ["ping"]):
        ran = run(*command, "--help")
        assert ran.returncode == 0, ran.stderr
        assert b"usage: ipcfast" in ran.stdout
    ran = run()
    assert ran.returncode == 2 and b"usage: ipcfast" in ran.stderr


def test_serve_call_ping_and_sigterm(name: str, served: Callable[..., subprocess.Popen]) -> None:
    proc = served()
    ran = run("call", name, "hello")
    assert ran.returncode == 0 and ran.stdout == b"hello"
    ran = run("call", name, "-", input=b"\x00binary\xff")
    assert ran.returncode == 0 and ran.stdout == b"\x00binary\xff"
    ran = run("ping", name, "-c", "20", "-s", "64")
    assert ran.returncode == 0, ran.stderr
    assert b"20 round trips of 64 bytes" in ran.stdout and b"median" in ran.stdout
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 130
    ran = run("call", name, "x", "--connect-timeout", "0.1")
    assert ran.returncode == 1
    assert b"ServerNotFound" in ran.stderr and name.encode() in ran.stderr


def test_serve_a_module_handler(name: str, served: Callable[..., subprocess.Popen], tmp_path: Path) -> None:
    (tmp_path / "cli_handler_mod.py").write_text(
        textwrap.dedent(
            """
            def shout(request):
                if request == b"fail":
                    raise ValueError("no thanks")
                return request.upper() + b"!"
            """
        )
    )
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    served("--module", "cli_handler_mod:shout", env=env)
    ran = run("call", name, "hey")
    assert ran.returncode == 0 and ran.stdout == b"HEY!"
    ran = run("call", name, "fail")
    assert ran.returncode == 1 and b"RemoteError: ValueError: no thanks" in ran.stderr


def test_bad_module_is_a_clear_usage_error(name: str) -> None:
    ran = run("serve", name, "--module", "no_such_module_xyz:f")
    assert ran.returncode != 0
    assert b"cannot import 'no_such_module_xyz'" in ran.stderr
