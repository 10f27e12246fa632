"""Running a ``python ...`` command line inside an already running interpreter.

The node's forked child runs each COMMAND with it (in a fresh process, so
nothing is saved or restored). It emulates what ``python ARGS`` does for the forms a
command-line tool is started with::

    python [-u] [-B] [-E] [-s] [-X opt] [-W arg] -m module args...
    python [...] script.py args...
    python [...] -c code args...

``sys.argv``, ``sys.path[0]`` and ``__main__`` are set as the interpreter
would set them; an uncaught exception prints the same traceback (without the
frames of this module and runpy) and exits 1; ``SystemExit`` gives the same
exit status and message.
"""

from __future__ import annotations

import importlib.machinery
import os
import runpy
import sys
import traceback
from typing import Any, List, NamedTuple, Optional

__all__ = [
    "CANCELLED_STATUS",
    "PythonCommand",
    "UnsupportedCommand",
    "exit_status",
    "flush_std_streams",
    "parse_python_argv",
    "print_exception",
    "run_python_command",
]

#: Exit status of a command stopped by Ctrl-C, as a shell reports it (128 + SIGINT).
CANCELLED_STATUS = 130

# Options that change nothing in how a command runs in a warm interpreter
# (-B: do not write .pyc files): accepted. Any other option (-W, -X, -O, -u,
# -E, -I, ...) would have to be in effect from the interpreter's start, so
# the node refuses the command and the client runs it itself.
_FLAGS_IGNORED = set("B")


class UnsupportedCommand(ValueError):
    """A command line the node cannot run the way ``python`` would."""


class PythonCommand(NamedTuple):
    """What ``python ARGS`` would run."""

    kind: str  #: "module", "script" or "code"
    target: str  #: module name, script path or code
    args: List[str]  #: the arguments after the target


def parse_python_argv(argv: List[str]) -> PythonCommand:
    """Parses ``[python, options..., target, args...]``; raises
    :class:`UnsupportedCommand` for what cannot be run in-process (an
    interactive interpreter, an unknown option)."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" or arg == "-c":
            if i + 1 >= len(argv):
                raise UnsupportedCommand(f"Argument expected for the {arg} option")
            kind = "module" if arg == "-m" else "code"
            return PythonCommand(kind, argv[i + 1], argv[i + 2 :])
        if arg.startswith("-m") or arg.startswith("-c"):
            kind = "module" if arg[1] == "m" else "code"
            return PythonCommand(kind, arg[2:], argv[i + 1 :])
        if arg == "--":
            i += 1
            break
        if arg.startswith("-") and arg != "-":
            letters = arg[1:]
            if not all(c in _FLAGS_IGNORED for c in letters):
                raise UnsupportedCommand(f"the node cannot run python with option {arg}")
            i += 1
            continue
        break
    if i >= len(argv) or argv[i] == "-":
        raise UnsupportedCommand("an interactive interpreter (no script, -m or -c) cannot run in a node")
    return PythonCommand("script", argv[i], argv[i + 1 :])


def exit_status(code: Any) -> int:
    """The process exit status ``SystemExit(code)`` gives, writing the
    message to stderr as the interpreter does for a non-integer code."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        sys.stderr.write(f"{code}\n")
        sys.stderr.flush()
    except Exception:
        pass
    return 1


def _trimmed_traceback(exc: BaseException) -> Any:
    # Drop the node's own frames, which `python` itself never shows; runpy's
    # frames stay: `python -m` runs through runpy._run_module_as_main too.
    tb = exc.__traceback__
    node_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(node_dir):
        tb = tb.tb_next
    return tb


def flush_std_streams() -> None:
    """Flushes sys.stdout and sys.stderr (and the originals), ignoring
    streams that are closed or gone."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def print_exception(exc: BaseException) -> None:
    """Prints ``exc`` the way the interpreter reports an uncaught exception:
    through sys.excepthook (a tool may have replaced it)."""
    exc.__traceback__ = _trimmed_traceback(exc)
    flush_std_streams()
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except BaseException:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    flush_std_streams()


def _run_script(path: str) -> None:
    """What ``python path`` runs: the file's code in a fresh ``__main__``."""
    if not path.endswith((".py", ".pyw")) or not os.path.isfile(path):
        runpy.run_path(path, run_name="__main__")  # a zip, a directory, a .pyc: runpy knows them
        return
    with open(path, "rb") as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    main = type(sys)("__main__")
    main.__dict__.update(
        __file__=path,
        __builtins__=__builtins__,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __package__=None,
        __spec__=None,
    )
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def run_python_command(command: PythonCommand, cwd: Optional[str] = None) -> None:
    """Runs the command on this thread as ``__main__``. Returns normally when
    it ran to its end; lets SystemExit, KeyboardInterrupt and the command's
    own exceptions propagate (see :func:`exit_status`, :func:`print_exception`).
    Meant for a process of its own (the node's forked child): it replaces
    ``__main__``, sys.argv and sys.path[0] for good."""
    base = cwd if cwd is not None else os.getcwd()
    if command.kind == "module":
        sys.argv = ["-m", *command.args]  # runpy sets argv[0] to the module's file
        sys.path[0] = base
        # What the interpreter itself calls for -m (same errors, same frames).
        runpy._run_module_as_main(command.target, True)  # type: ignore[attr-defined]
    elif command.kind == "script":
        path = command.target
        full = path if os.path.isabs(path) else os.path.join(base, path)
        if not os.path.exists(full):
            sys.stderr.write(
                f"{sys.executable}: can't open file {os.path.abspath(full)!r}: [Errno 2] No such file or directory\n"
            )
            raise SystemExit(2)
        sys.argv = [path, *command.args]
        sys.path[0] = os.path.dirname(os.path.realpath(full))
        _run_script(os.path.abspath(full))
    else:
        sys.argv = ["-c", *command.args]
        sys.path[0] = ""
        code = compile(command.target, "<string>", "exec")
        main = type(sys)("__main__")
        main.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = main
        exec(code, main.__dict__)
