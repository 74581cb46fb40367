"""The behaviours both transports promise, each run on the file spool and on a real Redis.

Flow, acks, nacks, request/response, dedupe by id, poison, hung handlers and
handler timeouts, the ``errors`` commands, outside file writers and the
original API: the same test, the same assertions, ``[transport] backend``
the only difference.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest
import redis
from conftest import backend_config as _config
from conftest import ipcpool_cli, records, wait_until, write_config

from ipcpool import Client, MessageFailed, MessageRejected
from ipcpool.config import load_config

pytestmark = pytest.mark.portable  # also run with Linux's interfaces removed (.ci/run)


def test_messages_flow_acked_once_each(tmp_path, root, backend, supervisor_factory):
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    with Client.from_config(config) as client:
        ids = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(40)]
        last = client.send_and_wait("main", "task", {"n": 40})
        wait_until(lambda: all(client.is_acked("main", i) for i in ids), 60, message="every ack")
    counts = Counter(r["id"] for r in records(tmp_path))
    assert sorted(counts) == sorted([*ids, last]) and set(counts.values()) == {1}
    sup.stop()


def test_request_response_and_the_answers_of_a_refused_message(tmp_path, root, backend, supervisor_factory):
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    with Client.from_config(config) as client:
        assert client.request("main", "task", {"result": {"ok": 1}}, timeout=60) == {"ok": 1}
        with pytest.raises(MessageFailed) as failed:
            client.request("main", "task", {"raise": "boom"}, timeout=60)
        assert failed.value.error_type == "RuntimeError" and "boom" in failed.value.error
        with pytest.raises(MessageRejected) as rejected:
            client.send_and_wait("main", "nohandler", {})
        assert rejected.value.reason == "no handler for type nohandler"
        # named as `ipcpool errors show` names it, whichever transport holds it
        assert rejected.value.error_file.startswith("main/errors/"), rejected.value.error_file
    sup.stop()


def test_a_re_sent_acked_id_is_not_handled_again(tmp_path, root, backend, supervisor_factory):
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    with Client.from_config(config) as client:
        client.send_and_wait("main", "task", {"n": 1}, message_id="once-only")
        client.send_and_wait("main", "task", {"n": 1}, message_id="once-only")  # re-acked, not re-run
    assert [r["id"] for r in records(tmp_path)] == ["once-only"]
    wait_until(lambda: "Duplicate IPC message skipped (already acked) id=once-only" in sup.log(), 30,
               message="the duplicate noted")
    sup.stop()


def test_poison_after_max_deliveries_with_its_record(tmp_path, root, env, backend, supervisor_factory):
    config = _config(tmp_path, root, backend, pool={"max_deliveries": 2})
    sup = supervisor_factory(config)
    with Client.from_config(config) as client, pytest.raises(MessageFailed) as caught:
        client.send_and_wait("main", "task", {"exit": 7}, message_id="poison-1", timeout=60)
    assert caught.value.outcome == "poisoned"
    assert [r["delivery"] for r in records(tmp_path) if r["id"] == "poison-1"] == [1, 2]
    listed = ipcpool_cli(env, tmp_path, "errors", "list", "--config", str(config), "--json")
    (entry,) = json.loads(listed.stdout)
    assert entry["id"] == "poison-1" and entry["type"] == "task" and "poison" in entry["reason"]
    shown = ipcpool_cli(env, tmp_path, "errors", "show", "--config", str(config), "poison-1")
    assert shown.returncode == 0 and "exited with code 7" in shown.stdout
    sup.stop()


def test_a_handler_past_its_timeout_is_killed_and_counted(tmp_path, root, backend, supervisor_factory):
    config = _config(tmp_path, root, backend, pool={"handler_timeout": 1.0, "max_deliveries": 1})
    sup = supervisor_factory(config)
    with Client.from_config(config) as client, pytest.raises(MessageFailed) as caught:
        client.send_and_wait("main", "task", {"sleep": 60}, message_id="slow-1", timeout=60)
    assert caught.value.outcome == "poisoned"
    assert "killed after handler_timeout (1s)" in sup.log()
    sup.stop()


def test_a_hung_worker_is_replaced_and_what_it_held_handled(tmp_path, root, backend, supervisor_factory):
    import os
    import signal

    config = _config(tmp_path, root, backend, pool={"workers": 1})
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"
    with Client.from_config(config) as client:
        first = client.send("main", "task", {"wait_file": str(gate)}, requires_ack=True)
        wait_until(lambda: records(tmp_path), 30, message="the first handler started")
        os.kill(records(tmp_path)[0]["pid"], signal.SIGSTOP)  # hung: its heartbeat stops too
        second = client.send("main", "task", {"n": 2}, requires_ack=True)
        wait_until(lambda: "no heartbeat" in sup.log(), 30, message="the hung worker killed")
        gate.touch()
        wait_until(lambda: client.is_acked("main", first) and client.is_acked("main", second), 60,
                   message="what the hung worker held, handled by its replacement")
    deliveries = [r["delivery"] for r in records(tmp_path) if r["id"] == first]
    assert deliveries == [1, 2], "the delivery that hung counts against it"
    sup.stop()


def test_errors_retry_and_purge(tmp_path, root, env, backend, supervisor_factory):
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    with Client.from_config(config) as client, pytest.raises(MessageRejected):
        client.send_and_wait("main", "later", {"n": 1}, message_id="retry-me")
    sup.stop()
    with_handler = write_config(tmp_path / "c2.toml", root, sections=dict(backend),
                                handlers={"task": "recorder:record", "later": "recorder:record"})
    sup = supervisor_factory(with_handler)
    out = ipcpool_cli(env, tmp_path, "errors", "retry", "--config", str(with_handler), "retry-me")
    assert out.returncode == 0 and "retried" in out.stdout, out.stderr
    wait_until(lambda: [r for r in records(tmp_path) if r["id"] == "retry-me"], 30, message="handled after retry")
    listed = ipcpool_cli(env, tmp_path, "errors", "list", "--config", str(with_handler), "--json")
    assert json.loads(listed.stdout) == []
    with Client.from_config(with_handler) as client, pytest.raises(MessageRejected):
        client.send_and_wait("main", "nohandler", {}, message_id="purge-me")
    out = ipcpool_cli(env, tmp_path, "errors", "purge", "--config", str(with_handler), "--all")
    assert out.returncode == 0 and "purged 1" in out.stdout
    sup.stop()


def test_a_file_dropped_in_the_local_inbox_is_handled_once(tmp_path, root, backend, supervisor_factory):
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    staged = root / "main" / "tmp" / "dropped.json"
    staged.write_text(json.dumps({"id": "dropped-1", "type": "task", "payload": {"via": "file"}}))
    staged.rename(root / "main" / "messages" / "dropped.json")
    legacy = root / "main" / "tmp" / "plain.json"
    legacy.write_text(json.dumps({"just": "json"}))
    legacy.rename(root / "main" / "messages" / "plain.json")
    wait_until(lambda: len(records(tmp_path)) == 2, 30, message="both files handled")
    by_id = {r["id"]: r for r in records(tmp_path)}
    assert by_id["dropped-1"]["payload"] == {"via": "file"} and by_id["plain"]["legacy"] is True
    wait_until(lambda: not list((root / "main" / "messages").iterdir()) and
               not [p for p in (root / "main" / "processing").iterdir() if p.is_file()], 30, message="files gone")
    sup.stop()
    assert len(records(tmp_path)) == 2


def test_a_file_written_in_place_is_handled_once_whole_and_never_half(tmp_path, root, backend, supervisor_factory):
    """Guarantee 1 for a direct writer: it opens messages/x.json itself and writes half of the body; the
    supervisor sees the file (it moves it: its ctime changes) while half of it is there; then the rest is
    written and the file closed. The message is handled once, whole, and nothing is quarantined."""
    config = _config(tmp_path, root, backend, spool={"settle_time": 2.0})
    sup = supervisor_factory(config)
    body = json.dumps({"id": "in-place", "type": "task", "payload": {"text": "x" * 4000},
                       "requiresAck": True}).encode()
    path = root / "main" / "messages" / "in-place.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, body[:len(body) // 2])
        half = os.fstat(fd).st_ctime_ns
        wait_until(lambda: (st := os.fstat(fd)).st_nlink == 0 or st.st_ctime_ns != half, 30,
                   message="the supervisor taking up the half-written file")
        wait_until(lambda: os.fstat(fd).st_nlink == 0 or path.exists(), 30,
                   message="the half-written file put back (or, wrongly, sent on)")
        os.write(fd, body[len(body) // 2:])
    finally:
        os.close(fd)
    dead = ([redis.Redis.from_url(backend["redis"]["url"]), f"{backend['redis']['prefix']}:dead:main"]
            if backend else None)

    def quarantined() -> list[str]:
        local = [p.name for p in (root / "main" / "errors").iterdir() if p.is_file()]
        return local + ([str(e[0]) for e in dead[0].xrange(dead[1])] if dead else [])

    wait_until(lambda: records(tmp_path) or quarantined(), 30, message="the message handled (or quarantined)")
    assert quarantined() == [], "nothing partial was processed"
    (record,) = records(tmp_path)
    assert record["id"] == "in-place" and record["payload"] == {"text": "x" * 4000}, "handled whole"
    wait_until(lambda: not path.exists(), 30, message="the file gone")
    assert sup.stop() == 0
    assert len(records(tmp_path)) == 1 and quarantined() == []


def test_the_original_api_on_either_transport(tmp_path, root, backend):
    from ipcpool import IPCMessageType
    from ipcpool.compat import IPCSystem

    config = load_config(_config(tmp_path, root, backend))
    seen = tmp_path / "seen.jsonl"
    system = IPCSystem(config)

    def handle(message: Any) -> None:
        with open(seen, "a") as out:
            out.write(json.dumps(message.payload) + "\n")

    system.register_handler(IPCMessageType.TASK, handle)
    system.start()
    try:
        system.send("main", IPCMessageType.TASK, {"taskId": 1}, True)
        system.send("main", IPCMessageType.TASK, {"taskId": 2})
    finally:
        system.stop()
    assert sorted(json.loads(line)["taskId"] for line in seen.read_text().splitlines()) == [1, 2]
