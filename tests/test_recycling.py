"""A handled message's file becomes the next ack: same guarantees as a fresh temp file, no inode churn."""

from __future__ import annotations

import datetime as dt
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipcpool.transport.spool.layout import ACKS, PROCESSING, RESPONSES, STAGING_DIR, STATE_DIR
from ipcpool.transport.spool.spool import Spool
from ipcpool.transport.spool.writes import MAX_SPARES

BIG = b'{"id": "m", "type": "task", "payload": "' + b"x" * 9000 + b'"}'


def _worker_spool(root: Path, **kwargs) -> Spool:
    spool = Spool(root, private_staging=True, **kwargs)
    spool.folders.ensure_root()
    spool.folders.ensure_group("main")
    return spool


def _handle(spool: Spool, name: str, data: bytes = BIG) -> os.stat_result:
    """Publish, claim and read one message as a worker would; returns its file's stat."""
    spool.writer.publish("main", name, data)
    assert spool.claims.claim("main", name)
    st = os.stat(spool.folders.path("main", PROCESSING, name))
    raw = spool.reader.read_claimed("main", name)
    spool.claims.complete("main", name, recycle=raw.recycle)
    return st


def _staging(root: Path) -> list[str]:
    return sorted(os.listdir(root / STATE_DIR / STAGING_DIR))


def test_ack_is_written_into_the_handled_file_and_holds_only_a_timestamp(tmp_path: Path) -> None:
    spool = _worker_spool(tmp_path)
    st = _handle(spool, "m.json")
    assert len(_staging(tmp_path)) == 1 and not os.listdir(spool.folders.path("main", PROCESSING))
    spool.ledger.write_ack("main", "m")
    ack = Path(spool.folders.path("main", "acks", "m.ack"))
    text = ack.read_text()
    dt.datetime.fromisoformat(text.replace("Z", "+00:00"))  # a timestamp, none of the message's 9 KB left
    ack_st = ack.stat()
    assert ack_st.st_ino == st.st_ino and ack_st.st_size == len(text)
    assert stat.S_IMODE(ack_st.st_mode) == spool.folders.file_mode(ACKS)
    assert _staging(tmp_path) == []


def test_shared_mode_never_recycles(tmp_path: Path) -> None:
    """Group members may write tmp/ and messages/: one could hold a message open and write into our ack."""
    spool = _worker_spool(tmp_path, mode="shared")
    _handle(spool, "m.json")
    assert _staging(tmp_path) == [], "the handled file was unlinked, not kept"
    spool.ledger.write_response("main", "m", b'{"requestId": "m", "success": true}')
    response = Path(spool.ledger.response_path("main", "m"))
    assert stat.S_IMODE(response.stat().st_mode) == spool.folders.file_mode(RESPONSES) == 0o640


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_file_others_could_open_is_never_recycled(tmp_path: Path, mode: int) -> None:
    spool = _worker_spool(tmp_path)
    spool.writer.publish("main", "m.json", BIG)
    path = spool.folders.path("main", "messages", "m.json")
    os.chmod(path, mode)
    assert spool.claims.claim("main", "m.json")
    raw = spool.reader.read_claimed("main", "m.json")
    assert raw.recycle is None


def test_a_file_a_writer_still_holds_open_is_never_recycled(tmp_path: Path) -> None:
    """A direct writer still writing (or a writable mapping) would write into our next ack."""
    spool = _worker_spool(tmp_path)
    spool.writer.publish("main", "m.json", BIG)
    assert spool.claims.claim("main", "m.json")
    writer = os.open(spool.folders.path("main", PROCESSING, "m.json"), os.O_WRONLY)
    try:
        assert spool.reader.read_claimed("main", "m.json").recycle is None
    finally:
        os.close(writer)
    assert spool.reader.read_claimed("main", "m.json").recycle == 0o600


def test_a_spare_whose_destination_folder_is_gone_is_not_leaked(tmp_path: Path) -> None:
    spool = _worker_spool(tmp_path)
    _handle(spool, "m.json")
    os.rmdir(spool.folders.path("main", RESPONSES))
    with pytest.raises(FileNotFoundError):
        spool.ledger.write_response("main", "m", b"{}")
    assert _staging(tmp_path) == []


def test_spares_are_bounded_and_dropped_on_exit(tmp_path: Path) -> None:
    spool = _worker_spool(tmp_path)
    for i in range(MAX_SPARES + 5):
        _handle(spool, f"m{i}.json")
    assert len(_staging(tmp_path)) == MAX_SPARES
    assert not os.listdir(spool.folders.path("main", PROCESSING))
    spool.writer.drop_spares()
    assert _staging(tmp_path) == []


def test_a_lost_spare_falls_back_to_a_fresh_file(tmp_path: Path) -> None:
    spool = _worker_spool(tmp_path)
    _handle(spool, "a.json")
    _handle(spool, "b.json")
    for name in _staging(tmp_path):  # housekeeping (or an operator) removed them meanwhile
        os.unlink(tmp_path / STATE_DIR / STAGING_DIR / name)
    spool.ledger.write_ack("main", "a")
    assert Path(spool.folders.path("main", "acks", "a.ack")).read_text().endswith("Z")
    assert _staging(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_file_owned_by_another_user_is_never_recycled(tmp_path: Path) -> None:
    spool = _worker_spool(tmp_path)
    spool.writer.publish("main", "m.json", BIG)
    assert spool.claims.claim("main", "m.json")
    os.chown(spool.folders.path("main", PROCESSING, "m.json"), 65534, 65534)
    raw = spool.reader.read_claimed("main", "m.json")
    assert raw.recycle is None
    spool.claims.complete("main", "m.json", recycle=raw.recycle)
    assert _staging(tmp_path) == [] and not os.listdir(spool.folders.path("main", PROCESSING))
    spool.ledger.write_ack("main", "m")
    assert os.stat(spool.folders.path("main", "acks", "m.ack")).st_uid == 0


def test_prune_staging_removes_only_files_of_gone_processes(tmp_path: Path) -> None:
    spool = _worker_spool(tmp_path)
    _handle(spool, "mine.json")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)
    staging = tmp_path / STATE_DIR / STAGING_DIR
    (staging / f".{dead_pid}-1.spare").write_bytes(b"old")
    (staging / f".{dead_pid}-2-abcdef.tmp").write_bytes(b"half")
    (staging / "stray").write_bytes(b"?")
    assert spool.writer.prune_staging({os.getpid()}) == 0, "fresh: perhaps a worker newer than the pid list"
    assert spool.writer.prune_staging({os.getpid()}, now=time.time() + 3600) == 3
    assert len(_staging(tmp_path)) == 1 and _staging(tmp_path)[0].startswith(f".{os.getpid()}-")


def test_read_lease_is_released_even_if_a_fork_keeps_the_file_open(tmp_path: Path, monkeypatch) -> None:
    """A handler's thread may fork while a worker reads: the child's copy of the open file
    must not keep the lease, or the worker's own open of the spare breaks it (SIGIO kills)."""
    spool = _worker_spool(tmp_path)
    spool.writer.publish("main", "m.json", BIG)
    assert spool.claims.claim("main", "m.json")
    path = spool.folders.path("main", PROCESSING, "m.json")
    real_close = os.close
    children: list[int] = []

    def fork_then_close(fd: int) -> None:
        if not children:
            pid = os.fork()
            if pid == 0:  # the child holds its copy of every fd open until killed
                import time

                time.sleep(30)
                os._exit(0)
            children.append(pid)
        real_close(fd)

    monkeypatch.setattr("ipcpool.transport.spool.reads.os.close", fork_then_close)
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)  # a broken lease would kill this test process
    try:
        raw = spool.reader.read_claimed("main", "m.json")
        monkeypatch.setattr("ipcpool.transport.spool.reads.os.close", real_close)
        assert children and raw.recycle is not None
        # With the lease still held by the child's copy this open fails with EAGAIN
        # (non-blocking), and a blocking one would send SIGIO to this process.
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    finally:
        signal.signal(signal.SIGIO, previous)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
