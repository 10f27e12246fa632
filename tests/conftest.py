"""Shared fixtures and helpers for the ipcfast test suite.

Everything here is real: servers listen on real sockets / pipes, helper
processes are real interpreters. Nothing is mocked.

One suite, every pairing: behavioural tests take ``make_server`` /
``make_client`` (or ``echo_server``) instead of calling ``ipcfast.Server`` /
``ipcfast.Client`` directly, and so run once per (server backend, client
backend) in {native, pure}^2, the way CPython runs one test suite over both
its C accelerator and its pure-Python module. A test that only needs one
side (say, a raw socket against a server) takes only that side's fixture
and runs once per backend of that side.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

import pytest

import ipcfast
from c_build import CBuild, build_variant

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_PROCESS = os.path.join(HERE, "server_process.py")

POSIX = sys.platform != "win32"
LINUX = sys.platform.startswith("linux")

posix_only = pytest.mark.skipif(not POSIX, reason="POSIX transport only")
linux_only = pytest.mark.skipif(not LINUX, reason="needs /proc")


def unique_name(tag: str = "t") -> str:
    """A server name no other test (or test run) uses."""
    return f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def name() -> str:
    """A unique server name for this test."""
    return unique_name()


def echo(request: bytes) -> bytes:
    return request


@pytest.fixture
def private_tmp(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """TMPDIR pointed at a fresh directory and XDG_RUNTIME_DIR unset, so plain
    names live in a fresh TMPDIR/ipcfast-UID, the path returned (both
    backends read the process environment; os.environ writes through)."""
    base = str(tmp_path / "tmp")
    os.mkdir(base, 0o700)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", base)
    yield os.path.join(base, f"ipcfast-{os.geteuid()}")


# ---- backends ----------------------------------------------------------------

BACKENDS = ("native", "pure")

#: The types of the make_server / make_client fixtures.
MakeServer = Callable[..., ipcfast.Server]
MakeClient = Callable[..., ipcfast.Client]


def other_backend(backend: str) -> str:
    return "pure" if backend == "native" else "native"


def _require_backend(backend: str) -> str:
    if backend == "native" and ipcfast.native_import_error() is not None:
        pytest.skip(f"the native backend is unavailable: {ipcfast.native_import_error()}")
    if backend == "pure" and not POSIX:
        pytest.skip("the pure backend is POSIX only")
    return backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Runs each test once per backend of each side it uses (directly or
    through make_server / make_client / echo_server), with stable ids:
    ``[server=native-client=pure]``."""
    sides = [s for s in ("server", "client") if f"{s}_backend" in metafunc.fixturenames]
    if not sides:
        return
    combos = list(itertools.product(BACKENDS, repeat=len(sides)))
    ids = ["-".join(f"{side}={backend}" for side, backend in zip(sides, combo)) for combo in combos]
    values = combos if len(sides) > 1 else [combo[0] for combo in combos]
    metafunc.parametrize(",".join(f"{s}_backend" for s in sides), values, ids=ids, indirect=True)


@pytest.fixture
def server_backend(request: pytest.FixtureRequest) -> str:
    """The backend servers of this test use (each test runs once per backend)."""
    return _require_backend(request.param)


@pytest.fixture
def client_backend(request: pytest.FixtureRequest) -> str:
    """The backend clients of this test use (each test runs once per backend)."""
    return _require_backend(request.param)


@pytest.fixture
def make_server(server_backend: str) -> MakeServer:
    """ipcfast.Server with this test's server backend."""

    def make(*args: Any, **kwargs: Any) -> ipcfast.Server:
        return ipcfast.Server(*args, backend=server_backend, **kwargs)

    return make


@pytest.fixture
def make_client(client_backend: str) -> MakeClient:
    """ipcfast.Client with this test's client backend."""

    def make(*args: Any, **kwargs: Any) -> ipcfast.Client:
        return ipcfast.Client(*args, backend=client_backend, **kwargs)

    return make


@pytest.fixture
def echo_server(name: str, make_server: MakeServer) -> Iterator[ipcfast.Server]:
    """A running in-process server (this test's server backend) answering each
    request with itself."""
    with make_server(name, echo) as server:
        yield server


def recv_exactly(sock: "socket.socket", n: int) -> bytes:
    """Reads exactly n bytes from a raw socket (EOFError if it closes first)."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll predicate until it is true or timeout seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def child_env() -> dict:
    """Environment for child interpreters: same import path as this one."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerProcess:
    """tests/server_process.py running in a child interpreter (its server
    uses ``backend``).

    Talks line-based over stdout: waits for "READY <address>" on start;
    closing stdin makes the child stop its server and exit.
    """

    def __init__(self, name: str, *args: str, backend: str = "native") -> None:
        self.name = name
        self.backend = backend
        self.proc = subprocess.Popen(
            [sys.executable, SERVER_PROCESS, name, *args, f"--backend={backend}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_line("READY", timeout=30)
        self.address = line.split(" ", 1)[1]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float = 10.0) -> str:
        """The first output line starting with prefix (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if "<EOF>" in self.lines:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        stderr = ""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            stderr = self.proc.stderr.read()
        raise AssertionError(f"server process: no line {prefix!r}; output {self.lines!r}; stderr {stderr!r}")

    def stop(self, timeout: float = 15.0) -> int:
        """Ask the child to stop (close its stdin) and wait; returns its exit code."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("server process did not stop within its time limit") from None
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def run_python(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run code in a child interpreter and return the finished process."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


class LogCatcher(logging.Handler):
    """Collects records of the "ipcfast" logger, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> List[str]:
        with self._lock2:
            return [r.getMessage() for r in self.records if r.levelno >= level]

    def find(self, text: str, level: int = logging.DEBUG) -> Optional[logging.LogRecord]:
        with self._lock2:
            for r in self.records:
                if r.levelno >= level and text in r.getMessage():
                    return r
        return None


@pytest.fixture
def ipc_log() -> Iterator[LogCatcher]:
    """Records everything logged to logging.getLogger("ipcfast") during the test."""
    logger = logging.getLogger("ipcfast")
    catcher = LogCatcher()
    old_level = logger.level
    logger.addHandler(catcher)
    logger.setLevel(logging.DEBUG)
    try:
        yield catcher
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(old_level)


# ---- C programs ------------------------------------------------------------------

#: The type of the c_build fixture: a variant name of c_build.VARIANTS in,
#: its built programs out.
BuildC = Callable[[str], CBuild]


@pytest.fixture(scope="session")
def c_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuildC:
    """c_build("asan_ubsan").program("ipcfast_c_tests"): builds a C variant
    through CMake at most once per session (see tests/c_build.py). A variant
    that was skipped or failed is skipped or fails the same way for every
    test that asks for it."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("ipcfast-cmake") if cache is not None else tmp_path_factory.mktemp("cmake")
    outcomes: Dict[str, Any] = {}

    def build(variant: str) -> CBuild:
        if variant not in outcomes:
            try:
                outcomes[variant] = build_variant(variant, Path(root))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # pytest's skip and fail outcomes too
                outcomes[variant] = exc
        outcome = outcomes[variant]
        if isinstance(outcome, BaseException):
            raise outcome
        built: CBuild = outcome
        return built

    return build


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of a dependency graph (node -> the nodes it needs), or []
    when it is acyclic. tests/test_layout.py (C objects) and
    tests/test_imports.py (modules) both use it."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def installed_node_client() -> Optional[str]:
    """The C client of the server node that `pip install` builds (CMake's
    ipcfast-node-client) next to this interpreter, or None."""
    exe = os.path.join(os.path.dirname(sys.executable), "ipcfast-node-client")
    return exe if os.path.exists(exe) else None


def c_node_client() -> str:
    """installed_node_client(), or skip: the C client is part of the package."""
    exe = installed_node_client()
    if exe is None:
        pytest.skip("ipcfast-node-client is not installed next to this Python (pip install .)")
    return exe
