"""README's first command runs the demo: keep it true."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_real_requests_and_exits_cleanly() -> None:
    ran = subprocess.run([sys.executable, "-m", "ipcfast.demo"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = ran.stdout
    assert "-> b'HELLO, IPCFAST'" in out
    assert "content ok" in out  # the 1 MiB round trip came back intact
    assert "RemoteError" in out  # the handler failure reached the client
    assert "STILL CONNECTED" in out  # and the connection survived it
    assert "ServerNotFound" in out  # after stop nobody answers
