"""The real CLI in subprocesses: check, run, send, and what the pool does with what it is sent.

Every test gets its own spool root under tmp_path, and every process is started
by the test (or the ``supervisor_factory`` fixture) and waited for.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import files, kill_session, records, run_cli, wait_until, write_config

from ipcpool import Client

RECORDER = {"task": "recorder:record", "legacy": "recorder:record"}


# -- helpers ---------------------------------------------------------------------------------------


def _errors(root: Path, group: str = "main") -> dict[str, dict[str, Any]]:
    """original file name -> its .error.json record."""
    out: dict[str, dict[str, Any]] = {}
    folder = root / group / "errors"
    if not folder.exists():
        return out
    for name in os.listdir(folder):
        if name.endswith(".error.json"):
            record = json.loads((folder / name).read_text())
            out[record["originalName"]] = record
    return out


def _drop(root: Path, group: str, name: str, data: bytes) -> None:
    """A well-behaved raw writer: stage in tmp/, rename into messages/."""
    staged = root / group / "tmp" / f".{name}.part"
    staged.write_bytes(data)
    os.rename(staged, root / group / "messages" / name)


def _ids(tmp_path: Path) -> list[str]:
    return [r["id"] for r in records(tmp_path)]


def _drained(root: Path, group: str = "main") -> bool:
    return not files(root, group, "messages") and not files(root, group, "processing")


def _parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- check -------------------------------------------------------------------------------------------


def test_check_accepts_a_good_config(tmp_path, root, env):
    config = write_config(tmp_path / "good.toml", root, handlers=RECORDER)
    out = run_cli(env, tmp_path, "check", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert str(config) in out.stdout and "ok" in out.stdout
    assert "task" in out.stdout and "legacy" in out.stdout


BAD_CONFIGS = {
    # name: (config writer, words that must appear in the message)
    "unknown_key": (lambda p, r: write_config(p, r, handlers=RECORDER, sections={"pool": {"wrokers": 2}}),
                    ["[pool]", "wrokers", "unknown key"]),
    "wrong_type": (lambda p, r: write_config(p, r, handlers=RECORDER, sections={"pool": {"workers": "four"}}),
                   ["[pool] workers", '"four"', "integer"]),
    "unknown_section": (lambda p, r: write_config(p, r, handlers=RECORDER, sections={"poool": {"workers": 2}}),
                        ["[poool]", "not a known section"]),
    "bad_toml": (lambda p, r: p.write_text("[pool\nworkers = 2\n") and p, ["invalid TOML", "line 1"]),
    "missing_file": (lambda p, r: p, ["file not found"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_check_rejects_a_bad_config_naming_file_key_and_problem(tmp_path, root, env, case):
    make, words = BAD_CONFIGS[case]
    config = tmp_path / f"{case}.toml"
    make(config, root)
    out = run_cli(env, tmp_path, "check", "--config", str(config))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert str(config) in out.stderr, out.stderr
    for word in words:
        assert word in out.stderr, f"{word!r} not in {out.stderr!r}"
    assert "Traceback" not in out.stderr
    assert not root.exists(), "check must not create the spool"


def test_check_rejects_a_handler_module_that_cannot_be_imported(tmp_path, root, env):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "broken_import:handle"})
    out = run_cli(env, tmp_path, "check", "--config", str(config))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert str(config) in out.stderr
    assert "[handlers]" in out.stderr and "broken_import" in out.stderr
    assert "fails on purpose" in out.stderr, "the import error's own text is shown"


def test_check_rejects_a_handler_function_that_does_not_exist(tmp_path, root, env):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:no_such_function"})
    out = run_cli(env, tmp_path, "check", "--config", str(config))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert str(config) in out.stderr and "[handlers]" in out.stderr and "no_such_function" in out.stderr


# -- run -------------------------------------------------------------------------------------------------


def test_run_with_a_bad_config_exits_2_before_starting(tmp_path, root, env):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER, sections={"pool": {"workers": "four"}})
    out = run_cli(env, tmp_path, "run", "--config", str(config), timeout=30)  # the deadline: it must exit by itself
    assert out.returncode == 2, (out.stdout, out.stderr)
    text = out.stdout + out.stderr
    assert str(config) in text and "[pool] workers" in text and '"four"' in text
    assert "Enhanced IPC system started" not in text
    assert not root.exists(), "a supervisor that refuses its config must not touch the spool"


def test_run_with_a_handler_that_fails_to_import_exits_3(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "broken_import:handle"})
    sup = supervisor_factory(config, wait_ready=False)
    code = sup.wait(30)  # raises if it does not exit by itself
    assert code == 3, sup.log()
    log = sup.log()
    assert "broken_import" in log
    assert "fails on purpose" in log
    assert "Enhanced IPC system started" not in log


def test_second_run_on_the_same_root_refuses_at_once(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER)
    sup = supervisor_factory(config)
    # The second exits by itself while the first still runs (_cli fails it if it does not within its deadline).
    out = run_cli(env, tmp_path, "run", "--config", str(config), timeout=30)
    assert out.returncode == 1, "README: exit code 1 when another supervisor is already running"
    assert "already" in (out.stdout + out.stderr), out.stderr
    assert "Enhanced IPC system started" not in out.stdout + out.stderr
    # the first is unharmed and still handles messages
    assert sup.proc.poll() is None
    message_id = Client(root, "main").send("main", "task", {"n": 1}, requires_ack=True)
    wait_until(lambda: (root / "main" / "acks" / f"{message_id}.ack").exists(), 20, message="ack from the first")
    assert sup.stop() == 0


# -- send ------------------------------------------------------------------------------------------------


def test_send_prints_a_new_id_and_the_message_is_handled(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER)
    base = ("send", "--config", str(config), "--group", "main", "--type", "task")

    out = run_cli(env, tmp_path, *base, "--payload", '{"n": 1}')
    assert out.returncode == 0, out.stderr
    json_id = out.stdout.strip()
    assert uuid.UUID(json_id).version == 4
    landed = root / "main" / "messages" / f"{json_id}.json"
    assert landed.exists(), files(root, "main", "messages")
    envelope = json.loads(landed.read_bytes())
    assert envelope["id"] == json_id and envelope["type"] == "task" and envelope["groupFolder"] == "main"
    assert envelope["payload"] == {"n": 1}

    out = run_cli(env, tmp_path, *base, "--format", "msgpack", "--payload", '{"n": 2}')
    assert out.returncode == 0, out.stderr
    msgpack_id = out.stdout.strip()
    assert uuid.UUID(msgpack_id).version == 4 and msgpack_id != json_id
    landed = root / "main" / "messages" / f"{msgpack_id}.msgpack"
    assert landed.exists(), files(root, "main", "messages")
    assert msgpack.unpackb(landed.read_bytes())["payload"] == {"n": 2}
    assert not list((root / "main" / "tmp").iterdir()), "nothing left behind in tmp/"

    sup = supervisor_factory(config)
    wait_until(lambda: len(records(tmp_path)) >= 2 and _drained(root), 20, message="both sends handled")
    by_id = {r["id"]: r for r in records(tmp_path)}
    assert sorted(by_id) == sorted([json_id, msgpack_id])
    assert by_id[json_id]["payload"] == {"n": 1} and by_id[msgpack_id]["payload"] == {"n": 2}
    assert files(root, "main", "errors") == []

    # with the pool running, --ack waits for the ack and exits 0
    out = run_cli(env, tmp_path, *base, "--payload", '{"n": 3}', "--ack", "--timeout", "5", timeout=60)
    assert out.returncode == 0, out.stderr
    ack_id = out.stdout.strip()
    assert uuid.UUID(ack_id).version == 4
    assert (root / "main" / "acks" / f"{ack_id}.ack").exists()
    assert ack_id in _ids(tmp_path)
    assert sup.stop() == 0


def test_send_ack_without_a_pool_exits_1_with_a_clear_message(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER)
    # The wait per attempt is 600 s, the command's deadline 20 s: it must not wait at all.
    out = run_cli(env, tmp_path, "send", "--config", str(config), "--group", "main", "--type", "task",
                  "--ack", "--timeout", "600", timeout=20)
    assert out.returncode == 1, (out.stdout, out.stderr)
    # No supervisor holds the root: said at once (no wait), and the message stays queued.
    assert "is queued, but no ipcpool supervisor is running" in out.stderr and "ACK timeout" not in out.stderr
    assert f"no ipcpool supervisor is running for {root}" in out.stderr
    assert "the message stays queued and will be handled when one starts" in out.stderr
    assert "Retrying IPC message" not in out.stderr
    assert len(files(root, "main", "messages")) == 1
    queued_id = out.stdout.strip() or files(root, "main", "messages")[0].removesuffix(".json")
    sup = supervisor_factory(config)  # as it said: handled when one starts
    wait_until(lambda: queued_id in _ids(tmp_path), 30, message="the queued message handled")
    assert sup.stop() == 0


def test_request_without_a_pool_says_so_at_once(tmp_path, root, env):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER)
    out = run_cli(env, tmp_path, "request", "--config", str(config), "--group", "main", "--type", "task",
                  "--timeout", "600", timeout=20)
    assert out.returncode == 1 and f"no ipcpool supervisor is running for {root}" in out.stderr, out.stderr


def test_wait_for_supervisor_waits_for_one_to_start(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER)
    sender = subprocess.Popen([sys.executable, "-m", "ipcpool", "send", "--config", str(config), "--group", "main",
                               "--type", "task", "--ack", "--wait-for-supervisor"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: files(root, "main", "messages"), 20, message="the message queued")
        assert sender.poll() is None, "it waits for a supervisor instead of giving up"
        supervisor_factory(config)
        out, err = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            kill_session(sender.pid)
            sender.wait()
    assert sender.returncode == 0, err
    assert out.strip() == files(root, "main", "acks")[0].removesuffix(".ack")


# -- drain --------------------------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_messages_and_a_restart_handles_the_rest(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER)
    sup = supervisor_factory(config)
    client = Client(root, "main")
    ids = [client.send("main", "task", {"sleep": 0.5, "n": i}, requires_ack=True) for i in range(10)]
    wait_until(lambda: records(tmp_path), 20, message="the first delivery to start")
    sup.signal(signal.SIGTERM)
    assert sup.wait(30) == 0, sup.log()
    assert "draining" in sup.log()
    handled_before = set(_ids(tmp_path))
    assert handled_before, "some messages were in flight"
    assert len(handled_before) < len(ids), "some messages were left for the restart"
    assert files(root, "main", "processing") == [], "a drained supervisor leaves nothing in processing/"
    for message_id in handled_before:
        assert (root / "main" / "acks" / f"{message_id}.ack").exists(), f"{message_id} started but not finished"

    again = supervisor_factory(config)
    wait_until(lambda: set(_ids(tmp_path)) >= set(ids), 30, message="every message handled after restart")
    wait_until(lambda: _drained(root), 10, message="empty messages/ and processing/")
    seen = _ids(tmp_path)
    assert sorted(seen) == sorted(ids), "every message handled exactly once across the restart"
    assert all((root / "main" / "acks" / f"{i}.ack").exists() for i in ids)
    assert files(root, "main", "errors") == []
    assert again.stop() == 0


# -- what ends in errors/ ------------------------------------------------------------------------------------


def test_a_type_without_a_handler_ends_in_errors_with_the_reason(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:record"})
    sup = supervisor_factory(config)
    message_id = Client(root, "main").send("main", "mystery", {"n": 1}, requires_ack=True)
    name = f"{message_id}.json"
    record = wait_until(lambda: _errors(root).get(name), 20, message="the message in errors/")
    assert record["reason"] == "no handler for type mystery"
    assert record["id"] == message_id and record["type"] == "mystery"
    assert (root / "main" / "errors" / record["file"]).exists(), "the message itself sits beside its record"
    assert _ids(tmp_path) == []
    assert not (root / "main" / "acks" / f"{message_id}.ack").exists()
    (root / "main" / "messages" / "no-type.json").write_text("not json")  # by hand: no id, no type inside
    wait_until(lambda: _errors(root).get("no-type.json"), 20, message="the unreadable message in errors/")
    assert _drained(root)
    assert sup.stop() == 0
    log = sup.log()
    assert f"id={message_id} group=main type=mystery" in log
    assert "id=no-type group=main type=unknown" in log, log
    assert "type=None" not in log and "id=None" not in log and "was failed" not in log, log


def test_a_handler_that_fails_once_is_retried_in_place_and_acked(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers={"task": "recorder:fail_once"},
                          sections={"retry": {"attempts": 3}})
    sup = supervisor_factory(config)
    message_id = Client(root, "main").send("main", "task", {}, requires_ack=True)
    wait_until(lambda: (root / "main" / "acks" / f"{message_id}.ack").exists(), 20, message="the ack")
    calls = [r for r in records(tmp_path) if r["id"] == message_id]
    assert len(calls) == 2 and len({c["pid"] for c in calls}) == 1, "attempt 2 in the same delivery"
    assert all(c["delivery"] == 1 for c in calls)
    assert f"IPC handler failed (attempt 1), retrying in 0.01s id={message_id} group=main" in sup.log()
    assert "attempt 2" not in sup.log()
    assert _errors(root) == {} and _drained(root)
    assert sup.stop() == 0


def test_a_raising_handler_is_retried_then_quarantined_with_its_traceback(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER, sections={"retry": {"attempts": 3}})
    sup = supervisor_factory(config)
    message_id = Client(root, "main").send("main", "task", {"raise": "boom"}, requires_ack=True)
    name = f"{message_id}.json"
    record = wait_until(lambda: _errors(root).get(name), 20, message="the message in errors/")
    assert _ids(tmp_path).count(message_id) == 3, "one delivery per [retry] attempt"
    assert record["attempts"] == 3
    assert record["exception"]["type"] == "RuntimeError"
    assert record["exception"]["message"] == "boom"
    traceback = record["exception"]["traceback"]
    assert "Traceback" in traceback and "RuntimeError: boom" in traceback and "recorder.py" in traceback
    assert "boom" in record["reason"]
    assert not (root / "main" / "acks" / f"{message_id}.ack").exists()
    assert _drained(root)
    assert sup.stop() == 0


def test_an_envelope_naming_another_group_is_rejected(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER, groups=["main", "other"])
    sup = supervisor_factory(config)
    envelope = {"id": "impostor-1", "type": "task", "groupFolder": "other", "payload": {"n": 1},
                "requiresAck": True}
    _drop(root, "main", "impostor-1.json", json.dumps(envelope).encode())
    record = wait_until(lambda: _errors(root).get("impostor-1.json"), 20, message="the impostor in errors/")
    assert "group mismatch" in record["reason"]
    assert "other" in record["reason"]
    assert _ids(tmp_path) == []
    assert not (root / "main" / "acks" / "impostor-1.ack").exists()
    assert not (root / "other" / "acks" / "impostor-1.ack").exists()
    assert files(root, "other", "errors") == [] and files(root, "other", "messages") == []
    assert sup.stop() == 0


# -- writers that write straight into messages/ ------------------------------------------------------------------


def test_a_file_still_being_written_is_not_quarantined_and_is_handled_when_complete(
        tmp_path, root, env, supervisor_factory):
    settle = 1.5
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER, sections={"spool": {"settle_time": settle}})
    sup = supervisor_factory(config)
    body = json.dumps({"id": "slow-1", "type": "task", "payload": {"text": "x" * 200}, "requiresAck": True}).encode()
    pieces = [body[i:i + 20] for i in range(0, len(body), 20)]
    gap = 0.3
    started = time.monotonic()
    with open(root / "main" / "messages" / "slow-1.json", "wb") as handle:
        for piece in pieces:
            handle.write(piece)
            handle.flush()
            assert files(root, "main", "errors") == [], "an unfinished file was quarantined"
            time.sleep(gap)  # the writer's own pace, not a wait for a condition
    assert time.monotonic() - started > 2 * settle, "the write outlasted settle_time"
    wait_until(lambda: (root / "main" / "acks" / "slow-1.ack").exists(), 20, message="the completed file handled")
    wait_until(lambda: _drained(root), 10, message="empty messages/ and processing/")
    assert _ids(tmp_path) == ["slow-1"]
    assert records(tmp_path)[0]["payload"] == {"text": "x" * 200}
    assert files(root, "main", "errors") == []
    assert sup.stop() == 0


def test_a_malformed_file_is_quarantined_after_settle_time_with_a_readable_reason(
        tmp_path, root, env, supervisor_factory):
    settle = 1.0
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER, sections={"spool": {"settle_time": settle}})
    sup = supervisor_factory(config)
    written = time.time()
    (root / "main" / "messages" / "broken-1.json").write_bytes(b'{"id": "broken-1", "type": "task", "payl')
    record = wait_until(lambda: _errors(root).get("broken-1.json"), 20, message="the malformed file in errors/")
    assert _parse_iso(record["time"]) - written >= settle - 0.05, "quarantined before settle_time passed"
    assert record["reason"].startswith("invalid JSON"), record["reason"]
    assert "line 1" in record["reason"]
    assert (root / "main" / "errors" / record["file"]).read_bytes() == b'{"id": "broken-1", "type": "task", "payl'
    assert _ids(tmp_path) == []
    assert _drained(root)
    assert sup.stop() == 0


def test_files_queued_before_start_are_handled_and_dot_and_tmp_files_are_left_alone(
        tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, handlers=RECORDER)
    client = Client(root, "main")
    queued = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(5)]
    messages = root / "main" / "messages"
    ignored = {
        ".hidden.json": json.dumps({"id": "hidden-1", "type": "task", "payload": {}}).encode(),
        "half.json.tmp": json.dumps({"id": "half-1", "type": "task", "payload": {}}).encode(),
        "other.tmp": b"not even json",
    }
    for name, data in ignored.items():
        (messages / name).write_bytes(data)

    sup = supervisor_factory(config)
    wait_until(lambda: all((root / "main" / "acks" / f"{i}.ack").exists() for i in queued), 20,
               message="the queued messages handled")
    # touch the ignored files while the pool runs, then send a marker: its events come after theirs
    for name, data in ignored.items():
        (messages / name).write_bytes(data)
    marker = client.send("main", "task", {"marker": True}, requires_ack=True)
    wait_until(lambda: (root / "main" / "acks" / f"{marker}.ack").exists(), 20, message="the marker handled")

    assert sorted(_ids(tmp_path)) == sorted([*queued, marker])
    assert sorted(files(root, "main", "messages")) == sorted(ignored)
    for name, data in ignored.items():
        assert (messages / name).read_bytes() == data
    assert files(root, "main", "errors") == []
    assert files(root, "main", "processing") == []
    assert sup.stop() == 0
