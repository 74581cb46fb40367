"""Ordering (issue 27): one message of a sequence in a handler at a time, in publish order, with real processes.

The handler (``tests/handlers/sequence.py``) logs each run's start and end with its key and number; the
checks read that log: per key, runs never overlap and start in publish order (a redelivery may repeat a
number, never go back), and every message ran to its end at least once.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import SupervisorProcess, Terminal, ipcpool_cli, wait_until, write_config

from ipcpool import Client

HANDLERS = {"task": "sequence:run", "legacy": "sequence:run"}


def runs(directory: str) -> list[dict[str, Any]]:
    """Every line the sequence handler logged, in any worker, by time (a line still being written is left)."""
    lines = []
    for name in os.listdir(directory):
        if name.startswith("seq-"):
            text = Path(directory, name).read_text()
            lines += [json.loads(x) for x in text[:text.rfind("\n") + 1].splitlines() if x.strip()]
    return sorted(lines, key=lambda line: line["t"])


def config(tmp_path: Path, root: Path, backend: dict[str, dict[str, Any]] | None = None,
           handlers: dict[str, str] | None = None, **sections: dict[str, Any]) -> Path:
    """A config for ``backend`` (the conftest fixture's sections: the spool, or a Redis prefix of this test's)."""
    merged = {name: dict(values) for name, values in (backend or {}).items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return write_config(tmp_path / "c.toml", root, sections=merged, handlers=handlers or HANDLERS)


def check_sequences(directory: Path, expected: dict[str, list[int]], killed: frozenset[int] = frozenset()) -> None:
    """Per key: no two runs overlap, starts never go back in publish order, every number ran to its end."""
    lines = runs(str(directory))
    by_key: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_key.setdefault(str(line["key"]), []).append(line)
    for key, numbers in expected.items():
        events = by_key.get(key, [])
        running: dict[str, Any] | None = None
        started: list[int] = []
        for event in events:
            if event["ev"] == "start":
                if running is not None:  # the one before never ended: only a killed worker may leave it so
                    assert running["pid"] in killed, f"key {key}: {event['n']} started while {running['n']} ran"
                running = event
                started.append(event["n"])
            else:
                assert running is not None and running["id"] == event["id"], f"key {key}: an end without its start"
                running = None
        assert all(a <= b for a, b in itertools.pairwise(started)), f"key {key} out of order: {started}"
        ended = {e["n"] for e in events if e["ev"] == "end"}
        assert ended == set(numbers), f"key {key}: never handled: {sorted(set(numbers) - ended)}"


def all_ended(directory: Path, count: int) -> bool:
    return len({(line["key"], line["n"]) for line in runs(str(directory)) if line["ev"] == "end"}) >= count


def test_each_key_runs_one_message_at_a_time_in_publish_order_and_keys_run_side_by_side(
        tmp_path, root, backend, supervisor_factory):
    cfg = config(tmp_path, root, backend, pool={"workers": 3})
    supervisor_factory(cfg)
    expected: dict[str, list[int]] = {}
    with Client.from_config(cfg) as client:
        for n in range(45):
            key = f"chat-{n % 3}"
            expected.setdefault(key, []).append(n)
            client.send("main", "task", {"key": key, "n": n, "work": 0.01}, ordering_key=key)
        for n in range(10):  # no key: as today, any order, side by side
            client.send("main", "task", {"key": "free", "n": n})
    wait_until(lambda: all_ended(tmp_path / "records", 55), 60, message="every message handled")
    check_sequences(tmp_path / "records", expected)
    pids = {line["pid"] for line in runs(str(tmp_path / "records")) if line["key"] != "free"}
    assert len(pids) > 1, "different sequences were handled by more than one worker"


def test_a_held_sequence_holds_no_worker_and_status_shows_what_waits_behind_it(tmp_path, root, env, backend,
                                                                               supervisor_factory):
    pool = {"workers": 2, "prefetch": 1, "handler_timeout": 120.0}  # nothing prefetched behind the gated one
    cfg = config(tmp_path, root, backend, {"task": "recorder:record", "later": "sequence:run"}, pool=pool,
                 http={"listen": "127.0.0.1:0"})
    sup = supervisor_factory(cfg)
    gate = tmp_path / "gate"
    with Client.from_config(cfg) as client:
        client.send("main", "task", {"gate": str(gate)}, ordering_key="k")
        for n in range(3):
            client.send("main", "later", {"key": "k", "n": n}, ordering_key="k")
        wait_until(lambda: (sup.status() or {}).get("groups", {}).get("main", {}).get("waiting") == 3, 30,
                   message="three waiting behind the gated head")
        for n in range(3):  # another sequence goes on beside the held one
            client.send("main", "later", {"key": "other", "n": n}, ordering_key="other")
        wait_until(lambda: all_ended(tmp_path / "records", 3), 30, message="the other sequence, beside the held one")
        free = [client.send("main", "task", {"n": n}, requires_ack=True) for n in range(20)]
        wait_until(lambda: all(client.is_acked("main", i) for i in free), 60,
                   message="the other worker, and the gated one's neighbours, keep going")
        assert {line["key"] for line in runs(str(tmp_path / "records"))} == {"other"}, "nothing of k ran"
        shown = ipcpool_cli(env, tmp_path, "status", "--config", str(cfg))
        assert "IN LINE" in shown.stdout and re.search(r"^main\s.*\s3$", shown.stdout, re.M), shown.stdout
        address = wait_until(lambda: (sup.status() or {}).get("http"), 30, message="the HTTP address")
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as reply:
            assert 'ipcpool_sequence_waiting{group="main"} 3.0' in reply.read().decode()
        term = Terminal([sys.executable, "-m", "ipcpool", "top", "--config", str(cfg)], env, tmp_path)
        try:
            term.wait_for("in line")
        finally:
            term.close()
        gate.touch()
        wait_until(lambda: all_ended(tmp_path / "records", 6), 30, message="the line goes on once its head ends")
    check_sequences(tmp_path / "records", {"k": [0, 1, 2], "other": [0, 1, 2]})


def test_fifo_and_ordering_field_order_the_original_agents_plain_files(tmp_path, root, backend, supervisor_factory):
    """On Redis the files go through the local inbox bridge: their keys are read as they enter the stream."""
    cfg = config(tmp_path, root, backend, spool={"groups": ["main", "chats"]}, pool={"workers": 3},
                 **{"groups.main": {"ordering": "fifo"}, "groups.chats": {"ordering_field": "chatJid"}})
    supervisor_factory(cfg)
    expected: dict[str, list[int]] = {"None": list(range(12))}
    for n in range(30):  # written as the original agents do: plain JSON, tmp/ then rename, no envelope
        group = "main" if n < 12 else "chats"
        chat = f"chat{n % 2}"
        body = {"n": n, "work": 0.01} if group == "main" else {"chatJid": chat, "n": n, "work": 0.01}
        if group == "chats":
            expected.setdefault(chat, []).append(n)
        tmp = root / group / "tmp" / f"{n}.json"
        tmp.write_text(json.dumps(body))
        os.rename(tmp, root / group / "messages" / f"{n:04d}-legacy.json")
    wait_until(lambda: all_ended(tmp_path / "records", 30), 60, message="every file handled")
    check_sequences(tmp_path / "records", expected)


def test_after_a_restart_a_sequence_goes_by_modification_time_then_name(tmp_path, root, backend,
                                                                         supervisor_factory):
    """On the spool, by modification time then name (the client stamps rising times); on Redis, stream order."""
    cfg = config(tmp_path, root, backend, pool={"workers": 3})
    with Client.from_config(cfg) as client:  # no supervisor yet: everything waits
        for n in range(30):
            client.send("main", "task", {"key": "k", "n": n}, ordering_key="k")
    if not backend:
        names = sorted(os.listdir(root / "main" / "messages"))
        assert all(".ordered." in name for name in names), "the client marks a message that has a key"
    supervisor_factory(cfg)
    wait_until(lambda: all_ended(tmp_path / "records", 30), 60, message="all handled")
    check_sequences(tmp_path / "records", {"k": list(range(30))})


def test_a_redelivery_goes_before_what_is_behind_it_and_poison_or_failure_moves_the_line_on(
        tmp_path, root, backend, supervisor_factory):
    cfg = config(tmp_path, root, backend, pool={"workers": 2, "max_deliveries": 2})
    bodies = [{"die_once": True}, {"exit": True}, {"raise": True}, {}, {}]
    with Client.from_config(cfg) as client:
        for n, body in enumerate(bodies):
            client.send("main", "task", {"key": "k", "n": n, **body}, ordering_key="k")
    supervisor_factory(cfg)
    wait_until(lambda: all_ended(tmp_path / "records", 4), 60, message="0 (after its death), 2, 3 and 4 ran")
    started = [line["n"] for line in runs(str(tmp_path / "records")) if line["ev"] == "start"]
    assert started[:3] == [0, 0, 1], "the delivery that killed its worker went again before 1"
    assert [n for i, n in enumerate(started) if not i or started[i - 1] != n] == [0, 1, 2, 3, 4], \
        "1 poisoned, 2 failed (after its retry): the line went on, in order"


def test_a_delayed_message_of_a_sequence_takes_its_place_at_its_due_time_and_an_expired_one_moves_it_on(
        tmp_path, root, env, backend, supervisor_factory):
    """Order and time together: 0 (delayed 3 s) heads its line but is not due, so it steps out and 1 runs; 2
    expires while 1 runs and is dead-lettered in its turn, and 3 goes on; 5 is published next and still runs
    when 0 is due, so 0 joins the line behind 5 and before 6, published after 0's due time."""
    cfg = config(tmp_path, root, backend, pool={"workers": 2})
    supervisor_factory(cfg)
    records = tmp_path / "records"

    def started() -> list[int]:
        return [line["n"] for line in runs(str(records)) if line["ev"] == "start"]

    with Client.from_config(cfg) as client:
        client.send("main", "task", {"key": "k", "n": 0}, ordering_key="k", delay=3)
        due = time.time() + 3
        client.send("main", "task", {"key": "k", "n": 1, "work": 0.5}, ordering_key="k")
        client.send("main", "task", {"key": "k", "n": 2}, ordering_key="k", ttl=0.2, message_id="expires-in-line")
        client.send("main", "task", {"key": "k", "n": 3}, ordering_key="k")
        wait_until(lambda: all_ended(records, 2), 30, message="1 and 3 handled, 0 not due yet")
        assert time.time() < due, "the test's premise: 0 is still delayed"
        client.send("main", "task", {"key": "k", "n": 5, "work": 5}, ordering_key="k")
        wait_until(lambda: 5 in started(), 30, message="5 running")
        wait_until(lambda: time.time() > due + 1, 30, message="0 due (and back in its line) while 5 runs")
        assert 5 not in {line["n"] for line in runs(str(records)) if line["ev"] == "end"}, "premise: 5 still runs"
        client.send("main", "task", {"key": "k", "n": 6}, ordering_key="k")
        wait_until(lambda: all_ended(records, 5), 60, message="0, 5 and 6 handled")
    assert started() == [1, 3, 5, 0, 6], "0 took its place at its due time; 2 (expired) never ran"
    events = [(line["ev"], line["n"]) for line in runs(str(records))]
    assert events == [(ev, n) for n in (1, 3, 5, 0, 6) for ev in ("start", "end")], "never two of k at once"
    listed = ipcpool_cli(env, tmp_path, "errors", "list", "--config", str(cfg), "--json")
    assert [(e["id"], e["reason"]) for e in json.loads(listed.stdout)] == [("expires-in-line", "expired")]


def test_an_unmarked_file_in_a_group_without_ordering_is_not_read_for_a_key(tmp_path, root, supervisor_factory):
    """The supervisor reads no body it has no reason to (unordered traffic keeps today's cost): an orderingKey
    in an unmarked file of a group with no ordering configured is a key like any other, not a sequence."""
    cfg = config(tmp_path, root, handlers={"task": "recorder:record"})
    sup = supervisor_factory(cfg)
    gate = tmp_path / "gate"
    for n, payload in enumerate(({"gate": str(gate)}, {"n": 1})):
        body = {"id": f"plain{n}", "type": "task", "payload": payload, "orderingKey": "k", "requiresAck": True}
        (root / "main" / "tmp" / "x").write_text(json.dumps(body))
        os.rename(root / "main" / "tmp" / "x", root / "main" / "messages" / f"plain{n}.json")
    wait_until(lambda: (root / "main" / "acks" / "plain1.ack").exists(), 30, message="the second beside the first")
    gate.touch()
    wait_until(lambda: (root / "main" / "acks" / "plain0.ack").exists(), 30, message="the gated one")
    # but its writer is told, once per message, what the key needs
    warned = [line for line in sup.log().splitlines() if "has an orderingKey but is not ordered" in line]
    assert len(warned) == 2 and all("<id>.ordered.json" in line for line in warned), sup.log()


def test_an_envelope_with_an_invalid_ordering_key_is_refused_with_the_reason():
    from ipcpool.errors import InvalidMessage
    from ipcpool.message import to_message

    for bad in (5, "", "x" * 201):
        with pytest.raises(InvalidMessage, match="orderingKey must be a string of 1-200 characters"):
            to_message({"type": "task", "payload": {}, "orderingKey": bad}, group="main", stem="a")
    assert to_message({"type": "task", "payload": {}, "orderingKey": "k" * 200}, group="main",
                      stem="a").extra == {"orderingKey": "k" * 200}


def test_bad_ordering_settings_stop_check_with_exit_2_naming_file_key_and_problem(tmp_path, root, env):
    for section, problem in (({"ordering": "lifo"}, "[groups.main] ordering must be one of 'none', 'fifo'"),
                             ({"ordering_field": 3}, "[groups.main] ordering_field must be a string")):
        cfg = config(tmp_path, root, **{"groups.main": section})
        checked = ipcpool_cli(env, tmp_path, "check", "--config", str(cfg))
        assert checked.returncode == 2 and str(cfg) in checked.stderr and problem in checked.stderr, checked.stderr
    sent = ipcpool_cli(env, tmp_path, "send", "--config", str(config(tmp_path, root)), "-g", "main", "-t", "task",
                       "--ordering-key", "x" * 201)
    assert sent.returncode == 2 and "orderingKey must be a string of 1-200 characters" in sent.stderr


def test_cli_send_ordering_key_writes_the_wire_key_and_the_mark(tmp_path, root, env):
    cfg = config(tmp_path, root)
    sent = ipcpool_cli(env, tmp_path, "send", "--config", str(cfg), "-g", "main", "-t", "task",
                       "--ordering-key", "chat-42")
    assert sent.returncode == 0, sent.stderr
    (name,) = os.listdir(root / "main" / "messages")
    assert name == f"{sent.stdout.strip()}.ordered.json"
    assert json.loads((root / "main" / "messages" / name).read_text())["orderingKey"] == "chat-42"


@pytest.mark.timeout(600)
def test_chaos_workers_and_the_supervisor_sigkilled_while_a_writer_publishes_into_a_few_keys(
        tmp_path, root, backend, supervisor_factory):
    """Every message handled at least once; per key, runs never overlap and start in publish order."""
    cfg = config(tmp_path, root, backend, pool={"workers": 3, "max_deliveries": 50})
    sup = supervisor_factory(cfg)
    rng = random.Random(27)
    expected: dict[str, list[int]] = {}
    killed: set[int] = set()
    with Client.from_config(cfg) as client:
        for n in range(400):
            key = f"k{rng.randrange(5)}"
            expected.setdefault(key, []).append(n)
            client.send("main", "task", {"key": key, "n": n, "work": 0.004}, ordering_key=key)
            if n % 25 == 12:
                pids = sup.worker_pids()
                if pids:
                    victim = rng.choice(pids)
                    killed.add(victim)
                    _kill(victim)
            if n in (150, 300):
                killed.update(sup.worker_pids())
                sup.kill()
                sup.start()
    wait_until(lambda: all_ended(tmp_path / "records", 400), 300, message="every message handled")
    check_sequences(tmp_path / "records", expected, frozenset(killed))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.timeout(600)
def test_chaos_on_redis_two_supervisors_share_the_lines_one_sigkilled_for_good(tmp_path, env, redis_url,
                                                                               redis_prefix):
    """N supervisors: a key's messages read by both never run side by side, and start in stream order; the
    dead one's entries (heads among them) are reclaimed after the lease and go first."""
    sections = {"transport": {"backend": "redis"}, "redis": {"url": redis_url, "prefix": redis_prefix, "lease": 2.0},
                "pool": {"workers": 2, "max_deliveries": 50}}
    configs = []
    for name in ("h0", "h1"):
        (tmp_path / name).mkdir()
        configs.append(config(tmp_path / name, tmp_path / name / "ipc", None, **sections))
    sups = [SupervisorProcess(c, tmp_path, env, tmp_path / f"{c.parent.name}.log").start() for c in configs]
    rng = random.Random(42)
    expected: dict[str, list[int]] = {}
    killed: set[int] = set()
    try:
        with Client.from_config(configs[0]) as client:
            for n in range(300):
                key = f"k{rng.randrange(4)}"
                expected.setdefault(key, []).append(n)
                client.send("main", "task", {"key": key, "n": n, "work": 0.004}, ordering_key=key)
                if n % 30 == 7:
                    pids = [p for s in sups if s.proc.poll() is None for p in s.worker_pids()]
                    if pids:
                        victim = rng.choice(pids)
                        killed.add(victim)
                        _kill(victim)
                if n == 150:
                    killed.update(sups[1].worker_pids())
                    sups[1].kill()  # not restarted: the other reclaims what it held
        wait_until(lambda: all_ended(tmp_path / "records", 300), 300, message="every message handled")
    finally:
        for sup in sups:
            if sup.proc is not None and sup.proc.poll() is None:
                sup.stop()
            else:
                for child in sup.descendants():
                    child.kill()
    check_sequences(tmp_path / "records", expected, frozenset(killed))
    pids = {line["pid"] for line in runs(str(tmp_path / "records"))}
    assert len(pids) > 2, "both supervisors' workers handled the keys"


def test_the_async_client_sends_an_ordering_key_too(tmp_path, root):
    import asyncio

    from ipcpool import AsyncClient

    async def send() -> str:
        client = AsyncClient(Client(root, "main"))
        try:
            return await client.send("main", "task", {"n": 1}, ordering_key="chat-7")
        finally:
            client.close()

    message_id = asyncio.run(send())
    body = json.loads((root / "main" / "messages" / f"{message_id}.ordered.json").read_text())
    assert body["orderingKey"] == "chat-7"


def test_a_reload_that_changes_ordering_is_refused_until_a_restart():
    from ipcpool.config import parse_config
    from ipcpool.pool.reload import restart_only_change

    before = parse_config({"groups": {"main": {"allowed_types": ["task"]}}})
    for changed in ({"ordering": "fifo"}, {"ordering_field": "chatJid"}):
        after = parse_config({"groups": {"main": {"allowed_types": ["task"], **changed}}})
        assert restart_only_change(before, after) == \
            "[groups.<name>] ordering or ordering_field changed: restart to apply it"
    assert restart_only_change(before, parse_config({"groups": {"main": {"allowed_types": []}}})) is None


def test_a_long_fifo_backlog_is_put_in_line_in_slices_and_the_loop_comes_back_at_once(tmp_path, root):
    """take() reads at most LOOKAHEAD files behind a busy head per call, and poll() then asks for another turn."""
    from ipcpool.config import parse_config
    from ipcpool.transport.spool.source import LOOKAHEAD, SpoolSource

    cfg = parse_config({"spool": {"root": str(root), "groups": ["main"]}, "groups": {"main": {"ordering": "fifo"}}})
    with Client(root, "main") as client:
        for n in range(LOOKAHEAD + 50):
            client.send("main", "task", {"n": n})
    source = SpoolSource(cfg, clock=lambda: 0.0, on_hint=lambda: None)
    try:
        source.open()
        assert len(source.take(8)) == 1 and source.poll(0.0) is True, "one head; the rest is not all read at once"
        assert source.stats()["groups"]["main"]["waiting"] == LOOKAHEAD
        assert source.take(8) == [] and source.poll(0.0) is False
        assert source.stats()["groups"]["main"]["waiting"] == LOOKAHEAD + 49
    finally:
        source.close()
