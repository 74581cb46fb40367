"""Reload and resizing as gunicorn's operators know them: SIGHUP, ``ipcpool reload``, SIGTTIN, SIGTTOU.

Real supervisors, real handler modules rewritten on disk between two
generations of workers, every message counted: nothing lost, nothing handled twice.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import backend_config, ipcpool_cli, records, wait_until, write_config

from ipcpool import Client
from ipcpool.localroot import read_status

HANDLER = '''
import json, os, time
VERSION = {version!r}

def handle(message):
    gate = (message.payload or {{}}).get("gate")
    while gate and not os.path.exists(gate):
        time.sleep(0.01)
    line = json.dumps({{"id": message.id, "version": VERSION, "pid": os.getpid()}})
    with open(os.path.join(os.environ["IPCPOOL_TEST_RECORDS"], f"{{os.getpid()}}.jsonl"), "a") as out:
        out.write(line + "\\n")
'''


def _handler_module(tmp_path: Path, env: dict[str, str], version: str) -> None:
    folder = tmp_path / "handlers"
    folder.mkdir(exist_ok=True)
    (folder / "reloadable.py").write_text(HANDLER.format(version=version))
    if str(folder) not in env["PYTHONPATH"]:
        env["PYTHONPATH"] = os.pathsep.join([str(folder), env["PYTHONPATH"]])


def _workers(sup: Any) -> set[int]:
    return {w["pid"] for w in (sup.status() or {}).get("workers", []) if w["state"] in ("ready", "busy")}


@pytest.mark.portable
def test_a_reload_runs_new_handler_code_and_loses_nothing(tmp_path, root, env, backend, supervisor_factory):
    _handler_module(tmp_path, env, "v1")
    config = backend_config(tmp_path, root, backend)
    config.write_text(config.read_text().replace('"recorder:record"', '"reloadable:handle"'))
    sup = supervisor_factory(config)
    old = wait_until(lambda: len(p := _workers(sup)) == 2 and p, 30, message="two workers")
    sent: list[str] = []
    stop = threading.Event()
    gate = tmp_path / "gate"
    with Client.from_config(config) as client:
        # One old worker is mid-handler across the whole reload, with its prefetch queued behind:
        # the reload must wait for it and hand back what it had not started.
        gated = client.send("main", "task", {"gate": str(gate)}, requires_ack=True)
        sent.append(gated)
        wait_until(lambda: any(w.get("currentMessage") for w in sup.status()["workers"]), 30,
                   message="the gated message running")

        def publish() -> None:  # a steady stream across the reload
            while not stop.is_set():
                sent.append(client.send("main", "task", {"n": len(sent)}, requires_ack=True))
                stop.wait(0.002)

        publisher = threading.Thread(target=publish)
        publisher.start()
        wait_until(lambda: len(sent) >= 100, 30, message="a hundred published")
        _handler_module(tmp_path, env, "version-two")  # another size: no stale bytecode
        out = ipcpool_cli(env, tmp_path, "reload", "--config", str(config))
        assert out.returncode == 0, out.stderr
        assert "reload took" in out.stdout and "2 workers on the new config" in out.stdout
        after = len(sent)
        wait_until(lambda: len(sent) >= after + 100, 30, message="a hundred more after the reload")
        stop.set()
        publisher.join()
        gate.touch()
        wait_until(lambda: all(client.is_acked("main", i) for i in sent), 60, message="every message acked")
    seen = records(tmp_path)
    counts = Counter(r["id"] for r in seen)
    assert set(counts) == set(sent) and set(counts.values()) == {1}, "each handled once, none lost"
    versions = [r["version"] for r in seen]
    assert {"v1", "version-two"} <= set(versions)
    wait_until(lambda: _workers(sup).isdisjoint(old) and len(_workers(sup)) == 2, 30, message="old workers gone")
    assert {r["pid"] for r in seen if r["version"] == "version-two"}.isdisjoint(old)
    (gated_record,) = [r for r in seen if r["id"] == gated]
    assert gated_record["version"] == "v1" and gated_record["pid"] in old, "finished by the old worker"
    assert sup.status()["reloads"]["succeeded"] == 1
    assert sup.stop() == 0


@pytest.mark.parametrize("old, new, said", [
    ('"task" = "recorder:record"', '"task" = "no_such_module:handle"', "a new worker failed to boot"),
    ('"task" = "recorder:record"', '"task" = "killed_at_import:handle"',
     "a new worker failed to boot: killed by SIGKILL"),
    ("interval = 0.25", "interval = 0.5", "[heartbeat] interval changed (0.25 -> 0.5): restart to apply it"),
    ("settle_time = 0.3", "settle_time = 9.0", "[spool] settle_time changed (0.3 -> 9.0): restart to apply it"),
])
def test_a_reload_that_cannot_apply_leaves_the_old_pool_running(tmp_path, root, env, supervisor_factory,
                                                                  old, new, said):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    before = wait_until(lambda: len(p := _workers(sup)) == 2 and p, 30, message="two workers")
    good = config.read_text()
    assert old in good
    config.write_text(good.replace(old, new))
    out = ipcpool_cli(env, tmp_path, "reload", "--config", str(config))
    assert out.returncode == 1 and "reload failed" in out.stderr and said in out.stderr, out.stderr
    config.write_text(good)
    _still_the_old_pool(sup, config, before, tmp_path)


def test_an_invalid_config_is_refused_by_the_command_and_by_the_supervisor(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    before = wait_until(lambda: len(p := _workers(sup)) == 2 and p, 30, message="two workers")
    good = config.read_text()
    config.write_text(good.replace("[pool]\n", "[pool]\nworkerz = 3\n"))
    out = ipcpool_cli(env, tmp_path, "reload", "--config", str(config))
    assert out.returncode == 2 and "[pool] has unknown key 'workerz'" in out.stderr, out.stderr
    assert read_status(root)["reloads"]["count"] == 0  # named, and nothing signalled
    sup.signal(signal.SIGHUP)  # a SIGHUP sent some other way: the supervisor checks it the same
    wait_until(lambda: (read_status(root)["reloads"]["last"] or {}).get("ok") is False, 30, message="the refusal")
    assert "[pool] has unknown key 'workerz'" in read_status(root)["reloads"]["last"]["reason"]
    assert "reload failed, the running pool and its config stay" in sup.log()
    config.write_text(good)
    _still_the_old_pool(sup, config, before, tmp_path)


def _still_the_old_pool(sup: Any, config: Path, before: set[int], tmp_path: Path) -> None:
    with Client.from_config(config) as client:
        client.send_and_wait("main", "task", {"n": 1}, timeout=30)
    assert _workers(sup) == before, "the old workers kept running"
    assert records(tmp_path)[-1]["pid"] in before
    assert sup.stop() == 0


def test_sigttin_and_sigttou_add_and_remove_one_worker(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    wait_until(lambda: len(_workers(sup)) == 2, 30, message="two workers")
    sup.signal(signal.SIGTTIN)
    wait_until(lambda: len(_workers(sup)) == 3 and sup.status()["expectedWorkers"] == 3, 30, message="three")
    for left in (2, 1):  # one at a time: two signals sent at once may arrive as one
        sup.signal(signal.SIGTTOU)
        wait_until(lambda left=left: len(sup.status()["workers"]) == left, 30, message=f"{left} left")
    sup.signal(signal.SIGTTOU)
    wait_until(lambda: "a pool keeps at least one" in sup.log(), 30, message="the last worker kept")
    with Client.from_config(config) as client:
        ids = [client.send("main", "task", {"n": n}, requires_ack=True) for n in range(20)]
        wait_until(lambda: all(client.is_acked("main", i) for i in ids), 30, message="handled by the one")
    assert len(_workers(sup)) == 1 and "worker died" not in sup.log()
    assert sup.stop() == 0


def test_a_failed_reload_keeps_the_size_sigttin_gave(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    sup.signal(signal.SIGTTIN)
    wait_until(lambda: len(_workers(sup)) == 3, 30, message="three workers")
    before = _workers(sup)
    good = config.read_text()
    config.write_text(good.replace('"task" = "recorder:record"', '"task" = "no_such_module:handle"'))
    out = ipcpool_cli(env, tmp_path, "reload", "--config", str(config))
    assert out.returncode == 1, out.stderr
    config.write_text(good)
    wait_until(lambda: len(sup.status()["workers"]) == 3, 30, message="the failed generation gone")
    assert sup.status()["expectedWorkers"] == 3 and _workers(sup) == before
    sup.signal(signal.SIGTTOU)  # one fewer: from three, not from the config's two
    wait_until(lambda: len(sup.status()["workers"]) == 2, 30, message="two left")
    assert sup.stop() == 0


def test_a_sighup_while_booting_or_reloading_waits_its_turn(tmp_path, root, env, supervisor_factory):
    env["IPCPOOL_TEST_SLOW_IMPORT"] = "1.0"
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "slow_import:handle"})
    sup = supervisor_factory(config, wait_ready=False)
    wait_until(lambda: "messages queued at start" in sup.log(), 30, message="the signals installed")
    sup.signal(signal.SIGHUP)  # the workers are still importing
    wait_until(lambda: "reload done" in sup.log(), 30, message="the deferred reload")
    log_text = sup.log()
    assert "received SIGHUP while the workers boot: the reload starts once it is done" in log_text
    assert log_text.index("Enhanced IPC system started") < log_text.index("reload done")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: "reloading" in sup.log_since_start().split("reload done", 1)[1], 30,
               message="the second reload under way")
    sup.signal(signal.SIGHUP)  # during it: kept, and done after it
    wait_until(lambda: (read_status(root)["reloads"]).get("succeeded") == 3, 60, message="three reloads done")
    assert "received SIGHUP during a reload: the reload starts once it is done" in sup.log()
    assert sup.stop() == 0


def test_an_old_worker_that_cannot_act_keeps_what_it_holds_until_it_has_ended(tmp_path, root, supervisor_factory):
    """A reload while an old worker can do nothing (SIGSTOPped here; in the wild, stuck in
    uninterruptible sleep): the messages it holds are not handed to a new worker while it lives, so
    none runs twice. Once it can act again it finishes its message and hands back the rest."""
    config = write_config(tmp_path / "c.toml", root,
                          # prefetch 16: the five behind the gated one are handed over even one at a time (a
                          # worker is topped up while half its prefetch is free)
                          sections={"pool": {"workers": 1, "prefetch": 16, "handler_timeout": 60.0},
                                    "heartbeat": {"interval": 0.25, "miss_limit": 200}})
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    with Client(root, "main") as client:
        gated = client.send("main", "task", {"gate": str(gate)}, requires_ack=True)
        old = wait_until(lambda: next((r["pid"] for r in records(tmp_path) if r["id"] == gated), None), 30,
                         message="the gated message running in the old worker")
        behind = [client.send("main", "task", {"n": n}, requires_ack=True) for n in range(5)]
        wait_until(lambda: not os.listdir(root / "main" / "messages"), 30, message="all five handed to it")
        os.kill(old, signal.SIGSTOP)
        try:
            sup.signal(signal.SIGHUP)
            wait_until(lambda: (sup.status() or {}).get("reloads", {}).get("succeeded") == 1, 30,
                       message="the new generation ready")
            after = client.send("main", "task", {"n": "after"}, requires_ack=True)
            wait_until(lambda: client.is_acked("main", after), 30, message="a new worker handling new messages")
            handled = {r["id"] for r in records(tmp_path)}
            assert handled.isdisjoint(behind), "a message the stopped worker held was handed to a new worker"
        finally:
            os.kill(old, signal.SIGCONT)
        gate.touch()
        wait_until(lambda: all(client.is_acked("main", i) for i in [gated, *behind]), 30,
                   message="the old worker's message finished and the rest handled")
    counts = Counter(r["id"] for r in records(tmp_path))
    assert set(counts.values()) == {1}, counts
    assert next(r["pid"] for r in records(tmp_path) if r["id"] == gated) == old
    assert sup.stop() == 0


def test_sigttin_to_a_shell_jobs_whole_process_group_adds_a_worker_and_stops_no_helper(tmp_path, root, env):
    """`kill -TTIN -- -PGID` on a pool run as a shell job (its own process group, not orphaned: the kernel
    stops its members on SIGTTIN by default): the supervisor adds a worker; multiprocessing's forkserver and
    resource tracker ignore the signal (stopped, they would hold the spawn, and the loop, for ever)."""
    import subprocess
    import sys

    import psutil

    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 1}})
    with open(tmp_path / "sup.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ipcpool", "run", "--config", str(config)], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    try:
        wait_until(lambda: "Enhanced IPC system started" in (tmp_path / "sup.log").read_text(), 30,
                   message="started")
        os.killpg(proc.pid, signal.SIGTTIN)
        wait_until(lambda: len([w for w in (read_status(root) or {}).get("workers", []) if w["state"] == "ready"])
                   == 2, 30, message="two workers ready")
        stopped = [p.name() for p in psutil.Process(proc.pid).children(recursive=True)
                   if p.status() == psutil.STATUS_STOPPED]
        assert stopped == [], stopped
        ids = [Client(root, "main").send("main", "task", {"n": n}, requires_ack=True) for n in range(4)]
        wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in ids), 30, message="handled")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
