"""A wall clock that jumps forward past ``[ack] retention`` must not take the dedupe ledger with it.

The supervisor runs under libfaketime, its clock read from a file the test rewrites: a real
jump of the time the process sees, while the kernel still stamps files with the true time
(as acks written before a real jump keep the times they were written at).
"""

from __future__ import annotations

import glob
import os

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
