"""Stopping as service managers do it: SIGTERM/SIGINT to the supervisor, to the whole process group
(systemd's KillMode=control-group, ``timeout``, ``kill -- -PGID``), to one worker; the forkserver
dying alone; SIGHUP and other signals; what a drain says. Every message is counted.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest
from conftest import records, wait_until, write_config

from ipcpool import Client

SLOW = {"pool": {"workers": 2, "shutdown_grace": 10.0}}


def _names(root: Path, sub: str, group: str = "main") -> list[str]:
    folder = root / group / sub
    return sorted(os.listdir(folder)) if folder.exists() else []


def _ids_in(root: Path, sub: str) -> set[str]:
    return {n.rsplit(".", 1)[0] for n in _names(root, sub) if not n.startswith(".")}


def _publish(root: Path, n: int, sleep: float = 0.3) -> list[str]:
    client = Client(root, "main")
    return [client.send("main", "task", {"sleep": sleep, "n": i}) for i in range(n)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _forkserver(sup) -> psutil.Process:
    (server,) = [p for p in psutil.Process(sup.pid).children() if "forkserver" in " ".join(p.cmdline())]
    return server


def _status_state(root: Path) -> str:
    return json.loads((root / ".ipcpool" / "status.json").read_text())["state"]


@pytest.mark.parametrize(("signum", "target"), [
    (signal.SIGTERM, "group"), (signal.SIGTERM, "supervisor"), (signal.SIGINT, "group"), (signal.SIGINT, "supervisor"),
])
@pytest.mark.portable
def test_stop_signal_never_handles_a_message_twice(tmp_path, root, supervisor_factory, signum, target):
    """Reproduces the issue: handled messages were also requeued when the whole group got SIGTERM."""
    config = write_config(tmp_path / "c.toml", root, sections=SLOW)
    sup = supervisor_factory(config)
    workers = wait_until(lambda: len(p := sup.worker_pids()) == 2 and p, message="two workers")
    ids = _publish(root, 20)
    wait_until(lambda: len(records(tmp_path)) >= 3, message="a few messages started")
    if target == "group":
        os.killpg(sup.pid, signum)  # the supervisor runs in its own session: its pid is the group's id
    else:
        sup.signal(signum)
    assert sup.wait(30) == 0, sup.log()
    log = sup.log()
    assert "Enhanced IPC system stopped (drained)" in log
    # Stopping through the process group is a supported way: nothing in it reads like a crash.
    stopping = log[log.index("received SIG"):]
    assert not [line for line in stopping.splitlines() if " WARNING " in line or " ERROR " in line], stopping
    assert not [pid for pid in workers if _alive(pid)], "the supervisor reported drained with workers alive"
    started = Counter(r["id"] for r in records(tmp_path))
    queued = _ids_in(root, "messages")
    assert not set(started) & queued, f"handled and requeued: {set(started) & queued}"
    assert _names(root, "processing") == []
    assert f"returned {len(queued)} messages to messages/" in log
    assert _status_state(root) == "stopped"

    sup2 = supervisor_factory(config)
    assert f"{len(queued)} messages queued at start" in sup2.log_since_start()
    wait_until(lambda: not _names(root, "messages") and not _names(root, "processing"), 60, message="drained")
    sup2.stop()
    counts = Counter(r["id"] for r in records(tmp_path))
    assert sorted(counts) == sorted(ids)
    assert all(c == 1 for c in counts.values()), f"handled twice: {[i for i, c in counts.items() if c > 1]}"


def test_sigterm_to_one_worker_finishes_its_message_and_returns_the_rest(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections=SLOW)
    sup = supervisor_factory(config)
    wait_until(lambda: len(sup.worker_pids()) == 2, message="two workers")
    ids = _publish(root, 20)
    first = wait_until(lambda: records(tmp_path), message="a first delivery")[0]
    victim = first["pid"]
    os.kill(victim, signal.SIGTERM)
    wait_until(lambda: not _alive(victim), 30, message="the signalled worker gone")
    wait_until(lambda: not _names(root, "messages") and not _names(root, "processing"), 60, message="all handled")
    wait_until(lambda: len(p := sup.worker_pids()) == 2 and victim not in p, message="the pool back to two workers")
    counts = Counter(r["id"] for r in records(tmp_path))
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}
    log = sup.log()
    assert f"worker pid={victim} slot=" in log and "received SIGTERM" in log
    assert f"worker died pid={victim}" not in log, "a worker stopped by SIGTERM is not a crash"
    finished = [r for r in records(tmp_path) if r["pid"] == victim]
    assert finished, "the worker finished the message it was running"
    assert sup.stop() == 0


def test_sigterm_to_a_worker_past_its_grace_puts_the_message_back(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1, "shutdown_grace": 0.5}})
    sup = supervisor_factory(config)
    client = Client(root, "main")
    slow = client.send("main", "task", {"sleep": 3600}, requires_ack=True)
    first = wait_until(lambda: records(tmp_path), message="the slow message started")[0]
    os.kill(first["pid"], signal.SIGTERM)
    wait_until(lambda: not _alive(first["pid"]), 30, message="the worker gone after its grace")
    # Put back without blame, so it is delivered again as delivery 1 (not counted against it).
    again = wait_until(lambda: [r for r in records(tmp_path) if r["pid"] != first["pid"]], 30,
                       message="the message delivered to the replacement")
    assert again[0]["id"] == slow and again[0]["delivery"] == 1
    assert "shutdown grace ran out" in sup.log()
    sup.stop()


def test_the_forkserver_dying_alone_costs_nothing(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections=SLOW)
    sup = supervisor_factory(config)
    workers = wait_until(lambda: len(p := sup.worker_pids()) == 2 and p, message="two workers")
    ids = _publish(root, 20, sleep=0.2)
    wait_until(lambda: len(records(tmp_path)) >= 2, message="messages started")
    _forkserver(sup).kill()
    wait_until(lambda: not _names(root, "messages") and not _names(root, "processing"), 60, message="all handled")
    counts = Counter(r["id"] for r in records(tmp_path))
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}, "a lost exit status is not a death"
    assert {r["pid"] for r in records(tmp_path)} <= set(workers)
    assert all(_alive(pid) for pid in workers), "the workers run on without their forkserver"
    assert "worker died" not in sup.log()
    # A replacement needs a new forkserver: kill a worker, then send more.
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: len(p := sup.worker_pids()) == 2 and workers[0] not in p, message="a replacement worker")
    more = _publish(root, 6, sleep=0)
    wait_until(lambda: not _names(root, "messages") and not _names(root, "processing"), 60, message="all handled")
    counts = Counter(r["id"] for r in records(tmp_path))
    assert all(counts[i] == 1 for i in more)
    assert sup.stop() == 0


def test_stray_signals_are_logged_and_ignored_and_a_group_sighup_reloads(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        sup.signal(signum)
        name = signal.Signals(signum).name
        wait_until(lambda name=name: f"received {name}: ignored" in sup.log(), message=f"{name} logged")
    os.killpg(sup.pid, signal.SIGHUP)  # a closed terminal, the whole group: workers ignore it, the pool reloads
    wait_until(lambda: "reload done" in sup.log(), 30, message="the reload")
    client = Client(root, "main")
    message_id = client.send("main", "task", {"n": 1}, requires_ack=True)
    wait_until(lambda: (root / "main" / "acks" / f"{message_id}.ack").exists(), 30, message="still handling")
    assert sup.proc.poll() is None
    assert _status_state(root) == "running"
    assert sup.stop() == 0
    assert _status_state(root) == "stopped"


def test_sigquit_stops_now_and_status_says_so(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections=SLOW)
    sup = supervisor_factory(config)
    client = Client(root, "main")
    slow = client.send("main", "task", {"sleep": 3600})
    wait_until(lambda: records(tmp_path), message="the slow message started")
    sup.signal(signal.SIGQUIT)
    assert sup.wait(30) == 0
    assert "received SIGQUIT: stopping now" in sup.log()
    assert _status_state(root) == "stopped"
    assert _ids_in(root, "messages") == {slow}, "the interrupted message went back"
