"""Delayed delivery (``notBefore``) and expiry (``expiresAt``), each on the file spool and on a real Redis.

Real supervisors and workers; every wait is on an event (a status record, an ack, a nack), never a sleep.
What a test asserts about time is order, not speed: a handler's start (its record's ``at``) is never before
the message's ``notBefore``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest
import redis
from conftest import backend_config as _config
from conftest import ipcpool_cli, records, wait_until, write_config

from ipcpool import AsyncClient, Client, MessageRejected
from ipcpool.msgtime import BadWindow, format_iso, parse_iso

pytestmark = pytest.mark.portable


def _group_status(sup: Any, group: str = "main") -> dict[str, Any]:
    return ((sup.status() or {}).get("groups") or {}).get(group) or {}


def _held(root: Any, backend: dict[str, Any], group: str = "main") -> int:
    """How many the transport holds as delayed, read from the store itself (not from status)."""
    if not backend:
        return sum(1 for p in (root / group / "delayed").iterdir() if p.is_file())
    client = redis.Redis.from_url(backend["redis"]["url"])
    return int(client.zcard(f"{backend['redis']['prefix']}:delayed:{group}"))


def _errors(env: dict[str, str], tmp_path: Any, config: Any) -> list[dict[str, Any]]:
    listed = ipcpool_cli(env, tmp_path, "errors", "list", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_a_delayed_message_is_handled_once_not_before_its_time(tmp_path, root, backend, supervisor_factory):
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    with Client.from_config(config) as client:
        late = client.send("main", "task", {"n": "late"}, requires_ack=True, delay=2)
        now = client.send("main", "task", {"n": "now"}, requires_ack=True)
        wait_until(lambda: client.is_acked("main", now), 30, message="the undelayed message handled")
        wait_until(lambda: client.is_acked("main", late), 30, message="the delayed message handled when due")
    (record,) = [r for r in records(tmp_path) if r["id"] == late]
    assert record["at"] >= parse_iso(record["extra"]["notBefore"]), "never handed out before notBefore"
    assert [r["id"] for r in records(tmp_path)].count(late) == 1
    assert _held(root, backend) == 0
    sup.stop()


def test_a_sender_waiting_for_a_delayed_ack_waits_out_the_delay_without_re_sending(tmp_path, root, backend,
                                                                                   supervisor_factory, caplog):
    config = _config(tmp_path, root, backend, ack={"timeout": 1.0, "max_retries": 1})
    sup = supervisor_factory(config)
    with Client.from_config(config) as client:
        message_id = client.send("main", "task", {"n": 1}, wait=True, delay=2.5)
    assert [r["id"] for r in records(tmp_path)] == [message_id]
    assert "Retrying IPC message" not in caplog.text, "an attempt's wait counts from the due time"
    sup.stop()


def test_status_shows_what_is_delayed_and_when_the_next_is_due(tmp_path, root, env, backend, supervisor_factory):
    config = _config(tmp_path, root, backend, http={"listen": "127.0.0.1:0"})
    sup = supervisor_factory(config)
    due = time.time() + 3600
    with Client.from_config(config) as client:
        for n in range(3):
            client.send("main", "task", {"n": n}, not_before=format_iso(due + n))
    wait_until(lambda: _group_status(sup).get("delayed") == 3, 30, message="three delayed in status")
    assert _group_status(sup)["nextDue"] == format_iso(due)
    assert _held(root, backend) == 3 and records(tmp_path) == []
    shown = ipcpool_cli(env, tmp_path, "status", "--config", str(config))
    assert "DELAYED" in shown.stdout and format_iso(due) in shown.stdout, shown.stdout
    address = wait_until(lambda: (sup.status() or {}).get("http"), 30, message="the HTTP address")
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        lines = dict(line.rsplit(" ", 1) for line in response.read().decode().splitlines()
                     if line and not line.startswith("#"))
    assert float(lines['ipcpool_delayed{group="main"}']) == 3
    next_due = float(lines['ipcpool_delayed_next_due_timestamp_seconds{group="main"}'])
    assert abs(next_due - parse_iso(format_iso(due))) < 1e-3
    sup.stop()
    down = json.loads(ipcpool_cli(env, tmp_path, "status", "--config", str(config), "--json").stdout)
    assert down["folders"]["main"]["delayed"] == 3, "counted in the transport with no supervisor running"


def test_delayed_messages_survive_a_sigkill_and_are_handed_out_once(tmp_path, root, backend, supervisor_factory):
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    due = time.time() + 8
    with Client.from_config(config) as client:
        ids = [client.send("main", "task", {"n": n}, requires_ack=True, not_before=due) for n in range(20)]
        wait_until(lambda: _held(root, backend) == 20, 30, message="all twenty held as delayed")
        sup.kill()
        assert _held(root, backend) == 20, "held durably across the SIGKILL"
        sup = supervisor_factory(config)
        wait_until(lambda: _group_status(sup).get("delayed") == 20 or all(client.is_acked("main", i) for i in ids),
                   30, message="the heap rebuilt after the restart")
        wait_until(lambda: all(client.is_acked("main", i) for i in ids), 60, message="every one handled when due")
    handled = [r for r in records(tmp_path) if r["id"] in ids]
    assert sorted(r["id"] for r in handled) == sorted(ids), "each handed out exactly once"
    assert all(r["at"] >= parse_iso(r["extra"]["notBefore"]) for r in handled)
    sup.stop()


def test_an_expired_message_is_dead_lettered_and_its_sender_nacked(tmp_path, root, env, backend,
                                                                  supervisor_factory):
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    with Client.from_config(config) as client, pytest.raises(MessageRejected) as caught:
        client.send("main", "task", {"n": 1}, wait=True, expires_at=time.time() - 1, message_id="too-late")
    assert caught.value.reason == "expired" and caught.value.outcome == "rejected"
    assert records(tmp_path) == [], "its handler never ran"
    (entry,) = _errors(env, tmp_path, config)
    assert entry["id"] == "too-late" and entry["reason"] == "expired"
    sup.stop()


def test_a_message_that_expires_while_it_waits_nacks_an_async_sender(tmp_path, root, backend, supervisor_factory):
    config = _config(tmp_path, root, backend, pool={"workers": 1, "prefetch": 1})
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"

    async def scenario() -> None:
        client = AsyncClient.from_config(config)
        try:
            await client.send("main", "task", {"gate": str(gate)})
            await asyncio.to_thread(wait_until, lambda: records(tmp_path), 30, message="the worker busy")
            sent = time.time()
            waiting = asyncio.ensure_future(client.send_and_wait("main", "task", {"n": 2}, ttl=1,
                                                                 message_id="waited-out"))
            await asyncio.to_thread(wait_until, lambda: time.time() > sent + 1.5, 30, message="its ttl run out")
            gate.touch()
            with pytest.raises(MessageRejected) as caught:
                await waiting
            assert caught.value.reason == "expired"
        finally:
            client.close()

    asyncio.run(scenario())
    assert [r["id"] for r in records(tmp_path)].count("waited-out") == 0, "its handler never ran"
    sup.stop()


def test_hand_written_windows(tmp_path, root, env, backend, supervisor_factory):
    """A shell writer sets notBefore by hand (handled when due), or a window that can never open (expired)."""
    config = _config(tmp_path, root, backend)
    sup = supervisor_factory(config)
    due = format_iso(time.time() + 2)
    bodies = {
        "by-hand": {"id": "by-hand", "type": "task", "payload": {}, "requiresAck": True, "notBefore": due},
        "never": {"id": "never", "type": "task", "payload": {}, "requiresAck": True,
                  "notBefore": format_iso(time.time() + 3600), "expiresAt": format_iso(time.time() + 60)},
        "bad-time": {"id": "bad-time", "type": "task", "payload": {}, "notBefore": "tomorrow"},
    }
    for name, body in bodies.items():
        staged = root / "main" / "tmp" / f"{name}.json"
        staged.write_text(json.dumps(body))
        staged.rename(root / "main" / "messages" / f"{name}.json")
    with Client.from_config(config) as client:
        wait_until(lambda: client.is_acked("main", "by-hand"), 30, message="the hand-written delay handled")
        wait_until(lambda: client.outbox.nack("main", "never") is not None, 30, message="the never-open window")
        assert client.outbox.nack("main", "never")["reason"] == "expired"
    (record,) = [r for r in records(tmp_path) if r["id"] == "by-hand"]
    assert record["at"] >= parse_iso(due)
    wait_until(lambda: len(_errors(env, tmp_path, config)) == 2, 30, message="both refused ones listed")
    reasons = {e["id"]: e["reason"] for e in _errors(env, tmp_path, config)}
    assert reasons["never"] == "expired" and "notBefore" in reasons["bad-time"]
    assert not [r for r in records(tmp_path) if r["id"] in ("never", "bad-time")]
    sup.stop()


def test_the_cli_sends_a_window_and_refuses_one_that_never_opens(tmp_path, root, env, backend, supervisor_factory):
    config = _config(tmp_path, root, backend)
    refused = ipcpool_cli(env, tmp_path, "send", "--config", str(config), "-g", "main", "-t", "task",
                          "--delay", "30s", "--ttl", "10s")
    assert refused.returncode == 2 and "before it is due" in refused.stderr, refused.stderr
    bad = ipcpool_cli(env, tmp_path, "send", "--config", str(config), "-g", "main", "-t", "task",
                      "--not-before", "2026-12-24T08:00:00")
    assert bad.returncode == 2 and "zone" in bad.stderr, bad.stderr
    for option, value in (("--delay", "99999999999d"), ("--not-before", "9999-12-31T23:59:59-23:59")):
        beyond = ipcpool_cli(env, tmp_path, "send", "--config", str(config), "-g", "main", "-t", "task", option, value)
        assert beyond.returncode == 2 and "between 1970-01-01 and 9999-12-31" in beyond.stderr, beyond.stderr
    sup = supervisor_factory(config)
    sent = ipcpool_cli(env, tmp_path, "send", "--config", str(config), "-g", "main", "-t", "task",
                       "--delay", "1s", "--ttl", "1h", "--ack", "--timeout", "60")
    assert sent.returncode == 0, sent.stderr
    (record,) = records(tmp_path)
    assert record["at"] >= parse_iso(record["extra"]["notBefore"]) and "expiresAt" in record["extra"]
    sup.stop()


def test_a_window_that_can_never_open_is_refused_before_it_is_sent(tmp_path, root):
    with Client(root, "main") as client:
        with pytest.raises(BadWindow):
            client.send("main", "task", {}, delay=60, ttl=30)
        with pytest.raises(BadWindow):
            client.send("main", "task", {}, delay=1, not_before=time.time())
        for window in ({"delay": float("inf")}, {"delay": 1e20}, {"not_before": 1e20}, {"not_before": float("nan")},
                       {"expires_at": float("-inf")}, {"ttl": float("inf")}):
            with pytest.raises(BadWindow):  # a clear error, not an OverflowError from deep inside
                client.send("main", "task", {}, **window)
    assert list((root / "main" / "messages").iterdir()) == []


def test_supervisors_sharing_one_redis_hand_each_delayed_message_out_once(tmp_path, env, redis_url, redis_prefix):
    """Three supervisors (each a host with its own root) on one Redis: whichever holds a delayed message, all
    of them look for what is due, and each message is moved back into the stream, and handled, once."""
    from collections import Counter

    from conftest import SupervisorProcess, write_config

    backend = {"transport": {"backend": "redis"}, "redis": {"url": redis_url, "prefix": redis_prefix, "lease": 3.0}}
    hosts: list[SupervisorProcess] = []
    try:
        for name in ("a", "b", "c"):
            (tmp_path / name).mkdir()
            config = write_config(tmp_path / name / "c.toml", tmp_path / name / "ipc", sections=backend,
                                  handlers={"task": "recorder:record"})
            hosts.append(SupervisorProcess(config, tmp_path, env, tmp_path / f"{name}.log").start())
        with Client.from_config(config) as client:
            ids = [client.send("main", "task", {"n": n}, requires_ack=True, delay=4) for n in range(30)]
            wait_until(lambda: _held(tmp_path, backend) == 30 or all(client.is_acked("main", i) for i in ids), 30,
                       message="all thirty held in the sorted set")
            wait_until(lambda: all(client.is_acked("main", i) for i in ids), 60, message="each one handled when due")
    finally:
        for sup in hosts:
            sup.stop()
    handled = Counter(r["id"] for r in records(tmp_path))
    assert sorted(handled) == sorted(ids) and set(handled.values()) == {1}, "each handed out exactly once"
    assert _held(tmp_path, backend) == 0


def test_the_delayed_folder_is_its_own_timetable(tmp_path):
    """delayed/ names carry the due time and the inbox: a fresh heap built from one listing moves each message
    back to where it came from (the second inbox too) when due, under its own name, or a copy's if taken."""
    from ipcpool.transport.spool.delayed import DelayedFiles, delayed_name, parse_delayed
    from ipcpool.transport.spool.spool import Spool

    inboxes = ("messages", "tasks")
    assert parse_delayed(delayed_name(1_700_000_000_123, "tasks/a-b.json"), inboxes) == (1_700_000_000_123,
                                                                                        "tasks/a-b.json")
    assert parse_delayed(delayed_name(5, "x-1.json")) == (5, "x-1.json")
    assert parse_delayed("not-a-due-time.json") is None
    assert parse_delayed(delayed_name(5, "tasks/a.json")) is None, "an inbox this group does not have"
    spool = Spool(tmp_path / "ipc", inboxes=("messages", "tasks"), private_staging=True)
    spool.folders.ensure_root()
    spool.folders.ensure_group("main")
    for key in ("one.json", "tasks/two.json", "three.json"):
        path = spool.folders.path("main", "processing", key)
        with open(path, "w") as out:
            out.write("{}")
    held = DelayedFiles(spool.folders)
    held.hold("main", "one.json", 1000.0)
    held.hold("main", "tasks/two.json", 2000.0)
    held.hold("main", "three.json", 3000.0)
    (tmp_path / "ipc" / "main" / "messages" / "three.json").write_text('{"a": "namesake"}')
    fresh = DelayedFiles(spool.folders)  # a restart: nothing but the listing
    assert fresh.load("main") == 3 and fresh.stats("main") == (3, format_iso(1000.0))
    assert list(fresh.due(999.999)) == []
    assert list(fresh.due(2000.0)) == [("main", "one.json"), ("main", "tasks/two.json")]
    assert (tmp_path / "ipc" / "main" / "tasks" / "two.json").exists()
    assert list(fresh.due(4000.0)) == [("main", "three.requeued1.json")]
    assert fresh.heaps == {} and list((tmp_path / "ipc" / "main" / "delayed").iterdir()) == []


def test_strangers_in_the_delayed_folder_are_left_alone_and_never_stop_a_start(tmp_path, root, supervisor_factory):
    """delayed/ is the supervisor's, but a hand or an old version may leave anything there. A name is the
    only record of where its file goes back: one that could send it outside its inbox (``..``, ``acks``,
    not a message's name) or whose due time is not plain ASCII digits is left alone, logged once, and the
    pool starts and serves (a '²' once made every start exit 1; ``1-..-x.json`` moved a file to the root)."""
    config = write_config(tmp_path / "c.toml", root)
    delayed = root / "main" / "delayed"
    delayed.mkdir(parents=True)
    delayed.chmod(0o700)
    strangers = ["\u00b2-messages-x.json", "1-..-escaped.json", "1-acks-fake-id.ack", "1-messages-.hidden.json",
                 "99999999999999999999-messages-late.json", "1-messages-notes.txt"]
    for name in strangers:
        (delayed / name).write_text('{"id": "x", "type": "task", "payload": {}}')
    (delayed / "1-messages-due.json").write_text('{"id": "due", "type": "task", "payload": {}, "requiresAck": true}')
    sup = supervisor_factory(config)
    wait_until(lambda: (root / "main" / "acks" / "due.ack").exists(), 30, message="the real one handed out")
    assert sorted(p.name for p in delayed.iterdir()) == sorted(strangers), "strangers left where they are"
    assert not (root / "escaped.json").exists() and not (root / "main" / "acks" / "fake-id.ack").exists()
    assert all(sup.log().count(f"file={name}") == 1 for name in strangers[1:]), sup.log()
    sup.stop()
    again = supervisor_factory(config)  # and a restart still starts
    again.stop()


def test_a_message_that_expires_in_its_sequence_line_is_nacked_while_the_head_still_runs(
        tmp_path, root, env, backend, supervisor_factory):
    """Issue 27 (order and expiry): 2 of key k waits behind its gated head and its ttl runs out: it leaves its
    line out of turn (dead-lettered as expired, its handler never run, its sender nacked) while the head is
    still in its handler; the head then ends and 3 runs after it, never beside it (2 workers: it could)."""
    config = _config(tmp_path, root, backend, pool={"workers": 2})
    sup = supervisor_factory(config)
    gate = tmp_path / "gate"

    async def scenario() -> None:
        client = AsyncClient.from_config(config)
        try:
            await client.send("main", "task", {"gate": str(gate)}, ordering_key="k", message_id="head")
            await asyncio.to_thread(wait_until, lambda: records(tmp_path), 30, message="the head in its handler")
            waiting = asyncio.ensure_future(client.send_and_wait("main", "task", {"n": 2}, ttl=2, ordering_key="k",
                                                                 message_id="expires-in-line"))
            await asyncio.sleep(0)
            await client.send("main", "task", {"n": 3}, ordering_key="k", message_id="third")
            with pytest.raises(MessageRejected) as caught:
                await waiting
            assert caught.value.reason == "expired"
            assert not gate.exists(), "nacked while its head still ran, not in its turn"
            assert [r["id"] for r in records(tmp_path)] == ["head"], "2 never ran, 3 waits behind the head"
        finally:
            client.close()

    asyncio.run(scenario())
    (entry,) = _errors(env, tmp_path, config)
    assert entry["id"] == "expires-in-line" and entry["reason"] == "expired"
    gate.touch()
    opened = gate.stat().st_mtime
    wait_until(lambda: len(records(tmp_path)) >= 2, 30, message="3 after the head")
    handled = records(tmp_path)
    assert [r["id"] for r in handled] == ["head", "third"], "2 never ran; 3 ran once, after the head"
    assert handled[1]["at"] >= opened, "3 started only once its head could end (never beside it)"
    sup.stop()
