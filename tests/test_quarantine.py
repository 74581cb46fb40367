"""The spool's dead letters: durations and list/find/retry/purge on real files quarantined through Spool."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ipcpool.errors import IpcpoolError, SpoolError
from ipcpool.records import ErrorEntry, older_than, parse_duration
from ipcpool.transport.spool.deadletters import find, list_errors, purge, read_message, retry
from ipcpool.transport.spool.layout import ERRORS, MESSAGES, PROCESSING, RETRIED_DIR
from ipcpool.transport.spool.spool import Spool


@pytest.fixture
def spool(root: Path) -> Spool:
    spool = Spool(root)
    spool.folders.ensure_root()
    spool.folders.ensure_group("main")
    spool.folders.ensure_group("group1")
    return spool


def _quarantine(spool: Spool, name: str, data: bytes, record: dict, group: str = "main") -> str:
    spool.writer.publish(group, name, data)
    assert spool.claims.claim(group, name)
    return spool.dead.quarantine(group, name, record)


def _wait_next_ms() -> None:
    start = int(time.time() * 1000)
    while int(time.time() * 1000) == start:
        time.sleep(0.001)


# -- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("15m", 900.0), ("24h", 86400.0), ("7d", 604800.0), ("0s", 0.0), ("1.5h", 5400.0),
     (" 2m ", 120.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "s", "30x", "-5s", "1e3s", "5 s", "5S", "h24", "1.s", "abc"])
def test_parse_duration_invalid(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# -- list and find ----------------------------------------------------------------------------------------


def test_list_errors_on_real_quarantined_files(spool):
    first = _quarantine(spool, "a1.json", b"{broken", {"reason": "invalid JSON", "id": "a1", "type": "task",
                                                        "attempts": 1})
    _wait_next_ms()
    second = _quarantine(spool, "b2.msgpack", b"\xc1", {"reason": "invalid msgpack"}, group="group1")

    entries = list_errors(spool)
    assert [(e.group, e.file) for e in entries] == [("main", first), ("group1", second)]
    a, b = entries
    assert isinstance(a, ErrorEntry)
    assert a.original_name == "a1.json"
    assert a.message_id == "a1"
    assert a.epoch_ms == int(first.split("-", 1)[0])
    assert a.record["reason"] == "invalid JSON"
    assert a.summary() == {
        "time": a.record["time"], "group": "main", "id": "a1", "type": "task", "reason": "invalid JSON",
        "attempts": 1, "file": first,
    }
    # without an id in the record, the id is the original file's stem
    assert b.message_id == "b2"
    assert b.original_name == "b2.msgpack"
    assert b.summary()["type"] is None

    assert [e.file for e in list_errors(spool, "group1")] == [second]
    assert list_errors(spool, "missing") == []


def test_list_errors_empty(spool):
    assert list_errors(spool) == []


def test_list_errors_tolerates_an_unreadable_record(spool, root):
    name = _quarantine(spool, "c.json", b"{}", {"reason": "x"})
    (root / "main" / ERRORS / f"{name}.error.json").write_bytes(b"{not json")
    [entry] = list_errors(spool)
    assert entry.record == {"reason": "unreadable error record"}
    assert entry.original_name == "c.json"
    assert entry.message_id == "c"


def test_find_by_id_and_by_file(spool):
    a = _quarantine(spool, "a.json", b"{}", {"reason": "x", "id": "uuid-a"})
    _quarantine(spool, "b.json", b"{}", {"reason": "y", "id": "uuid-b"})
    assert [e.file for e in find(spool, "uuid-a")[0]] == [a]
    assert [e.file for e in find(spool, a)[0]] == [a]
    assert find(spool, "uuid-a", "group1") == ([], set())
    assert find(spool, "nothing") == ([], set())
    # a unique prefix finds it; a shared one names every id it could be
    assert [e.file for e in find(spool, "uuid-a"[:6])[0]] == [a]
    assert find(spool, "uuid-")[1] == {"uuid-a", "uuid-b"}


def test_read_message(spool):
    _quarantine(spool, "a.json", b'{"type": "task"', {"reason": "truncated"})
    [entry] = list_errors(spool)
    assert read_message(spool, entry) == b'{"type": "task"'
    purge(spool, entry)
    assert read_message(spool, entry) is None


# -- retry ------------------------------------------------------------------------------------------------------


def test_retry_moves_the_message_back_under_its_original_name(spool, root):
    _quarantine(spool, "a.json", b'{"type":"task","payload":1}', {"reason": "handler failed", "id": "a"})
    spool.deliveries.save("main", "a.json", [{"reason": "worker died"}])
    [entry] = list_errors(spool)

    assert retry(spool, entry) == "a.json"

    assert (root / "main" / MESSAGES / "a.json").read_bytes() == b'{"type":"task","payload":1}'
    errors = root / "main" / ERRORS
    assert sorted(os.listdir(errors)) == [RETRIED_DIR]
    retried = json.loads((errors / RETRIED_DIR / f"{entry.file}.error.json").read_text())
    assert retried["reason"] == "handler failed"
    assert list_errors(spool) == []
    assert spool.deliveries.load() == {}  # a fresh delivery count


def test_retried_message_can_be_claimed_and_quarantined_again(spool, root):
    _quarantine(spool, "a.json", b"{}", {"reason": "first"})
    retry(spool, list_errors(spool)[0])
    assert spool.claims.claim("main", "a.json")
    _wait_next_ms()
    spool.dead.quarantine("main", "a.json", {"reason": "second"})
    [entry] = list_errors(spool)
    assert entry.record["reason"] == "second"
    retry(spool, entry)
    assert len(os.listdir(root / "main" / ERRORS / RETRIED_DIR)) == 2


def test_retry_never_overwrites_a_queued_message_with_the_same_name(spool, root):
    # Invariant 2, "nothing is lost": a new a.json queued meanwhile must survive a retry of the old one.
    _quarantine(spool, "a.json", b"old", {"reason": "x"})
    spool.writer.publish("main", "a.json", b"new")
    [entry] = list_errors(spool)
    try:
        retry(spool, entry)
    except (OSError, IpcpoolError):
        pass  # refusing is fine; overwriting is not
    contents = [p.read_bytes() for p in (root / "main").glob("*/*") if p.is_file()]
    assert b"new" in contents
    assert b"old" in contents


# -- purge and age ----------------------------------------------------------------------------------------------


def test_purge_removes_both_files(spool, root):
    a = _quarantine(spool, "a.json", b"{}", {"reason": "x"})
    b = _quarantine(spool, "b.json", b"{}", {"reason": "y"})
    entries = {e.file: e for e in list_errors(spool)}
    purge(spool, entries[a])
    assert sorted(os.listdir(root / "main" / ERRORS)) == [b, f"{b}.error.json"]
    purge(spool, entries[a])  # quietly idempotent
    assert [e.file for e in list_errors(spool)] == [b]


def test_purge_of_a_quarantined_directory_never_removes_what_it_holds(spool, root):
    """An older ipcpool quarantined directories: purge removes an empty one, and refuses, saying why, one with
    files in it (they are someone's; `rm -r` is the operator's call)."""
    os.mkdir(spool.folders.path("main", PROCESSING, "dir.json"))
    (root / "main" / PROCESSING / "dir.json" / "inner").write_text("x")
    spool.dead.quarantine("main", "dir.json", {"reason": "refused: a directory, not a regular file"})
    [entry] = list_errors(spool)
    with pytest.raises(SpoolError, match="is a folder with files in it: not removed"):
        purge(spool, entry)
    assert (root / "main" / ERRORS / entry.file / "inner").read_text() == "x"
    (root / "main" / ERRORS / entry.file / "inner").unlink()
    purge(spool, entry)
    assert os.listdir(root / "main" / ERRORS) == []


def test_older_than(spool):
    _quarantine(spool, "a.json", b"{}", {"reason": "x"})
    entries = list_errors(spool)
    [entry] = entries
    created = entry.epoch_ms / 1000
    assert older_than(entries, 60, now=created + 61) == entries
    assert older_than(entries, 60, now=created + 59) == []
    assert older_than(entries, parse_duration("7d"), now=created + 8 * 86400) == entries
    assert older_than(entries, 3600) == []  # just quarantined, by the real clock
    assert older_than(entries, 0, now=created + 1) == entries


def test_entry_with_a_foreign_file_name():
    entry = ErrorEntry("main", "not-a-timestamp", {})
    assert entry.epoch_ms == 0
    assert entry.original_name == "a-timestamp"
    assert older_than([entry], 1, now=10.0) == [entry]


@pytest.mark.parametrize("forged", ["../../outside.json", "/etc/passwd", "..", ".hidden.json", "a/b.json", ""])
def test_retry_ignores_a_forged_original_name_that_is_a_path(spool, root, tmp_path, forged):
    file = _quarantine(spool, "m1.json", b"{broken", {"reason": "invalid JSON"})
    record_path = root / "main" / ERRORS / (file + ".error.json")
    record = json.loads(record_path.read_text())
    record["originalName"] = forged
    record_path.write_text(json.dumps(record))
    (entry,) = list_errors(spool)
    assert entry.original_name == "m1.json"
    assert retry(spool, entry) == "m1.json"
    assert (root / "main" / MESSAGES / "m1.json").read_bytes() == b"{broken"
    assert not (root / "outside.json").exists() and not (root.parent / "outside.json").exists()
