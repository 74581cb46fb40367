"""Shared pieces of the benchmark scripts: records, envelopes, acks, pacing, statistics, processes.

Everything a consumer process needs (``Recorder``, ``envelope``, ``write_ack``)
imports nothing beyond the standard library, so the idle-cost scenario
measures the consumer, not the harness. psutil is imported lazily, only by the
orchestrator-side helpers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent

# One record per handled message, fixed width so progress is the record files' size:
# "<index> <producer timestamp> <handler start>", both wall-clock seconds.
RECORD_FMT = "%010d %017.6f %017.6f\n"
RECORD_LEN = 47
READY = "BENCH-CONSUMER-READY"


# -- consumer side (standard library only) ---------------------------------------------------------


class Recorder:
    """Appends one fixed-width line per handled message to ``<dir>/rec-<pid>.txt``, flushed each time."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.fspath(directory)
        self._fh: Any = None
        self._pid = 0
        self._lock = threading.Lock()  # a threaded consumer (dramatiq) opens its file once

    def record(self, index: int, t_sent: float, t_start: float) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    path = os.path.join(self.directory, f"rec-{os.getpid()}.txt")
                    self._fh = open(path, "a")  # noqa: SIM115 - kept open
                    self._pid = os.getpid()  # after _fh: another thread that sees the pid sees the file
        self._fh.write(RECORD_FMT % (index, t_sent, t_start))
        self._fh.flush()

    def lost(self) -> None:
        """A message the system took but could not handle (counted, so a run does not wait for it)."""
        with open(os.path.join(self.directory, f"lost-{os.getpid()}.txt"), "a") as handle:
            handle.write("x")


def now_iso() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def envelope(group: str, index: int, t_sent: float) -> dict[str, Any]:
    """The same JSON envelope ipcpool writes, so every system parses the same bytes."""
    return {"id": str(uuid.uuid4()), "type": "task", "groupFolder": group, "payload": {"i": index, "t": t_sent},
            "timestamp": now_iso(), "requiresAck": True}


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def write_atomic(tmp_path: str, final_path: str, data: bytes) -> None:
    """Write to a temp file, then rename(2): a reader never sees it partial."""
    fd = os.open(tmp_path, _CREATE, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp_path, final_path)


def write_ack(group_dir: str, message_id: str) -> None:
    """``<group_dir>/acks/<id>.ack`` by tmp+rename, as ipcpool's workers write them."""
    write_atomic(f"{group_dir}/tmp/.{message_id}.ack.tmp", f"{group_dir}/acks/{message_id}.ack", now_iso().encode())


def make_group_dirs(spool: Path, groups: list[str], subdirs: tuple[str, ...] = ("tmp", "messages", "acks")) -> None:
    for group in groups:
        for sub in subdirs:
            (spool / group / sub).mkdir(parents=True, exist_ok=True)


def group_names(count: int) -> list[str]:
    """``main`` plus ``g0000``... for ``count`` groups in all."""
    return ["main"] + [f"g{k:04d}" for k in range(max(0, count - 1))]


def target_group(count: int) -> str:
    """The group the many-groups scenario sends to: one in the middle."""
    return "main" if count <= 1 else f"g{(count - 1) // 2:04d}"


# -- producer side ---------------------------------------------------------------------------------


def add_producer_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, required=True, help="the measurement's work folder")
    parser.add_argument("--group", default="main")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second (0: flat out)")
    parser.add_argument("--timeout", type=float, default=30.0, help="roundtrip: seconds to wait for each ack")
    parser.add_argument("--out", type=Path, required=True, help="JSON summary written here")


def run_producer(send: Callable[[int, float], None], count: int, rate: float) -> dict[str, Any]:
    """Send ``count`` messages, paced on an absolute schedule when ``rate`` > 0; returns the summary."""
    start = time.monotonic()
    cpu_start = time.process_time()
    t_first = t_last = 0.0
    for i in range(count):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t_last = time.time()
        if i == 0:
            t_first = t_last
        send(i, t_last)
    return {"sent": count, "t_first": t_first, "t_last": t_last, "t_done": time.time(),
            "cpu_s": time.process_time() - cpu_start}  # the sending loop's CPU, not the interpreter's start


def run_roundtrip(send_and_wait: Callable[[int, float], None], count: int,
                  timeout_errors: tuple[type[Exception], ...]) -> dict[str, Any]:
    """Sequential send-and-wait-for-ack; every round trip in seconds, and how many acks never came."""
    rtts: list[float] = []
    lost = 0
    for i in range(count):
        t0 = time.perf_counter()
        try:
            send_and_wait(i, time.time())
        except timeout_errors as exc:
            lost += 1
            print(f"message {i}: no ack: {exc}", file=sys.stderr, flush=True)
            continue
        rtts.append(time.perf_counter() - t0)
    return {"sent": count, "rtts": rtts, "lost": lost}


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, path)


# -- orchestrator side -----------------------------------------------------------------------------


class BenchError(Exception):
    """A measurement could not be made (timeout, a process died); the row says why."""


def _bytes_in(directory: Path, prefix: str) -> int:
    """Total size of the files named ``prefix*`` (records and lost marks are fixed-size appends)."""
    with os.scandir(directory) as entries:
        return sum(e.stat().st_size for e in entries if e.name.startswith(prefix))


def count_records(directory: Path) -> int:
    return _bytes_in(directory, "rec-") // RECORD_LEN


def count_lost(directory: Path) -> int:
    return _bytes_in(directory, "lost-")


def read_records(directory: Path) -> dict[int, tuple[float, float]]:
    """index -> (t_sent, t_start); a redelivered index keeps its first handling."""
    found: dict[int, tuple[float, float]] = {}
    for path in sorted(directory.glob("rec-*.txt")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                found.setdefault(int(parts[0]), (float(parts[1]), float(parts[2])))
    return found


def count_files(directory: Path) -> int:
    try:
        with os.scandir(directory) as entries:
            return sum(1 for e in entries if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks; ``values`` need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * pct / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A subprocess in its own session, its output in a log file; every live one is stopped at exit."""

    live: set[Proc] = set()

    def __init__(self, argv: list[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = argv
        self.log = log
        self._log_fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, stdout=self._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        Proc.live.add(self)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise BenchError(f"{what} exited early (code {self.popen.returncode}):\n{self.log_tail()}")

    def wait_for_text(self, text: str, timeout: float, what: str) -> None:
        def seen() -> bool:
            self.check_alive(what)
            return text in self.log_text()

        wait_until(seen, timeout, f"{what} to print {text!r}", interval=0.02)

    def wait(self, timeout: float, what: str) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what} did not finish in {timeout:g}s:\n{self.log_tail()}") from None
        if code != 0:
            raise BenchError(f"{what} failed (code {code}):\n{self.log_tail()}")
        return code

    def descendants(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait; then SIGKILL its process group; then any descendant left (by pid)."""
        import psutil

        children = self.descendants()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)  # its own session: pgid == pid, still unreaped
                except (ProcessLookupError, PermissionError):
                    pass
                self.popen.wait(10)
        alive = _wait_gone(children, 10.0)
        for proc in alive:
            try:
                proc.kill()  # psutil checks the pid still names the same process
            except psutil.Error:
                pass
        _wait_gone(alive, 5.0)
        self._log_fh.close()
        Proc.live.discard(self)
        return self.popen.returncode

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(cls.live):
            proc.stop(timeout=5.0)


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait until each process has exited; a zombie counts as gone (its reaper may be slow). Returns the rest."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        procs = alive
        time.sleep(0.01)


def python_argv(script: str, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPTS / script), *args]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("IPCPOOL_ROOT", None)
    env.pop("IPCPOOL_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS), str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def filesystem_of(path: Path) -> str:
    """``<fstype> on <mount point>`` for the mount holding ``path`` (from /proc/mounts)."""
    best = ("", "unknown")
    target = str(path.resolve())
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                    if inside and len(mount) >= len(best[0]):
                        best = (mount, parts[2])
    except OSError:
        pass
    return f"{best[1]} on {best[0] or '?'}"


def cpu_model() -> str:
    """The CPU's name, with its family, model, stepping and clock.

    A VM's name can be as vague as "AMD EPYC", and hosts of one name differ
    by CPU generation: the same code measured twice as fast on one as on
    another. The family and model tell them apart.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first CPU's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown"
    name = fields.get("model name", "unknown")
    ident = ", ".join(f"{label} {fields[key]}" for key, label in
                      (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")) if key in fields)
    mhz = fields.get("cpu MHz")
    extra = "; ".join(part for part in (ident, f"{float(mhz):.0f} MHz" if mhz else "") if part)
    return f"{name} ({extra})" if extra else name


def machine_info() -> dict[str, Any]:
    uname = os.uname()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": sys.version.split()[0],
        "python_impl": sys.implementation.name,
        "kernel": f"{uname.sysname} {uname.release}",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
