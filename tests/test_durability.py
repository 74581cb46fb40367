"""Durability: a full disk surfaces to the sender and leaves nothing partial; power mode still works."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until, write_config

from ipcpool import Client


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A real 256 KiB tmpfs, so ENOSPC comes from the kernel, not from a mock."""
    mountpoint = Path(tempfile.mkdtemp(prefix="ipcpool-tiny-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
                            capture_output=True)
    if result.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
        mountpoint.rmdir()


@pytest.mark.parametrize("durability", ["process", "power"])
def test_full_disk_raises_to_the_sender_and_leaves_no_partial_file(tiny_disk: Path, durability: str) -> None:
    client = Client(tiny_disk / "ipc", "main", durability=durability)
    with pytest.raises(OSError) as info:
        client.send("main", "task", {"blob": "x" * 400_000})
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tiny_disk / "ipc" / "main" / "messages") == []
    assert os.listdir(tiny_disk / "ipc" / "main" / "tmp") == []
    small = client.send("main", "task", {"n": 1})  # once space allows, sending works again
    assert os.listdir(tiny_disk / "ipc" / "main" / "messages") == [f"{small}.json"]


def test_power_durability_end_to_end(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"durability": "power"}})
    sup = supervisor_factory(config)
    client = Client.from_config(config)
    ids = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(20)]
    response = client.request("main", "task", {"result": {"ok": 1}}, timeout=30)
    assert response == {"ok": 1}
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in ids), 30, message="acks")
    sup.stop()


OLD = 600.0  # seconds: older than the test configs' 60 s limits, younger than the defaults (3600 s, 86400 s)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _last_to_prune(root: Path) -> Path:
    """An old record of a retried message: housekeeping reaches ``errors/retried/`` after the group's
    acks/, responses/ and tmp/, so once it is gone the pass over them is over, and a fresh file still
    there was spared, not merely not reached yet. (A staging file cannot be the marker: one touched
    within a minute is kept whatever its age, and a test cannot age a ctime.)"""
    retried = root / "main" / "errors" / "retried"
    retried.mkdir(parents=True, exist_ok=True)
    record = retried / "old.json.retried1"
    record.write_text("{}")
    _age(record, OLD)
    return record


def test_stale_temp_files_are_removed_by_housekeeping(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"spool": {"tmp_max_age": 60.0,
                                                                         "retried_retention": 60.0}})
    (root / "main" / "tmp").mkdir(parents=True)
    stale = root / "main" / "tmp" / ".crashed-writer.json.tmp"
    stale.write_text("{")
    _age(stale, OLD)
    fresh = root / "main" / "tmp" / ".writing-now.json.tmp"
    fresh.write_text("{")
    leftover = _last_to_prune(root)
    sup = supervisor_factory(config)
    wait_until(lambda: not stale.exists() and not leftover.exists(), 30, message="a housekeeping pass")
    assert fresh.exists(), "a writer's temp file younger than tmp_max_age is kept"
    sup.stop()


def test_old_acks_and_uncollected_responses_are_pruned(tmp_path, root, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"ack": {"retention": 60.0},
                                                               "spool": {"response_retention": 60.0,
                                                                             "retried_retention": 60.0}})
    for sub in ("acks", "responses"):
        (root / "main" / sub).mkdir(parents=True, exist_ok=True)
    old_ack, fresh_ack = root / "main" / "acks" / "old.ack", root / "main" / "acks" / "fresh.ack"
    old_response = root / "main" / "responses" / "old.json"
    fresh_response = root / "main" / "responses" / "fresh.json"
    for path in (old_ack, fresh_ack, old_response, fresh_response):
        path.write_text("2024-01-01T00:00:00.000Z")
    _age(old_ack, OLD)
    _age(old_response, OLD)
    leftover = _last_to_prune(root)
    sup = supervisor_factory(config)
    wait_until(lambda: not old_ack.exists() and not old_response.exists() and not leftover.exists(), 30,
               message="a housekeeping pass")
    assert fresh_ack.exists(), "an ack inside the retention is the dedupe ledger: kept"
    assert fresh_response.exists(), "a response inside response_retention waits for its requester: kept"
    sup.stop()
