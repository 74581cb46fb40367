"""Shared fixtures: a private spool per test, a real supervisor subprocess, waits with deadlines.

Every test gets its own temporary root, so ``pytest -n auto`` is safe. The
supervisor runs as ``python -m ipcpool run`` in its own process group; the
autouse ``no_leftover_processes`` fixture fails a test that leaves any of its
processes behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis_server import HELPER_PIDS, RedisServer

REPO = Path(__file__).resolve().parent.parent
# What a supervisor started in the portable run must say it uses (ipcpool.portable.interfaces()).
PORTABLE_INTERFACES = "loop=PollSelector pidfd=no renames=check-then-rename leases=no locks=own-record"
HANDLERS_DIR = Path(__file__).resolve().parent / "handlers"
# The console script pip installed beside this interpreter: what a user types.
IPCPOOL = Path(sys.executable).with_name("ipcpool")


def ipcpool_cli(env: dict[str, str], cwd: Path, *args: str, input: str | None = None,  # noqa: A002
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the real ``ipcpool`` executable in its own session; killed as a group if it outlives ``timeout``."""
    command = [str(IPCPOOL)] if IPCPOOL.exists() else [sys.executable, "-m", "ipcpool"]
    proc = subprocess.Popen([*command, *args], cwd=cwd, env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"ipcpool {' '.join(args)} did not exit in {timeout}s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def pytest_configure(config: pytest.Config) -> None:
    """Become a child subreaper, so orphaned workers reparent to the test run and are seen."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


REQUIRE_TOOLS = "IPCPOOL_REQUIRE_TOOLS"  # set by .ci/run: a test whose tool is missing fails there, never skips


def require_tool(name: str, found: str | None, install: str) -> str:
    """``found`` (a path), or skip the test, saying how to install ``name`` (under CI: fail instead)."""
    if found is None:
        reason = f"{name} is not installed ({install}; .ci/run installs it)"
        if os.environ.get(REQUIRE_TOOLS):
            pytest.fail(f"{reason}, and {REQUIRE_TOOLS} says every test must run")
        pytest.skip(reason)
    return found


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; fail the test with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def write_config(path: Path, root: Path, *, handlers: dict[str, str] | None = None,
                 sections: dict[str, dict[str, Any]] | None = None, groups: list[str] | None = None) -> Path:
    """A TOML config with fast test timers; ``sections`` overrides any key."""
    base: dict[str, dict[str, Any]] = {
        "spool": {"root": str(root), "groups": groups or ["main"], "settle_time": 0.3, "rescan_interval": 1.0},
        "pool": {"workers": 2, "handler_timeout": 10.0, "shutdown_grace": 5.0, "kill_grace": 0.5},
        "retry": {"attempts": 2, "delay": 0.01},
        "heartbeat": {"interval": 0.25, "miss_limit": 4},
        "ack": {"timeout": 5.0, "max_retries": 1, "retry_delay": 0.1},
    }
    for name, values in (sections or {}).items():
        base.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        lines.append("")
    lines.append("[handlers]")
    for key, ref in (handlers or {"task": "recorder:record", "legacy": "recorder:record"}).items():
        lines.append(f"{json.dumps(key)} = {json.dumps(ref)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


class SupervisorProcess:
    """``ipcpool run`` as a real subprocess, with its log in a file."""

    def __init__(self, config: Path, cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.config = config
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True, timeout: float = 30.0,
              preexec: Callable[[], None] | None = None) -> SupervisorProcess:
        """``preexec`` runs in the child before ``ipcpool`` does (a lower resource limit, say)."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ipcpool", "run", "--config", str(self.config)],
            cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=preexec,
        )
        if wait_ready:
            wait_until(lambda: "Enhanced IPC system started" in self.log_since_start() or self.proc.poll() is not None,
                       timeout, message="Enhanced IPC system started")
            assert self.proc.poll() is None, f"supervisor exited early:\n{self.log()}"
            if os.environ.get("IPCPOOL_PORTABLE_RUN"):  # set by tests/portable/sitecustomize.py
                self._check_portable()
        return self

    def _check_portable(self) -> None:
        """In the portable run, the supervisor itself (not only this test process) took every fallback."""
        said = wait_until(lambda: re.search(r"platform interfaces: (.*)", self.log_since_start()), 10,
                          message="the supervisor's platform interfaces line")
        assert said[1] == PORTABLE_INTERFACES, f"not the fallbacks: {said[1]}\n{self.log()}"
        assert "(inotify)" not in self.log_since_start(), "the watch is watchdog's observer, not inotify read directly"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_since_start(self) -> str:
        with open(self.log_path, "rb") as handle:
            handle.seek(self._offset)
            return handle.read().decode(errors="replace")

    def status(self) -> dict[str, Any] | None:
        from ipcpool.config import load_config
        from ipcpool.localroot import read_status

        return read_status(load_config(self.config).spool.root)

    def worker_pids(self) -> list[int]:
        status = self.status() or {}
        return [w["pid"] for w in status.get("workers", []) if w.get("pid")]

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait; SIGKILL the whole session if it does not exit."""
        if self.proc is None:
            return None
        children = self.descendants()
        code = self.proc.poll()
        if code is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_session(self.proc.pid)
                code = self.proc.wait(10)
        psutil.wait_procs(children, timeout=10)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL the supervisor only (its workers must notice by themselves)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def kill_session(pid: int) -> None:
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "ipc"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses: the test handlers importable, a record folder for them."""
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    environ = dict(os.environ)
    environ.pop("IPCPOOL_ROOT", None)
    environ.pop("IPCPOOL_CONFIG", None)
    # What the run itself was given comes last, made absolute: subprocesses start in tmp_path (the portable
    # run's sitecustomize: tests/portable).
    given = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    environ["PYTHONPATH"] = os.pathsep.join([str(HANDLERS_DIR), str(REPO), *given])
    environ["IPCPOOL_TEST_RECORDS"] = str(record_dir)
    environ.setdefault("LOG_LEVEL", "info")
    return environ


@pytest.fixture
def supervisor_factory(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., SupervisorProcess]]:
    started: list[SupervisorProcess] = []

    def make(config: Path, *, start: bool = True, wait_ready: bool = True,
             preexec: Callable[[], None] | None = None) -> SupervisorProcess:
        sup = SupervisorProcess(config, tmp_path, env, tmp_path / "supervisor.log")
        started.append(sup)
        if start:
            sup.start(wait_ready=wait_ready, preexec=preexec)
        return sup

    yield make
    for sup in started:
        sup.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test process, shared (tests keep apart by key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses: each test has its own deployment on the shared server."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["spool", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """The config sections that choose the transport (Redis: the shared server, a prefix of this test's)."""
    if request.param == "spool":
        return {}
    server = request.getfixturevalue("redis_server")
    return {"transport": {"backend": "redis"},
            "redis": {"url": server.url, "prefix": request.getfixturevalue("redis_prefix"), "lease": 3.0}}


def backend_config(tmp_path: Path, root: Path, backend: dict[str, dict[str, Any]],
                   **sections: dict[str, Any]) -> Path:
    """``write_config`` with the ``backend`` fixture's sections merged under ``sections``."""
    merged = {name: dict(values) for name, values in backend.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return write_config(tmp_path / "c.toml", root, sections=merged,
                        handlers={"task": "recorder:record", "legacy": "recorder:record"})


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that kill, restart or reconfigure it."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def immutable() -> Iterator[Callable[..., None]]:
    """chattr +i on a folder: no entry can be added or removed there, even by root (a real EPERM)."""
    require_tool("chattr", shutil.which("chattr"), "Debian: apt-get install e2fsprogs")
    made: list[Path] = []

    def freeze(path: Path, on: bool = True) -> None:
        result = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"this filesystem has no immutable flag: {result.stderr.strip()}")
        if on:
            made.append(path)

    yield freeze
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves child processes (supervisors, workers, forkservers) running."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 15
    leftovers: list[psutil.Process] = []
    while time.monotonic() < deadline:
        leftovers = [p for p in me.children(recursive=True)
                     if p.pid not in before and p.pid not in HELPER_PIDS and _running(p)]
        if not leftovers:
            return
        time.sleep(0.05)
    for p in leftovers:
        try:
            p.kill()
        except psutil.Error:
            pass
    pytest.fail(f"test left processes running: {[(p.pid, _name(p)) for p in leftovers]}")


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"


def records(tmp_path: Path) -> list[dict[str, Any]]:
    """Every delivery the recorder handlers saw (one JSON line each), in the order they started.

    Each worker writes a file of its own, named by its pid, so the files' order
    is not the deliveries' (a replacement worker's pid may sort first): the
    records are ordered by their start time, each file's own order kept for a tie.
    A line without its newline is still being written (a reader can see part of a
    write(2) that is under way): it is left for the next read.
    """
    out: list[dict[str, Any]] = []
    for path in sorted((tmp_path / "records").glob("*.jsonl")):
        text = path.read_text()
        for line in text[:text.rfind("\n") + 1].splitlines():
            if line.strip():
                out.append(json.loads(line))
    out.sort(key=lambda record: record.get("at", 0.0))
    return out


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def run_cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m ipcpool ARGS`` in its own session; fails the test if it outlives ``timeout``."""
    proc = subprocess.Popen([sys.executable, "-m", "ipcpool", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"ipcpool {' '.join(args)} did not exit in {timeout}s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def files(root: Path, group: str, sub: str) -> list[str]:
    """The sorted names in ``<root>/<group>/<sub>/`` (empty when the folder does not exist)."""
    folder = root / group / sub
    return sorted(os.listdir(folder)) if folder.exists() else []


def acked(root: Path, ids: list[str], group: str = "main") -> bool:
    """Whether every id in ``ids`` has its ``acks/<id>.ack``."""
    return all((root / group / "acks" / f"{i}.ack").exists() for i in ids)


def inotify_instances(pid: int) -> int:
    """How many inotify descriptors process ``pid`` holds (read from /proc, Linux only)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:  # closed meanwhile
            pass
    return count


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class Terminal:
    """A program on a pty of its own, as a person's terminal runs it (Ctrl-C is a real SIGINT).

    ``screen`` is what it printed, escape codes stripped; ``raw`` every byte the terminal received.
    """

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, *, columns: int = 160,
                 lines: int = 50) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))  # as a window is
            # As a login shell leaves them: a suite started in the background of a script inherits
            # SIGINT ignored (POSIX asynchronous lists), and an ignored signal stays ignored across exec.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.chdir(cwd)
            os.execve(argv[0], argv, dict(env, TERM="xterm-256color", COLUMNS=str(columns), LINES=str(lines)))
        self.screen = ""
        self.raw = b""

    def _take(self, chunk: bytes) -> None:
        self.raw += chunk
        self.screen += ANSI.sub("", chunk.decode("utf-8", "replace"))

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """Read output until ``text`` appears on the screen (escape codes stripped)."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never appeared; the screen shows:\n{self.screen[-3000:]}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the program ended: its last output is all there is
                    chunk = b""
                if not chunk:
                    assert text in self.screen, f"ended without {text!r}:\n{self.screen[-3000:]}"
                self._take(chunk)
        return self.screen

    def wait(self, timeout: float = 30.0) -> int:
        """The program's exit code, once it has ended on its own (its output read meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    self._take(os.read(self.fd, 65536))
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"the program did not end within {timeout}s")

    def close(self) -> None:
        """Whatever happened, leave no program behind and no descriptor open."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = 0
        try:
            os.close(self.fd)
        except OSError:
            pass

    def ctrl_c(self) -> int:
        """Ctrl-C at the terminal (a real SIGINT from the line discipline); the exit code."""
        os.write(self.fd, b"\x03")
        return self.wait()
