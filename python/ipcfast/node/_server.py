"""The warm side of a node: imports the preloads once, then forks a fresh
child from that warm state for every command (as multiprocessing's
forkserver and Android's zygote do).

The node itself is a single-threaded ``selectors`` loop over plain sockets
with the sans-I/O codec (``ipcfast._codec``): a process with one thread is
one that may fork. It accepts connections (peer checked to be this user,
SO_PEERCRED, before anything is read), answers control requests, and hands
each COMMAND to a child forked ahead of time (a spare, ``_child.become_spare``;
forked while the node is idle, so that no client waits for the fork) that
becomes the command: the client's own stdin/stdout/stderr (passed with the COMMAND,
SCM_RIGHTS) or, for a client that passed none, pipes whose bytes the node
forwards as CONSOLE_WRITE packets. The child's exit status, or the signal it
died of, becomes the EXIT packet. CANCEL sends SIGINT to the command's
process group, a vanished client's command is killed. The node never runs
tool code and keeps nothing from one command for the next.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._codec import (
    DEFAULT_HANDSHAKE,
    FOREIGN_REPLY,
    HANDSHAKE_MESSAGE_SIZE,
    ExitType,
    MalformedPayload,
    PacketDecoder,
    PacketType,
    Verdict,
    check_handshake_request,
    decode_cancel,
    decode_command,
    encode_console_write,
    encode_exit,
    encode_handshake_reply,
    encode_header,
)
from ._child import GO, STOP, become_spare, encode_order
from ._compat import CodeWatch
from ._warm import import_preloads, recording_environment_reads
from ._runner import CANCELLED_STATUS, PythonCommand, UnsupportedCommand, flush_std_streams, parse_python_argv
from ._wire import COMMAND_FDS, COMMAND_UMASK, LOCAL_SIGNALS, UMASK_SHIFT, peer_uid, recv_with_fds, send_with_fds

__all__ = ["EXIT_KILLED", "NodeServer", "STARTUP_VARIABLES"]

logger = logging.getLogger("ipcfast.node")

#: EXIT type: the command died of a signal; the exit code is the signal number.
EXIT_KILLED = int(ExitType.KILLED)

# Exit types of the EXIT packet (docs/protocol.md 10.4).
_COMPLETED, _CANCELLED, _CRASHED, _BUSY, _STALE, _REFUSED = range(6)

#: Environment variables that shape an interpreter at its start: a command
#: whose values differ from the node's would not run as a cold python would,
#: so the node refuses it and the client runs it itself.
STARTUP_VARIABLES = (
    "PYTHONCOERCECLOCALE",
    "PYTHONDEBUG",
    "PYTHONDEVMODE",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONFAULTHANDLER",
    "PYTHONHASHSEED",
    "PYTHONINSPECT",
    "PYTHONINTMAXSTRDIGITS",
    "PYTHONMALLOC",
    "PYTHONNODEBUGRANGES",
    "PYTHONOPTIMIZE",
    "PYTHONPLATLIBDIR",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONPYCACHEPREFIX",
    "PYTHONSAFEPATH",
    "PYTHONTRACEMALLOC",
    "PYTHONUTF8",
    "PYTHONVERBOSE",
    "PYTHONWARNDEFAULTENCODING",
    "PYTHONWARNINGS",
)

_KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a stopping node's commands
_CHUNK = 65536
_MAX_OUTPUT_PACKET = 1 << 20
_MAX_PENDING = 4 << 20  # bytes queued for a slow client before its command's pipes wait


class _Job:
    """A running command: the forked child and, on the packet path, its pipes."""

    def __init__(self, pid: int, conn: "_Conn", pipes: Dict[int, int]) -> None:
        self.pid = pid
        self.conn: Optional[_Conn] = conn
        self.pipes = pipes  # read end -> stream number (packet path only)
        self.cancelled = False
        self.reading = True  # its pipes are registered with the selector


class _Spare:
    """A child forked ahead of its command, waiting on ``sock`` for it."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.handshake = b""
        self.decoder: Optional[PacketDecoder] = None
        self.fds: List[int] = []  # descriptors received and not yet taken by a COMMAND
        self.job: Optional[_Job] = None
        self.out = bytearray()
        self.closing = False  # close once self.out is sent


class NodeServer:
    """A warm process that runs ``python ...`` commands for node clients,
    each in a child forked from the state after the preloads.

    ``preload`` modules are imported once, at start (``pkg.*``: the package
    and all its submodules; ``@group``: the modules of every entry point in
    that group, e.g. ``@pytest11`` for pytest's plugins). ``serve_forever()`` returns after
    ``idle_timeout`` seconds without a command (None: never), after a
    ``shutdown`` control request, on SIGTERM, or when a loaded module's code
    changed on disk (it releases its name at once, so a fresh node can take
    it). ``max_commands`` commands run at once; more are answered BUSY."""

    def __init__(
        self,
        name: str,
        *,
        preload: Sequence[str] = (),
        idle_timeout: Optional[float] = 600.0,
        max_commands: int = 32,
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be a positive number of seconds, or None")
        self.name = name
        self.preload = list(preload)
        self.idle_timeout = idle_timeout
        self.max_commands = max_commands
        self._listener: Any = None
        self._sel = selectors.DefaultSelector()
        self._conns: Dict[int, _Conn] = {}
        self._jobs: Dict[int, _Job] = {}
        self._stop_reason: Optional[str] = None
        self._commands = 0
        self._started = time.time()
        self._last_active = time.monotonic()
        self._wake_r = self._wake_w = -1
        self._startup_env: Dict[str, Optional[str]] = {}
        self._preload_env: Dict[str, Optional[str]] = {}  # what the preloads read while imported
        self._watch: Optional[CodeWatch] = None
        self._next_check = 0.0
        self._stopped_at: Optional[float] = None
        self._fork_times: List[float] = []  # seconds os.fork() took in the node, last 100
        self._spare: Optional[_Spare] = None
        self._spare_died_at = 0.0

    # ---- start and stop ----------------------------------------------------

    def _listen(self) -> None:
        from .._pure import _Listener  # the lock-file ownership protocol (docs/protocol.md 2.1)

        self._listener = _Listener(self.name, world=False)
        self._sel.register(self._listener.sock, selectors.EVENT_READ, None)

    def _release_name(self) -> None:
        """Closes the listening socket and gives the name up (a fresh node
        may take it); running commands still end normally."""
        if self._listener is not None:
            try:
                self._sel.unregister(self._listener.sock)
            except (KeyError, ValueError):
                pass
            self._listener.close()
            self._listener = None

    def request_stop(self, reason: str) -> None:
        """Makes serve_forever() return once the running commands have ended."""
        if self._stop_reason is None:
            self._stop_reason = reason
            logger.info("node %s stopping: %s", self.name, reason)
        self._release_name()
        self._discard_spare()

    def _node_fds(self) -> List[int]:
        """Every descriptor of the node that a command must not keep."""
        fds = [self._sel.fileno(), self._wake_r, self._wake_w]
        if self._listener is not None:
            fds += [self._listener.sock.fileno(), self._listener.lock_fd, self._listener.wake_r, self._listener.wake_w]
        for conn in self._conns.values():
            fds.append(conn.sock.fileno())
            fds.extend(conn.fds)
        for job in self._jobs.values():
            fds.extend(job.pipes)
        if self._spare is not None:
            fds.append(self._spare.sock.fileno())
        return [fd for fd in fds if fd >= 0]

    def serve_forever(self) -> str:
        """Serves until idle, shut down, stale or SIGTERM; returns why it stopped."""
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        with recording_environment_reads(self._preload_env):
            import_preloads(self.preload)
        self._startup_env = {k: os.environ.get(k) for k in STARTUP_VARIABLES}
        self._watch = CodeWatch()
        # Objects made so far are shared by every child: the collector need
        # not look at them again (fewer copy-on-write pages, faster children).
        gc.collect()
        gc.freeze()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        previous = {
            signal.SIGCHLD: signal.signal(signal.SIGCHLD, lambda s, f: None),
            signal.SIGTERM: signal.signal(signal.SIGTERM, lambda s, f: self._on_sigterm()),
        }
        previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self._listen()
            logger.info("node %s serving (pid %d, preloaded %s)", self.name, os.getpid(), self.preload or "nothing")
            self._loop()
        finally:
            self._shut_down()
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        reason = self._stop_reason or "stopped"
        logger.info("node %s stopped: %s", self.name, reason)
        return reason

    def _on_sigterm(self) -> None:
        self.request_stop("SIGTERM")
        for job in self._jobs.values():
            self._kill(job, signal.SIGTERM)

    def _shut_down(self) -> None:
        self._release_name()
        self._discard_spare()
        deadline = time.monotonic() + _KILL_GRACE
        for job in list(self._jobs.values()):
            self._kill(job, signal.SIGTERM)
        while self._jobs and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        for job in list(self._jobs.values()):
            self._kill(job, signal.SIGKILL)
            os.waitpid(job.pid, 0)
            self._end_job(job, 0)
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ---- the loop ----------------------------------------------------------

    def _loop(self) -> None:
        while not (self._stop_reason is not None and not self._jobs and not self._answering()):
            timeout = self._housekeeping()
            for key, events in self._sel.select(timeout):
                obj = key.fileobj
                if self._listener is not None and obj is self._listener.sock:
                    self._accept()
                elif obj == self._wake_r:
                    _drain(self._wake_r)
                elif isinstance(key.data, _Conn):
                    self._on_conn(key.data, events)
                elif isinstance(key.data, _Job):
                    self._on_pipe(key.data, int(key.fd))
            self._reap()

    def _answering(self) -> bool:
        """Whether a stopping node still owes a client an answer: an EXIT
        not yet delivered, or a reply to a connection that has not sent its
        COMMAND yet (connected before the node gave its name up: it gets
        STALE, not a closed socket). Clients get 5 seconds for that."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        pending = any(conn.out or conn.job is None for conn in self._conns.values())
        return pending and time.monotonic() - self._stopped_at < 5.0

    def _housekeeping(self) -> float:
        """Idle exit and the stale-code check; returns how long select may wait."""
        now = time.monotonic()
        if self._jobs:
            self._last_active = now
        if self._stop_reason is not None:
            return 0.05
        if self._spare is None and not self._jobs and now - self._spare_died_at >= 1.0:
            self._fork_spare()
        if now >= self._next_check and not self._jobs:
            # An idle node notices a changed module by itself and goes away.
            self._next_check = now + 1.0
            changed = self._watch.changed() if self._watch is not None else None
            if changed is not None:
                self.request_stop(f"{changed} changed on disk")
                return 0.0
        if self.idle_timeout is not None:
            left = self.idle_timeout - (now - self._last_active)
            if left <= 0 and not self._conns:
                self.request_stop(f"idle for {self.idle_timeout:g} s")
                return 0.0
            return max(0.01, min(1.0, left))
        return 1.0

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.warning("node %s: accept failed: %s", self.name, exc)
            return
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        if uid is not None and uid != os.geteuid():
            logger.warning("node %s: refused a connection from uid %s", self.name, uid)
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self._conns[sock.fileno()] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _on_conn(self, conn: _Conn, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush(conn)
        if events & selectors.EVENT_READ and conn.sock.fileno() in self._conns:
            self._read(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data, fds = recv_with_fds(conn.sock, _CHUNK, 3)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        conn.fds.extend(fds)
        if not data:
            self._drop(conn)
            return
        if len(conn.fds) > 3:  # more than one command's worth: a client that hoards our descriptors
            self._protocol_error(conn, "descriptors without a COMMAND to take them")
            return
        if conn.decoder is None:
            data = self._handshake(conn, data)
            if conn.decoder is None:
                return
        for packet in conn.decoder.feed(data):
            if conn.closing:
                return
            self._on_packet(conn, packet.type, packet.payload)
        if conn.decoder.error is not None:
            self._protocol_error(conn, f"bad packet header ({conn.decoder.error.name})")

    def _handshake(self, conn: _Conn, data: bytes) -> bytes:
        conn.handshake += data
        verdict, _version = check_handshake_request(conn.handshake, DEFAULT_HANDSHAKE)
        if verdict == Verdict.NEED_MORE:
            return b""
        if verdict != Verdict.OK:
            if verdict == Verdict.FOREIGN:
                try:
                    conn.sock.send(bytes((FOREIGN_REPLY,)))  # docs/protocol.md 3.3
                except OSError:
                    pass
            self._drop(conn)
            return b""
        rest = conn.handshake[HANDSHAKE_MESSAGE_SIZE:]
        value = conn.handshake[: HANDSHAKE_MESSAGE_SIZE - 1]
        conn.decoder = PacketDecoder()
        self._send(conn, encode_handshake_reply(value, 1))
        return rest

    def _on_packet(self, conn: _Conn, type_: int, payload: bytes) -> None:
        if type_ == PacketType.REQUEST:
            try:
                self._send_packet(conn, PacketType.RESPONSE, self._control(payload))
            except ValueError as exc:
                self._send_packet(conn, PacketType.ERROR, str(exc).encode())
        elif type_ == PacketType.COMMAND:
            if conn.job is not None:
                self._protocol_error(conn, "a COMMAND while another runs on this connection")
                return
            self._command(conn, payload)
        elif type_ == PacketType.CANCEL:
            try:
                signal_code = decode_cancel(payload)
            except MalformedPayload as exc:
                self._protocol_error(conn, str(exc))
                return
            signum = LOCAL_SIGNALS[signal_code]
            if conn.job is None:
                return  # it crossed the EXIT
            if signum == signal.SIGINT:
                if conn.job.cancelled:
                    return  # Ctrl-C once is a cancel; the client stops waiting on the second
                conn.job.cancelled = True
            if signum == signal.SIGTERM:
                # As `kill PID` sends it to a cold run: to the command alone.
                try:
                    os.kill(conn.job.pid, signum)
                except (ProcessLookupError, PermissionError):
                    pass
            else:
                # What a terminal sends its foreground group: the command's group.
                self._kill(conn.job, signum)
        else:
            self._protocol_error(conn, f"unexpected packet type {type_}")

    def _control(self, request: bytes) -> bytes:
        if request == b"status":
            return json.dumps(
                {
                    "pid": os.getpid(),
                    "name": self.name,
                    "busy": bool(self._jobs),
                    "running": sorted(self._jobs),
                    "commands": self._commands,
                    "started": self._started,
                    "idle_for": round(time.monotonic() - self._last_active, 3),
                    "idle_timeout": self.idle_timeout,
                    "fork_ms_median": _median_ms(self._fork_times),
                    "spare": self._spare.pid if self._spare is not None else None,
                    "preload": self.preload,
                    "python": sys.version.split()[0],
                    "executable": sys.executable,
                }
            ).encode()
        if request == b"shutdown":
            self.request_stop("a shutdown request")
            return b"ok"
        raise ValueError(f"unknown control request {request[:40]!r} (known: status, shutdown)")

    # ---- commands ------------------------------------------------------------

    def _command(self, conn: _Conn, payload: bytes) -> None:
        try:
            command = decode_command(payload)
        except MalformedPayload as exc:
            self._protocol_error(conn, str(exc))
            return
        stdio: Optional[List[int]] = None
        if command.flags & COMMAND_FDS:
            if len(conn.fds) < 3:
                self._protocol_error(conn, "a COMMAND that announces descriptors came without them")
                return
            stdio, conn.fds = conn.fds[:3], conn.fds[3:]
        try:
            verdict = self._admit(command.argv, command.env, command.cwd)
            if isinstance(verdict, int):
                self._send_exit(conn, 2 if verdict == _REFUSED else 0, verdict)
                return
            umask = (command.flags >> UMASK_SHIFT) & 0o7777 if command.flags & COMMAND_UMASK else None
            try:
                started = self._start(conn, verdict[0], verdict[1], command.cwd, stdio, umask)
            except OSError as exc:  # out of processes or descriptors: the client runs it itself
                logger.warning("node %s: cannot start a command: %s", self.name, exc)
                started = _BUSY
            if started != _COMPLETED:
                self._send_exit(conn, 0, started)
        finally:
            for fd in stdio or ():
                os.close(fd)

    def _admit(
        self, argv: List[bytes], env_entries: List[bytes], cwd: bytes
    ) -> "int | Tuple[PythonCommand, Dict[str, str]]":
        """The parsed command and environment, or the exit type that says
        why the node does not run it (the client then runs it itself). The
        check for changed code comes later, while the child sets up (_start)."""
        if self._stop_reason is not None:
            return _STALE
        if len(self._jobs) >= self.max_commands:
            return _BUSY
        try:
            parsed = parse_python_argv([os.fsdecode(a) for a in argv])
        except UnsupportedCommand as exc:
            logger.info("node %s: refused a command: %s", self.name, exc)
            return _REFUSED
        env = {os.fsdecode(k): os.fsdecode(v) for k, _, v in (e.partition(b"=") for e in env_entries) if k}
        for key in STARTUP_VARIABLES:
            if env.get(key) != self._startup_env.get(key):
                logger.info("node %s: refused a command: %s differs from the node's", self.name, key)
                return _REFUSED
        for key, value in self._preload_env.items():
            if env.get(key) != value:
                logger.info("node %s: refused a command: %s differs from the value the preloads read", self.name, key)
                return _REFUSED
        if not os.path.isdir(cwd):
            return _REFUSED
        return parsed, env

    def _fork_spare(self) -> None:
        """Forks the child that the next command will run in, so that the
        fork and the child's first steps are not paid while a client waits."""
        ours, theirs = socket.socketpair()
        close_fds = self._node_fds() + [ours.fileno()]
        flush_std_streams()
        started = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            logger.warning("node %s: cannot fork a spare child: %s", self.name, exc)
            self._spare_died_at = time.monotonic()
            return
        if pid == 0:
            become_spare(theirs, close_fds)
        self._fork_times.append(time.perf_counter() - started)
        del self._fork_times[:-100]
        theirs.close()
        try:
            os.setpgid(pid, pid)  # also done by the child: no race with a CANCEL
        except OSError:
            pass
        ours.settimeout(10.0)  # a spare always reads its order; never hang the node on one
        self._spare = _Spare(pid, ours)

    def _discard_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        spare.sock.close()  # the spare reads EOF and exits; the kill makes sure
        try:
            os.kill(spare.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(spare.pid, 0)
        except ChildProcessError:
            pass

    def _take_spare(self, order: bytes, stdio: List[int]) -> _Spare:
        """The spare with its order sent (a spare that died meanwhile is
        replaced once)."""
        for attempt in (1, 2):
            if self._spare is None:
                self._fork_spare()
                if self._spare is None:
                    raise OSError("cannot fork")
            spare, self._spare = self._spare, None
            try:
                send_with_fds(spare.sock, order, stdio)
                return spare
            except OSError:
                self._spare = spare
                self._discard_spare()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(
        self,
        conn: _Conn,
        parsed: PythonCommand,
        env: Dict[str, str],
        cwd: bytes,
        stdio: Optional[List[int]],
        umask: Optional[int],
    ) -> int:
        """Hands the command to a spare child; returns COMPLETED when it
        runs, else the exit type to answer."""
        pipes: Dict[int, int] = {}
        child_ends: List[int] = []
        if stdio is None:  # the packet path: output through pipes, no stdin
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            pipes = {out_r: 1, err_r: 2}
            null = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            stdio = child_ends = [null, out_w, err_w]
        try:
            spare = self._take_spare(encode_order(parsed, cwd, env, umask), stdio)
        except OSError:
            for fd in child_ends + list(pipes):
                os.close(fd)
            raise
        for fd in child_ends:
            os.close(fd)
        # The child takes the client's context meanwhile: the stat of every
        # loaded module's file costs the client nothing more.
        changed = self._watch.changed() if self._watch is not None else None
        try:
            spare.sock.sendall(STOP if changed is not None else GO)
        except OSError:
            pass  # it died: its wait status says so
        spare.sock.close()
        job = _Job(spare.pid, conn, pipes)
        self._jobs[spare.pid] = job
        if changed is not None:
            self.request_stop(f"{changed} changed on disk")
            for fd in list(pipes):
                os.close(fd)
            job.pipes = {}
            job.conn = None  # reaped as any job; its client gets STALE now
            return _STALE
        conn.job = job
        self._commands += 1
        for fd in pipes:
            os.set_blocking(fd, False)
            self._sel.register(fd, selectors.EVENT_READ, job)
        return _COMPLETED

    def _kill(self, job: _Job, signum: int) -> None:
        try:
            os.killpg(job.pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(job.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def _on_pipe(self, job: _Job, fd: int) -> None:
        try:
            data = os.read(fd, _CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipe(job, fd)
            return
        if job.conn is not None:
            self._send_packet(job.conn, PacketType.CONSOLE_WRITE, encode_console_write(job.pipes[fd], data))

    def _close_pipe(self, job: _Job, fd: int) -> None:
        if job.reading:
            self._sel.unregister(fd)
        os.close(fd)
        del job.pipes[fd]

    def _reap(self) -> None:
        if self._spare is not None:
            try:
                done, _ = os.waitpid(self._spare.pid, os.WNOHANG)
            except ChildProcessError:
                done = self._spare.pid
            if done:  # killed by someone: fork the next one a little later
                logger.warning("node %s: the spare child %d died", self.name, self._spare.pid)
                self._spare.sock.close()
                self._spare = None
                self._spare_died_at = time.monotonic()
        for pid in list(self._jobs):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._end_job(self._jobs[pid], status)

    def _end_job(self, job: _Job, status: int) -> None:
        del self._jobs[job.pid]
        # What the child wrote is in its pipes by now: forward all of it.
        # Output of background children after this point is not waited for.
        for fd in list(job.pipes):
            while fd in job.pipes:
                self._on_pipe(job, fd)
                if fd in job.pipes and not _readable(fd):
                    self._close_pipe(job, fd)
        conn, job.conn = job.conn, None
        if conn is None:
            return
        conn.job = None
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            if signum == signal.SIGINT and job.cancelled:
                self._send_exit(conn, CANCELLED_STATUS, _CANCELLED)
            else:
                self._send_exit(conn, signum, EXIT_KILLED)
        else:
            self._send_exit(conn, os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1, _COMPLETED)

    # ---- sending ---------------------------------------------------------------

    def _send_exit(self, conn: _Conn, code: int, exit_type: int) -> None:
        self._send_packet(conn, PacketType.EXIT, encode_exit(code, exit_type))

    def _send_packet(self, conn: _Conn, type_: int, payload: bytes) -> None:
        for at in range(0, max(1, len(payload)), _MAX_OUTPUT_PACKET):
            chunk = payload[at : at + _MAX_OUTPUT_PACKET]
            if type_ == PacketType.CONSOLE_WRITE and at:
                chunk = payload[:1] + chunk
            self._send(conn, encode_header(type_, len(chunk)) + chunk)

    def _send(self, conn: _Conn, data: bytes) -> None:
        conn.out += data
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        while conn.out:
            try:
                n = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            del conn.out[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        self._sel.modify(conn.sock, events, conn)
        if conn.closing and not conn.out:
            self._drop(conn)
        elif conn.job is not None and conn.job.pipes:
            self._pace(conn.job, len(conn.out) < _MAX_PENDING)

    def _pace(self, job: _Job, reading: bool) -> None:
        """A client that reads slowly holds its command's output back (the
        command blocks on a full pipe) instead of filling the node's memory."""
        if reading == job.reading:
            return
        job.reading = reading
        for fd in job.pipes:
            if reading:
                self._sel.register(fd, selectors.EVENT_READ, job)
            else:
                self._sel.unregister(fd)

    def _protocol_error(self, conn: _Conn, message: str) -> None:
        logger.warning("node %s: protocol error: %s", self.name, message)
        conn.closing = True
        self._send_packet(conn, PacketType.ERROR, message.encode("utf-8", "replace"))

    def _drop(self, conn: _Conn) -> None:
        """Forgets a connection; a command still running for it is killed
        with its process group (its client is gone)."""
        fd = conn.sock.fileno()
        if fd < 0 or self._conns.pop(fd, None) is None:
            return
        self._sel.unregister(conn.sock)
        conn.sock.close()
        for received in conn.fds:
            os.close(received)
        conn.fds = []
        job, conn.job = conn.job, None
        if job is not None:
            job.conn = None
            self._kill(job, signal.SIGKILL)


def _median_ms(values: List[float]) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2] * 1000, 3)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])
