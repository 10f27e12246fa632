"""The server node (ipcfast.node, SPEC sections 7 and 10): real node processes
started by real clients, driven through the CLI as a user would. Real
third-party tools run through it in tests/test_node_tools.py.

Every test gets its own socket directory (XDG_RUNTIME_DIR) and log directory
(XDG_CACHE_HOME), so its nodes are its own; the fixture shuts them down.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from conftest import c_node_client, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the node forks and passes POSIX descriptors")

ROOT = Path(__file__).resolve().parent.parent

TOOL = r"""
import logging, os, subprocess, sys
print("argv", sys.argv[1:])
print("cwd", os.getcwd())
print("env", os.environ.get("NODE_TEST_VALUE"))
print("\x1b[1;31mred stderr\x1b[0m", file=sys.stderr)
sys.stdout.write("no newline")
sys.stdout.flush()
print(" | stdout again")
for i in range(3):
    print("out", i, flush=True)
    print("err", i, file=sys.stderr, flush=True)
logging.basicConfig(format="%(levelname)s:%(message)s")
logging.warning("a warning through logging")
subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
print("caf\u00e9 \u2603")
code = int(sys.argv[1]) if len(sys.argv) > 1 else 0
sys.exit(code)
"""

CRASH = r"""
def fail(x):
    raise ValueError(f"bad value {x}")

print("before the crash")
fail(42)
"""

SLOW = r"""
import sys, time
try:
    print("started", flush=True)
    for _ in range(600):
        time.sleep(0.05)
finally:
    print("cleanup ran", flush=True)
print("not cancelled")
"""

HELPER_USER = r"""
import helper_mod
print(helper_mod.VALUE)
"""


class Node:
    """Runs the node CLI in an isolated environment."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # A short socket directory: pytest's tmp paths can exceed sun_path.
        run_dir = Path(tempfile.mkdtemp(prefix="ipn", dir="/tmp"))
        self.run_dir = run_dir
        self.env = dict(os.environ)
        pythonpath = [p for p in sys.path if p]
        self.env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        self.env.pop("PYTHONUNBUFFERED", None)
        self.env["XDG_RUNTIME_DIR"] = str(run_dir)
        self.env["XDG_CACHE_HOME"] = str(tmp / "cache")
        self.env["NODE_TEST_VALUE"] = "from-the-client"
        self.work = tmp / "work"
        self.work.mkdir()
        (self.work / "tool.py").write_text(TOOL, encoding="utf-8")
        (self.work / "crash.py").write_text(CRASH, encoding="utf-8")
        (self.work / "slow.py").write_text(SLOW, encoding="utf-8")
        (self.work / "helper_user.py").write_text(HELPER_USER, encoding="utf-8")
        (self.work / "helper_mod.py").write_text("VALUE = 'first version'\n", encoding="utf-8")
        pkg = self.work / "nodepkg"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("", encoding="utf-8")
        (pkg / "__main__.py").write_text(TOOL, encoding="utf-8")
        self.options = ["--idle-timeout", "120"]

    def cli(self, *args: str, timeout: float = 60, **kwargs: object) -> "subprocess.CompletedProcess[bytes]":
        return subprocess.run(
            [sys.executable, "-m", "ipcfast.node", *args],
            cwd=str(self.work),
            env=self.env,
            capture_output=True,
            timeout=timeout,
            **kwargs,  # type: ignore[arg-type]
        )

    def run(self, *python_args: str, options: Optional[List[str]] = None) -> "subprocess.CompletedProcess[bytes]":
        return self.cli("run", *(self.options if options is None else options), "--", *python_args)

    def cold(self, *python_args: str) -> "subprocess.CompletedProcess[bytes]":
        return subprocess.run(
            [sys.executable, *python_args], cwd=str(self.work), env=self.env, capture_output=True, timeout=60
        )

    def status(self, options: Optional[List[str]] = None) -> Optional[Dict[str, object]]:
        done = self.cli("status", *(self.options if options is None else options))
        if done.returncode != 0:
            return None
        result: Dict[str, object] = json.loads(done.stdout)
        return result

    def pid(self) -> int:
        status = self.status()
        assert status is not None, "no node is running"
        return int(status["pid"])  # type: ignore[call-overload]

    def shutdown_all(self) -> None:
        for options in (self.options, ["--idle-timeout", "1"]):
            status = self.status(options)
            if status is None:
                continue
            self.cli("shutdown", *options)
            pid = int(status["pid"])  # type: ignore[call-overload]
            if not wait_for(lambda pid=pid: not _alive(pid), timeout=10):  # type: ignore[misc]
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; /proc tells (Linux).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    try:
        yield n
    finally:
        n.shutdown_all()


_DURATION = re.compile(rb"in \d+\.\d+s")


def _same_as_cold(node: Node, *python_args: str) -> "subprocess.CompletedProcess[bytes]":
    cold = node.cold(*python_args)
    warm = node.run(*python_args)
    assert warm.stdout == cold.stdout
    assert warm.stderr == cold.stderr
    assert warm.returncode == cold.returncode
    return warm


# ---- launch-or-connect --------------------------------------------------------


def test_first_run_starts_a_node_and_later_runs_reuse_it(node: Node) -> None:
    assert node.status() is None
    first = node.run("tool.py", "0")
    assert first.returncode == 0, first.stderr
    pid = node.pid()
    assert _alive(pid)
    for code in (0, 3):
        again = node.run("tool.py", str(code))
        assert again.returncode == code
    status = node.status()
    assert status is not None and status["pid"] == pid and status["commands"] == 3
    log = list((node.tmp / "cache" / "ipcfast").glob("*.log"))
    assert log and "serving" in log[0].read_text()


def test_output_and_exit_code_match_a_cold_run(node: Node) -> None:
    node.run("tool.py")  # start the node
    for args in (("tool.py", "0"), ("tool.py", "7", "--flag", "two words"), ("-m", "nodepkg", "5")):
        warm = _same_as_cold(node, *args)
        assert b"\x1b[1;31mred stderr\x1b[0m\n" in warm.stderr  # ANSI codes intact
        assert b"child out\n" in warm.stdout and b"child err\n" in warm.stderr  # subprocess output
        assert b"WARNING:a warning through logging\n" in warm.stderr  # logging, again in a later command
        assert "caf\u00e9 \u2603".encode() in warm.stdout


def test_cwd_env_and_argv_are_the_clients(node: Node) -> None:
    sub = node.work / "sub dir"
    sub.mkdir()
    node.run("tool.py")
    env = dict(node.env, NODE_TEST_VALUE="changed value")
    done = subprocess.run(
        [sys.executable, "-m", "ipcfast.node", "run", *node.options, "--", str(node.work / "tool.py"), "0", "ä"],
        cwd=str(sub),
        env=env,
        capture_output=True,
        timeout=60,
    )
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "argv ['0', 'ä']"
    assert lines[1] == f"cwd {sub}"
    assert lines[2] == "env changed value"
    # The node's own directory and environment are back for the next one.
    again = node.run("tool.py", "0").stdout.decode().splitlines()
    assert again[1] == f"cwd {node.work}" and again[2] == "env from-the-client"


def test_streams_keep_their_order(node: Node) -> None:
    warm = _same_as_cold(node, "tool.py", "0")
    out = warm.stdout.decode().splitlines()
    assert [line for line in out if line.startswith("out ")] == ["out 0", "out 1", "out 2"]
    err = warm.stderr.decode().splitlines()
    assert [line for line in err if line.startswith("err ")] == ["err 0", "err 1", "err 2"]


# ---- failures ------------------------------------------------------------------


def test_a_crashing_command_reports_like_python_and_the_node_survives(node: Node) -> None:
    node.run("tool.py")
    pid = node.pid()
    warm = _same_as_cold(node, "crash.py")
    assert warm.returncode == 1
    assert b"ValueError: bad value 42" in warm.stderr and b"runpy" not in warm.stderr
    assert node.pid() == pid
    assert node.run("tool.py", "4").returncode == 4


def test_missing_module_and_script_match_python(node: Node) -> None:
    node.run("tool.py")
    _same_as_cold(node, "-m", "no_such_module_xyz")
    _same_as_cold(node, "no_such_script.py")


def test_a_killed_node_is_replaced_by_the_next_client(node: Node) -> None:
    node.run("tool.py")
    pid = node.pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not _alive(pid), timeout=10)
    done = node.run("tool.py", "2")
    assert done.returncode == 2 and b"argv ['2']" in done.stdout
    new_pid = node.pid()
    assert new_pid != pid


def test_a_module_a_command_imports_is_always_read_fresh(node: Node) -> None:
    # The node never imports what a command imports (each command is a
    # fresh child): an edit is seen at once, and the node has no reason to go.
    assert node.run("helper_user.py").stdout == b"first version\n"
    pid = node.pid()
    helper = node.work / "helper_mod.py"
    helper.write_text("VALUE = 'second version'\n", encoding="utf-8")
    os.utime(helper, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert node.run("helper_user.py").stdout == b"second version\n"
    assert node.pid() == pid


def test_a_changed_preloaded_module_replaces_the_node(node: Node) -> None:
    options = ["--preload", "helper_mod", "--idle-timeout", "120"]
    assert node.run("helper_user.py", options=options).stdout == b"first version\n"
    old = node.status(options)
    assert old is not None and old["preload"] == ["helper_mod"]
    helper = node.work / "helper_mod.py"
    helper.write_text("VALUE = 'second version'\n", encoding="utf-8")
    os.utime(helper, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    # A new client computes a new name and starts a fresh node...
    assert node.run("helper_user.py", options=options).stdout == b"second version\n"
    new = node.status(options)
    assert new is not None and new["pid"] != old["pid"]
    # ...and the old one, which nobody can reach any more, notices and exits.
    assert wait_for(lambda: not _alive(int(old["pid"])), timeout=15)  # type: ignore[call-overload]
    node.cli("shutdown", *options)
    assert wait_for(lambda: not _alive(int(new["pid"])), timeout=15)  # type: ignore[call-overload]


EARLY_CLIENT = r"""
import sys
from ipcfast.node._client import connect, _run_remote
conn = connect(sys.argv[1], 10.0)
print("connected", flush=True)
sys.stdin.readline()
print(_run_remote(conn, [sys.executable, "-c", "print('ran')"], False))
"""


def test_a_client_connected_before_the_node_went_stale_gets_stale(node: Node) -> None:
    # The node notices the change by itself while this client is connected
    # but has not sent its COMMAND yet: the answer must be STALE (the
    # client then starts a fresh node), not a closed socket.
    options = ["--preload", "helper_mod", "--idle-timeout", "120"]
    assert node.run("helper_user.py", options=options).returncode == 0
    name = node.cli("name", *options).stdout.decode().strip()
    (node.work / "early.py").write_text(EARLY_CLIENT, encoding="utf-8")
    client = subprocess.Popen(
        [sys.executable, "early.py", name],
        cwd=str(node.work),
        env=node.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdout is not None and client.stdout.readline() == b"connected\n"
    helper = node.work / "helper_mod.py"
    helper.write_text("VALUE = 'second version'\n", encoding="utf-8")
    os.utime(helper, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    time.sleep(2.5)  # the idle node checks its files once a second
    out, _ = client.communicate(b"go\n", timeout=30)
    assert out == b"(0, 4)\n"  # exit code 0, exit type STALE
    node.cli("shutdown", *options)


def test_a_submodule_of_a_preload_changed_under_a_running_node(node: Node) -> None:
    # Same name (only the top-level file is in the name), so the running node
    # itself must notice: it answers STALE, gives its name up, and the client
    # starts a fresh node.
    pkg = node.work / "prepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import sub\n", encoding="utf-8")
    (pkg / "sub.py").write_text("VALUE = 'old sub'\n", encoding="utf-8")
    (node.work / "use_pkg.py").write_text("import prepkg\nprint(prepkg.sub.VALUE)\n", encoding="utf-8")
    options = ["--preload", "prepkg", "--idle-timeout", "120"]
    assert node.run("use_pkg.py", options=options).stdout == b"old sub\n"
    old = node.status(options)
    assert old is not None
    sub = pkg / "sub.py"
    sub.write_text("VALUE = 'new sub'\n", encoding="utf-8")
    os.utime(sub, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert node.run("use_pkg.py", options=options).stdout == b"new sub\n"
    assert wait_for(lambda: not _alive(int(old["pid"])), timeout=15)  # type: ignore[call-overload]
    node.cli("shutdown", *options)


def test_preload_a_package_tree_and_an_entry_point_group(node: Node) -> None:
    pkg = node.work / "treepkg"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "leaf.py").write_text("", encoding="utf-8")
    (pkg / "inner" / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "inner" / "deep.py").write_text("", encoding="utf-8")
    (pkg / "broken.py").write_text("raise ImportError('an optional dependency is missing')\n", encoding="utf-8")
    dist = node.work / "fakeplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[ipcfast_test_group]\nplug = helper_mod:VALUE\n", encoding="utf-8")
    options = ["--preload", "treepkg.*", "--preload", "@ipcfast_test_group", "--idle-timeout", "120"]
    probe = "import sys; print(sorted(m for m in sys.modules if m.startswith(('treepkg', 'helper_mod'))))"
    done = node.run("-c", probe, options=options)
    assert done.returncode == 0, done.stderr
    # What the node imported is there in every command (the warm state); the
    # submodule that failed to import is skipped, not fatal.
    assert done.stdout == b"['helper_mod', 'treepkg', 'treepkg.inner', 'treepkg.inner.deep', 'treepkg.leaf']\n"
    node.cli("shutdown", *options)


FAKE_PLUGIN = """
def pytest_report_header(config):
    assert config is not None
    return "fakeplug {version}"
"""


def test_pytest_plugins_preloaded_as_pytest_loads_them(node: Node) -> None:
    # A pytest plugin (an entry point in group pytest11) preloaded with
    # @pytest11 goes through pytest's rewriting hook in the node: pytest
    # does not warn that it was imported too early, the output is a cold
    # run's, and an edit of the plugin replaces the node.
    dist = node.work / "fakeplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[pytest11]\nfakeplug = fakeplug_mod\n", encoding="utf-8")
    (dist / "RECORD").write_text("fakeplug_mod.py,,\nfakeplug-1.0.dist-info/METADATA,,\n", encoding="utf-8")
    plugin = node.work / "fakeplug_mod.py"
    plugin.write_text(FAKE_PLUGIN.format(version="v1"), encoding="utf-8")
    (node.work / "test_x.py").write_text("def test_ok():\n    assert [1] == [1]\n", encoding="utf-8")
    options = ["--preload", "@pytest11", "--idle-timeout", "120"]
    args = ["-m", "pytest", "-p", "no:cacheprovider", "test_x.py"]
    probe = "import sys; m = sys.modules.get('fakeplug_mod'); print(type(m.__loader__).__name__ if m else None)"
    assert node.run("-c", probe, options=options).stdout == b"AssertionRewritingHook\n"
    for version in ("v1", "v2"):
        plugin.write_text(FAKE_PLUGIN.format(version=version), encoding="utf-8")
        os.utime(plugin, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        cold = node.cold(*args)
        warm = node.run(*args, options=options)
        assert cold.returncode == 0 and f"fakeplug {version}".encode() in cold.stdout
        assert _DURATION.sub(b"", warm.stdout) == _DURATION.sub(b"", cold.stdout), (warm.returncode, warm.stderr)
        assert warm.stderr == cold.stderr and warm.returncode == cold.returncode
    node.cli("shutdown", *options)


ENV_READER = """
import os
VALUE = os.environ.get("ENVMOD_SETTING", "unset")
"""


def test_a_variable_a_preload_read_differs_so_the_command_runs_cold(node: Node) -> None:
    # envmod read ENVMOD_SETTING while the node imported it: a command with
    # another value would see the node's in a warm child, so it runs cold.
    (node.work / "envmod.py").write_text(ENV_READER, encoding="utf-8")
    options = ["--preload", "envmod", "--idle-timeout", "120"]
    probe = "import envmod, os; print(envmod.VALUE, os.environ.get('ENVMOD_SETTING'))"
    node.env["ENVMOD_SETTING"] = "first"
    assert node.run("-c", probe, options=options).stdout == b"first first\n"
    pid = node.status(options)["pid"]  # type: ignore[index]
    node.env["ENVMOD_SETTING"] = "second"
    assert node.run("-c", probe, options=options).stdout == b"second second\n"
    del node.env["ENVMOD_SETTING"]
    assert node.run("-c", probe, options=options).stdout == b"unset None\n"
    node.env["ENVMOD_SETTING"] = "first"
    status = node.status(options)
    assert status is not None and status["pid"] == pid and status["commands"] == 1
    node.cli("shutdown", *options)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process tree from /proc")
def test_the_spare_child_never_outlives_its_node(node: Node) -> None:
    # The node forks the next command's child ahead of time; that spare
    # goes with the node: on shutdown, on replacement (its preload changed),
    # and when the node is killed outright (it sees its socket close).
    options = ["--preload", "helper_mod", "--idle-timeout", "120"]
    helper = node.work / "helper_mod.py"
    for how in ("shutdown", "kill", "stale"):
        assert node.run("helper_user.py", options=options).returncode == 0
        assert wait_for(lambda: (node.status(options) or {}).get("spare") is not None, timeout=10)
        status = node.status(options)
        assert status is not None
        pid, spare = int(status["pid"]), int(status["spare"])  # type: ignore[call-overload]
        assert _children_of(pid) == [spare]
        if how == "shutdown":
            assert node.cli("shutdown", *options).returncode == 0
        elif how == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            helper.write_text("VALUE = 'second version'\n", encoding="utf-8")
            os.utime(helper, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        assert wait_for(lambda gone=(pid, spare): not any(_alive(p) for p in gone), timeout=15), how
    node.cli("shutdown", *options)


def test_options_the_node_cannot_emulate_run_locally(node: Node) -> None:
    node.run("tool.py")
    warm = _same_as_cold(node, "-W", "error", "tool.py", "0")
    assert warm.returncode == 0
    status = node.status()
    assert status is not None and status["commands"] == 1


# ---- busy, cancel, idle ----------------------------------------------------------


def _start(node: Node, *python_args: str) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [sys.executable, "-m", "ipcfast.node", "run", *node.options, "--", *python_args],
        cwd=str(node.work),
        env=node.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_commands_run_side_by_side_each_in_its_own_process(node: Node) -> None:
    node.run("tool.py")
    slow = _start(node, "slow.py")
    try:
        assert slow.stdout is not None
        assert slow.stdout.readline() == b"started\n"
        status = node.status()
        assert status is not None and status["busy"] is True and len(status["running"]) == 1  # type: ignore[arg-type]
        other = node.run("tool.py", "6")
        assert other.returncode == 6 and b"argv ['6']" in other.stdout
        status = node.status()
        assert status is not None and status["commands"] == 3  # both ran on the node
    finally:
        slow.kill()
        slow.wait()


STATE = r"""
import os, sys, time
import json as _json
print(os.environ.get("LEAK"), oct(os.umask(0o077)), time.strftime("%Z", time.localtime(0)),
      "json" in sys.modules and hasattr(_json, "leaked"))
os.environ["LEAK"] = "leaked"
_json.leaked = True
"""


def test_nothing_a_command_changes_reaches_the_next_one(node: Node) -> None:
    (node.work / "state.py").write_text(STATE, encoding="utf-8")
    cold = node.cold("state.py").stdout
    assert node.run("state.py").stdout == cold
    assert node.run("state.py").stdout == cold  # not "leaked", not umask 077, no attribute left


def test_umask_and_time_zone_are_the_clients(node: Node) -> None:
    (node.work / "state.py").write_text(STATE, encoding="utf-8")
    node.run("state.py")
    for umask, tz in ((0o027, "UTC0"), (0o002, "EST5EDT")):
        env = dict(node.env, TZ=tz)
        words = [sys.executable, "-m", "ipcfast.node", "run", *node.options, "--", "state.py"]
        results = []
        for argv in (words, [sys.executable, "state.py"]):
            done = subprocess.run(
                argv,
                cwd=str(node.work),
                env=env,
                capture_output=True,
                timeout=60,
                preexec_fn=lambda umask=umask: os.umask(umask),
            )  # type: ignore[misc]
            results.append(done.stdout)
        assert results[0] == results[1]
        assert oct(umask).encode() in results[0] and (b"UTC" in results[0] or b"EST" in results[0])


LOCALE = r"""
import locale, os, sys
print(sys.stdout.encoding, sys.stdout.errors, sys.stderr.errors, sys.stdin.encoding,
      locale.setlocale(locale.LC_CTYPE), os.environ.get("LC_CTYPE"), sys.stdout.line_buffering)
"""


def test_locale_and_stream_encodings_are_set_up_as_at_a_python_start(node: Node) -> None:
    (node.work / "loc.py").write_text(LOCALE, encoding="utf-8")
    node.run("tool.py")
    base = {k: v for k, v in node.env.items() if not k.startswith("LC_") and k != "LANG"}
    for extra in (
        {"LANG": "C"},
        {"LANG": "C.UTF-8"},
        {"LC_ALL": "C"},
        {"PYTHONIOENCODING": "latin-1:replace"},
        {"LANG": "C", "PYTHONCOERCECLOCALE": "0"},
        {"PYTHONUNBUFFERED": "1"},
    ):
        env = dict(base, **extra)
        results = []
        for argv in (
            [sys.executable, "-m", "ipcfast.node", "run", *node.options, "--", "loc.py"],
            [sys.executable, "loc.py"],
        ):
            done = subprocess.run(argv, cwd=str(node.work), env=env, capture_output=True, timeout=60)
            results.append((done.returncode, done.stdout, done.stderr))
        assert results[0] == results[1], extra


def test_a_command_killed_by_a_signal_ends_its_client_the_same_way(node: Node) -> None:
    (node.work / "term.py").write_text(
        "import os, signal\nprint('bye', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\n", encoding="utf-8"
    )
    node.run("tool.py")
    warm = _same_as_cold(node, "term.py")
    assert warm.returncode == -signal.SIGTERM
    words = shlex.split(node.cli("c-command", *node.options).stdout.decode().strip())
    words[0] = c_node_client()
    done = subprocess.run(words + ["term.py"], cwd=str(node.work), env=node.env, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (-signal.SIGTERM, b"bye\n")


FORKER = r"""
import os, sys
print("parent before fork", flush=True)
pid = os.fork()
if pid == 0:
    print("child", flush=True)
    sys.exit(0)
os.waitpid(pid, 0)
print("parent after the child", flush=True)
sys.exit(5)
"""


def test_a_forked_child_of_the_command_does_not_answer_for_it(node: Node) -> None:
    # Issue 13 item 2: the child's sys.exit(0) must not end the command.
    (node.work / "forker.py").write_text(FORKER, encoding="utf-8")
    node.run("tool.py")
    warm = _same_as_cold(node, "forker.py")
    assert warm.returncode == 5 and warm.stdout.endswith(b"parent after the child\n")
    _same_as_cold_stream(node, "forker.py")


def _same_as_cold_stream(node: Node, *python_args: str) -> None:
    cold = node.cold(*python_args)
    warm = node.cli("run", "--stream", *node.options, "--", *python_args)
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)


def test_the_packet_path_gives_the_same_output(node: Node) -> None:
    node.run("tool.py")
    for args in (("tool.py", "0"), ("tool.py", "7"), ("crash.py",), ("-m", "nodepkg", "3")):
        _same_as_cold_stream(node, *args)
    status = node.status()
    assert status is not None and status["commands"] == 5


def test_stdin_is_the_clients(node: Node) -> None:
    (node.work / "upper.py").write_text("import sys\nsys.stdout.write(sys.stdin.read().upper())\n", "utf-8")
    node.run("tool.py")
    done = node.cli("run", *node.options, "--", "upper.py", input=b"some input\n")
    assert done.returncode == 0 and done.stdout == b"SOME INPUT\n"


def _children_of(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process tree from /proc")
def test_a_killed_client_kills_its_command_and_shutdown_leaves_nothing(node: Node) -> None:
    node.run("tool.py")
    pid = node.pid()
    slow = _start(node, "slow.py")
    assert slow.stdout is not None
    assert slow.stdout.readline() == b"started\n"
    children = _children_of(pid)
    assert len(children) == 1
    slow.kill()
    slow.wait()
    assert wait_for(lambda: not _alive(children[0]), timeout=10)
    # A command still running when the node is told to stop is waited for;
    # then neither the node nor any child is left.
    slow = _start(node, "slow.py")
    assert slow.stdout.readline() == b"started\n"  # type: ignore[union-attr]
    child = _children_of(pid)[0]
    assert node.cli("shutdown", *node.options).returncode == 0
    slow.send_signal(signal.SIGINT)
    slow.communicate(timeout=20)
    assert wait_for(lambda: not _alive(pid) and not _alive(child), timeout=15)


def test_ctrl_c_cancels_the_command_like_a_cold_run(node: Node) -> None:
    node.run("tool.py")
    pid = node.pid()
    results = {}
    for mode in ("cold", "warm"):
        if mode == "cold":
            proc = subprocess.Popen(
                [sys.executable, "slow.py"],
                cwd=str(node.work),
                env=node.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        else:
            proc = _start(node, "slow.py")
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        results[mode] = (proc.returncode, out, err)
    cold, warm = results["cold"], results["warm"]
    assert warm[0] == cold[0] == -signal.SIGINT
    assert warm[1] == cold[1] == b"cleanup ran\n"
    assert warm[2].endswith(b"KeyboardInterrupt\n") and cold[2].endswith(b"KeyboardInterrupt\n")
    assert warm[2].splitlines()[-1] == cold[2].splitlines()[-1]
    # The node survives and is free again.
    assert node.pid() == pid
    assert node.run("tool.py", "1").returncode == 1
    status = node.status()
    assert status is not None and status["busy"] is False


def test_the_node_survives_bad_peers(node: Node) -> None:
    import socket

    node.run("tool.py")
    pid = node.pid()
    name = node.cli("name", *node.options).stdout.decode().strip()
    path = f"{node.env['XDG_RUNTIME_DIR']}/ipcfast/{name}"

    def talk(data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(data)
            chunks = []
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)

    assert talk(b"GET / HTTP/1.0\r\n\r\n") == b"\xff"  # a foreign client: one byte, then closed
    from ipcfast._codec import DEFAULT_HANDSHAKE, encode_handshake_request

    hello = encode_handshake_request(DEFAULT_HANDSHAKE)
    # A COMMAND that announces descriptors but carries none: ERROR, then closed.
    from ipcfast._codec import COMMAND_FDS, Command, encode_command, encode_header

    payload = encode_command(Command([b"python", b"-c", b"pass"], b"/", [], b"", COMMAND_FDS))
    reply = talk(hello + encode_header(4, len(payload)) + payload)
    assert reply[9:10] == bytes([3]) and b"without them" in reply
    assert talk(hello + b"\x3f\x00\x00\x00\x00")[9:10] == bytes([3])  # an unknown packet type
    # CANCEL naming a signal the protocol lacks (9, SIGKILL's number): ERROR, then closed.
    reply = talk(hello + encode_header(7, 1) + b"\x09")
    assert reply[9:10] == bytes([3]) and b"unknown signal 9" in reply
    assert node.pid() == pid
    assert node.run("tool.py", "2").returncode == 2


def test_an_idle_node_exits(node: Node) -> None:
    options = ["--idle-timeout", "1"]
    assert node.run("tool.py", options=options).returncode == 0
    status = node.status(options)
    assert status is not None
    pid = int(status["pid"])  # type: ignore[call-overload]
    spare = int(status["spare"])  # type: ignore[call-overload]  # forked as soon as the command ended
    assert wait_for(lambda: not _alive(pid) and not _alive(spare), timeout=15)
    assert node.status(options) is None


def test_shutdown_stops_the_node(node: Node) -> None:
    node.run("tool.py")
    pid = node.pid()
    done = node.cli("shutdown", *node.options)
    assert done.returncode == 0 and done.stdout == b"ok\n"
    assert wait_for(lambda: not _alive(pid), timeout=10)
    missing = node.cli("status", *node.options)
    assert missing.returncode == 1 and b"no node is running" in missing.stderr


# ---- the C client ----------------------------------------------------------------


def test_c_client_and_python_client_share_one_node(node: Node) -> None:
    client = c_node_client()
    line = node.cli("c-command", *node.options).stdout.decode().strip()
    words = shlex.split(line)
    assert Path(words[0]).name == "ipcfast-node-client"
    words[0] = client
    # The C client starts the node...
    done = subprocess.run(words + ["tool.py", "3"], cwd=str(node.work), env=node.env, capture_output=True, timeout=60)
    cold = node.cold("tool.py", "3")
    assert (done.returncode, done.stdout, done.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    pid = node.pid()
    # ...the Python client reuses it, and the C client again.
    assert node.run("tool.py", "0").returncode == 0
    again = subprocess.run(
        words + ["-m", "nodepkg", "9"], cwd=str(node.work), env=node.env, capture_output=True, timeout=60
    )
    assert again.returncode == 9 and b"argv ['9']" in again.stdout
    status = node.status()
    assert status is not None and status["pid"] == pid and status["commands"] == 3


def test_c_client_ctrl_c_cancels(node: Node) -> None:
    client = c_node_client()
    words = shlex.split(node.cli("c-command", *node.options).stdout.decode().strip())
    words[0] = client
    proc = subprocess.Popen(
        words + ["slow.py"], cwd=str(node.work), env=node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGINT
    assert out == b"cleanup ran\n" and err.endswith(b"KeyboardInterrupt\n")


def test_c_client_packet_path_and_stdin(node: Node) -> None:
    client = c_node_client()
    words = shlex.split(node.cli("c-command", *node.options).stdout.decode().strip())
    words[0] = client
    cold = node.cold("tool.py", "4")
    streamed = subprocess.run(
        [words[0], "--stream", *words[1:], "tool.py", "4"],
        cwd=str(node.work),
        env=node.env,
        capture_output=True,
        timeout=60,
    )
    assert (streamed.returncode, streamed.stdout, streamed.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    (node.work / "upper.py").write_text("import sys\nsys.stdout.write(sys.stdin.read().upper())\n", "utf-8")
    piped = subprocess.run(
        words + ["upper.py"],
        cwd=str(node.work),
        env=node.env,
        input=b"from the pipe\n",
        capture_output=True,
        timeout=60,
    )
    assert piped.returncode == 0 and piped.stdout == b"FROM THE PIPE\n"
    status = node.status()
    assert status is not None and status["commands"] == 2


def test_c_client_without_a_node_runs_the_command_itself(node: Node) -> None:
    client = c_node_client()
    done = subprocess.run(
        [client, "--name", "no-node-here", "--", sys.executable, "tool.py", "5"],
        cwd=str(node.work),
        env=node.env,
        capture_output=True,
        timeout=60,
    )
    cold = node.cold("tool.py", "5")
    assert (done.returncode, done.stdout, done.stderr) == (cold.returncode, cold.stdout, cold.stderr)


def test_cli_help_and_usage_errors(node: Node) -> None:
    helped = node.cli("--help")
    assert helped.returncode == 0 and b"run" in helped.stdout and b"status" in helped.stdout
    assert node.cli("run", "--help").returncode == 0
    missing = node.cli("run")
    assert missing.returncode != 0 and b"--" in missing.stderr
    alias = subprocess.run([sys.executable, "-m", "ipcfast", "node", "--help"], capture_output=True, timeout=60)
    assert alias.returncode == 0 and alias.stdout == helped.stdout
