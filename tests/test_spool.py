"""The spool transport's files on a real root: layout, modes, atomic writes, claims, refusals, quarantine, locks."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from ipcpool.errors import AlreadyRunning, InvalidMessage, SpoolError
from ipcpool.transport.spool.layout import (
    ACKS,
    ERRORS,
    MESSAGES,
    PROCESSING,
    RESPONSES,
    STATE_DIR,
    SUBDIRS,
    TMP,
    is_message_name,
)
from ipcpool.transport.spool.spool import Spool


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _make(root: Path, *, group: str = "main", **kwargs) -> Spool:
    spool = Spool(root, **kwargs)
    spool.folders.ensure_root()
    spool.folders.ensure_group(group)
    return spool


@pytest.fixture
def spool(root: Path) -> Spool:
    return _make(root)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _put_processing(spool: Spool, name: str, data: bytes, group: str = "main") -> str:
    path = spool.folders.path(group, PROCESSING, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


# -- layout and modes ------------------------------------------------------------------


def test_ensure_group_creates_every_subdir_private(root, umask_022):
    spool = _make(root)
    assert _mode(root) == 0o700
    assert _mode(root / STATE_DIR) == 0o700
    assert _mode(root / STATE_DIR / "deliveries") == 0o700
    assert _mode(root / "main") == 0o700
    for sub in SUBDIRS:
        path = root / "main" / sub
        assert path.is_dir() and not path.is_symlink()
        assert _mode(path) == 0o700, sub
    assert set(SUBDIRS) == {"tmp", "messages", "processing", "acks", "responses", "errors", "delayed"}
    assert spool.folders.list_groups() == ["main"]


def test_ensure_group_private_modes_ignore_a_permissive_umask(root):
    old = os.umask(0)
    try:
        _make(root)
    finally:
        os.umask(old)
    for sub in SUBDIRS:
        assert _mode(root / "main" / sub) == 0o700


def test_ensure_group_shared_modes(root, umask_022):
    _make(root, mode="shared")
    # tmp/ and messages/ are sticky: a writer cannot remove another writer's file
    expected = {TMP: 0o3770, MESSAGES: 0o3770, PROCESSING: 0o2700, ACKS: 0o2750, RESPONSES: 0o2750,
                ERRORS: 0o2750}
    assert _mode(root / "main") == 0o2750
    assert _mode(root) == 0o2750
    for sub, mode in expected.items():
        assert _mode(root / "main" / sub) == mode, f"{sub}: {oct(_mode(root / 'main' / sub))}"


def test_ensure_group_is_idempotent(root):
    spool = _make(root)
    (root / "main" / MESSAGES / "keep.json").write_bytes(b"{}")
    spool.folders.ensure_group("main")
    spool.folders.ensure_root()
    assert (root / "main" / MESSAGES / "keep.json").read_bytes() == b"{}"


@pytest.mark.parametrize("name", ["bad name", "../escape", "", "-x"])
def test_ensure_group_rejects_invalid_names(root, name):
    spool = Spool(root)
    spool.folders.ensure_root()
    with pytest.raises(SpoolError):
        spool.folders.ensure_group(name)
    assert not (root.parent / "escape").exists()


def test_ensure_group_refuses_a_symlinked_group(root, tmp_path):
    spool = Spool(root)
    spool.folders.ensure_root()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "evil").symlink_to(elsewhere)
    with pytest.raises(SpoolError, match="symlink"):
        spool.folders.ensure_group("evil")
    assert list(elsewhere.iterdir()) == []
    assert not spool.folders.is_group_dir("evil")
    assert "evil" not in spool.folders.list_groups()


def test_list_groups_only_valid_real_directories(root):
    spool = _make(root)
    spool.folders.ensure_group("group1")
    (root / "not a group").mkdir()
    (root / "afile").write_text("x")
    assert spool.folders.list_groups() == ["group1", "main"]
    assert spool.folders.is_group_dir("main")
    assert not spool.folders.is_group_dir("afile")
    assert not spool.folders.is_group_dir("missing")
    assert not spool.folders.is_group_dir("../main")
    assert Spool(root.parent / "nowhere").folders.list_groups() == []


def test_from_config(root):
    from ipcpool.config import parse_config

    config = parse_config({"spool": {"root": str(root), "max_message_bytes": 77, "mode": "shared",
                                     "durability": "power"}}, environ={})
    spool = Spool.from_config(config)
    assert spool.root == root
    assert spool.reader.max_message_bytes == 77
    assert spool.folders.shared
    assert spool.writer.fsync, "durability = power"


# -- publishing --------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["process", "power"])
def test_publish_is_atomic_and_leaves_no_temp_files(root, durability):
    spool = _make(root, durability=durability)
    final = spool.writer.publish("main", "m1.json", b'{"type":"task","payload":1}')
    assert final == str(root / "main" / MESSAGES / "m1.json")
    assert Path(final).read_bytes() == b'{"type":"task","payload":1}'
    assert os.listdir(root / "main" / TMP) == []
    assert os.listdir(root / "main" / MESSAGES) == ["m1.json"]


def test_published_file_modes_private(root, umask_022):
    spool = _make(root)
    assert _mode(spool.writer.publish("main", "m.json", b"{}")) == 0o600


def test_published_file_modes_shared_are_not_left_to_the_umask(root, umask_022):
    # "Folder and file modes, set explicitly rather than left to the umask."
    spool = _make(root, mode="shared")
    # group members read it; only its writer writes it
    assert _mode(spool.writer.publish("main", "m.json", b"{}")) == 0o640
    spool.ledger.write_ack("main", "abc")
    assert _mode(spool.folders.path("main", "acks", "abc.ack")) == 0o640


def test_publish_does_not_follow_a_symlink_in_tmp(spool, root, tmp_path, monkeypatch):
    # temp names are unguessable, and opened O_EXCL|O_NOFOLLOW: even a symlink planted at the very
    # name makes publish fail, not write through it
    target = tmp_path / "target"
    target.write_bytes(b"original")
    monkeypatch.setattr(spool.writer, "_tmp_name", lambda: ".planted.tmp")
    (root / "main" / TMP / ".planted.tmp").symlink_to(target)
    with pytest.raises(OSError):
        spool.writer.publish("main", "m.json", b"new")
    assert target.read_bytes() == b"original"
    assert not (root / "main" / MESSAGES / "m.json").exists()


def test_write_atomic_failing_write_leaves_no_temp_file(spool, root, monkeypatch):
    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", full_disk)
        with pytest.raises(OSError) as info:
            spool.writer.write_atomic("main", MESSAGES, "m.json", b"x" * 100)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(root / "main" / TMP) == []
    assert os.listdir(root / "main" / MESSAGES) == []


def test_write_atomic_partial_then_failing_write_leaves_no_temp_file(spool, root, monkeypatch):
    real_write = os.write
    calls = []

    def short_then_fail(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:3]))
        raise OSError(errno.EIO, "I/O error")

    with monkeypatch.context() as m:
        m.setattr(os, "write", short_then_fail)
        with pytest.raises(OSError):
            spool.writer.write_atomic("main", ACKS, "a.ack", b"0123456789")
    assert calls == [10, 7]
    assert os.listdir(root / "main" / TMP) == []
    assert os.listdir(root / "main" / ACKS) == []


def test_write_atomic_failing_fsync_leaves_no_temp_file(root, monkeypatch):
    spool = _make(root, durability="power")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", failing_fsync)
        with pytest.raises(OSError):
            spool.writer.publish("main", "m.json", b"{}")
    assert os.listdir(root / "main" / TMP) == []
    assert os.listdir(root / "main" / MESSAGES) == []


def test_write_atomic_handles_short_writes(spool, root, monkeypatch):
    real_write = os.write

    def one_byte_at_a_time(fd, data):
        return real_write(fd, bytes(data[:1]))

    with monkeypatch.context() as m:
        m.setattr(os, "write", one_byte_at_a_time)
        spool.writer.publish("main", "m.json", b"hello world")
    assert (root / "main" / MESSAGES / "m.json").read_bytes() == b"hello world"


def test_write_atomic_replaces_an_existing_file(spool, root):
    spool.ledger.write_response("main", "req-1", b"first")
    spool.ledger.write_response("main", "req-1", b"second")
    assert Path(spool.ledger.response_path("main", "req-1")).read_bytes() == b"second"
    assert spool.ledger.response_path("main", "req-1") == str(root / "main" / RESPONSES / "req-1.json")


def test_temp_names_are_unique(spool):
    names = {spool.writer._tmp_name() for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith(".") and name.endswith(".tmp") for name in names)


# -- claim cycle ---------------------------------------------------------------------------


def test_claim_requeue_complete(spool, root):
    spool.writer.publish("main", "m.json", b"{}")
    assert spool.claims.claim("main", "m.json")
    assert os.listdir(root / "main" / MESSAGES) == []
    assert os.listdir(root / "main" / PROCESSING) == ["m.json"]
    assert not spool.claims.claim("main", "m.json")  # already claimed

    assert spool.claims.requeue("main", "m.json")
    assert os.listdir(root / "main" / MESSAGES) == ["m.json"]
    assert os.listdir(root / "main" / PROCESSING) == []
    assert not spool.claims.requeue("main", "m.json")

    assert spool.claims.claim("main", "m.json")
    assert spool.reader.read_claimed("main", "m.json").data == b"{}"
    spool.claims.complete("main", "m.json")
    assert os.listdir(root / "main" / PROCESSING) == []
    spool.claims.complete("main", "m.json")  # quietly idempotent


def test_claim_missing_file_returns_false(spool):
    assert spool.claims.claim("main", "nope.json") is False


def test_read_claimed_returns_data_size_and_mtime(spool):
    _put_processing(spool, "m.json", b"0123456789")
    result = spool.reader.read_claimed("main", "m.json")
    assert result.data == b"0123456789"
    assert result.size == 10
    assert abs(result.mtime - time.time()) < 60


def test_read_claimed_missing_file_raises_file_not_found(spool):
    with pytest.raises(FileNotFoundError):
        spool.reader.read_claimed("main", "gone.json")


def test_read_claimed_refuses_symlinks(spool, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b'{"type":"task","payload":"secret"}')
    os.symlink(secret, spool.folders.path("main", PROCESSING, "link.json"))
    with pytest.raises(InvalidMessage, match="symbolic link") as info:
        spool.reader.read_claimed("main", "link.json")
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ELOOP


def test_read_claimed_refuses_dangling_symlinks(spool, tmp_path):
    os.symlink(tmp_path / "does-not-exist", spool.folders.path("main", PROCESSING, "dangling.json"))
    with pytest.raises(InvalidMessage, match="symbolic link"):
        spool.reader.read_claimed("main", "dangling.json")


def test_read_claimed_refuses_fifos_without_blocking(spool):
    os.mkfifo(spool.folders.path("main", PROCESSING, "pipe.json"))
    with pytest.raises(InvalidMessage, match="FIFO"):
        spool.reader.read_claimed("main", "pipe.json")


def test_read_claimed_refuses_directories(spool):
    os.mkdir(spool.folders.path("main", PROCESSING, "dir.json"))
    with pytest.raises(InvalidMessage, match="directory"):
        spool.reader.read_claimed("main", "dir.json")


def test_read_claimed_refuses_sockets(spool):
    path = spool.folders.path("main", PROCESSING, "s.json")
    if len(path) >= 100:
        pytest.skip("temporary path too long for an AF_UNIX socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        with pytest.raises(InvalidMessage, match="socket"):
            spool.reader.read_claimed("main", "s.json")
    finally:
        sock.close()


def test_read_claimed_refuses_hard_links(spool, tmp_path):
    path = _put_processing(spool, "m.json", b"{}")
    os.link(path, tmp_path / "other-name")
    with pytest.raises(InvalidMessage, match="hard link"):
        spool.reader.read_claimed("main", "m.json")


def test_read_claimed_size_limit(root):
    spool = _make(root, max_message_bytes=10)
    _put_processing(spool, "ok.json", b"x" * 10)
    assert spool.reader.read_claimed("main", "ok.json").data == b"x" * 10
    _put_processing(spool, "big.json", b"x" * 11)
    with pytest.raises(InvalidMessage, match="too large") as info:
        spool.reader.read_claimed("main", "big.json")
    assert "max_message_bytes" in str(info.value)
    assert "11" in str(info.value)


def test_read_claimed_empty_file(spool):
    _put_processing(spool, "empty.json", b"")
    assert spool.reader.read_claimed("main", "empty.json").data == b""


# -- acks and responses -----------------------------------------------------------------------


def test_acks(spool, root):
    assert not spool.ledger.has_ack("main", "m-1")
    spool.ledger.write_ack("main", "m-1")
    assert spool.ledger.has_ack("main", "m-1")
    path = root / "main" / ACKS / "m-1.ack"
    assert spool.folders.path("main", "acks", "m-1.ack") == str(path)
    text = path.read_text()
    assert text.endswith("Z") and "T" in text
    assert os.listdir(root / "main" / TMP) == []


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "a\x00b", "", "..", "abc\n"])
def test_unsafe_ids_never_reach_file_names(spool, root, bad_id):
    with pytest.raises(InvalidMessage, match="unsafe"):
        spool.ledger.write_ack("main", bad_id)
    with pytest.raises(InvalidMessage):
        spool.ledger.has_ack("main", bad_id)
    with pytest.raises(InvalidMessage):
        spool.ledger.write_response("main", bad_id, b"{}")
    assert os.listdir(root / "main" / ACKS) == []
    assert os.listdir(root / "main" / RESPONSES) == []


# -- quarantine -------------------------------------------------------------------------------------


def test_quarantine_writes_message_and_reason(spool, root):
    spool.writer.publish("main", "bad.json", b"not json")
    assert spool.claims.claim("main", "bad.json")
    before = int(time.time() * 1000)
    error_name = spool.dead.quarantine("main", "bad.json", {"reason": "invalid JSON", "id": "bad", "attempts": 1})
    after = int(time.time() * 1000)

    epoch, _, rest = error_name.partition("-")
    assert rest == "bad.json"
    assert before <= int(epoch) <= after
    errors = root / "main" / ERRORS
    assert sorted(os.listdir(errors)) == [error_name, error_name + ".error.json"]
    assert (errors / error_name).read_bytes() == b"not json"
    record = json.loads((errors / (error_name + ".error.json")).read_text())
    assert record["file"] == error_name
    assert record["originalName"] == "bad.json"
    assert record["group"] == "main"
    assert record["reason"] == "invalid JSON"
    assert record["id"] == "bad"
    assert record["attempts"] == 1
    assert record["time"].endswith("Z")
    assert os.listdir(root / "main" / PROCESSING) == []
    assert os.listdir(root / "main" / TMP) == []


def test_quarantine_from_messages(spool, root):
    spool.writer.publish("main", "m.json", b"{}")
    error_name = spool.dead.quarantine("main", "m.json", {"reason": "queue full"}, source=MESSAGES)
    assert os.listdir(root / "main" / MESSAGES) == []
    assert (root / "main" / ERRORS / error_name).exists()


def test_quarantine_record_with_unserialisable_values(spool, root):
    _put_processing(spool, "m.json", b"{}")
    error_name = spool.dead.quarantine("main", "m.json", {"reason": "x", "when": Path("/p")})
    record = json.loads((root / "main" / ERRORS / (error_name + ".error.json")).read_text())
    assert record["when"] == "/p"


def test_quarantine_missing_file_leaves_no_orphan_record(spool, root):
    with pytest.raises(FileNotFoundError):
        spool.dead.quarantine("main", "gone.json", {"reason": "x"})
    assert os.listdir(root / "main" / ERRORS) == []


def test_quarantine_durability_power(root):
    spool = _make(root, durability="power")
    _put_processing(spool, "m.json", b"{}")
    error_name = spool.dead.quarantine("main", "m.json", {"reason": "x"})
    assert (root / "main" / ERRORS / error_name).exists()


# -- scans ---------------------------------------------------------------------------------------------


def test_scan_ignores_dot_files_and_tmp(spool, root):
    messages = root / "main" / MESSAGES
    for name in ("a.json", "b.msgpack", "c.txt", ".hidden.json", "d.json.tmp", ".x.tmp"):
        (messages / name).write_bytes(b"{}")
    assert sorted(spool.folders.scan("main")) == ["a.json", "b.msgpack", "c.txt"]
    assert spool.folders.count("main", MESSAGES) == 6
    assert spool.folders.scan("missing-group") == []
    assert spool.folders.count("missing-group", MESSAGES) == 0


def test_scan_other_folder(spool):
    _put_processing(spool, "p.json", b"{}")
    assert spool.folders.scan("main", PROCESSING) == ["p.json"]


def test_is_message_name():
    assert is_message_name("a.json")
    assert not is_message_name(".a.json")
    assert not is_message_name("a.json.tmp")


def test_scan_ages_names_the_old_files(spool, root):
    tmp = root / "main" / TMP
    (tmp / "old").write_bytes(b"")
    (tmp / "new").write_bytes(b"")
    now = time.time()
    os.utime(tmp / "old", (now - 7200, now - 7200))
    assert [n for n in spool.folders.scan_ages("main", TMP, now - 3600) if n] == ["old"]
    assert sorted(n for n in spool.folders.scan_ages("main", TMP, now + 10) if n) == ["new", "old"]
    assert [n for n in spool.folders.scan_ages("missing", TMP, now) if n] == []


def test_scan_ages_yields_a_pause_point_for_every_young_entry(spool, root):
    tmp = root / "main" / TMP
    for name in ("a", "b", "c"):
        (tmp / name).write_bytes(b"")
    now = time.time()
    os.utime(tmp / "b", (now - 7200, now - 7200))
    steps = list(spool.folders.scan_ages("main", TMP, now - 3600))
    assert len(steps) == 3 and sorted(s for s in steps if s is not None) == ["b"]


# -- lock ----------------------------------------------------------------------------------------------------


def test_acquire_lock_twice_raises_already_running(spool, root):
    fd = spool.local.acquire_lock()
    try:
        assert (root / STATE_DIR / "lock").read_text().strip() == str(os.getpid())
        with pytest.raises(AlreadyRunning) as info:
            Spool(root).local.acquire_lock()
        assert str(os.getpid()) in str(info.value)
        assert str(root) in str(info.value)
        with pytest.raises(AlreadyRunning):
            spool.local.acquire_lock()
    finally:
        os.close(fd)
    fd2 = Spool(root).local.acquire_lock()
    os.close(fd2)


def test_locks_on_different_roots_are_independent(tmp_path):
    a = _make(tmp_path / "a")
    b = _make(tmp_path / "b")
    fa, fb = a.local.acquire_lock(), b.local.acquire_lock()
    os.close(fa)
    os.close(fb)


# -- delivery records ------------------------------------------------------------------------------------------


def test_deliveries_save_load_drop(spool, root):
    assert spool.deliveries.load() == {}
    history = [{"worker": 1, "reason": "killed"}, {"worker": 2, "reason": "timeout"}]
    spool.deliveries.save("main", "m.json", history)
    spool.deliveries.save("main", "other.msgpack", [{"worker": 3}])
    assert spool.deliveries.load() == {("main", "m.json"): history, ("main", "other.msgpack"): [{"worker": 3}]}
    assert spool.deliveries.path("main", "m.json").exists()
    assert not any(p.name.endswith(".tmp") for p in spool.deliveries.path("main", "m.json").parent.iterdir())

    spool.deliveries.save("main", "m.json", history[:1])
    assert spool.deliveries.load()[("main", "m.json")] == history[:1]

    spool.deliveries.drop("main", "m.json")
    assert spool.deliveries.load() == {("main", "other.msgpack"): [{"worker": 3}]}
    spool.deliveries.drop("main", "m.json")  # quietly idempotent


def test_load_deliveries_skips_unreadable_records(spool):
    spool.deliveries.save("main", "ok.json", [{"n": 1}])
    spool.deliveries.path("main", "broken.json").write_bytes(b"{not json")
    assert spool.deliveries.load() == {("main", "ok.json"): [{"n": 1}]}


def test_load_deliveries_without_state_dir(tmp_path):
    assert Spool(tmp_path / "never-created").deliveries.load() == {}


def test_publish_never_reports_a_message_it_did_not_place(spool, root, monkeypatch):
    """A namesake that is there at each rename and gone at each look (claimed, then another dropped):
    publish gives up with MessageExists rather than return as if the file were placed."""
    from ipcpool.errors import MessageExists
    from ipcpool.transport.spool import writes

    (root / "main" / MESSAGES / "m.json").write_bytes(b"theirs")
    monkeypatch.setattr(writes, "_same_bytes", lambda path, data: None)
    with pytest.raises(MessageExists):
        spool.writer.publish("main", "m.json", b"ours")
    assert (root / "main" / MESSAGES / "m.json").read_bytes() == b"theirs"
    assert not os.listdir(root / "main" / TMP), "the temp file is removed"
