"""The short-lived side of a node: hand a ``python ...`` command to a warm
node, wait for its EXIT, end as the command ended.

:func:`run` connects to the node for the given preloads and options; if no
node runs it starts one (detached, with its own log file) and connects
within one time budget. The command gets this process's own stdin, stdout
and stderr (passed to the node's child with SCM_RIGHTS), so terminals,
colours, widths and the order of the two streams are exactly a cold run's.
With ``stream=True`` (for clients that cannot pass descriptors) the output
comes back as CONSOLE_WRITE packets instead. Ctrl-C is forwarded as CANCEL.
When the node is busy, refuses the command or cannot start, the command runs
cold: this process becomes ``python ARGS`` (exec), so the result is the same
either way.

This module is what every client run imports: it keeps to sockets and the
codec (no cffi, no threads, no subprocess unless a node must be started).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from .._codec import Command, NodeSignal, PacketDecoder, PacketType, decode_exit, encode_cancel, encode_command
from ._compat import DEFAULT_PREFIX, node_name
from ._wire import (
    COMMAND_FDS,
    COMMAND_UMASK,
    LOCAL_SIGNALS,
    UMASK_SHIFT,
    connect as _connect_socket,
    send_packet,
)

__all__ = ["NodeConnection", "connect", "log_path", "run", "start_node"]

# Exit types (docs/protocol.md 10.4).
_COMPLETED, _CANCELLED, _CRASHED, _BUSY, _STALE, _REFUSED, _KILLED = range(7)
_TTY_BITS = (0x1, 0x2, 0x4)


def log_path(name: str) -> str:
    """Where the node called ``name`` writes its log."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ipcfast", f"{name[-24:]}.log")


class NodeConnection:
    """One connection to a node (after the handshake): packets in and out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = PacketDecoder()
        self._packets: List[Tuple[int, bytes]] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, type_: int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        send_packet(self.sock, type_, payload, fds)

    def read(self) -> Tuple[int, bytes]:
        """The next packet (type, payload); raises ConnectionError at EOF."""
        while not self._packets:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the node closed the connection")
            self._packets.extend((p.type, p.payload) for p in self._decoder.feed(data))
            if self._decoder.error is not None:
                raise ConnectionError(f"bad packet from the node ({self._decoder.error.name})")
        return self._packets.pop(0)

    def request(self, data: bytes) -> bytes:
        """A control request (``status``, ``shutdown``)."""
        self.send(PacketType.REQUEST, data)
        kind, payload = self.read()
        if kind != PacketType.RESPONSE:
            raise RuntimeError(payload.decode("utf-8", "replace"))
        return payload


def connect(name: str, timeout: float) -> Optional[NodeConnection]:
    """Connects to the node ``name`` within ``timeout`` seconds; None if no
    node answers in time (not found, gone, or not this user's)."""
    try:
        sock = _connect_socket(name, timeout)
    except OSError:
        return None
    return None if sock is None else NodeConnection(sock)


def start_node(name: str, preload: Sequence[str], idle_timeout: Optional[float]) -> Any:
    """Starts the node ``name`` detached from this process (its own session,
    stdio on its log file), so it outlives this client; returns the Popen."""
    import subprocess

    log = log_path(name)
    os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    args = [sys.executable, "-m", "ipcfast.node", "serve", "--name", name, "--log", log]
    for module in preload:
        args += ["--preload", module]
    args += ["--idle-timeout", "0" if idle_timeout is None else repr(idle_timeout)]
    with open(log, "ab") as log_file:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True, close_fds=True
        )


def _command(python_argv: List[str], stream: bool) -> Command:
    umask = os.umask(0)
    os.umask(umask)
    flags = COMMAND_UMASK | (umask << UMASK_SHIFT) | (0 if stream else COMMAND_FDS)
    for fd, bit in enumerate(_TTY_BITS):
        try:
            if os.isatty(fd):
                flags |= bit
        except OSError:
            pass
    try:
        import _locale  # the C module: `locale` would import re, costly for a client

        ctype = _locale.setlocale(_locale.LC_CTYPE)
    except Exception:
        ctype = ""
    env = [k + b"=" + v for k, v in os.environb.items()]
    argv = [os.fsencode(a) for a in python_argv]
    return Command(argv, os.fsencode(os.getcwd()), env, ctype.encode(), flags)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            return  # our own stream is gone (closed pipe): drop the output


class _Interrupted(Exception):
    """A second Ctrl-C: stop waiting for the node."""


#: What else the client forwards, as CANCEL naming the signal (docs/protocol.md
#: 10.5): what a command run cold would get from its terminal, or from
#: whoever signals this process (kill, timeout, a CI runner).
_FORWARDED: Dict[int, NodeSignal] = {
    signum: code for code, signum in LOCAL_SIGNALS.items() if code != NodeSignal.INTERRUPT
}


def _cancel(conn: NodeConnection, signal_code: NodeSignal = NodeSignal.INTERRUPT) -> None:
    try:
        conn.send(PacketType.CANCEL, encode_cancel(signal_code))
    except OSError:
        pass


def _run_remote(
    conn: NodeConnection, python_argv: List[str], stream: bool, received: Optional[List[int]] = None
) -> Tuple[int, int]:
    """Runs the command on the node: (exit code, exit type). Every forwarded
    signal that arrives is appended to ``received``, so that a caller whose
    command did not run after all can end as that signal would have ended it."""
    interrupts = [0]
    sent = [False]
    unsent: List[int] = []  # forwarded signals that came before the COMMAND left
    got = received if received is not None else []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupts[0] += 1
        if interrupts[0] > 1:
            raise _Interrupted()
        if sent[0]:
            _cancel(conn)

    def on_forwarded(signum: int, frame: Any) -> None:
        # Each one is passed on (`timeout` sends SIGTERM twice, to the command
        # and to its group, and a cold command gets both): sent now, or by
        # the flush after the COMMAND, never both.
        got.append(signum)
        if sent[0]:
            _cancel(conn, _FORWARDED[signum])
        else:
            unsent.append(signum)

    # Ctrl-C becomes a CANCEL from before the COMMAND leaves: the command may
    # be running (and its output on the terminal) before send() has returned.
    previous: Dict[int, Any] = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint)}
    for signum in _FORWARDED:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # nohup: a hang-up must not reach the command
        previous[signum] = signal.signal(signum, on_forwarded)
    try:
        try:
            conn.send(PacketType.COMMAND, encode_command(_command(python_argv, stream)), () if stream else (0, 1, 2))
        except OSError:  # e.g. one of our standard descriptors is closed
            return 0, _REFUSED
        sent[0] = True
        if interrupts[0]:
            _cancel(conn)
        for waiting in unsent:
            _cancel(conn, _FORWARDED[waiting])
        while True:
            kind, payload = conn.read()
            if kind == PacketType.CONSOLE_WRITE and payload:
                _write_all(payload[0], payload[1:])
            elif kind == PacketType.EXIT:
                return decode_exit(payload)
            else:
                raise ConnectionError(f"unexpected packet type {kind} from the node")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _end_as_received(received: List[int]) -> None:
    """A terminating signal that came while a node did not run the command
    ends this process as it would have ended the command run cold."""
    for signum in received:
        if _FORWARDED[signum] != NodeSignal.WINDOW_CHANGED:
            die_of_signal(signum)


def die_of_signal(signum: int) -> NoReturn:
    """Ends this process the way the command ended: by the same signal, so
    the caller sees the same status as for a cold run (else 128 + signum)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(1)
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)


def exec_cold(python_argv: List[str]) -> NoReturn:
    """Becomes ``python ARGS`` itself: the fallback, exactly a cold run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a shell would start it
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(sys.executable, [sys.executable, *python_argv[1:]])


def _start_and_connect(
    name: str, preload: Sequence[str], idle_timeout: Optional[float], start_timeout: float
) -> Optional[NodeConnection]:
    process = start_node(name, preload, idle_timeout)
    deadline = time.monotonic() + start_timeout
    while True:
        conn = connect(name, min(0.2, max(0.0, deadline - time.monotonic())))
        if conn is not None:
            return conn
        code = process.poll()
        if code is not None and code != 0:
            sys.stderr.write(
                f"ipcfast.node: the node could not start (exit status {code}, log: {log_path(name)}); "
                f"running the command without it\n"
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
    stream: bool = False,
) -> int:
    """Runs ``python_argv`` (``[python, -m, module, args...]``,
    ``[python, script.py, args...]`` or ``[python, -c, code, args...]``)
    through the warm node for ``preload``, starting the node if none runs;
    returns the exit code. A command that died of a signal (Ctrl-C included)
    ends this process with the same signal. When the node is busy, refuses
    the command or cannot start within ``start_timeout`` seconds, this
    process execs ``python`` with the same arguments instead (never returns)."""
    name = node_name(preload, prefix=prefix, options={"idle_timeout": idle_timeout})
    received: List[int] = []  # forwarded signals, for a command no node ran
    for _attempt in range(2):
        conn = connect(name, 0)
        if conn is None and start:
            conn = _start_and_connect(name, preload, idle_timeout, start_timeout)
        if conn is None:
            break
        try:
            code, exit_type = _run_remote(conn, python_argv, stream, received)
        except _Interrupted:
            die_of_signal(signal.SIGINT)
        except OSError as exc:
            # The node vanished mid-command (killed, crashed): say so.
            sys.stderr.write(f"ipcfast.node: the node failed while running the command: {exc}\n")
            return 1
        finally:
            conn.close()
        if exit_type == _STALE:
            _end_as_received(received)  # that node did not run it
            continue  # that node gave its name up: start a fresh one
        if exit_type in (_BUSY, _REFUSED):
            break
        if exit_type == _CANCELLED:
            die_of_signal(signal.SIGINT)
        if exit_type == _KILLED:
            die_of_signal(code)
        return code
    _end_as_received(received)
    exec_cold(python_argv)
