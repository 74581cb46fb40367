"""Regression tests for defects found in review: each names the failure it guards against."""

from __future__ import annotations

import json
import os
import time

from conftest import records, wait_until, write_config

from ipcpool import Client
from ipcpool.transport.spool.layout import MESSAGES, PROCESSING
from ipcpool.transport.spool.spool import Spool


def _error_records(root, group="main"):
    folder = root / group / "errors"
    return [json.loads((folder / n).read_text()) for n in os.listdir(folder) if n.endswith(".error.json")]


def test_handler_raising_systemexit_is_quarantined_not_redelivered_forever(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    client = Client(root, "main")
    bad = client.send("main", "task", {"sysexit": 4})
    good = client.send("main", "task", {"n": 1}, requires_ack=True)
    (record,) = wait_until(lambda: _error_records(root), 30, message="the SystemExit message in errors/")
    assert record["id"] == bad and "SystemExit" in record["reason"]
    wait_until(lambda: (root / "main" / "acks" / f"{good}.ack").exists(), 30, message="the next message")
    assert "worker died" not in sup.log()
    sup.stop()


def test_undecodable_file_with_a_future_mtime_is_quarantined(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"settle_time": 0.5}})
    sup = supervisor_factory(config)
    staged = root / "main" / "tmp" / "future.json"
    staged.write_text('{"type": "task", "payload": ')
    a_year_ahead = time.time() + 365 * 86400
    os.utime(staged, (a_year_ahead, a_year_ahead))
    os.rename(staged, root / "main" / "messages" / "future.json")
    (record,) = wait_until(lambda: _error_records(root), 30, message="the future-dated file in errors/")
    assert record["originalName"] == "future.json" and "invalid JSON" in record["reason"]
    sup.stop()


def test_requeue_keeps_one_copy_of_an_identical_republish(tmp_path):
    spool = Spool(tmp_path / "ipc")
    spool.folders.ensure_root()
    spool.folders.ensure_group("main")
    spool.writer.publish("main", "m1.json", b'{"id": "m1", "type": "task", "payload": {}}')
    assert spool.claims.claim("main", "m1.json")
    spool.writer.publish("main", "m1.json", b'{"id": "m1", "type": "task", "payload": {}}')  # the sender re-sent it
    assert spool.claims.requeue("main", "m1.json") == "m1.json"
    assert os.listdir(tmp_path / "ipc" / "main" / MESSAGES) == ["m1.json"]
    assert os.listdir(tmp_path / "ipc" / "main" / PROCESSING) == []


def test_requeue_never_replaces_a_different_message_with_the_same_name(tmp_path):
    spool = Spool(tmp_path / "ipc")
    spool.folders.ensure_root()
    spool.folders.ensure_group("main")
    spool.writer.publish("main", "job.json", b'{"n": 1}')
    assert spool.claims.claim("main", "job.json")
    spool.writer.publish("main", "job.json", b'{"n": 2}')  # a legacy writer reusing its file name
    back = spool.claims.requeue("main", "job.json")
    assert back == "job.requeued1.json"
    folder = tmp_path / "ipc" / "main" / MESSAGES
    assert sorted(json.loads((folder / n).read_text())["n"] for n in os.listdir(folder)) == [1, 2]


def test_claim_never_replaces_a_file_stranded_in_processing(tmp_path):
    spool = Spool(tmp_path / "ipc")
    spool.folders.ensure_root()
    spool.folders.ensure_group("main")
    (tmp_path / "ipc" / "main" / PROCESSING / "x.json").write_text('{"n": "stranded"}')
    spool.writer.publish("main", "x.json", b'{"n": "new"}')
    try:
        spool.claims.claim("main", "x.json")
        raise AssertionError("claim replaced a stranded file")
    except FileExistsError:
        pass
    assert json.loads((tmp_path / "ipc" / "main" / PROCESSING / "x.json").read_text())["n"] == "stranded"


def test_stranded_processing_file_and_its_namesake_are_both_handled(tmp_path, root, supervisor_factory):
    """A file left in processing/ (a crashed supervisor) and a new one with its name: both handled."""
    (root / "main" / PROCESSING).mkdir(parents=True)
    for sub in ("tmp", "messages", "acks", "responses", "errors"):
        (root / "main" / sub).mkdir(exist_ok=True)
    (root / "main" / PROCESSING / "job.json").write_text('{"legacy": 1}')
    (root / "main" / MESSAGES / "job.json").write_text('{"legacy": 2}')
    config = write_config(tmp_path / "c.toml", root)
    sup = supervisor_factory(config)
    wait_until(lambda: len(records(tmp_path)) == 2, 30, message="both handled")
    assert sorted(r["payload"]["legacy"] for r in records(tmp_path)) == [1, 2]
    sup.stop()
