"""Odd entries at odd moments on the spool (issue 23, items 1-4): each test puts a real pool in the
situation a hostile review reproduced and counts where every message ended.

1. a symlink or a FIFO under the name a message is put back to (a worker died; the supervisor restarted);
2. a file name that is not UTF-8;
3. a name so long that no suffix fits beside it;
4. a writer of the group rewriting another writer's queued message (shared mode).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import records, run_cli, wait_until, write_config

from ipcpool import Client

GATED = {"task": "recorder:record", "legacy": "recorder:record"}


def _config(tmp_path: Path, root: Path, **pool: Any) -> Path:
    return write_config(tmp_path / "c.toml", root, handlers=GATED,
                        sections={"pool": {"workers": 1, **pool}, "spool": {"settle_time": 0.2}})


def _drop(root: Path, name: str | bytes, body: bytes, group: str = "main") -> None:
    """Publish as a writer does: tmp/, then rename into messages/ (names may be bytes: not UTF-8)."""
    base = os.fsencode(root / group)
    raw = os.fsencode(name)
    tmp = base + b"/tmp/.part-" + os.urandom(4).hex().encode()
    with open(tmp, "wb") as handle:
        handle.write(body)
    os.rename(tmp, base + b"/messages/" + raw)


def _envelope(message_id: str, **payload: Any) -> bytes:
    return json.dumps({"id": message_id, "type": "task", "payload": payload, "requiresAck": True}).encode()


def _error_records(root: Path, group: str = "main") -> list[dict[str, Any]]:
    folder = root / group / "errors"
    return [json.loads((folder / n).read_text()) for n in sorted(os.listdir(folder)) if n.endswith(".error.json")]


def _running(tmp_path: Path, message_id: str) -> dict[str, Any]:
    return wait_until(lambda: next((r for r in records(tmp_path) if r["id"] == message_id), None), 30,
                      message=f"{message_id} in a handler")


def _leftovers(root: Path, group: str = "main") -> list[str]:
    return [n for sub in ("messages", "processing") for n in os.listdir(root / group / sub)
            if not n.startswith(".")]


# -- 1: putting a message back never follows a link nor opens a FIFO ----------------------------------------


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_message_put_back_beside_a_planted_entry_is_kept_and_the_entry_quarantined(
        tmp_path, root, supervisor_factory, planted):
    """A worker dies holding x.json; meanwhile a group writer planted messages/x.json as a link to the
    claimed file (the old comparison called them the same and unlinked the real message) or as a FIFO
    (the old comparison blocked the supervisor in open() for ever)."""
    sup = supervisor_factory(_config(tmp_path, root))
    gate = tmp_path / "gate"
    _drop(root, "x.json", _envelope("x", gate=str(gate)))
    worker = _running(tmp_path, "x")["pid"]
    planted_path = root / "main" / "messages" / "x.json"
    if planted == "symlink":
        planted_path.symlink_to("../processing/x.json")
    else:
        os.mkfifo(planted_path)
    os.kill(worker, signal.SIGKILL)
    gate.touch()
    wait_until(lambda: (root / "main" / "acks" / "x.ack").exists(), 30,
               message="the real message handled after it was put back")
    kinds = {"symlink": "symbolic link", "fifo": "FIFO"}
    wait_until(lambda: any(kinds[planted] in r["reason"] for r in _error_records(root)), 30,
               message=f"the planted {planted} quarantined with its reason")
    wait_until(lambda: not _leftovers(root), 10, message="nothing left in messages/ or processing/")
    assert [r["delivery"] for r in records(tmp_path) if r["id"] == "x"] == [1, 2]
    assert "unexpected error" not in sup.log()


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_restart_puts_back_beside_a_planted_entry_without_hanging(tmp_path, root, supervisor_factory, planted):
    """The same at start-up recovery: the supervisor (and its workers) SIGKILLed while x.json is claimed."""
    config = _config(tmp_path, root)
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    _drop(root, "x.json", _envelope("x", gate=str(gate)))
    _running(tmp_path, "x")
    os.killpg(sup.pid, signal.SIGKILL)
    sup.wait()
    planted_path = root / "main" / "messages" / "x.json"
    if planted == "symlink":
        planted_path.symlink_to("../processing/x.json")
    else:
        os.mkfifo(planted_path)
    gate.touch()
    again = supervisor_factory(config)
    wait_until(lambda: (root / "main" / "acks" / "x.ack").exists(), 30, message="x handled after the restart")
    wait_until(lambda: not _leftovers(root), 10, message="the planted entry quarantined")
    assert len(_error_records(root)) == 1
    assert again.stop() == 0


# -- 2: any name the kernel accepts is handled or quarantined -----------------------------------------------


def test_a_name_that_is_not_utf8_is_quarantined_and_the_batch_behind_it_handled(tmp_path, root,
                                                                                 supervisor_factory):
    sup = supervisor_factory(write_config(tmp_path / "c.toml", root, handlers=GATED,
                                          sections={"pool": {"workers": 2, "prefetch": 8},
                                                    "spool": {"settle_time": 0.2}}))
    # Dropped while the supervisor is stopped, so one batch holds the bad file and the good ones behind it.
    os.kill(sup.pid, signal.SIGSTOP)
    try:
        _drop(root, b"bad\xff.json", b"this is not JSON")
        os.utime(os.fsencode(root / "main" / "messages") + b"/bad\xff.json", (1, 1))  # settled long ago
        ids = [f"m{i}" for i in range(20)]
        for message_id in ids:
            _drop(root, f"{message_id}.json", _envelope(message_id))
    finally:
        os.kill(sup.pid, signal.SIGCONT)
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in ids), 30,
               message="every message behind the bad name handled")
    wait_until(lambda: _error_records(root), 30, message="the bad name quarantined")
    [record] = _error_records(root)
    assert record["originalName"] == "bad\udcff.json" and "invalid JSON" in record["reason"]
    assert os.listdir(os.fsencode(root / "main" / "errors")).count(
        os.fsencode(record["file"])) == 1, "the message itself is in errors/, under the name its record gives"
    assert not _leftovers(root)
    status = sup.status()
    assert status is not None and all(w["restarts"] == 0 for w in status["workers"]), status["workers"]
    assert "unexpected error" not in sup.log()


def test_a_file_left_in_processing_that_nothing_tracks_is_put_back_by_the_rescans(tmp_path, root,
                                                                                    supervisor_factory):
    """What a transition left half done (a fault the loop survived) looks like on disk: a file in
    processing/ that no worker holds. Two rescans in a row that find it put it back."""
    sup = supervisor_factory(_config(tmp_path, root))
    staged = root / "main" / "tmp" / "orphan.part"
    staged.write_bytes(_envelope("orphan"))
    os.rename(staged, root / "main" / "processing" / "orphan.json")
    wait_until(lambda: (root / "main" / "acks" / "orphan.ack").exists(), 30,
               message="the untracked file put back and handled")
    assert "untracked message in processing/ group=main file=orphan.json" in sup.log()
    assert not _leftovers(root)


# -- 3: suffixes that always fit -----------------------------------------------------------------------------


LONG = "a" * 250 + ".json"  # 255 bytes: the longest name a file can have


def test_a_255_byte_name_is_put_back_beside_its_namesake(tmp_path, root, supervisor_factory):
    supervisor_factory(_config(tmp_path, root))
    gate = tmp_path / "gate"
    _drop(root, LONG, _envelope("first", gate=str(gate)))
    worker = _running(tmp_path, "first")["pid"]
    _drop(root, LONG, _envelope("second"))  # its namesake, queued while the first is claimed
    os.kill(worker, signal.SIGKILL)
    gate.touch()
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in ("first", "second")), 30,
               message="both handled: the first put back under a name that fits")
    assert not _leftovers(root) and not _error_records(root)


def test_errors_retry_of_a_255_byte_name_beside_its_namesake(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:record"})
    sup = supervisor_factory(config)
    _drop(root, LONG, b'{"id": "nope", "type": "task", "payload": {}, "groupFolder": "other"}')
    wait_until(lambda: _error_records(root), 30, message="the group mismatch quarantined")
    assert sup.stop() == 0
    _drop(root, LONG, b"{}")  # a namesake waits in messages/ (no supervisor now)
    out = run_cli(env, tmp_path, "errors", "retry", "--config", str(config), "--all")
    assert out.returncode == 0, out.stdout + out.stderr
    names = os.listdir(root / "main" / "messages")
    assert LONG in names and len(names) == 2, names
    assert all(len(os.fsencode(n)) <= 255 for n in names)


# -- 4: shared mode: a queued message is its writer's alone to change ----------------------------------------


def test_a_group_writer_cannot_rewrite_another_writers_queued_message():
    if os.geteuid() != 0:
        pytest.skip("needs root to run writers as other uids")
    base = Path(tempfile.mkdtemp(prefix="ipcpool-shared-"))
    base.chmod(0o755)
    try:
        root = base / "ipc"
        gid = 4242
        Client(root, "main", mode="shared").close()
        for dirpath, _dirs, _files in os.walk(root):
            os.chown(dirpath, 0, gid)
        script = (  # everything imported first: root's Python may not be readable by the other uids
            "import json, os, sys\n"
            "from ipcpool import Client\n"
            "import ipcpool.transport.spool.outbox  # noqa\n"
            "os.setgroups([]); os.setgid(int(sys.argv[3])); os.setuid(int(sys.argv[2]))\n"
            "root = sys.argv[1]\n"
            "if sys.argv[4] == 'publish':\n"
            "    Client(root, 'main', mode='shared').send('main', 'task', {'to': 'alice'}, message_id='alice-1')\n"
            "    print('published')\n"
            "else:\n"
            "    try:\n"
            "        open(os.path.join(root, 'main', 'messages', 'alice-1.json'), 'r+b').write(b'{}')\n"
            "        print('rewritten')\n"
            "    except PermissionError:\n"
            "        print('refused')\n"
        )
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))

        def as_user(uid: int, action: str) -> str:
            out = subprocess.run([sys.executable, "-c", script, str(root), str(uid), str(gid), action],
                                 capture_output=True, text=True, timeout=60, env=env, cwd=base)
            assert out.returncode == 0, out.stderr
            return out.stdout.strip()

        assert as_user(1000, "publish") == "published"
        assert as_user(1001, "rewrite") == "refused"
        assert json.loads((root / "main" / "messages" / "alice-1.json").read_bytes())["payload"] == {"to": "alice"}
    finally:
        shutil.rmtree(base)


# -- what a writer puts in a name never reaches the log raw --------------------------------------------------


def test_a_name_with_control_characters_is_logged_escaped_on_one_line(tmp_path, root, supervisor_factory):
    sup = supervisor_factory(_config(tmp_path, root))
    name = "evil\x1b]0;owned\x07\nFORGED ERROR line\x1b[2J.json"
    _drop(root, name, b"not JSON")
    os.utime(root / "main" / "messages" / name, (1, 1))
    wait_until(lambda: _error_records(root), 30, message="the oddly named file quarantined")
    log = sup.log()
    assert "\x1b" not in log and "\x07" not in log
    [line] = [line for line in log.splitlines() if "IPC message rejected" in line]
    assert "evil\\x1b]0;owned\\x07\\nFORGED ERROR line\\x1b[2J.json" in line
    assert not any(line.startswith("FORGED") for line in log.splitlines())


# -- a file dropped under another writer's id never answers that writer --------------------------------------


def test_a_file_dropped_under_a_senders_id_does_not_answer_that_sender(tmp_path, root, supervisor_factory):
    """A group writer drops garbage named after a waiting sender's message while that message is put back (here
    at a restart): the garbage is quarantined, and its nack, whose id comes only from the file name, must not
    end the sender's wait with a rejection while its real message is still being handled."""
    import threading

    from ipcpool import Client
    from ipcpool.config import AckConfig

    config = write_config(tmp_path / "c.toml", root, handlers=GATED,
                          sections={"pool": {"workers": 2}, "spool": {"settle_time": 0.2}})
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    outcome: dict[str, object] = {}

    def sender() -> None:
        with Client(root, "main", ack=AckConfig(timeout=60, max_retries=0)) as client:
            try:
                outcome["id"] = client.send_and_wait("main", "task", {"gate": str(gate)}, message_id="victim",
                                                     wait_for_supervisor=True)
            except Exception as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        _running(tmp_path, "victim")
        os.killpg(sup.pid, signal.SIGKILL)
        sup.wait()
        _drop(root, "victim.json", b"garbage, not JSON")  # beside the claimed victim.json, put back at start
        os.utime(root / "main" / "messages" / "victim.json", (1, 1))
        supervisor_factory(config)
        wait_until(lambda: (root / "main" / "acks" / "victim.nack").exists(), 30,
                   message="the garbage quarantined, with a nack under the victim's id")
        assert thread.is_alive(), f"the sender's wait ended on another writer's nack: {outcome}"
    finally:
        gate.touch()
        thread.join(60)
    assert outcome == {"id": "victim"}, outcome


def test_a_folder_made_in_an_inbox_is_left_alone_with_what_it_holds(tmp_path, root, supervisor_factory):
    """A directory is no message: made in messages/ while the pool runs (an inotify event, not only a scan),
    it stays where it is, with its contents, and nothing goes to errors/."""
    config = write_config(tmp_path / "c.toml", root)
    supervisor_factory(config)
    folder = root / "main" / "messages" / "a-folder.json"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    after = Client(root, "main").send("main", "task", {"n": 1}, requires_ack=True)
    wait_until(lambda: (root / "main" / "acks" / f"{after}.ack").exists(), 30, message="a message made after it")
    assert (folder / "keep.txt").read_text() == "mine", "the folder and its contents stay in messages/"
    assert not [n for n in os.listdir(root / "main" / "errors") if not n.startswith(".")]
