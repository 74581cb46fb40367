"""End to end: a real supervisor, real workers, messages from several kinds of writers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import files, records, wait_until, write_config

from ipcpool import Client

pytestmark = pytest.mark.portable  # also run with Linux's interfaces removed (.ci/run)


def test_messages_from_every_kind_of_writer_are_handled_once_and_acked(tmp_path, root, env, supervisor_factory):
    # The slow writer below pauses 0.05 s between pieces; settle_time is what keeps its unfinished file
    # from being quarantined, so it is set far beyond any pause a loaded machine could add. (The file is
    # handled once it is closed, not after settle_time: the settle time only bounds the rare case where
    # the close is not seen.)
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"settle_time": 15.0}})
    client = Client(root, "main")
    queued_before = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(5)]
    sup = supervisor_factory(config)

    ids = list(queued_before)
    ids += [client.send("main", "task", {"n": 100 + i}, requires_ack=True) for i in range(5)]
    ids += [client.send("main", "task", {"n": 200 + i}, requires_ack=True, format="msgpack") for i in range(3)]
    out = subprocess.run(
        [sys.executable, "-m", "ipcpool", "send", "--config", str(config), "--group", "main", "--type", "task",
         "--payload", '{"n": 300}'], env=env, capture_output=True, text=True, check=True)
    cli_id = out.stdout.strip()
    ids.append(cli_id)
    # a plain shell writer: write into tmp/, then mv into messages/
    shell_id = "shell-writer-1"
    body = json.dumps({"id": shell_id, "type": "task", "payload": {"n": 400}, "requiresAck": True})
    tmp_file, dest = f"{root}/main/tmp/{shell_id}.json", f"{root}/main/messages/"
    subprocess.run(["sh", "-c", f"echo '{body}' > {tmp_file} && mv {tmp_file} {dest}"], check=True)
    ids.append(shell_id)
    # a slow writer straight into messages/, in pieces
    slow_id = "slow-writer-1"
    raw = json.dumps({"id": slow_id, "type": "task", "payload": {"n": 500}, "requiresAck": True}).encode()
    body_bytes = raw
    with open(root / "main" / "messages" / f"{slow_id}.json", "wb") as handle:
        for i in range(0, len(body_bytes), 7):
            handle.write(body_bytes[i:i + 7])
            handle.flush()
            time.sleep(0.05)  # a deliberately slow writer, not a wait for a condition
    ids.append(slow_id)

    acked = [i for i in ids if i != cli_id]  # the CLI send did not ask for an ack
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in acked), 60, message="all acks")
    wait_until(lambda: len(records(tmp_path)) >= len(ids), 10, message="every message handled")
    wait_until(lambda: not files(root, "main", "messages") and not files(root, "main", "processing"), 10,
               message="empty messages/ and processing/")
    seen = [r["id"] for r in records(tmp_path)]
    assert sorted(seen) == sorted(ids), "every id handled exactly once"
    assert files(root, "main", "errors") == []
    assert not (root / "main" / "acks" / f"{cli_id}.ack").exists()
    assert sup.stop() == 0
