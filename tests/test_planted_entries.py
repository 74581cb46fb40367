"""Every kind of entry, in every folder of the spool, at every transition: the invariants hold each time, on the
spool and through the Redis bridge (local inboxes feeding the streams, answers written back beside the files).

One table, walked on a real pool: each kind of entry a writer (or a hand) can leave —
a regular file, symlinks (into the spool, outside it, dangling, to a FIFO), a hard link,
a FIFO, a socket, a directory, names that are not UTF-8, 255 bytes long or hold a newline —
is planted in tmp/, messages/, tasks/, processing/, acks/, responses/ and errors/ while
messages are claimed, acked and quarantined; then odd entries go beside real messages in the
inbox when workers are SIGKILLed (put back) and at ``errors retry``, and in messages/ and
processing/ when the supervisor is SIGKILLed and restarted (start-up recovery). The odd
names are planted at claim and retry.
After each phase:

- every real message ended exactly once: handled once, or in errors/ once with its reason;
- every planted entry in an inbox ended in errors/ with a reason, or was left alone;
- the supervisor's loop answered every /healthz within a second, all along;
- nothing outside the root was read, written or removed (contents, times, access times).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SupervisorProcess, kill_session, records, run_cli, wait_until, write_config

FOLDERS = ("tmp", "messages", "tasks", "processing", "acks", "responses", "errors")
ODD_KINDS = ("symlink-in-spool", "symlink-outside", "symlink-dangling", "symlink-to-fifo", "hardlink", "fifo",
             "socket", "directory")
NAME_KINDS = {  # regular files holding real messages, under names that are hard to handle
    "not-utf8": b"odd-\xff\xfe.json",
    "255-bytes": b"odd-" + b"l" * 246 + b".json",
    "newline": b"odd-new\nline.json",
}
PROBE_LIMIT = 1.0  # seconds: the loop answers a probe within this, whatever is planted


def envelope(message_id: str, **payload: Any) -> bytes:
    return json.dumps({"id": message_id, "type": "task", "payload": payload, "requiresAck": True}).encode()


class Outside:
    """Files beside the root that links point at: nothing may read, write or remove them."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "outside"
        self.dir.mkdir()
        self.target = self.dir / "target.json"
        self.target.write_bytes(envelope("outside-target"))
        self.fifo = self.dir / "fifo"
        os.mkfifo(self.fifo)
        mtime = os.stat(self.target).st_mtime
        os.utime(self.target, (1, mtime))  # atime before mtime: any read moves it (relatime)
        self.before = self.snapshot()
        with open(self.target, "rb") as handle:  # does this filesystem record reads at all?
            handle.read()
        self.reads_seen = self.snapshot() != self.before
        os.utime(self.target, (1, mtime))
        self.before = self.snapshot()

    def snapshot(self) -> list[tuple[str, str, int, int, int]]:
        out = []
        for path in sorted(self.dir.iterdir()):
            st = os.lstat(path)
            out.append((path.name, _digest(path) if stat.S_ISREG(st.st_mode) else "special", st.st_mtime_ns,
                        st.st_atime_ns, st.st_mode))
        return out

    def check(self) -> None:
        now = self.snapshot()
        if not self.reads_seen:  # noatime: compare everything but access times
            now = [row[:3] + row[4:] for row in now]  # type: ignore[misc]
            before = [row[:3] + row[4:] for row in self.before]
        else:
            before = self.before
        assert now == before, "something outside the root was read, written or removed"


def _digest(path: Path) -> str:
    """The file's hash, read without moving its access time (O_NOATIME: the test runs as the owner or root)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    try:
        return hashlib.sha256(os.read(fd, 1 << 20)).hexdigest()
    finally:
        os.close(fd)


def _is_entry(path: bytes) -> bool:
    """Something other than a directory is at ``path`` (a directory is left alone where it was planted)."""
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def plant(path: bytes, kind: str, outside: Outside, spool_target: bytes) -> None:
    """Make an entry of ``kind`` at ``path``."""
    if kind == "symlink-in-spool":
        os.symlink(spool_target, path)
    elif kind == "symlink-outside":
        os.symlink(os.fsencode(outside.target), path)
    elif kind == "symlink-dangling":
        os.symlink(os.fsencode(outside.dir / "nothing-here.json"), path)
    elif kind == "symlink-to-fifo":
        os.symlink(os.fsencode(outside.fifo), path)
    elif kind == "hardlink":
        os.link(outside.target, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o600)
    elif kind == "directory":
        os.mkdir(path)
    else:
        raise ValueError(kind)


class Probes:
    """/healthz every 50 ms from a thread; the slowest answer (or the first failure) is kept."""

    def __init__(self, address: str) -> None:
        self.url = f"http://{address}/healthz"
        self.slowest = 0.0
        self.failures: list[str] = []
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if self.paused.is_set():
                continue
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    reply.read()
            except OSError as exc:
                if not self.paused.is_set():
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            self.slowest = max(self.slowest, time.monotonic() - started)

    def check(self) -> None:
        assert not self.failures, self.failures[:3]
        assert self.slowest < PROBE_LIMIT, f"a probe waited {self.slowest:.2f}s for the loop"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Pool:
    """One root, its supervisor (restartable), what was planted and what was sent."""

    def __init__(self, tmp_path: Path, root: Path, env: dict[str, str], backend: dict[str, dict[str, Any]]) -> None:
        self.tmp_path, self.root, self.env = tmp_path, root, env
        self.outside = Outside(tmp_path)
        self.redis = bool(backend)  # through the bridge: local files into Redis, answers written back here
        self.config = write_config(
            tmp_path / "c.toml", root, handlers={"task": "recorder:record"},
            sections={"spool": {"inboxes": ["messages", "tasks"], "settle_time": 0.2, "rescan_interval": 0.5,
                                "tmp_max_age": 0.5, "response_retention": 0.5},
                      "pool": {"workers": 2, "prefetch": 16, "max_deliveries": 5},
                      "http": {"listen": "127.0.0.1:0"}, **backend})
        self.sup: SupervisorProcess | None = None
        self.probes: Probes | None = None
        self.handled_ids: set[str] = set()  # real messages that must end handled
        self.failing_ids: set[str] = set()  # real messages that must end in errors/
        self.odd: list[tuple[str, bytes]] = []  # (group, path) of entries planted in an inbox
        self.gate = tmp_path / "gate"
        self.interrupted: Counter[str] = Counter()  # handler runs a kill cut short: each may run once more
        self.starts = 0

    def group_dir(self, group: str = "main") -> bytes:
        return os.fsencode(self.root / group)

    def start(self) -> None:
        self.starts += 1
        self.sup = SupervisorProcess(self.config, self.tmp_path, self.env, self.tmp_path / f"sup{self.starts}.log")
        self.sup.start()
        address = re.search(r"on http://(\S+)", self.sup.log_since_start())
        assert address, self.sup.log()
        self.probes = Probes(address.group(1))

    def stop_probes(self) -> None:
        if self.probes is not None:
            self.probes.check()
            self.probes.stop()
            self.probes = None

    def note_running(self) -> None:
        """The handlers running now are about to be killed: each of those messages may run once more."""
        self.interrupted.update({r["id"] for r in records(self.tmp_path)} & self.handled_ids)

    def kill(self) -> None:
        """SIGKILL the supervisor and every process of its session (workers, forkserver)."""
        assert self.sup is not None and self.probes is not None
        self.probes.paused.set()
        self.stop_probes()
        kill_session(self.sup.pid)
        self.sup.wait()

    def drop(self, name: bytes, data: bytes, inbox: str = "messages", group: str = "main") -> None:
        tmp = self.group_dir(group) + b"/tmp/.part-" + os.urandom(6).hex().encode()
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.rename(tmp, self.group_dir(group) + b"/" + inbox.encode() + b"/" + name)

    def send(self, message_id: str, name: bytes | None = None, inbox: str = "messages", **payload: Any) -> None:
        self.drop(name or f"{message_id}.json".encode(), envelope(message_id, **payload), inbox)
        (self.failing_ids if payload.get("raise") else self.handled_ids).add(message_id)

    def plant_odd(self, folder: str, name: bytes, kind: str) -> None:
        path = self.group_dir() + b"/" + folder.encode() + b"/" + name
        plant(path, kind, self.outside, b"../../.ipcpool/status.json")
        if folder in ("messages", "tasks", "processing"):
            self.odd.append(("main", path))

    def plant_names(self, tag: str, inbox: str = "messages") -> None:
        """Real messages under the hard names, each made unique by ``tag`` (the 255-byte one stays 255)."""
        for kind, name in NAME_KINDS.items():
            unique = name.replace(b"odd-", f"{tag}-".encode())
            if len(unique) > 255:
                unique = unique[:4] + unique[len(unique) - 251:]
            self.send(f"{tag}-{kind}", name=unique, inbox=inbox)

    # -- the invariants -------------------------------------------------------------------------------------

    def real_quarantines(self) -> Counter[str | None]:
        """Real messages in the dead letters (their records say their type): errors/, or Redis's stream."""
        found = Counter(r.get("id") for r in self.error_records() if r.get("type") == "task")
        if self.redis:
            from ipcpool.config import load_config
            from ipcpool.transport import make_inspector

            inspector = make_inspector(load_config(self.config))
            try:
                found.update(e.record.get("id") for e in inspector.dead_letters().list()
                             if e.record.get("type") == "task")
            finally:
                inspector.close()
        return found

    def in_flight(self, ids: set[str]) -> bool:
        """Every one of ``ids`` taken (the spool: claimed into processing/; Redis: sent on, none left here) and
        two of them running (one in each worker)."""
        names = {f"{i}.json" for i in ids}
        inbox = {os.fsdecode(n) for n in os.listdir(self.group_dir() + b"/messages")}
        claimed = {os.fsdecode(n) for n in os.listdir(self.group_dir() + b"/processing")}
        # Claimed, not merely present: a namesake dropped over one still in messages/ would replace it.
        taken = not (names & (inbox | claimed)) if self.redis else names <= claimed
        return taken and len({r["id"] for r in records(self.tmp_path)} & ids) == 2

    def error_records(self) -> list[dict[str, Any]]:
        folder = self.group_dir() + b"/errors"
        out = []
        for name in os.listdir(folder):
            if name.endswith(b".error.json") and stat.S_ISREG(os.lstat(folder + b"/" + name).st_mode):
                try:
                    out.append(json.loads(open(folder + b"/" + name, "rb").read()))  # noqa: SIM115
                except ValueError:
                    continue
        return out

    def unfinished(self) -> list[str]:
        """What has not ended yet: unacked messages, missing quarantines, odd entries still in an inbox."""
        acked = os.listdir(self.group_dir() + b"/acks")
        quarantined = self.real_quarantines()
        return ([f"not acked: {i}" for i in sorted(self.handled_ids) if f"{i}.ack".encode() not in acked]
                + [f"not quarantined: {i}" for i in sorted(self.failing_ids) if quarantined[i] < 1]
                + [f"still there: {path!r}" for _group, path in self.odd if _is_entry(path)]
                + [f"still claimed: {name!r}" for name in self._claimed()])

    def _claimed(self) -> list[bytes]:
        """Entries in processing/ (a directory planted there is not a message: it is left alone)."""
        out = []
        for folder in (self.group_dir() + b"/processing", self.group_dir() + b"/processing/tasks"):
            for name in os.listdir(folder):
                try:  # listed, then moved on by the pool: not claimed any more
                    if not name.startswith(b".") and not stat.S_ISDIR(os.lstat(folder + b"/" + name).st_mode):
                        out.append(name)
                except FileNotFoundError:
                    continue
        return out

    def check(self, phase: str) -> None:
        try:
            wait_until(lambda: not self.unfinished(), 60, message=f"{phase}: every message and planted entry ended")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.unfinished()}") from None
        counts = Counter(r["id"] for r in records(self.tmp_path))
        twice = {i: n for i, n in counts.items() if i in self.handled_ids and n > 1 + self.interrupted[i]}
        assert not twice, f"{phase}: handled more than once: {twice}"
        assert self.handled_ids <= set(counts), f"{phase}: never handled: {self.handled_ids - set(counts)}"
        # A real message's record says its type; a planted entry's record has only the id its name gives.
        in_errors = self.real_quarantines()
        assert not (self.handled_ids & set(in_errors)), f"{phase}: handled and quarantined"
        assert all(in_errors[i] == 1 for i in self.failing_ids), f"{phase}: {in_errors}"
        reasons = [r for r in self.error_records() if r.get("id") not in self.failing_ids]
        assert all(r.get("reason") for r in reasons), f"{phase}: a quarantined entry without its reason"
        assert self.probes is not None
        self.probes.check()
        self.outside.check()


@pytest.fixture
def pool(tmp_path: Path, root: Path, env: dict[str, str], backend: dict[str, dict[str, Any]]) -> Iterator[Pool]:
    made = Pool(tmp_path, root, env, backend)
    yield made
    made.gate.touch()
    if made.probes is not None:
        made.probes.stop()
    if made.sup is not None and made.sup.proc is not None and made.sup.proc.poll() is None:
        made.sup.stop()


def _walk(pool: Pool, phase: Callable[[], None], name: str) -> None:
    phase()
    pool.check(name)


def test_every_kind_of_entry_in_every_folder_at_every_transition(pool: Pool) -> None:
    pool.start()
    # Claim, ack, quarantine: odd entries in every folder at once, real messages among them.
    def plant_everywhere() -> None:
        for folder in FOLDERS:
            for kind in ODD_KINDS:
                suffix = ".ack" if folder == "acks" else ".json"
                name = f"odd-{folder}-{kind}{suffix}" if folder != "errors" else f"1700000000000-odd-{kind}.json"
                pool.plant_odd(folder, name.encode(), kind)
                if folder == "errors" and not pool.redis:  # with a record: errors retry takes it back to messages/
                    record = {"file": name, "originalName": f"err-{kind}.json", "inbox": "messages",
                              "group": "main", "id": None, "type": None, "reason": "planted"}
                    (pool.root / "main" / "errors" / f"{name}.error.json").write_text(json.dumps(record))
                    pool.odd.append(("main", pool.group_dir() + f"/messages/err-{kind}.json".encode()))
        pool.plant_names("claim")
        pool.plant_names("task", inbox="tasks")
        for n in range(10):
            pool.send(f"plain-{n}")
        pool.send("fails", **{"raise": "on purpose"})
    _walk(pool, plant_everywhere, "claim, ack, quarantine")

    # Put back: both workers SIGKILLed holding gated messages, whose names meanwhile hold odd entries.
    def put_back() -> None:
        kinds = [*ODD_KINDS, "regular"]
        for kind in kinds:
            pool.send(f"back-{kind}", gate=str(pool.gate))
        wait_until(lambda: pool.in_flight({f"back-{k}" for k in kinds}), 30, message="every gated message taken")
        for kind in kinds:
            name = f"back-{kind}.json".encode()
            if kind == "regular":
                pool.drop(name, envelope("back-namesake"))
                pool.handled_ids.add("back-namesake")
            else:
                pool.plant_odd("messages", name, kind)
        assert pool.sup is not None
        pool.note_running()
        for pid in pool.sup.worker_pids():
            os.kill(pid, signal.SIGKILL)
        pool.gate.touch()
    _walk(pool, put_back, "put back")

    # errors retry: every dead letter back into its inbox, beside namesakes; odd ones come back to errors/.
    def retry() -> None:
        for kind in ODD_KINDS:
            pool.plant_odd("messages", f"retry-{kind}.json".encode(), kind)
        pool.plant_names("retry")
        out = run_cli(pool.env, pool.tmp_path, "errors", "retry", "--config", str(pool.config), "--all",
                      timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr  # the failure and every odd entry: back in place
    _walk(pool, retry, "errors retry")  # "fails" fails again: once more in errors/, its old record retried/

    # Start-up recovery: the supervisor SIGKILLed holding gated messages; odd entries under their names.
    def recover() -> None:
        pool.gate.unlink()
        kinds = [*ODD_KINDS, "regular"]
        for kind in kinds:
            pool.send(f"recover-{kind}", gate=str(pool.gate))
        wait_until(lambda: pool.in_flight({f"recover-{k}" for k in kinds}), 30, message="every gated message taken")
        pool.note_running()
        pool.kill()
        for kind in ODD_KINDS:
            pool.plant_odd("messages", f"recover-{kind}.json".encode(), kind)
            pool.plant_odd("processing", f"hand-{kind}.json".encode(), kind)  # then put back into messages/
            pool.odd.append(("main", pool.group_dir() + f"/messages/hand-{kind}.json".encode()))
        pool.drop(b"recover-regular.json", envelope("recover-namesake"))
        pool.handled_ids.add("recover-namesake")
        pool.gate.touch()
        pool.start()
    _walk(pool, recover, "start-up recovery")
    assert pool.sup is not None
    pool.stop_probes()
    assert pool.sup.stop() == 0
    assert "unexpected error" not in "".join(p.read_text(errors="replace")
                                             for p in pool.tmp_path.glob("sup*.log"))
