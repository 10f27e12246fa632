"""The warm side of a node: a process that runs ``python ...`` commands for
short-lived clients, one at a time, on its main thread.

The C core does the transport: it queues each COMMAND (a second one, while
a command runs, is answered BUSY without waking Python), keeps reading the
connection while the command runs so a CANCEL is seen at once, and
serializes the output packets. This module runs the command with the
client's working directory, environment and argv in effect, captures what
it writes to file descriptors 1 and 2 (so ``print``, logging, C extensions
and subprocesses are all captured) and streams it back as it comes.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from .._codec import Command, ExitType
from .._native import NativeServer, ffi, lib
from ._compat import CodeWatch
from ._runner import (
    CANCELLED_STATUS,
    PythonCommand,
    UnsupportedCommand,
    exit_status,
    flush_std_streams,
    parse_python_argv,
    print_exception,
    run_python_command,
)

__all__ = ["NodeServer", "stdio_encoding"]

logger = logging.getLogger("ipcfast.node")

_NULL = ffi.NULL


def stdio_encoding(env: Dict[str, str], locale_name: str) -> Tuple[str, str]:
    """(encoding, stdout errors) that ``python`` started with this
    environment and LC_CTYPE locale would give its standard streams."""
    configured = env.get("PYTHONIOENCODING", "")
    if configured:
        encoding, _, errors = configured.partition(":")
        return (encoding or "utf-8", errors or "strict")
    codeset = locale_name.partition(".")[2].partition("@")[0]
    if env.get("PYTHONUTF8") == "1" or locale_name in ("", "C", "POSIX"):
        # UTF-8 mode, or the C locale, which Python coerces to UTF-8.
        return ("utf-8", "surrogateescape")
    if not codeset:
        return ("utf-8", "strict")
    try:
        return (codecs.lookup(codeset).name, "strict")
    except LookupError:
        return ("utf-8", "strict")


class _TtyAwareWriter(io.TextIOWrapper):
    """A text stream whose isatty() answers for the client's terminal."""

    _client_tty = False

    def isatty(self) -> bool:
        return self._client_tty


class _UnseekableFile(io.FileIO):
    """fd 1/2 of a node point to a log file or a pipe by turns: never seek."""

    def seekable(self) -> bool:
        return False


def _text_stream(fd: int, encoding: str, errors: str, line_buffering: bool, tty: bool, name: str) -> TextIO:
    raw = _UnseekableFile(fd, "wb", closefd=False)
    buffered = io.BufferedWriter(raw, io.DEFAULT_BUFFER_SIZE)
    stream = _TtyAwareWriter(buffered, encoding=encoding, errors=errors, line_buffering=line_buffering)
    stream._client_tty = tty
    stream.mode = "w"  # type: ignore[misc]
    try:
        stream.name = name  # type: ignore[misc]
    except AttributeError:
        pass
    return stream


def install_streams() -> None:
    """Gives the node process its lasting sys.stdin/stdout/stderr: streams
    over fds 0/1/2. They are never replaced, so a logging handler or any
    object that a command keeps a reference to (e.g. logging.basicConfig in
    one command) still writes to the right place in later commands: each
    command only points fds 1 and 2 elsewhere and reconfigures them."""
    flush_std_streams()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    stdin = open(0, encoding="utf-8", closefd=False)
    stdout = _text_stream(1, "utf-8", "strict", False, False, "<stdout>")
    stderr = _text_stream(2, "utf-8", "backslashreplace", True, False, "<stderr>")
    _STREAMS[:] = [stdin, stdout, stderr]
    restore_streams()


_STREAMS: List[Any] = []


def restore_streams() -> None:
    """Puts the node's lasting streams back (a command may have replaced them)."""
    if _STREAMS:
        stdin, stdout, stderr = _STREAMS
        sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = stdin, stdout, stderr  # type: ignore[misc]


class _Capture:
    """While a command runs: fds 1 and 2 are pipes, sys.stdout/stderr are
    reconfigured for the client, and a thread sends what the pipes carry."""

    def __init__(self, call: Any, command: Command, env: Dict[str, str]) -> None:
        self._call = call
        self._flags = command.flags
        self._env = env
        self._locale = os.fsdecode(command.locale)
        self._saved_fds: Dict[int, int] = {}
        self._pipes: Dict[int, int] = {}  # read end -> stream number
        self._ending = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.client_gone = False

    def start(self) -> None:
        flush_std_streams()
        self._saved_fds = {fd: os.dup(fd) for fd in (1, 2)}
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        self._pipes = {out_r: lib.IPC_STREAM_STDOUT, err_r: lib.IPC_STREAM_STDERR}
        encoding, errors = stdio_encoding(self._env, self._locale)
        unbuffered = bool(self._env.get("PYTHONUNBUFFERED"))
        out_tty = bool(self._flags & lib.IPC_COMMAND_STDOUT_TTY)
        err_tty = bool(self._flags & lib.IPC_COMMAND_STDERR_TTY)
        _reconfigure(sys.stdout, encoding, errors, out_tty or unbuffered, out_tty)
        _reconfigure(sys.stderr, encoding, "backslashreplace", True, err_tty)
        self._thread = threading.Thread(target=self._pump, name="ipcfast-node-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        open_fds = dict(self._pipes)
        buf = bytearray(65536)
        view = memoryview(buf)
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [], 0.05)
            if not ready:
                if self._ending.is_set():
                    break  # a background child keeps the pipe open: stop here
                continue
            for fd in sorted(ready, key=lambda f: open_fds[f]):
                try:
                    n = os.readv(fd, [buf])
                except OSError:
                    n = 0
                if n == 0:
                    del open_fds[fd]
                    continue
                self._send(open_fds[fd], view[:n])

    def _send(self, stream: int, data: memoryview) -> None:
        if self.client_gone:
            return
        rc = lib.ipc_call_console_write(self._call, stream, ffi.from_buffer(data), len(data), _NULL)
        if rc != lib.IPC_OK:
            self.client_gone = True

    def finish(self) -> None:
        flush_std_streams()
        restore_streams()
        # Restoring fds 1 and 2 drops our write ends of the pipes, so the
        # pump sees the end of the output (unless a child still holds them).
        for fd, saved in self._saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._ending.set()
        if self._thread is not None:
            self._thread.join()
        for fd in self._pipes:
            os.close(fd)
        _reconfigure(sys.stdout, "utf-8", "strict", False, False)
        _reconfigure(sys.stderr, "utf-8", "backslashreplace", True, False)


def _reconfigure(stream: Any, encoding: str, errors: str, line_buffering: bool, tty: bool) -> None:
    # A command may have replaced sys.stdout itself; only ours are adjusted.
    if isinstance(stream, _TtyAwareWriter):
        stream.reconfigure(encoding=encoding, errors=errors, line_buffering=line_buffering)
        stream._client_tty = tty


class NodeServer:
    """A warm process that runs ``python ...`` commands for node clients.

    ``preload`` modules are imported once, at start; each command then runs
    on the calling (main) thread with the client's working directory,
    environment and argv, its output streamed back. ``serve_forever()``
    returns after ``idle_timeout`` seconds without a command (None: never),
    after a ``shutdown`` control request, on SIGTERM, or when the node's code
    changed on disk."""

    def __init__(
        self,
        name: str,
        *,
        preload: Sequence[str] = (),
        idle_timeout: Optional[float] = 600.0,
        access: str = "user",
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be a positive number of seconds, or None")
        self.name = name
        self.preload = list(preload)
        self.idle_timeout = idle_timeout
        self._server = NativeServer(name, self._control, max_clients=64, access=access)
        self._server._enable_node(self._on_cancel)
        self._lock = threading.Lock()
        self._current: Any = None  # the ipc_call * of the running command
        self._cancelled = False
        self._stop_reason: Optional[str] = None
        self._commands = 0
        self._started = time.time()
        self._last_active = time.monotonic()
        self._main_ident = threading.main_thread().ident or 0

    # ---- control requests (C connection threads) -------------------------

    def _control(self, request: bytes) -> bytes:
        if request == b"status":
            with self._lock:
                busy = self._current is not None
            return json.dumps(
                {
                    "pid": os.getpid(),
                    "name": self.name,
                    "busy": busy,
                    "commands": self._commands,
                    "started": self._started,
                    "idle_for": round(time.monotonic() - self._last_active, 3),
                    "idle_timeout": self.idle_timeout,
                    "preload": self.preload,
                    "python": sys.version.split()[0],
                    "executable": sys.executable,
                }
            ).encode()
        if request == b"shutdown":
            self.request_stop("a shutdown request")
            return b"ok"
        raise ValueError(f"unknown control request {request[:40]!r} (known: status, shutdown)")

    def request_stop(self, reason: str) -> None:
        """Makes serve_forever() return once the running command (if any) ends."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason

    # ---- cancellation -----------------------------------------------------

    def _on_cancel(self, call: Any) -> None:
        # On a C connection thread: interrupt the main thread if it still
        # runs this call (a stale cancel for a finished command is ignored).
        with self._lock:
            if self._current is None or self._current != call:
                return
            self._cancelled = True
        signal.pthread_kill(self._main_ident, signal.SIGINT)

    def _sigint(self, signum: int, frame: Any) -> None:
        with self._lock:
            running = self._current is not None
        if running:
            raise KeyboardInterrupt

    # ---- the main loop ----------------------------------------------------

    def serve_forever(self) -> str:
        """Serves until idle, shut down or stale; returns why it stopped.
        Must run on the main thread (commands get KeyboardInterrupt there)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("NodeServer.serve_forever() must run on the main thread")
        install_streams()
        for module in self.preload:
            __import__(module)
        watch = CodeWatch()
        previous_term = signal.signal(signal.SIGTERM, lambda s, f: self.request_stop("SIGTERM"))
        self._server.start()
        logger.info("node %s serving (pid %d, preloaded %s)", self.name, os.getpid(), self.preload or "nothing")
        call_p = ffi.new("ipc_call **")
        request_p = ffi.new("const uint8_t **")
        size_p = ffi.new("size_t *")
        self._last_active = time.monotonic()
        try:
            while True:
                with self._lock:
                    if self._stop_reason is not None:
                        break
                wait_ms = 500
                if self.idle_timeout is not None:
                    left = self.idle_timeout - (time.monotonic() - self._last_active)
                    if left <= 0:
                        self.request_stop(f"idle for {self.idle_timeout:g} s")
                        continue
                    wait_ms = max(1, min(wait_ms, int(left * 1000)))
                rc = lib.ipc_server_next_call(self._server._c_server, call_p, request_p, size_p, wait_ms, _NULL)
                if rc == lib.IPC_E_TIMEOUT:
                    continue
                if rc != lib.IPC_OK:
                    self.request_stop("the server stopped")
                    continue
                call = call_p[0]
                try:
                    self._serve_call(call, request_p[0], size_p[0], watch)
                finally:
                    lib.ipc_call_finish(call)
                    self._last_active = time.monotonic()
        finally:
            self._server.stop()
            signal.signal(signal.SIGTERM, previous_term)
        reason = self._stop_reason or "stopped"
        logger.info("node %s stopped: %s", self.name, reason)
        return reason

    def _serve_call(self, call: Any, payload: Any, size: int, watch: CodeWatch) -> None:
        try:
            command = _decode_command(payload, size)
            changed = watch.changed()
            if changed is not None:
                logger.info("node %s: %s changed on disk; exiting", self.name, changed)
                self.request_stop(f"{changed} changed")
                lib.ipc_call_exit(call, 0, ExitType.STALE, _NULL)
                return
            try:
                parsed = parse_python_argv([os.fsdecode(a) for a in command.argv])
            except UnsupportedCommand as exc:
                # Not an error of the command: the client runs it itself.
                logger.info("node %s: refused a command: %s", self.name, exc)
                lib.ipc_call_exit(call, 2, ExitType.REFUSED, _NULL)
                return
            code, kind = self._run(call, command, parsed)
            self._commands += 1
            lib.ipc_call_exit(call, _int32(code), kind, _NULL)
            watch.update()
        except Exception as exc:  # the node's own failure: report, keep serving
            logger.exception("node %s: running a command failed", self.name)
            _write_stderr(call, f"ipcfast.node: the node failed running the command: {exc!r}\n")
            lib.ipc_call_exit(call, 1, ExitType.CRASHED, _NULL)

    def _run(self, call: Any, command: Command, parsed: PythonCommand) -> Tuple[int, int]:
        env = {os.fsdecode(k): os.fsdecode(v) for k, _, v in (e.partition(b"=") for e in command.env) if k}
        cwd = os.fsdecode(command.cwd)
        saved_cwd = os.getcwd()
        saved_env = dict(os.environ)
        saved_argv, saved_path = sys.argv[:], sys.path[:]
        saved_sigint = signal.getsignal(signal.SIGINT)
        try:
            os.chdir(cwd)
        except OSError as exc:
            logger.info("node %s: refused a command: cannot enter %r: %s", self.name, cwd, exc.strerror)
            return 2, ExitType.REFUSED
        capture = _Capture(call, command, env)
        code, kind = 0, int(ExitType.COMPLETED)
        try:
            _replace_environ(env)
            capture.start()
            signal.signal(signal.SIGINT, self._sigint)
            with self._lock:
                self._current = call
                self._cancelled = False
            code, kind = self._execute(call, parsed, cwd)
        finally:
            with self._lock:
                self._current = None
            signal.signal(signal.SIGINT, saved_sigint)
            capture.finish()
            _replace_environ(saved_env)
            os.chdir(saved_cwd)
            sys.argv[:], sys.path[:] = saved_argv, saved_path
        return code, kind

    def _execute(self, call: Any, parsed: PythonCommand, cwd: str) -> Tuple[int, int]:
        try:
            if lib.ipc_call_cancelled(call):
                raise KeyboardInterrupt  # cancelled before it started
            run_python_command(parsed, cwd)
            return 0, ExitType.COMPLETED
        except SystemExit as exc:
            return exit_status(exc.code), ExitType.COMPLETED
        except KeyboardInterrupt as exc:
            print_exception(exc)
            with self._lock:
                cancelled = self._cancelled
            return CANCELLED_STATUS, (ExitType.CANCELLED if cancelled else ExitType.COMPLETED)
        except BaseException as exc:
            print_exception(exc)
            return 1, ExitType.CRASHED


def _replace_environ(env: Dict[str, str]) -> None:
    # Only what differs: every os.environ change is a putenv/unsetenv call,
    # and two environments of one user differ in a few variables.
    current = os.environ
    for key in [k for k in current if k not in env]:
        del current[key]
    for key, value in env.items():
        if current.get(key) != value:
            current[key] = value


def _int32(code: int) -> int:
    # An exit status outside int32 cannot travel; the OS keeps 8 bits anyway.
    return code if -(2**31) <= code < 2**31 else code & 0xFF


def _decode_command(payload: Any, size: int) -> Command:
    c = ffi.new("ipc_command *")
    err = ffi.new("ipc_error *")
    try:
        if lib.ipc_command_decode(payload, size, c, err) != lib.IPC_OK:
            raise ValueError(ffi.string(err.message).decode("utf-8", "replace") if err.message else "bad command")
        s = ffi.string
        argv: List[bytes] = [s(c.argv[i]) for i in range(c.argc)]
        env: List[bytes] = [s(c.env[i]) for i in range(c.envc)]
        return Command(argv, s(c.cwd), env, s(c.locale), c.flags)
    finally:
        lib.ipc_command_free(c)
        lib.ipc_error_clear(err)


def _write_stderr(call: Any, text: str) -> None:
    data = text.encode("utf-8", "backslashreplace")
    lib.ipc_call_console_write(call, lib.IPC_STREAM_STDERR, data, len(data), _NULL)
