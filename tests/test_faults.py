"""Faults found by reading the code, each shown with the real thing: a stopped worker with a full
pipe, renames the filesystem refuses (an immutable folder: EPERM even for root), a full tmpfs,
and a pid that is not the worker it looks like.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import records, wait_until, write_config

from ipcpool import Client
from ipcpool.config import AckConfig
from ipcpool.pool.orphans import kill_lock_holders, lock_holders


def _names(root: Path, sub: str, group: str = "main") -> list[str]:
    folder = root / group / sub
    return sorted(os.listdir(folder)) if folder.exists() else []


def _drained(root: Path) -> bool:
    return not _names(root, "messages") and not [n for n in _names(root, "processing")]


def _status(root: Path) -> dict:
    return json.loads((root / ".ipcpool" / "status.json").read_text())


def _health(env: dict, config: Path) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "ipcpool", "health", "--config", str(config)],
                         env=env, capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout.strip()


# -- 8: the loop never blocks on one worker ---------------------------------------------------------------


def test_a_stopped_worker_with_a_full_pipe_never_wedges_the_loop(tmp_path, root, supervisor_factory):
    """256 names of 250 bytes are more than a pipe holds: the send to a SIGSTOPped worker used to block."""
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"prefetch": 256}},
                          handlers={"legacy": "recorder:record"})
    sup = supervisor_factory(config)
    stopped, _other = wait_until(lambda: len(p := sup.worker_pids()) == 2 and p, message="two workers")
    os.kill(stopped, signal.SIGSTOP)
    try:
        names = [f"{'x' * 245}{i:05d}.json" for i in range(1000)]  # 255 bytes each, the most a name has
        for name in names:
            (root / "main" / "tmp" / name).write_text("{}")
        # All in while the supervisor is stopped too: it then sees them in one read, and the first
        # hand-off to each worker is a whole prefetch (without that, small batches might all fit).
        os.kill(sup.pid, signal.SIGSTOP)
        try:
            for name in names:
                os.rename(root / "main" / "tmp" / name, root / "main" / "messages" / name)
        finally:
            os.kill(sup.pid, signal.SIGCONT)
        wait_until(lambda: _drained(root) and len({r["id"] for r in records(tmp_path)}) == len(names), 120,
                   message="every message handled, the stopped worker's share by the others")
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass
    log = sup.log()
    assert f"killing worker pid={stopped}" in log and "no heartbeat" in log
    assert {r["id"][-5:] for r in records(tmp_path)} == {n[245:250] for n in names}
    sup.stop()


# -- 9: a transition that fails half-way leaves the message tracked and retried ----------------------------


def test_a_requeue_the_filesystem_refuses_is_retried_until_it_succeeds(tmp_path, root, env, supervisor_factory,
                                                                      immutable):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1}})
    sup = supervisor_factory(config)
    client = Client(root, "main")
    held = [client.send("main", "task", {"sleep": 0.2, "n": i}, requires_ack=True) for i in range(5)]
    first = wait_until(lambda: records(tmp_path), message="a delivery started")[0]
    immutable(root / "main" / "messages")
    os.kill(first["pid"], signal.SIGKILL)  # what it held must go back to messages/, which refuses it
    wait_until(lambda: "cannot return it to messages/" in sup.log(), 30, message="the failed requeue logged")
    wait_until(lambda: _status(root)["transport"]["stranded"] >= 1, 30, message="status shows it stranded")
    code, reason = _health(env, config)
    assert code == 1 and "stranded" in reason
    assert "unexpected error in the supervisor loop" not in sup.log(), "handled, not caught by the catch-all"
    wait_until(lambda: len(p := sup.worker_pids()) == 1 and first["pid"] not in p, message="the worker replaced")
    immutable(root / "main" / "messages", on=False)
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in held), 60, message="all acked")
    assert "stranded message recovered" in sup.log()
    assert sup.log().count("cannot return it to messages/") == len(_failed_keys(sup.log())), "one line each"
    wait_until(lambda: _status(root)["transport"]["stranded"] == 0, 30, message="nothing stranded")
    sup.stop()


def _failed_keys(log: str) -> set[str]:
    return {line.split("file=")[1].split()[0] for line in log.splitlines() if "cannot return it to messages/" in line}


def test_a_poison_quarantine_that_fails_keeps_the_history_and_is_retried(tmp_path, root, supervisor_factory,
                                                                        immutable):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"max_deliveries": 2}})
    sup = supervisor_factory(config)
    immutable(root / "main" / "errors")
    poison = Client(root, "main").send("main", "task", {"exit": 7}, requires_ack=True)
    wait_until(lambda: "cannot move it to errors/" in sup.log(), 60, message="the failed quarantine logged")
    assert poison + ".json" in _names(root, "processing"), "it stays where it was"
    immutable(root / "main" / "errors", on=False)
    record = wait_until(lambda: [json.loads((root / "main" / "errors" / n).read_text())
                                 for n in _names(root, "errors") if n.endswith(".error.json")], 30,
                        message="the poison message quarantined after all")[0]
    assert record["id"] == poison and len(record["deliveries"]) == 2, "its history was kept"
    assert [r["delivery"] for r in records(tmp_path) if r["id"] == poison] == [1, 2]
    wait_until(lambda: (root / "main" / "acks" / f"{poison}.nack").exists(), 30, message="its sender answered")
    sup.stop()


# -- 10: a full disk never turns a handled message into poison ----------------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    mountpoint = Path(tempfile.mkdtemp(prefix="ipcpool-small-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], capture_output=True)
    if result.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
        mountpoint.rmdir()


def _fill(path: Path) -> None:
    """Write until the filesystem says ENOSPC."""
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_full_disk_never_runs_a_handled_message_again(tmp_path, small_disk, env, supervisor_factory):
    root = small_disk / "ipc"
    gate = tmp_path / "gate"
    config = write_config(tmp_path / "c.toml", root,
                          sections={"pool": {"workers": 1, "max_deliveries": 2}, "ack": {"timeout": 60.0}},
                          handlers={"task": "recorder:record"})
    sup = supervisor_factory(config)
    client = Client(root, "main", ack=AckConfig(timeout=120, max_retries=0))
    first = client.prepare("main", "task", {"wait_file": str(gate), "n": 0}, requires_ack=True)
    client.publish(first)
    acked = [first.message_id] + [client.send("main", "task", {"wait_file": str(gate), "n": i}, requires_ack=True)
                                  for i in range(1, 4)]
    # A second copy of the first message under another file name, behind it in the queue: the ack
    # check must see that the first was handled even though its ack could not be written yet.
    (root / "main" / "tmp" / "twin.json").write_bytes(first.data)
    os.rename(root / "main" / "tmp" / "twin.json", root / "main" / "messages" / "twin.json")
    rejected = client.send("main", "nohandler", {}, requires_ack=True)
    reply: dict = {}

    def request() -> None:
        with Client(root, "replies") as requester:
            reply["result"] = requester.request("main", "task", {"wait_file": str(gate), "result": 42}, timeout=120)

    requester = threading.Thread(target=request, daemon=True)
    requester.start()
    wait_until(lambda: len(_names(root, "processing")) == 7, 30, message="all seven claimed")
    wait_until(lambda: records(tmp_path), 30, message="the first handler waiting at its gate")
    _fill(small_disk / "filler")
    gate.touch()
    wait_until(lambda: "its ACK cannot be written" in sup.log(), 60, message="the acks failing for want of room")
    _code, reason = wait_until(lambda: (h := _health(env, config))[0] == 1 and "full" in h[1] and h, 30,
                              message="health to say the spool is full")
    assert "filesystem is full" in reason
    assert _status(root)["transport"]["full"] is True
    assert sup.proc.poll() is None, "the pool runs on"
    (small_disk / "filler").unlink()
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in acked), 60,
               message="the acks written once there is room")
    requester.join(60)
    assert reply.get("result") == 42, "the response, kept while the disk was full, was written"
    wait_until(lambda: (root / "main" / "acks" / f"{rejected}.nack").exists(), 30, message="the rejection recorded")
    wait_until(lambda: _health(env, config)[0] == 0, 30, message="healthy again")
    counts = Counter(r["id"] for r in records(tmp_path))
    assert all(counts[i] == 1 for i in acked), f"a handled message ran again: {counts}"
    assert "worker died" not in sup.log()
    assert [n for n in _names(root, "processing")] == []
    sup.stop()


def test_an_ack_the_filesystem_refuses_is_written_later_and_never_reruns_the_handler(tmp_path, root, env,
                                                                                     supervisor_factory, immutable):
    """The same path as a full disk, kept failing for as long as the test wants: acks/ immutable."""
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1},
                                                               "http": {"listen": "127.0.0.1:0"}})
    sup = supervisor_factory(config)
    immutable(root / "main" / "acks")
    client = Client(root, "main")
    first = client.prepare("main", "task", {"n": 0}, requires_ack=True)
    client.publish(first)
    wait_until(lambda: "its ACK cannot be written" in sup.log(), 30, message="the ack refused")
    wait_until(lambda: "cannot write its ack" in sup.log(), 30, message="the supervisor's retry refused too")
    assert _names(root, "processing") == [f".ack-{first.message_id}"], "the handled file kept as the proof"
    # The sender re-sends (its ack did not come): the copy is a duplicate, not a second run.
    client.outbox.publish("main", "resent.json", first.data)
    wait_until(lambda: "Duplicate IPC message skipped" in sup.log(), 30, message="the re-send deduplicated")
    wait_until(lambda: (h := _health(env, config))[0] == 1 and "stranded" in h[1], 30,
               message="health to say a message is stranded (status is written every interval)")
    wait_until(lambda: _metric(sup, "ipcpool_ack_holds") == 1, 30, message="/metrics to show the ack held")
    immutable(root / "main" / "acks", on=False)
    wait_until(lambda: (root / "main" / "acks" / f"{first.message_id}.ack").exists(), 30, message="the ack written")
    wait_until(lambda: _names(root, "processing") == [], 30, message="the held file removed")
    wait_until(lambda: _metric(sup, "ipcpool_ack_holds") == 0, 30, message="/metrics: no ack held any more")
    assert [r["id"] for r in records(tmp_path)] == [first.message_id], "handled exactly once"
    # after a restart too: a held file found at start gets its ack
    sup.stop()
    sup2 = supervisor_factory(config)
    assert [r["id"] for r in records(tmp_path)] == [first.message_id]
    sup2.stop()


def _metric(sup: Any, name: str) -> float:
    """One metric's value in a real scrape of the supervisor's /metrics."""
    from prometheus_text import parse, total

    with urllib.request.urlopen(f"http://{sup.status()['http']}/metrics", timeout=30) as reply:
        return total(parse(reply.read().decode()), name)


def test_a_held_file_found_at_start_gets_its_ack(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    (root / "main" / "processing").mkdir(parents=True)
    (root / "main" / "processing" / ".ack-left-by-a-crash").write_text('{"id": "left-by-a-crash"}')
    sup = supervisor_factory(config)
    wait_until(lambda: (root / "main" / "acks" / "left-by-a-crash.ack").exists(), 30, message="the ack written")
    assert _names(root, "processing") == [] and _names(root, "messages") == []
    assert records(tmp_path) == [], "never handled again"
    sup.stop()


# -- 11: never kill a stranger ----------------------------------------------------------------------------


def test_only_processes_that_hold_the_lock_are_killed(tmp_path):
    """A pid from /proc/locks may have been reused: candidates are checked to hold the lock file first."""
    lock = tmp_path / "workers.lock"
    lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_SH)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert holder.stdout.readline().strip() == "locked"
        fd = os.open(lock, os.O_RDWR)
        try:
            assert holder.pid in lock_holders(fd)
            assert stranger.pid not in lock_holders(fd)
            # The stranger stands for a process that reused a listed pid: offered as a candidate, it survives.
            killed = kill_lock_holders(fd, [stranger.pid, holder.pid])
            assert killed == [holder.pid]
            assert holder.wait(10) == -signal.SIGKILL
            assert stranger.poll() is None and psutil.Process(stranger.pid).is_running()
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lock is free now
        finally:
            os.close(fd)
    finally:
        for proc in (holder, stranger):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.mark.portable
def test_a_recorded_worker_is_killed_only_while_it_is_who_the_record_says(tmp_path):
    """Where /proc cannot say who holds the lock (macOS), the previous supervisor's record of its workers
    (pid and start time) is the proof: a recorded pid whose start time differs is a stranger, spared."""
    lock = tmp_path / "workers.lock"
    lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_SH)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert holder.stdout.readline().strip() == "locked"
        recorded = {holder.pid: psutil.Process(holder.pid).create_time(),
                    stranger.pid: psutil.Process(stranger.pid).create_time() - 3600}  # its pid, another process
        fd = os.open(lock, os.O_RDWR)
        try:
            assert kill_lock_holders(fd, [], recorded) == [holder.pid]
            assert holder.wait(10) == -signal.SIGKILL
            assert stranger.poll() is None
        finally:
            os.close(fd)
    finally:
        for proc in (holder, stranger):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
