"""The documentation stays true.

* Every ```python block of README.md and docs/guide.md runs, each in a fresh
  interpreter, and succeeds. A block preceded by an ``<!-- no-run: reason -->``
  comment is skipped (the reason is required and shown). Each block gets its
  own TMPDIR with XDG_RUNTIME_DIR unset, so the plain server names of the
  samples live in a private directory and never meet another test's.
* The C example programs in docs/examples/ build (CMake's
  IPCFAST_BUILD_EXAMPLES, with -pedantic -Wall -Wextra -Werror: the "strict"
  variant of tests/c_build.py) against the C core, and talk to each other and to Python: C server
  with a Python client, Python server with the C client, C to C.
* Every public name of ``ipcfast`` and ``ipcfast.aio``, and every public
  method and property of their classes, has a docstring.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Iterator, List, NamedTuple, Optional

import pytest

import ipcfast
import ipcfast.aio
from conftest import BuildC, child_env, posix_only, unique_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "docs", "guide.md")]
EXAMPLES = os.path.join(ROOT, "docs", "examples")

NO_RUN = re.compile(r"<!--\s*no-run:\s*(?P<reason>.+?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")


class Sample(NamedTuple):
    path: str
    line: int  # 1-based line of the opening fence
    code: str
    skip_reason: Optional[str]

    @property
    def id(self) -> str:
        return f"{os.path.relpath(self.path, ROOT)}:{self.line}"


def python_samples(path: str) -> List[Sample]:
    """The ```python blocks of a Markdown file, with their no-run markers."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    samples: List[Sample] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        body: List[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if match.group("lang") != "python":
            continue
        reason = None
        previous = start - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        if previous >= 0:
            marker = NO_RUN.search(lines[previous])
            if marker:
                reason = marker.group("reason")
        samples.append(Sample(path, start + 1, "\n".join(body) + "\n", reason))
    return samples


ALL_SAMPLES = [s for path in DOCS for s in python_samples(path)]


def test_the_docs_have_samples_and_few_are_skipped() -> None:
    assert len(ALL_SAMPLES) >= 15, [s.id for s in ALL_SAMPLES]
    skipped = [s for s in ALL_SAMPLES if s.skip_reason]
    # Keep these few; each needs a reason (checked by the marker's syntax).
    assert len(skipped) <= 2, [s.id for s in skipped]
    with open(DOCS[1], encoding="utf-8") as f:
        text = f.read()
    # Every no-run marker is directly above a python block (a typo would
    # silently do nothing otherwise).
    assert len(NO_RUN.findall(text)) == len([s for s in skipped if s.path == DOCS[1]])


@pytest.fixture
def sample_env() -> Iterator[dict]:
    """child_env() with a private, short TMPDIR (socket paths stay short)."""
    tmp = tempfile.mkdtemp(prefix="ipcd-", dir="/tmp" if os.path.isdir("/tmp") else None)
    env = child_env()
    env.pop("XDG_RUNTIME_DIR", None)
    env["TMPDIR"] = tmp
    try:
        yield env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@posix_only
@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=[s.id for s in ALL_SAMPLES])
def test_python_sample_runs(sample: Sample, sample_env: dict) -> None:
    if sample.skip_reason:
        pytest.skip(f"marked no-run: {sample.skip_reason}")
    script = os.path.join(sample_env["TMPDIR"], "sample.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(sample.code)
    proc = subprocess.run(
        [sys.executable, script],
        capture_output=True,
        text=True,
        timeout=120,
        env=sample_env,
        cwd=sample_env["TMPDIR"],
    )
    assert proc.returncode == 0, f"{sample.id} failed:\n{sample.code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# ---- the C examples ------------------------------------------------------------

EXAMPLE_SOURCES = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".c")) if os.path.isdir(EXAMPLES) else []


def test_the_examples_are_linked_from_the_guide() -> None:
    assert {"echo_server.c", "echo_client.c"} <= set(EXAMPLE_SOURCES)
    with open(DOCS[1], encoding="utf-8") as f:
        text = f.read()
    for source in EXAMPLE_SOURCES:
        assert f"examples/{source}" in text, source


@pytest.fixture(scope="module")
def examples(c_build: BuildC) -> dict:
    """docs/examples/*.c built through CMake, warnings as errors (skipped,
    with the reason, where there is no compiler or no cmake)."""
    built = c_build("strict")
    return {source[:-2]: str(built.program(source[:-2])) for source in EXAMPLE_SOURCES}


class CServer:
    """docs/examples/echo_server running: READY <address> on stdout; closing
    its stdin stops it."""

    def __init__(self, program: str, name: str) -> None:
        self.proc = subprocess.Popen(
            [program, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), (line, self.proc.stderr.read() if self.proc.stderr else "")
        self.address = line.split(" ", 1)[1].strip()

    def stop(self) -> str:
        """Close stdin, wait for a clean exit; returns stderr."""
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return err

    def __enter__(self) -> "CServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_c_client(program: str, name: str, *requests: str) -> subprocess.CompletedProcess:
    return subprocess.run([program, name, *requests], capture_output=True, text=True, timeout=60)


@posix_only
def test_c_server_with_python_client(examples: dict) -> None:
    name = unique_name("doc-c-srv")
    with CServer(examples["echo_server"], name) as server:
        # The guide's "A Python client for the C server" exchange, verbatim in spirit.
        with ipcfast.Client(name) as client:
            assert client.request(b"hello from python") == b"HELLO FROM PYTHON"
            with pytest.raises(ipcfast.RemoteError, match="this server refuses that request"):
                client.request(b"fail")
            assert client.request(b"") == b""
            assert client.request(b"still \x00 binary") == b"STILL \x00 BINARY"
        with ipcfast.Client(server.address, backend="pure") as client:
            assert client.request(b"pure") == b"PURE"
        server.stop()
    with pytest.raises(ipcfast.ServerNotFound):
        ipcfast.Client(name, connect_timeout=0)


@posix_only
@pytest.mark.parametrize("backend", ["native", "pure"])
def test_python_server_with_c_client(examples: dict, backend: str) -> None:
    name = unique_name("doc-py-srv")

    def handler(request: bytes) -> bytes:
        if request == b"fail":
            raise ValueError("no thanks")
        return request[::-1]

    with ipcfast.Server(name, handler, backend=backend):
        ran = run_c_client(examples["echo_client"], name, "hello", "fail", "world")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["olleh", "refused: ValueError: no thanks", "dlrow"]


@posix_only
def test_cli_server_with_c_client(examples: dict) -> None:
    """``ipcfast serve NAME --echo`` (as the guide suggests) answers the C client."""
    name = unique_name("doc-cli")
    server = subprocess.Popen(
        [sys.executable, "-m", "ipcfast", "serve", name, "--echo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert line.startswith(f"serving {name!r}"), line
        ran = run_c_client(examples["echo_client"], name, "over the CLI server")
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "over the CLI server\n"
    assert server.returncode in (0, 130), server.returncode


@posix_only
def test_c_server_with_c_client(examples: dict) -> None:
    name = unique_name("doc-c2c")
    with CServer(examples["echo_server"], name) as server:
        ran = run_c_client(examples["echo_client"], name, "hello", "fail", "world")
        stderr = server.stop()
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["HELLO", "refused: this server refuses that request", "WORLD"]
    assert stderr == ""  # nothing at WARNING or above was logged


@posix_only
def test_c_client_reports_a_missing_server(examples: dict) -> None:
    ran = subprocess.run(
        [examples["echo_client"], unique_name("doc-none") + "/nowhere.sock", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1
    assert ran.stderr.startswith("echo_client: IPC_E_NOT_FOUND: "), ran.stderr


# ---- docstrings --------------------------------------------------------------------


def _public_members(cls: type) -> Iterator[str]:
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue  # private, or dunder (__init__ is documented on the class)
        if callable(value) or isinstance(value, (property, staticmethod, classmethod)):
            yield attr


def _documented_objects() -> Iterator[tuple]:
    for module in (ipcfast, ipcfast.aio):
        assert module.__doc__, module.__name__
        for name in module.__all__:
            obj = getattr(module, name)
            if name == "__version__" or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):
                # The backends' classes implement the public ones: their
                # methods are what users call (inherited docstrings count).
                classes = [obj]
                if obj is ipcfast.Server or obj is ipcfast.Client:
                    for backend in ipcfast.BACKENDS:
                        try:
                            classes.append(_impl(obj, backend))
                        except ImportError:
                            pass
                for cls in classes:
                    for attr in _public_members(cls):
                        yield f"{cls.__module__}.{cls.__qualname__}.{attr}", getattr(cls, attr)
    # What ipcfast.aio.serve returns is public too, if its class is not.
    server_cls = inspect.signature(ipcfast.aio.serve).return_annotation
    cls = getattr(ipcfast.aio, server_cls) if isinstance(server_cls, str) else server_cls
    yield f"ipcfast.aio.{cls.__name__}", cls
    for attr in _public_members(cls):
        yield f"ipcfast.aio.{cls.__name__}.{attr}", getattr(cls, attr)


def _impl(cls: type, backend: str) -> type:
    from ipcfast import _base

    module = _base._backend_module(backend)
    impl: type = module.ServerImpl if cls is ipcfast.Server else module.ClientImpl
    return impl


def test_every_public_name_has_a_docstring() -> None:
    missing = [name for name, obj in _documented_objects() if not inspect.getdoc(obj)]
    assert not missing, f"no docstring: {missing}"
