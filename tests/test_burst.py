"""A burst: 10,000 messages queued before the supervisor starts, 10,000 more from another process while it runs.

Every id must be handled exactly once and acked, nothing may end in errors/,
and messages/ and processing/ must end empty.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import records, wait_until, write_config

from ipcpool import Client

pytestmark = pytest.mark.slow

BEFORE = 10_000
DURING = 10_000

WRITER = """
import sys
from ipcpool import Client

root, count = sys.argv[1], int(sys.argv[2])
client = Client(root, "main")
ids = [client.send("main", "task", {"n": i, "from": "writer"}, requires_ack=True) for i in range(count)]
client.close()
sys.stdout.write("\\n".join(ids) + "\\n")
"""


def _count(folder) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:
        return 0


def test_twenty_thousand_messages_are_each_handled_once_and_acked(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root,
                          handlers={"task": "recorder:record", "legacy": "recorder:record"},
                          sections={"spool": {"rescan_interval": 2.0}})
    main = root / "main"

    with Client(root, "main") as client:
        before = [client.send("main", "task", {"n": i, "from": "before"}, requires_ack=True) for i in range(BEFORE)]
    assert _count(main / "messages") == BEFORE

    started = time.monotonic()
    sup = supervisor_factory(config)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(DURING)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = writer.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.communicate()
        raise
    assert writer.returncode == 0, err
    during = out.split()
    assert len(during) == DURING
    assert sup.proc.poll() is None, "the supervisor is still running after the writer finished"

    every = set(before) | set(during)
    assert len(every) == BEFORE + DURING, "ids are unique"

    wait_until(lambda: _count(main / "acks") >= len(every), 180, interval=0.5, message="every ack")
    wait_until(lambda: _count(main / "messages") == 0 and _count(main / "processing") == 0, 30, interval=0.2,
               message="empty messages/ and processing/")
    elapsed = time.monotonic() - started

    acked = {name[: -len(".ack")] for name in os.listdir(main / "acks")}
    assert acked == every, f"missing acks: {len(every - acked)}, unexpected: {len(acked - every)}"
    seen = [r["id"] for r in records(tmp_path)]
    assert len(seen) == len(every), f"{len(seen) - len(set(seen))} duplicate deliveries"
    assert set(seen) == every
    assert os.listdir(main / "errors") == []
    assert sup.stop() == 0
    print(f"{len(every)} messages handled in {elapsed:.1f}s ({len(every) / elapsed:.0f}/s)")
