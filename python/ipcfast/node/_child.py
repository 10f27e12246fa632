"""The node's forked child: one command, in a process of its own.

The node forks a child for every command from its warm state (preloads
imported), ahead of time: a *spare* that leaves the node behind at once and
then waits for its command (:func:`become_spare`). The child turns itself
into what ``python ARGS`` started by the client would have been: the client's stdin/stdout/stderr on fds 0-2 (or
pipes, on the packet path), its working directory, environment, umask,
locale and time zone, fresh ``sys.std*`` streams built as the interpreter
builds them, Python's start-up signal dispositions, its own process group.
It runs the command, then ends as the interpreter does (threads joined,
atexit handlers, streams flushed; an uncaught KeyboardInterrupt ends it with
SIGINT) and the node turns its wait status into the EXIT packet. Nothing it
does can reach the node or a later command.
"""

from __future__ import annotations

import atexit
import codecs
import io
import locale
import logging
import marshal
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple

from ._runner import PythonCommand, exit_status, flush_std_streams, print_exception, run_python_command
from ._wire import recv_with_fds

__all__ = ["GO", "STOP", "become_spare", "encode_order", "stdio_encoding"]

#: The child's exit status when it could not even set itself up.
SETUP_FAILED = 70

#: The node's last word to a spare that has its order: run it, or do not.
GO, STOP = b"g", b"s"

_ORDER_HEADER = struct.Struct("<I")

#: command, stdio descriptors, cwd, environment, umask
Order = Tuple[PythonCommand, List[int], bytes, Dict[str, str], Optional[int]]


def stdio_encoding(env: Dict[str, str], ctype: str) -> Tuple[str, str]:
    """(encoding, errors) that ``python`` started with this environment and
    LC_CTYPE locale gives sys.stdin and sys.stdout."""
    configured = env.get("PYTHONIOENCODING", "")
    utf8_mode = env.get("PYTHONUTF8") == "1" or ctype in ("C", "POSIX") or ctype.startswith("C.")
    encoding, _, errors = configured.partition(":")
    if not encoding:
        encoding = "utf-8" if utf8_mode else (locale.nl_langinfo(locale.CODESET) or "utf-8")
    if not errors:
        errors = "surrogateescape" if utf8_mode or ctype in ("C", "POSIX") else "strict"
    try:
        encoding = codecs.lookup(encoding).name
    except LookupError:
        encoding = "utf-8"
    return encoding, errors


def _set_locale(env: Dict[str, str]) -> str:
    """LC_CTYPE from the environment, with Python's C-locale coercion."""
    try:
        ctype = locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        ctype = locale.setlocale(locale.LC_CTYPE, "C")
    if ctype in ("C", "POSIX") and not env.get("LC_ALL") and env.get("PYTHONCOERCECLOCALE") != "0":
        for target in ("C.UTF-8", "C.utf8", "UTF-8"):
            try:
                ctype = locale.setlocale(locale.LC_CTYPE, target)
            except locale.Error:
                continue
            os.environ["LC_CTYPE"] = target  # as the interpreter does when it coerces
            break
    return ctype


def _stdio(fd: int, write: bool, encoding: str, errors: str, buffered: bool) -> io.TextIOWrapper:
    """A standard stream built as the interpreter's create_stdio() builds it."""
    name = ("<stdin>", "<stdout>", "<stderr>")[fd]
    buffering = -1 if buffered or not write else 0
    buf = io.open(fd, "wb" if write else "rb", buffering=buffering, closefd=False)
    raw = buf if buffering == 0 else buf.raw  # type: ignore[attr-defined]
    raw.name = name  # type: ignore[misc]
    line_buffering = buffered and (raw.isatty() or fd == 2)
    stream = io.TextIOWrapper(
        buf,
        encoding=encoding,
        errors=errors,
        newline="\n",
        line_buffering=line_buffering,
        write_through=not buffered,
    )
    stream.mode = "w" if write else "r"  # type: ignore[misc]
    return stream


def _install_stdio(env: Dict[str, str], ctype: str) -> None:
    encoding, errors = stdio_encoding(env, ctype)
    buffered = not env.get("PYTHONUNBUFFERED")
    sys.stdin = sys.__stdin__ = _stdio(0, False, encoding, errors, buffered)  # type: ignore[misc]
    sys.stdout = sys.__stdout__ = _stdio(1, True, encoding, errors, buffered)  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = _stdio(2, True, encoding, "backslashreplace", buffered)  # type: ignore[misc]


def _replace_environ(env: Dict[str, str]) -> None:
    # Only what differs: every os.environ change is a putenv/unsetenv call.
    current = os.environ
    for key in [k for k in current if k not in env]:
        del current[key]
    for key, value in env.items():
        if current.get(key) != value:
            current[key] = value


def _reset_signals() -> None:
    """The dispositions a fresh interpreter starts with."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _forget_node_logging() -> None:
    """The node's log handler is the node's: a command never writes to it."""
    node_logger = logging.getLogger("ipcfast")
    for handler in list(node_logger.handlers):
        node_logger.removeHandler(handler)
        try:
            handler.close()
        except Exception:
            pass
    node_logger.setLevel(logging.NOTSET)


def _prepare(close_fds: Sequence[int]) -> None:
    """What a child can do before it knows its command: leave the node's
    process group, signals, descriptors and logging behind."""
    os.setpgid(0, 0)  # its own group: Ctrl-C and kills reach the command's children too
    _reset_signals()
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _forget_node_logging()


def _take_client_context(stdio: Sequence[int], cwd: bytes, env: Dict[str, str], umask: Optional[int]) -> None:
    """Becomes the client's process: its stdio, directory, environment,
    umask, locale and time zone."""
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    for fd in set(stdio):
        if fd > 2:
            os.close(fd)
    os.chdir(cwd)
    _replace_environ(env)
    if umask is not None:
        os.umask(umask)
    ctype = _set_locale(env)
    if hasattr(time, "tzset"):
        time.tzset()
    _install_stdio(env, ctype)


def _finalize(code: int) -> int:
    """What the interpreter does on its way out (Py_FinalizeEx): join
    non-daemon threads, run atexit handlers, flush the standard streams."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException as exc:  # e.g. Ctrl-C while joining
        print_exception(exc)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            code = 120  # as the interpreter reports a failed final flush
    flush_std_streams()
    return code


def _receive_order(sock: socket.socket) -> Optional[Order]:
    """The command the node hands this spare (None: the node discarded it)."""
    header, fds = recv_with_fds(sock, _ORDER_HEADER.size, 3)
    try:
        header += _recv_exactly(sock, _ORDER_HEADER.size - len(header)) if header else b""
        (size,) = _ORDER_HEADER.unpack(header)
        data = _recv_exactly(sock, size)
    except (ConnectionError, struct.error):  # the node discarded this spare (or died)
        for fd in fds:
            os.close(fd)
        return None
    kind, target, args, env, cwd, umask = marshal.loads(data)
    return PythonCommand(kind, target, args), fds, cwd, env, umask


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the node closed the spare's socket")
        data += chunk
    return bytes(data)


def encode_order(command: PythonCommand, cwd: bytes, env: Dict[str, str], umask: Optional[int]) -> bytes:
    """What the node sends a spare (its stdio descriptors ride along, SCM_RIGHTS)."""
    data = marshal.dumps((command.kind, command.target, list(command.args), env, cwd, umask))
    return _ORDER_HEADER.pack(len(data)) + data


def become_spare(sock: socket.socket, close_fds: Sequence[int]) -> NoReturn:
    """Runs in a freshly forked spare child; never returns.

    The node forks its next child before that child's command arrives, so
    a command meets a process that has already left the node behind
    (:func:`_prepare`) and only has to take the client's context. The
    spare waits on ``sock`` for its order (EOF: the node discarded it or
    died, and the spare exits), takes the client's context, then waits for
    the node's go (``GO``; anything else: the node found its code changed
    in the meantime and answers STALE, so the command must not run)."""
    try:
        _prepare(close_fds)
        order = _receive_order(sock)
    except BaseException:
        os._exit(SETUP_FAILED)
    if order is None:
        os._exit(0)
    command, stdio, cwd, env, umask = order
    try:
        _take_client_context(stdio, cwd, env, umask)
    except BaseException as exc:
        try:
            os.write(2, f"ipcfast.node: could not set up the command: {exc!r}\n".encode())
        finally:
            os._exit(SETUP_FAILED)
    try:
        go = sock.recv(1) == GO
        sock.close()
    except BaseException:
        go = False
    if not go:
        os._exit(0)
    _run_to_the_end(command, cwd)


def _run_to_the_end(command: PythonCommand, cwd: bytes) -> NoReturn:
    """Runs the command and ends the process as python would have ended."""
    code = SETUP_FAILED
    try:
        interrupted = False
        try:
            run_python_command(command, os.fsdecode(cwd))
            code = 0
        except SystemExit as exc:
            code = exit_status(exc.code)
        except KeyboardInterrupt as exc:
            print_exception(exc)
            code, interrupted = 130, True
        except BaseException as exc:
            print_exception(exc)
            code = 1
        code = _finalize(code)
        if interrupted:
            # An uncaught KeyboardInterrupt ends python by SIGINT itself.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code & 0xFF)  # what the OS keeps of any status, as for python
