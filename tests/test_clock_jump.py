"""A wall clock that jumps forward past ``[ack] retention`` must not take the dedupe ledger with it.

The supervisor runs under libfaketime, its clock read from a file the test rewrites: a real
jump of the time the process sees, while the kernel still stamps files with the true time
(as acks written before a real jump keep the times they were written at).
"""

from __future__ import annotations

import glob
import os
import signal

from conftest import SupervisorProcess, records, require_tool, wait_until, write_config

from ipcpool import Client

DAY = 86400


def _faketime_env(env: dict[str, str], clock_file: str) -> dict[str, str]:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) or sorted(
        glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    library = require_tool("libfaketime", found[0] if found else None, "Debian: apt-get install faketime")
    # The wall clock from the file, re-read at every call; the monotonic and boot clocks stay true.
    return dict(env, LD_PRELOAD=library, FAKETIME_TIMESTAMP_FILE=clock_file, FAKETIME_NO_CACHE="1",
                FAKETIME_DONT_FAKE_MONOTONIC="1")


def test_a_wall_clock_jump_past_the_retention_keeps_the_acks_a_sender_may_still_retry(tmp_path, root, env):
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    faked = _faketime_env(env, str(clock))
    config = write_config(tmp_path / "c.toml", root, sections={"ack": {"retention": 3600.0}})
    first = SupervisorProcess(config, tmp_path, faked, tmp_path / "first.log").start()
    try:
        with Client(root, "main") as client:
            client.send("main", "task", {"n": 1}, requires_ack=True, message_id="m1", wait=True)
    finally:
        assert first.stop() == 0
    ancient = root / "main" / "acks" / "ancient.ack"  # truly older than the retention: pruning must go on
    ancient.write_text("2020-01-01T00:00:00.000Z")
    os.utime(ancient, (1, 1))
    clock.write_text("+2d\n")  # two days pass for the supervisor's wall clock, seconds for everything else
    second = SupervisorProcess(config, tmp_path, faked, tmp_path / "second.log").start()
    try:
        wait_until(lambda: not ancient.exists(), 30, message="the start-up housekeeping done")
        assert (root / "main" / "acks" / "m1.ack").exists(), "the ack of a message seconds old was pruned"
        assert "the wall clock jumped" in second.log()
        with Client(root, "main") as client:  # the sender's retry: the same id again
            client.send("main", "task", {"n": 1}, requires_ack=True, message_id="m1")
        wait_until(lambda: "Duplicate IPC message skipped (already acked) id=m1" in second.log(), 30,
                   message="the re-send deduplicated")
    finally:
        assert second.stop() == 0
    assert [r["id"] for r in records(tmp_path)] == ["m1"]


def test_a_wall_clock_step_does_not_make_the_workers_think_their_supervisor_is_gone(tmp_path, root, env):
    """An NTP step or a VM resume moves /proc/stat's btime, from which a process's start time is computed
    again at each read: a worker that judged its supervisor by start time took a step for its death, left
    mid-message, and the message ran twice. The supervisor runs in a mount namespace of its own with a copy
    of /proc/stat whose btime the test moves back 5 s (the host's clock is not touched)."""
    import re
    import shutil
    import subprocess
    import sys

    unshare = require_tool("unshare", shutil.which("unshare"), "Debian: apt-get install util-linux")
    fake = tmp_path / "stat"
    fake.write_bytes(open("/proc/stat", "rb").read())  # noqa: SIM115
    config = write_config(tmp_path / "c.toml", root, sections={"pool": {"workers": 2}})
    log_path = tmp_path / "sup.log"
    script = f"mount --bind {fake} /proc/stat && exec {sys.executable} -m ipcpool run --config {config}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([unshare, "-m", "--propagation", "private", "sh", "-c", script], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not wait_until(lambda: "Enhanced IPC system started" in log_path.read_text() or proc.poll() is not None,
                          30, message="started") or proc.poll() is not None:
            require_tool("a private mount namespace", None, f"unshare -m as root: {log_path.read_text()[-400:]}")
        gate = tmp_path / "gate"
        message_id = Client(root, "main").send("main", "task", {"gate": str(gate)}, requires_ack=True)
        wait_until(lambda: any(r["id"] == message_id for r in records(tmp_path)), 30, message="the message running")
        data = fake.read_bytes()
        btime = int(re.search(rb"^btime (\d+)", data, re.M).group(1))
        fake.write_bytes(re.sub(rb"^btime \d+", b"btime %d" % (btime - 5), data, flags=re.M))
        stepped = fake.stat().st_mtime
        status = root / ".ipcpool" / "status.json"
        # Two status writes after the step in which every worker's heartbeat is fresh: they beat on.
        import json

        def fresh() -> bool:
            record = json.loads(status.read_bytes())
            return record["writtenAt"] > stepped + 1.0 and len(record["workers"]) == 2 and all(
                w["heartbeatAge"] < 0.6 for w in record["workers"])
        wait_until(fresh, 30, message="every worker beating after the step")
        gate.touch()
        wait_until(lambda: (root / "main" / "acks" / f"{message_id}.ack").exists(), 30, message="acked")
        log = log_path.read_text()
        assert "is gone" not in log and "killing worker" not in log, log[-2000:]
        assert [r["id"] for r in records(tmp_path)].count(message_id) == 1
    finally:
        if proc.poll() is None:
            os.killpg(os.getpgid(proc.pid), signal.SIGTERM)  # its own session: the supervisor drains, then exits
        proc.wait(30)
