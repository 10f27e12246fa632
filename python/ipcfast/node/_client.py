"""The short-lived side of a node: hand a ``python ...`` command to a warm
node, write its output as it arrives, exit with its exit code.

:func:`run` connects to the node for the given preloads and options; if no
node runs it starts one (detached, with its own log file) and connects
within one time budget; if the node is busy (or cannot start) it runs the
command in this process instead. Ctrl-C is forwarded as CANCEL.
"""

from __future__ import annotations

import locale
import os
import signal
import subprocess
import sys
import time
from typing import Any, List, Optional, Sequence, Tuple

from .._codec import ExitType
from .._errors import raise_from_error
from .._native import ffi, lib
from ._compat import DEFAULT_PREFIX, node_name
from ._runner import (
    CANCELLED_STATUS,
    UnsupportedCommand,
    exit_status,
    flush_std_streams,
    parse_python_argv,
    print_exception,
    run_python_command,
)

__all__ = ["NodeConnection", "connect", "log_path", "run", "run_in_process", "start_node"]

_NULL = ffi.NULL
_READ_SLICE_MS = 100  # how often a waiting client looks at Ctrl-C


def log_path(name: str) -> str:
    """Where the node called ``name`` writes its log."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ipcfast", f"{name[-24:]}.log")


class NodeConnection:
    """One connection to a node: send a command, read its packets."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._err = ffi.new("ipc_error *")
        self._type = ffi.new("uint8_t *")
        self._payload = ffi.new("const uint8_t **")
        self._size = ffi.new("size_t *")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            lib.ipc_client_close(client)

    def send_command(
        self, argv: Sequence[bytes], cwd: bytes, env: Sequence[bytes], locale_name: bytes, flags: int
    ) -> None:
        keep = [ffi.new("char[]", bytes(a)) for a in list(argv) + list(env)]
        command = ffi.new("ipc_command *")
        argv_array = ffi.new("char *[]", keep[: len(argv)])
        env_array = ffi.new("char *[]", keep[len(argv) :] or 1)
        cwd_c = ffi.new("char[]", cwd)
        locale_c = ffi.new("char[]", locale_name)
        command.flags = flags
        command.argc = len(argv)
        command.argv = argv_array
        command.cwd = cwd_c
        command.envc = len(env)
        command.env = env_array
        command.locale = locale_c
        if lib.ipc_client_send_command(self._client, command, 10000, self._err) != lib.IPC_OK:
            raise_from_error(self._err)

    def cancel(self) -> None:
        if lib.ipc_client_write_packet(self._client, lib.IPC_PACKET_CANCEL, _NULL, 0, 5000, self._err) != lib.IPC_OK:
            raise_from_error(self._err)

    def request(self, data: bytes, timeout_ms: int = 10000) -> bytes:
        """A control request (``status``, ``shutdown``)."""
        if lib.ipc_client_write_packet(self._client, lib.IPC_PACKET_REQUEST, data, len(data), timeout_ms, self._err):
            raise_from_error(self._err)
        kind, payload = self.read(timeout_ms)
        if kind == lib.IPC_PACKET_ERROR:
            raise RuntimeError(payload.decode("utf-8", "replace"))
        return payload

    def read(self, timeout_ms: int) -> Tuple[int, bytes]:
        """The next packet (type, payload); type 0 if none came in time."""
        rc = lib.ipc_client_read_packet(self._client, self._type, self._payload, self._size, timeout_ms, self._err)
        if rc == lib.IPC_E_TIMEOUT:
            lib.ipc_error_clear(self._err)
            return 0, b""
        if rc != lib.IPC_OK:
            raise_from_error(self._err)
        return int(self._type[0]), bytes(ffi.buffer(self._payload[0], self._size[0]))


def connect(name: str, timeout: float, wait: bool = False) -> Optional[NodeConnection]:
    """Connects to the node ``name`` within ``timeout`` seconds; None if no
    node answers in time (not found, busy or gone). ``wait``: a node we just
    started may not own its name yet; retry "not found" within the budget."""
    options = ffi.new("ipc_client_options *")
    lib.ipc_client_options_init(options)
    options.wait_if_not_found = wait
    out = ffi.new("ipc_client_t **")
    err = ffi.new("ipc_error *")
    rc = lib.ipc_client_open(out, os.fsencode(name), options, max(0, int(timeout * 1000)), err)
    if rc != lib.IPC_OK:
        lib.ipc_error_clear(err)
        return None
    return NodeConnection(out[0])


def start_node(name: str, preload: Sequence[str], idle_timeout: Optional[float]) -> "subprocess.Popen[bytes]":
    """Starts the node ``name`` detached from this process (its own session,
    stdio on its log file), so it outlives this client."""
    log = log_path(name)
    os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    args = [sys.executable, "-m", "ipcfast.node", "serve", "--name", name, "--log", log]
    for module in preload:
        args += ["--preload", module]
    args += ["--idle-timeout", "0" if idle_timeout is None else repr(idle_timeout)]
    with open(log, "ab") as log_file:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )


def _command_fields() -> Tuple[bytes, List[bytes], bytes, int]:
    cwd = os.fsencode(os.getcwd())
    env = [k + b"=" + v for k, v in os.environb.items()] if hasattr(os, "environb") else [
        f"{k}={v}".encode() for k, v in os.environ.items()
    ]
    try:
        locale_name = (locale.setlocale(locale.LC_CTYPE) or "").encode()
    except locale.Error:
        locale_name = b""
    flags = 0
    for fd, bit in ((0, lib.IPC_COMMAND_STDIN_TTY), (1, lib.IPC_COMMAND_STDOUT_TTY), (2, lib.IPC_COMMAND_STDERR_TTY)):
        try:
            if os.isatty(fd):
                flags |= bit
        except OSError:
            pass
    return cwd, env, locale_name, flags


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        except OSError:
            return  # our own stream is gone (closed pipe): drop the output
        view = view[n:]


class _Interrupted(Exception):
    pass


def _run_remote(conn: NodeConnection, python_argv: List[str]) -> Tuple[Optional[int], int, bool]:
    """Runs the command on the node: (exit code, or None if the node did not
    run it; exit type; whether this process got Ctrl-C)."""
    cwd, env, locale_name, flags = _command_fields()
    try:
        conn.send_command([os.fsencode(a) for a in python_argv], cwd, env, locale_name, flags)
    except OSError:
        return None, ExitType.REFUSED, False  # the node went away before it took the command
    interrupted = False
    received = False
    while True:
        try:
            kind, payload = conn.read(_READ_SLICE_MS)
        except KeyboardInterrupt:
            if interrupted:
                raise _Interrupted() from None  # a second Ctrl-C: stop waiting
            interrupted = True
            try:
                conn.cancel()
            except OSError:
                pass
            continue
        except OSError:
            if not received:  # e.g. the node stopped (idle) just as we came
                return None, ExitType.REFUSED, interrupted
            raise
        if kind == 0:
            continue
        received = True
        if kind == lib.IPC_PACKET_CONSOLE_WRITE:
            _write_all(payload[0], payload[1:])
        elif kind == lib.IPC_PACKET_EXIT:
            code, exit_type = int.from_bytes(payload[:4], "little", signed=True), payload[4]
            if exit_type in (ExitType.BUSY, ExitType.STALE, ExitType.REFUSED):
                return None, exit_type, interrupted
            return code, exit_type, interrupted
        else:
            raise RuntimeError(f"unexpected packet type {kind} from the node")


def run_in_process(python_argv: List[str]) -> int:
    """Runs the command in this process, as ``python`` would (the fallback)."""
    try:
        parsed = parse_python_argv(python_argv)
    except UnsupportedCommand:
        # Not something to emulate: let the real interpreter run it.
        return subprocess.call([sys.executable, *python_argv[1:]])
    try:
        run_python_command(parsed)
    except SystemExit as exc:
        return exit_status(exc.code)
    except KeyboardInterrupt as exc:
        print_exception(exc)
        _die_of_sigint()
        return CANCELLED_STATUS
    except BaseException as exc:
        print_exception(exc)
        return 1
    finally:
        flush_std_streams()
    return 0


def _die_of_sigint() -> None:
    """Ends the process the way an interrupted ``python`` does: killed by
    SIGINT, so the caller sees the same status as for a cold run."""
    flush_std_streams()
    if hasattr(signal, "SIGINT") and hasattr(os, "kill") and sys.platform != "win32":
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def _start_and_connect(
    name: str, preload: Sequence[str], idle_timeout: Optional[float], start_timeout: float
) -> Optional[NodeConnection]:
    process = start_node(name, preload, idle_timeout)
    deadline = time.monotonic() + start_timeout
    while True:
        conn = connect(name, min(0.2, max(0.0, deadline - time.monotonic())), wait=True)
        if conn is not None:
            return conn
        code = process.poll()
        if code is not None and code != 0:
            sys.stderr.write(
                f"ipcfast.node: the node could not start (exit status {code}, log: {log_path(name)}); "
                f"running the command in this process\n"
            )
            return None
        if code == 0:  # another client's node won the name: use that one
            return connect(name, max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            return None


def run(
    python_argv: List[str],
    *,
    preload: Sequence[str] = (),
    idle_timeout: Optional[float] = 600.0,
    start_timeout: float = 60.0,
    prefix: str = DEFAULT_PREFIX,
    start: bool = True,
) -> int:
    """Runs ``python_argv`` (``[python, -m, module, args...]`` or
    ``[python, script.py, args...]``) through the warm node for ``preload``,
    starting the node if none runs; returns the exit code (a command
    cancelled by Ctrl-C ends this process with SIGINT, as ``python`` would).
    Falls back to running in this process when the node is busy, stale or
    cannot start within ``start_timeout`` seconds."""
    name = node_name(preload, prefix=prefix, options={"idle_timeout": idle_timeout})
    conn = connect(name, 0)
    if conn is None and start:
        conn = _start_and_connect(name, preload, idle_timeout, start_timeout)
    if conn is None:
        return run_in_process(python_argv)
    try:
        try:
            code, exit_type, interrupted = _run_remote(conn, python_argv)
        except _Interrupted:
            conn.close()
            _die_of_sigint()
            return CANCELLED_STATUS
        except OSError as exc:
            # The node vanished mid-command (killed, crashed): say so.
            sys.stderr.write(f"ipcfast.node: the node failed while running the command: {exc}\n")
            return 1
    finally:
        conn.close()
    if code is None:
        return run_in_process(python_argv)
    if exit_type == ExitType.CANCELLED and interrupted:
        _die_of_sigint()
    return code
