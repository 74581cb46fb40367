"""Redis Streams as a real Redis runs it: many supervisors, leases, poison across hosts, outages,
start-up checks, security, bounded memory, and chaos with everything killed that can be."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from conftest import SupervisorProcess, ipcpool_cli, kill_session, records, wait_until, write_config
from redis_server import RedisServer

from ipcpool import AsyncClient, Client, MessageExists, MessageFailed, QueueFull, TransportUnavailable
from ipcpool.config import load_config
from ipcpool.localroot import read_status


def _sections(url: str, prefix: str, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {"transport": {"backend": "redis"},
                                           "redis": {"url": url, "prefix": prefix, "lease": 2.0}}
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    return sections


def _host(tmp_path: Path, name: str, url: str, prefix: str, **extra: dict[str, Any]) -> Path:
    """One "host": a config with a local root of its own."""
    (tmp_path / name).mkdir(exist_ok=True)
    return write_config(tmp_path / name / "c.toml", tmp_path / name / "ipc", sections=_sections(url, prefix, **extra))


def _start(tmp_path: Path, env: dict[str, str], config: Path, name: str, started: list[SupervisorProcess]
           ) -> SupervisorProcess:
    sup = SupervisorProcess(config, tmp_path, env, tmp_path / f"{name}.log").start()
    started.append(sup)
    return sup


@pytest.fixture
def hosts() -> Any:
    started: list[SupervisorProcess] = []
    yield started
    for sup in started:
        if sup.proc is not None and sup.proc.poll() is None:
            sup.stop()
        else:
            for child in sup.descendants():
                child.kill()


def _workers(sup: SupervisorProcess) -> list[int]:
    found = []
    for child in sup.descendants():
        try:
            if "ipcpool: worker" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def _raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


# -- leases and poison across hosts ------------------------------------------------------------------------


def test_a_handler_three_times_longer_than_the_lease_runs_once_on_one_host(tmp_path, env, redis_url, redis_prefix,
                                                                          hosts):
    a = _start(tmp_path, env, _host(tmp_path, "a", redis_url, redis_prefix, redis={"lease": 1.0}), "a", hosts)
    b = _start(tmp_path, env, _host(tmp_path, "b", redis_url, redis_prefix, redis={"lease": 1.0}), "b", hosts)
    with Client.from_config(tmp_path / "a" / "c.toml") as client:
        client.send_and_wait("main", "task", {"sleep": 3.5}, message_id="long-one", timeout=60)
    (record,) = records(tmp_path)
    assert record["id"] == "long-one"
    assert "lost the lease" not in a.log() + b.log()
    assert "reclaimed" not in a.log() + b.log(), "no supervisor took what a live one held"


def test_a_busy_supervisor_alone_never_says_it_lost_a_lease(tmp_path, env, redis_url, redis_prefix, hosts):
    """A renewal races the workers' reports: an entry its own worker has just completed (acknowledged, not yet
    reported) is no longer pending. That is no lost lease: only an entry another consumer holds is."""
    config = _host(tmp_path, "h", redis_url, redis_prefix, log={"messages": False})
    sup = _start(tmp_path, env, config, "h", hosts)
    with Client.from_config(config) as client:
        ids = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(5000)]
        wait_until(lambda: client.is_acked("main", ids[-1]) and client.outbox.depth("main") == 0, 120,
                   message="the burst handled")
    assert sup.stop() == 0
    assert "lost the lease" not in sup.log()


def test_delivery_counts_are_kept_in_redis_and_go_on_on_another_host(tmp_path, redis_url, redis_prefix):
    """A consumer records a delivery that killed a worker, then stops renewing (dies); another
    reclaims the entry after the lease and knows it is the second delivery."""
    from ipcpool.transport import make_source

    configs = [load_config(_host(tmp_path, name, redis_url, redis_prefix, redis={"lease": 0.75})) for name in "ab"]
    with Client.from_config(configs[0]) as client:
        client.send("main", "task", {"n": 1}, message_id="counted")
    a = make_source(configs[0], clock=time.monotonic, on_hint=lambda: None)
    b = make_source(configs[1], clock=time.monotonic, on_hint=lambda: None)
    try:
        a.open()
        wait_until(lambda: (a.poll(time.monotonic(), None, 10), a.backlog())[1], 10, message="a takes it")
        ((group, ref, deliveries),) = a.take(10)
        assert deliveries == 1
        history = a.record_failure(group, ref, {"delivery": 1, "ended": "exited with code 7"})
        assert len(history) == 1
        b.open()
        b.next_reclaim = 0.0
        wait_until(lambda: (b.poll(time.monotonic(), None, 10), b.renew(()), setattr(b, "next_reclaim", 0.0),
                            b.backlog())[3], 20, message="b (alive: it renews, as at each heartbeat) reclaims it "
                                                         "once a's lease lapsed")
        ((_g, ref_b, deliveries_b),) = b.take(10)
        assert ref_b == ref and deliveries_b == 2, "the count went on on the other host"
    finally:
        a.close()
        b.close()


def test_two_entries_of_one_message_in_one_batch_run_the_handler_once(tmp_path, env, redis_url, redis_prefix, hosts):
    """The dedupe answer is fetched with the batch: a copy behind the first in the same batch must still
    see the first one's ack (a publish refuses a second copy, so the copies are written raw, as a
    third-party writer or a re-ingested file could)."""
    config = _host(tmp_path, "h", redis_url, redis_prefix, pool={"workers": 1, "prefetch": 8})
    client = _raw(redis_url)
    stream = f"{redis_prefix}:stream:main"
    client.xgroup_create(stream, "ipcpool", id="0", mkstream=True)
    body = json.dumps({"id": "twice", "type": "task", "payload": {}, "timestamp": "2026-12-01T00:00:00.000Z",
                       "requiresAck": True})
    for _ in range(2):
        client.xadd(stream, {"m": body, "f": "json", "s": "twice"})
    sup = _start(tmp_path, env, config, "h", hosts)
    wait_until(lambda: "Duplicate IPC message skipped (already acked) id=twice" in sup.log(), 30,
               message="the second copy skipped")
    assert [r["id"] for r in records(tmp_path)] == ["twice"], "the handler ran once"
    assert client.exists(f"{redis_prefix}:ack:main:twice")
    wait_until(lambda: client.xlen(stream) == 0, 30, message="both entries finished")
    assert sup.stop() == 0


def test_a_dead_supervisors_whole_backlog_is_taken_over_in_one_pass(tmp_path, env, redis_url, redis_prefix, hosts):
    """A supervisor that died holding hundreds (its queue and its workers' prefetch) has all of them taken
    over at the first reclaim after the lease, not a hundred per half lease."""
    config = _host(tmp_path, "h", redis_url, redis_prefix, redis={"lease": 1.0})
    with Client.from_config(config) as client:
        ids = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(250)]
    raw = _raw(redis_url)
    stream = f"{redis_prefix}:stream:main"
    raw.xgroup_create(stream, "ipcpool", id="0", mkstream=True)
    taken = raw.xreadgroup("ipcpool", "dead-host:0123456789", {stream: ">"}, count=1000)
    assert len(taken[0][1]) == 250, "the dead supervisor held every one"
    sup = _start(tmp_path, env, config, "h", hosts)
    wait_until(lambda: all(raw.exists(f"{redis_prefix}:ack:main:{i}") for i in ids), 60, message="all acked")
    assert "reclaimed 250 messages from supervisors that stopped renewing their lease" in sup.log()
    assert sup.stop() == 0


# -- many supervisors, and everything killed -------------------------------------------------------------------


@pytest.mark.slow
def test_chaos_three_supervisors_share_a_queue_through_kills_and_a_redis_restart(tmp_path, env, private_redis, hosts):
    url, prefix = private_redis.url, "chaos"
    extra = {"pool": {"workers": 2, "max_deliveries": 1000, "handler_timeout": 30.0},
             "heartbeat": {"interval": 0.25, "miss_limit": 8}, "redis": {"lease": 2.0, "outage_timeout": 60.0}}
    configs = [_host(tmp_path, f"h{i}", url, prefix, **extra) for i in range(3)]
    sups = [_start(tmp_path, env, configs[i], f"h{i}", hosts) for i in range(3)]
    sent: list[list[str]] = [[], []]
    killed: set[int] = set()
    stop = threading.Event()

    def sender(n: int) -> None:
        with Client.from_config(configs[n]) as client:
            for i in range(1500):
                sent[n].append(client.send("main", "task", {"n": i, "sender": n}, requires_ack=True))

    def killer() -> None:
        rng = random.Random(7)
        while not stop.wait(0.1):
            live = [s for s in sups if s.proc.poll() is None]
            victims = [pid for s in live for pid in _workers(s)]
            if victims:
                pid = rng.choice(victims)
                killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(2)] + [threading.Thread(target=killer)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(records(tmp_path)) >= 1000, 120, message="a third handled")
        killed |= set(_workers(sups[2]))
        sups[2].kill()  # SIGKILL a supervisor midway; it is not restarted
        wait_until(lambda: len(records(tmp_path)) >= 2000, 120, message="two thirds handled")
        private_redis.kill()  # and Redis itself, restarted from its AOF once a survivor has seen it gone
        wait_until(lambda: any("is unreachable" in s.log() for s in sups[:2]), 30, message="the outage seen")
        private_redis.start()
        for thread in threads[:2]:
            thread.join(120)
        ids = sent[0] + sent[1]
        assert len(ids) == 3000, "every publish returned"
        client = _raw(url)

        def all_acked() -> bool:
            pipe = client.pipeline(transaction=False)
            for message_id in ids:
                pipe.exists(f"{prefix}:ack:main:{message_id}")
            return all(pipe.execute())

        wait_until(all_acked, 180, interval=0.5, message="every message acked")
    finally:
        stop.set()
        threads[2].join(10)
    seen = records(tmp_path)
    counts = Counter(r["id"] for r in seen)
    assert set(counts) == set(ids), "nothing lost"
    for message_id in [i for i, c in counts.items() if c > 1]:  # only deliveries in flight at a kill repeat
        deliveries = sorted((r for r in seen if r["id"] == message_id), key=lambda r: r["at"])
        assert all(r["pid"] in killed for r in deliveries[:-1]), deliveries
    repeated = sum(c - 1 for c in counts.values())
    print(f"chaos: {len(ids)} sent, {len(counts)} handled, {repeated} repeat deliveries, {len(killed)} workers "
          "SIGKILLed (every 100 ms, and those of the supervisor SIGKILLed midway), redis-server SIGKILLed and "
          "restarted from its AOF once")
    client = _raw(url)
    assert client.xlen(f"{prefix}:stream:main") == 0, "every finished entry deleted"
    assert client.xpending(f"{prefix}:stream:main", "ipcpool")["pending"] == 0, "nothing left pending"
    for sup in sups[:2]:
        assert sup.stop() == 0


# -- Redis going away ----------------------------------------------------------------------------------------------


def test_redis_going_away_loses_nothing_and_is_logged_once(tmp_path, env, private_redis, hosts):
    config = _host(tmp_path, "h", private_redis.url, "outage")
    sup = _start(tmp_path, env, config, "h", hosts)
    with Client.from_config(config) as client:
        before = [client.send("main", "task", {"n": i}, requires_ack=True) for i in range(20)]
        wait_until(lambda: all(client.is_acked("main", i) for i in before), 30, message="the first ones")
        private_redis.kill()
        wait_until(lambda: "is unreachable" in sup.log(), 30, message="the outage noticed")
        during: list[str] = []
        sender = threading.Thread(target=lambda: during.extend(
            client.send("main", "task", {"n": 100 + i}, requires_ack=True) for i in range(5)))
        sender.start()  # blocked, retrying with back-off, until Redis is back
        wait_until(lambda: client.outbox.outage.down, 30, message="the sender retrying through the outage")
        private_redis.start()
        sender.join(60)
        assert len(during) == 5
        wait_until(lambda: all(client.is_acked("main", i) for i in during), 60, message="those sent meanwhile")
    assert "is back after" in sup.log()
    lines = [line for line in sup.log().splitlines() if "is unreachable" in line and "ipcpool.transport" in line]
    assert len({line.split("]")[0] for line in lines}) == len(lines), "one line per outage per process"
    assert Counter(r["id"] for r in records(tmp_path)).most_common(1)[0][1] == 1
    sup.stop()


def test_a_full_redis_holds_the_ack_runs_no_handler_twice_and_carries_on(tmp_path, env, private_redis, hosts):
    """maxmemory reached (noeviction): Redis refuses every write that needs memory, the ack's among them.

    The completion goes out unanswered, so the worker's check before it reports finds the entry still
    there, completes it again and is refused again: the ack is held, the supervisor finishes it once
    Redis has room, and nobody crashes or runs the handler again meanwhile.
    """
    config = _host(tmp_path, "h", private_redis.url, "full", heartbeat={"interval": 0.25})
    sup = _start(tmp_path, env, config, "h", hosts)
    admin = _raw(private_redis.url)
    gate = tmp_path / "gate"
    with Client.from_config(config) as client:
        held = client.send("main", "task", {"gate": str(gate)}, requires_ack=True)
        wait_until(lambda: any(r["id"] == held for r in records(tmp_path)), 30, message="the handler running")
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", str(used // 2))  # full: below what it holds already
        gate.touch()
        wait_until(lambda: "its ACK cannot be written" in sup.log(), 30, message="the ack refused and held")
        wait_until(lambda: "is full" in sup.log(), 30, message="the supervisor seeing Redis full")
        wait_until(lambda: "full and refuses writes" in str((read_status(tmp_path / "h" / "ipc") or {})
                                                            .get("spool", {}).get("error")),
                   30, message="status saying Redis is full, not unreachable")
        health = ipcpool_cli(env, tmp_path, "health", "--config", str(config))
        assert health.returncode == 1 and health.stdout.startswith("Redis is full and refuses writes"), health
        assert not client.is_acked("main", held)
        assert sup.proc.poll() is None, "the supervisor lives through a full Redis"
        admin.config_set("maxmemory", "0")  # room again
        wait_until(lambda: client.is_acked("main", held), 30, message="the held ack written")
        after = client.send_and_wait("main", "task", {"after": "full"}, timeout=30)
    counts = Counter(r["id"] for r in records(tmp_path))
    assert counts[held] == 1 and counts[after] == 1, counts
    assert admin.xlen("full:stream:main") == 0
    lines = [line for line in sup.log().splitlines() if "is full" in line]
    assert len({line.split("]")[0] for line in lines}) == len(lines), "one line per episode per process"
    assert sup.stop() == 0


def test_a_sender_that_gives_up_on_a_full_redis_says_it_is_full(tmp_path, private_redis):
    """A publish refused for memory is retried like an outage, and the error names the real fix."""
    config = load_config(_host(tmp_path, "h", private_redis.url, "fullsend", redis={"outage_timeout": 0.5}))
    admin = _raw(private_redis.url)
    with Client.from_config(config) as client:
        client.send("main", "task", {"before": "full"})
        admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) // 2))
        with pytest.raises(TransportUnavailable, match="full and refuses writes") as caught:
            client.send("main", "task", {"while": "full"})
        assert "outage_timeout" in str(caught.value)
        admin.config_set("maxmemory", "0")
        client.send("main", "task", {"after": "full"})
    assert admin.xlen("fullsend:stream:main") == 2, "the refused one was never half-published"


# -- start-up checks, security, deployments kept apart ---------------------------------------------------------------


def test_a_redis_that_may_evict_keys_stops_run_with_exit_2(tmp_path, env):
    server = RedisServer(tmp_path / "redis", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru").start()
    try:
        config = _host(tmp_path, "h", server.url, "evict")
        out = ipcpool_cli(env, tmp_path, "run", "--config", str(config))
        assert out.returncode == 2
        assert "maxmemory-policy allkeys-lru" in out.stderr and "noeviction" in out.stderr
    finally:
        server.stop()


def test_a_redis_that_keeps_nothing_on_disk_is_warned_of(tmp_path, env, hosts):
    server = RedisServer(tmp_path / "redis", "--appendonly", "no").start()
    try:
        sup = _start(tmp_path, env, _host(tmp_path, "h", server.url, "volatile"), "h", hosts)
        assert "keeps nothing on disk" in sup.log() and "appendonly yes" in sup.log()
        sup.stop()
    finally:
        server.stop()


def test_an_acl_user_and_tls_and_the_password_is_never_logged(tmp_path, env, hosts):
    server = RedisServer(tmp_path / "redis", "--requirepass", "admin-secret", tls=True).start()
    try:
        admin = redis.Redis(port=server.port, password="admin-secret")
        # The documented ACL, as an operator would paste it: only the prefix's keys, no dangerous commands.
        readme = (Path(__file__).resolve().parent.parent / "docs" / "redis.md").read_text()
        acl = next(line for line in readme.splitlines() if line.startswith("ACL SETUSER ipcpool on >PASSWORD "))
        admin.execute_command(*acl.replace(">PASSWORD", ">s3cret-pass").split())
        url = server.url.replace("rediss://", "rediss://ipcpool:s3cret-pass@")
        config = write_config(tmp_path / "c.toml", tmp_path / "ipc", sections={
            "transport": {"backend": "redis"},
            "redis": {"url": url, "prefix": "ipcpool", "ca_file": str(server.ca_file)}})
        sup = _start(tmp_path, env, config, "h", hosts)
        with Client.from_config(config) as client:
            client.send_and_wait("main", "task", {"over": "tls"})
            # a response (pushed in a MULTI/EXEC), under the same ACL
            assert client.request("main", "task", {"result": {"x": 1}}, timeout=30) == {"x": 1}
            with pytest.raises(MessageFailed):  # a dead letter, under the same ACL
                client.send_and_wait("main", "task", {"raise": "refused"}, timeout=30)
        # the asyncio client's waits verify the server against the same CA
        asynchronous = AsyncClient.from_config(config)
        try:
            asyncio.run(asynchronous.send_and_wait("main", "task", {"over": "tls", "from": "asyncio"}, timeout=30))
        finally:
            asynchronous.close()
        status = ipcpool_cli(env, tmp_path, "status", "--config", str(config))
        dead = ipcpool_cli(env, tmp_path, "errors", "list", "--config", str(config), "--json")
        assert status.returncode == 0 and dead.returncode == 0, (status.stderr, dead.stderr)
        assert [e["reason"] for e in json.loads(dead.stdout)] and "refused" in dead.stdout
        sup.stop()
        everything = sup.log() + status.stdout + status.stderr + dead.stdout + dead.stderr
        assert "s3cret-pass" not in everything
        assert "ipcpool:***@127.0.0.1" in sup.log() or "rediss://" not in sup.log()
        payloads = [r["payload"] for r in records(tmp_path)]
        assert {"over": "tls"} in payloads and {"over": "tls", "from": "asyncio"} in payloads
    finally:
        server.stop()


def test_an_acl_user_that_may_not_run_a_completion_stops_run_with_exit_2(tmp_path, env):
    """Completions go out unanswered: a refusal would show only later, as acks held. It is named at start."""
    server = RedisServer(tmp_path / "redis", "--requirepass", "admin-secret").start()
    try:
        admin = redis.Redis(port=server.port, password="admin-secret")
        readme = (Path(__file__).resolve().parent.parent / "docs" / "redis.md").read_text()
        acl = next(line for line in readme.splitlines() if line.startswith("ACL SETUSER ipcpool on >PASSWORD "))
        assert " +@transaction " in acl
        admin.execute_command(*acl.replace(">PASSWORD", ">s3cret-pass").replace(" +@transaction ", " ").split())
        url = server.url.replace("redis://", "redis://ipcpool:s3cret-pass@")
        out = ipcpool_cli(env, tmp_path, "run", "--config", str(_host(tmp_path, "h", url, "ipcpool")))
        assert out.returncode == 2, out.stderr
        assert "[redis] url" in out.stderr and "+@transaction" in out.stderr and "s3cret-pass" not in out.stderr
        assert "multi" in out.stderr.lower()
    finally:
        server.stop()


def test_two_prefixes_on_one_redis_are_two_deployments(tmp_path, env, redis_url, redis_prefix, hosts):
    a = _start(tmp_path, env, _host(tmp_path, "a", redis_url, redis_prefix + "a"), "a", hosts)
    b = _start(tmp_path, env, _host(tmp_path, "b", redis_url, redis_prefix + "b"), "b", hosts)
    with Client.from_config(tmp_path / "a" / "c.toml") as client:
        for_a = client.send_and_wait("main", "task", {"for": "a"})
    with Client.from_config(tmp_path / "b" / "c.toml") as client:
        for_b = client.send_and_wait("main", "task", {"for": "b"})
    a.stop()
    b.stop()
    assert f"IPC message handled id={for_a} " in a.log() and for_b not in a.log()
    assert f"IPC message handled id={for_b} " in b.log() and for_a not in b.log()


def test_malformed_and_oversized_entries_are_quarantined_without_a_crash(tmp_path, env, redis_url, redis_prefix,
                                                                        hosts):
    config = _host(tmp_path, "h", redis_url, redis_prefix, spool={"max_message_bytes": 1000})
    sup = _start(tmp_path, env, config, "h", hosts)
    client = _raw(redis_url)
    stream = f"{redis_prefix}:stream:main"
    client.xadd(stream, {"x": "no body"})
    client.xadd(stream, {"m": json.dumps({"id": "huge", "type": "task", "payload": "y" * 5000}), "f": "json"})
    client.xadd(stream, {"m": b"\x00\xff not json", "f": "json", "s": "garbled"})
    client.xadd(stream, {"m": b"{}", "f": "pickle", "s": "wrong-format"})
    wait_until(lambda: client.xlen(f"{redis_prefix}:dead:main") == 4, 30, message="four dead letters")
    reasons = sorted(json.loads(fields[b"r"])["reason"] for _id, fields in client.xrange(f"{redis_prefix}:dead:main"))
    assert any("no message body" in r for r in reasons) and any("too large" in r for r in reasons)
    assert any("invalid JSON" in r for r in reasons)
    assert "worker died" not in sup.log() and sup.proc.poll() is None
    sup.stop()


# -- what operators see --------------------------------------------------------------------------------------------


def test_status_shows_every_live_supervisor_and_health_fails_without_redis(tmp_path, env, private_redis, hosts):
    configs = [_host(tmp_path, name, private_redis.url, "st") for name in "ab"]
    for n, config in enumerate(configs):
        _start(tmp_path, env, config, f"s{n}", hosts)
    with Client.from_config(configs[0]) as client:
        client.send_and_wait("main", "task", {"n": 1})
    out = ipcpool_cli(env, tmp_path, "status", "--config", str(configs[0]), "--json")
    cluster = json.loads(out.stdout)["cluster"]
    wait_until(lambda: len(json.loads(ipcpool_cli(env, tmp_path, "status", "--config", str(configs[0]),
                                                  "--json").stdout)["cluster"]["supervisors"]) == 2, 30,
               message="both supervisors listed")
    assert "main" in cluster["groups"]
    table = ipcpool_cli(env, tmp_path, "status", "--config", str(configs[0])).stdout
    assert "SUPERVISOR (cluster)" in table and "GROUP (cluster)" in table
    assert ipcpool_cli(env, tmp_path, "health", "--config", str(configs[0])).returncode == 0
    private_redis.kill()
    health = ipcpool_cli(env, tmp_path, "health", "--config", str(configs[0]))
    assert health.returncode == 1 and "unreachable" in health.stdout
    private_redis.start()


def test_memory_stays_bounded(tmp_path, env, redis_url, redis_prefix, hosts):
    config = _host(tmp_path, "h", redis_url, redis_prefix, redis={"lease": 1.0, "dead_letter_retention": 60.0})
    client = _raw(redis_url)
    dead = f"{redis_prefix}:dead:main"
    client.xadd(dead, {"r": "{}"}, id="1-0")  # a dead letter from long ago
    stream = f"{redis_prefix}:stream:main"
    client.xgroup_create(stream, "ipcpool", id="0", mkstream=True)
    client.execute_command("XGROUP", "CREATECONSUMER", stream, "ipcpool", "ghost-of-a-dead-host")
    wait_until(lambda: any(c["idle"] > 1000 for c in client.xinfo_consumers(stream, "ipcpool")), 10,
               message="the ghost consumer idle longer than the lease")
    sup = _start(tmp_path, env, config, "h", hosts)
    with Client.from_config(config) as sender:
        ids = [sender.send("main", "task", {"n": i}, requires_ack=True) for i in range(200)]
        wait_until(lambda: all(sender.is_acked("main", i) for i in ids), 60, message="all acked")
    assert client.xlen(stream) == 0, "handled entries are deleted, not only acknowledged"
    assert 0 < client.ttl(f"{redis_prefix}:ack:main:{ids[0]}") <= 86400, "acks expire by [ack] retention"
    assert not client.keys(f"{redis_prefix}:queued:*"), "the names of finished messages are forgotten"
    wait_until(lambda: client.xlen(dead) == 0, 30, message="the old dead letter trimmed")
    wait_until(lambda: "ghost-of-a-dead-host" not in {c["name"].decode() for c in
                                                      client.xinfo_consumers(stream, "ipcpool")}, 30,
               message="the dead host's consumer removed, as it held nothing")
    sup.stop()


def test_queue_full_and_a_different_message_under_a_queued_name(tmp_path, redis_url, redis_prefix):
    config = _host(tmp_path, "h", redis_url, redis_prefix, spool={"max_queued": 2})
    with Client.from_config(config) as client:
        client.send("main", "task", {"n": 1}, message_id="same-name")
        with pytest.raises(MessageExists):
            client.send("main", "task", {"n": 2}, message_id="same-name")
        client.send("main", "task", {"n": 3})
        with pytest.raises(QueueFull):
            client.send("main", "task", {"n": 4})


# -- outages longer than the lease -------------------------------------------------------------------------------


def _two_hosts_holding_gated_work(tmp_path: Path, env: dict[str, str], url: str, prefix: str,
                                  hosts: list[SupervisorProcess], gate: Path
                                  ) -> tuple[SupervisorProcess, SupervisorProcess, list[str]]:
    """Host a (2 workers) runs two gated handlers, host b (4 workers) two more and has two idle workers:
    whichever of them takes the other's entries has a free worker for them, or logs the loss on renewal."""
    extra: dict[str, dict[str, Any]] = {"redis": {"lease": 2.0}, "heartbeat": {"interval": 0.25}}
    pool = {"prefetch": 1, "handler_timeout": 120.0}
    a = _start(tmp_path, env, _host(tmp_path, "a", url, prefix, pool={"workers": 2, **pool}, **extra), "a", hosts)
    ids: list[str] = []
    with Client.from_config(tmp_path / "a" / "c.toml") as client:
        ids += [client.send("main", "task", {"gate": str(gate), "n": n}, requires_ack=True) for n in range(2)]
        wait_until(lambda: len(records(tmp_path)) == 2, 30, message="host a running two handlers")
        admin = _raw(url)  # a read a issued while it had room would take the next message and sit on it
        wait_until(lambda: admin.info("clients")["blocked_clients"] == 0, 30, message="host a reading no more")
        b = _start(tmp_path, env, _host(tmp_path, "b", url, prefix, pool={"workers": 4, **pool}, **extra), "b", hosts)
        ids += [client.send("main", "task", {"gate": str(gate), "n": n}, requires_ack=True) for n in (2, 3)]
        wait_until(lambda: len(records(tmp_path)) == 4, 30, message="host b running two more")
    running = {r["pid"] for r in records(tmp_path)}
    assert running & set(_workers(a)) and running & set(_workers(b)), "each host holds running entries"
    return a, b, ids


def _lost_lines(log: str) -> Counter[str]:
    return Counter(line.split("entry=")[1].split(":")[0] for line in log.splitlines() if "lost the lease" in line)


def _check_each_ran_once(tmp_path: Path, url: str, prefix: str, ids: list[str], gate: Path,
                         sups: tuple[SupervisorProcess, ...]) -> None:
    gate.touch()
    admin = _raw(url)
    wait_until(lambda: all(admin.exists(f"{prefix}:ack:main:{i}") for i in ids), 60, message="every message acked")
    counts = Counter(r["id"] for r in records(tmp_path))
    assert counts == Counter(ids), f"each handler ran once: {counts}"
    for sup in sups:
        assert "reclaimed" not in sup.log(), "nobody took entries a live supervisor held"
        lost = _lost_lines(sup.log())
        assert all(n == 1 for n in lost.values()), f"'lost the lease' logged at most once per entry: {lost}"
        assert sup.stop() == 0


def test_an_outage_longer_than_the_lease_hands_no_live_work_to_another_supervisor(tmp_path, env, private_redis,
                                                                                   hosts):
    """Redis killed for longer than the lease, restarted from its AOF (a failover looks the same to us):
    both supervisors see it gone and come back at their own pace; the first one back must not take the
    other's running entries (their idle time includes the outage), however late the other reconnects."""
    gate = tmp_path / "gate"
    a, b, ids = _two_hosts_holding_gated_work(tmp_path, env, private_redis.url, "out", hosts, gate)
    private_redis.kill()
    wait_until(lambda: "is unreachable" in a.log() and "is unreachable" in b.log(), 30,
               message="both supervisors seeing Redis gone")
    time.sleep(3 * 2.0)  # the outage itself: three leases long (their back-off grows meanwhile)
    private_redis.start()
    wait_until(lambda: "is back after" in a.log() and "is back after" in b.log(), 30, message="both back")
    time.sleep(2 * 2.0)  # nothing to wait for: two leases in which no supervisor may take the other's entries
    _check_each_ran_once(tmp_path, private_redis.url, "out", ids, gate, (a, b))


def test_a_redis_stalled_longer_than_the_lease_hands_no_live_work_to_another_supervisor(tmp_path, env,
                                                                                         private_redis, hosts):
    """Redis SIGSTOPped for longer than the lease (a stall shorter than the socket timeout: no call fails,
    each one just waits): every entry's idle time includes the stall, and nobody could renew."""
    gate = tmp_path / "gate"
    a, b, ids = _two_hosts_holding_gated_work(tmp_path, env, private_redis.url, "stall", hosts, gate)
    assert private_redis.proc is not None
    private_redis.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5 * 2.0)  # the stall itself: longer than the lease
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    time.sleep(2 * 2.0)  # nothing to wait for: two leases in which no supervisor may take the other's entries
    _check_each_ran_once(tmp_path, private_redis.url, "stall", ids, gate, (a, b))


def test_a_supervisor_that_lost_its_lease_says_so_once_and_finishes_late(tmp_path, env, private_redis, hosts):
    """Host a's supervisor is frozen (SIGSTOP) past the lease while its worker runs a handler: host b takes
    the entry over, as a lease means. When a thaws, its renewal finds the entry gone: that is logged once,
    not at every heartbeat while a's handler runs on, and a's late completion harms nothing."""
    url, gate = private_redis.url, tmp_path / "gate"
    extra: dict[str, dict[str, Any]] = {"redis": {"lease": 2.0}, "heartbeat": {"interval": 0.25}}
    pool = {"prefetch": 1, "handler_timeout": 120.0}
    a = _start(tmp_path, env, _host(tmp_path, "a", url, "late", pool={"workers": 1, **pool}, **extra), "a", hosts)
    admin = _raw(url)
    with Client.from_config(tmp_path / "a" / "c.toml") as client:
        message_id = client.send("main", "task", {"gate": str(gate)}, requires_ack=True)
    wait_until(lambda: len(records(tmp_path)) == 1, 30, message="host a running it")
    wait_until(lambda: admin.info("clients")["blocked_clients"] == 0, 30, message="host a reading no more")
    b = _start(tmp_path, env, _host(tmp_path, "b", url, "late", pool={"workers": 2, **pool}, **extra), "b", hosts)
    a.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: "reclaimed 1 messages" in b.log(), 30, message="host b taking the entry over")
    finally:
        a.signal(signal.SIGCONT)
    wait_until(lambda: "lost the lease" in a.log(), 30, message="host a finding it lost")
    said = time.time()
    wait_until(lambda: (a.status() or {}).get("writtenAt", 0) > said + 8 * 0.25, 30,
               message="eight more heartbeats of host a, its handler still running")
    assert len(_lost_lines(a.log())) == 1 and sum(_lost_lines(a.log()).values()) == 1, a.log()
    gate.touch()
    wait_until(lambda: admin.exists(f"late:ack:main:{message_id}"), 30, message="acked")
    wait_until(lambda: [r["id"] for r in records(tmp_path)] == [message_id] * 2, 30,
               message="both handlers done: a's, and b's after it took the entry over")
    wait_until(lambda: admin.xlen("late:stream:main") == 0, 30, message="the entry gone")
    assert a.stop() == 0 and b.stop() == 0
    assert sum(_lost_lines(a.log()).values()) == 1, "still once after the late completion"


# -- completions kept through a drain ---------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["drain", "sigkill"])
def test_an_ack_held_through_an_outage_survives_a_drain_and_a_restart(tmp_path, env, private_redis, hosts, ending):
    """A handler finishes while Redis is down: its completion is kept. The supervisor is then drained
    (SIGTERM, exit 0), or SIGKILLed, before Redis is back. Redis and the supervisor come back: the completion
    is finished from what was kept on the local root, the handler does not run again."""
    gate = tmp_path / "gate"
    config = _host(tmp_path, "h", private_redis.url, "kept", pool={"workers": 1, "handler_timeout": 120.0})
    sup = _start(tmp_path, env, config, "h", hosts)
    with Client.from_config(config) as client:
        message_id = client.send("main", "task", {"gate": str(gate)}, requires_ack=True)
    wait_until(lambda: len(records(tmp_path)) == 1, 30, message="the handler running")
    private_redis.kill()
    wait_until(lambda: "is unreachable" in sup.log(), 30, message="the outage seen")
    gate.touch()
    wait_until(lambda: "its ACK cannot be written" in sup.log(), 30, message="the ack held")
    wait_until(lambda: "Redis did not take its ACK: kept" in sup.log(), 30, message="the supervisor keeping it")
    if ending == "drain":
        assert sup.stop() == 0 and "stopped (drained)" in sup.log()
    else:
        sup.kill()
    journal = tmp_path / "h" / "ipc" / ".ipcpool" / "redis-unfinished.json"
    assert message_id in journal.read_text(), "the completion was kept on the local root"
    private_redis.start()
    probe = tmp_path / "probe"
    with Client.from_config(config) as client:  # new work, queued before the supervisor is back
        newer = client.send("main", "task", {"redis_probe": {"url": private_redis.url, "out": str(probe),
                                                             "key": f"kept:ack:main:{message_id}"}})
    again = _start(tmp_path, env, config, "h", hosts)
    admin = _raw(private_redis.url)
    wait_until(lambda: admin.exists(f"kept:ack:main:{message_id}"), 30, message="the kept ack written")
    wait_until(lambda: admin.xlen("kept:stream:main") == 0, 30, message="both entries completed")
    assert "could not finish in Redis were kept" in again.log_since_start()
    assert [r["id"] for r in records(tmp_path)] == [message_id, newer], "the handler ran once each"
    assert probe.read_text() == "held", "the kept completion was finished before new work was handed out"
    assert not journal.exists(), "nothing left to finish"
    assert again.stop() == 0


# -- files dropped into a supervisor's inbox (the bridge) -------------------------------------------------------


def _drop_watched(inbox: Path, name: str, body: bytes) -> int:
    """Publish like any writer (tmp/, then rename into the inbox); returns a descriptor on the file, so the
    test can tell when the supervisor has moved it (a rename changes its ctime) or removed it (no links)."""
    staged = inbox.parent / "tmp" / f".{name}.part"
    staged.write_bytes(body)
    fd = os.open(staged, os.O_RDONLY)
    os.rename(staged, inbox / name)
    return fd


def _moved_since(fd: int, ctime_ns: int) -> bool:
    st = os.fstat(fd)
    return st.st_nlink == 0 or st.st_ctime_ns != ctime_ns


def test_a_file_dropped_again_under_its_name_while_it_runs_waits_then_is_skipped_as_a_duplicate(
        tmp_path, env, redis_url, redis_prefix, hosts):
    """The same script as the spool's guarantee 3: job-1.json dropped, and dropped again while its handler
    runs. The second is not handed to a second handler meanwhile; after the first's ack it is a duplicate."""
    config = _host(tmp_path, "h", redis_url, redis_prefix, pool={"workers": 2, "prefetch": 1,
                                                                 "handler_timeout": 120.0})
    sup = _start(tmp_path, env, config, "h", hosts)
    inbox, gate = tmp_path / "h" / "ipc" / "main" / "messages", tmp_path / "gate"
    body = json.dumps({"id": "job-1", "type": "task", "payload": {"gate": str(gate)}, "requiresAck": True}).encode()
    os.close(_drop_watched(inbox, "job-1.json", body))
    wait_until(lambda: len(records(tmp_path)) == 1, 30, message="the first copy running")
    fd = _drop_watched(inbox, "job-1.json", body)
    try:
        dropped = os.fstat(fd).st_ctime_ns
        wait_until(lambda: _moved_since(fd, dropped), 30, message="the supervisor taking up the second copy")
        wait_until(lambda: os.fstat(fd).st_nlink == 0 or (inbox / "job-1.json").exists(), 30,
                   message="the second copy sent on, or put back to wait")
    finally:
        os.close(fd)
    gate.touch()
    wait_until(lambda: "Duplicate IPC message skipped (already acked) id=job-1" in sup.log()
               or len(records(tmp_path)) > 1, 30, message="the second copy skipped")
    assert [r["id"] for r in records(tmp_path)] == ["job-1"], "the handler ran once"
    assert "Duplicate IPC message skipped (already acked) id=job-1" in sup.log()
    wait_until(lambda: not os.listdir(inbox), 30, message="the inbox empty")
    assert _raw(redis_url).exists(f"{redis_prefix}:ack:main:job-1")
    assert sup.stop() == 0


def test_a_local_file_that_never_decodes_is_quarantined_locally_once_settled(tmp_path, env, redis_url,
                                                                             redis_prefix, hosts):
    """It may still be being written until it has not changed for settle_time: then it is refused here, in
    the local errors/ with the reason, never sent on to the cluster."""
    config = _host(tmp_path, "h", redis_url, redis_prefix, spool={"settle_time": 0.5})
    sup = _start(tmp_path, env, config, "h", hosts)
    group = tmp_path / "h" / "ipc" / "main"
    (group / "tmp" / "broken.json").write_text('{"id": "broken", "type": "task", "payl')
    dropped = time.time()
    os.rename(group / "tmp" / "broken.json", group / "messages" / "broken.json")
    (record,) = wait_until(lambda: list((group / "errors").glob("*broken.json.error.json")), 30,
                           message="the file refused locally")
    assert record.stat().st_mtime - dropped >= 0.5, "not before it had settled"
    assert "invalid JSON" in json.loads(record.read_text())["reason"]
    assert record.with_name(record.name.removesuffix(".error.json")).read_text().endswith('"payl')
    assert "local file refused, not sent to Redis group=main file=broken.json: invalid JSON" in sup.log()
    raw = _raw(redis_url)
    assert raw.xlen(f"{redis_prefix}:dead:main") == 0 and raw.xlen(f"{redis_prefix}:stream:main") == 0
    assert sup.stop() == 0


# -- consumer names ------------------------------------------------------------------------------------------


class ContainerSupervisor(SupervisorProcess):
    """``ipcpool run`` as in a container: in a mount namespace of its own, its volume bind-mounted at a
    path every such supervisor shares (the Dockerfile's /data/ipc), on the same host name."""

    def __init__(self, config: Path, cwd: Path, env: dict[str, str], log_path: Path, volume: Path,
                 mount_point: Path) -> None:
        super().__init__(config, cwd, env, log_path)
        self.volume, self.mount_point = volume, mount_point

    def start(self, *, wait_ready: bool = True, timeout: float = 30.0) -> SupervisorProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._offset = self.log_path.stat().st_size
        script = 'mount --bind "$1" "$2" && exec "$3" -m ipcpool run --config "$4"'
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(self.volume),
             str(self.mount_point), sys.executable, str(self.config)],
            cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready:
            wait_until(lambda: "Enhanced IPC system started" in self.log_since_start() or self.proc.poll() is not None,
                       timeout, message="Enhanced IPC system started")
            assert self.proc.poll() is None, f"supervisor exited early:\n{self.log()}"
        return self


def _mount_namespaces() -> None:
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs mount namespaces (unshare --mount: root, or CAP_SYS_ADMIN) to give two supervisors "
                    "one root path on two volumes")


def test_two_containers_with_one_host_name_and_root_path_never_take_each_others_work(tmp_path, env, private_redis,
                                                                                   hosts):
    """Two containers with a fixed host name and the image's one root path, each on a volume of its own:
    restarting one must not take the entries the other's live workers hold; restarting the holder in place
    (SIGKILLed, same volume) takes back its own at once."""
    _mount_namespaces()
    url, gate = private_redis.url, tmp_path / "gate"
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    extra = {"pool": {"workers": 2, "prefetch": 1, "handler_timeout": 120.0}, "redis": {"lease": 30.0}}
    root = mount_point / "ipc"  # the same path in both containers
    config = write_config(tmp_path / "c.toml", root, sections=_sections(url, "twins", **extra))
    volumes = {name: tmp_path / f"volume-{name}" for name in "ab"}

    def container(name: str) -> ContainerSupervisor:
        volumes[name].mkdir(exist_ok=True)
        sup = ContainerSupervisor(config, tmp_path, env, tmp_path / f"{name}.log", volumes[name], mount_point)
        hosts.append(sup)
        return sup

    a, b = container("a").start(), container("b").start()
    with Client.from_config(_host(tmp_path, "sender", url, "twins")) as client:
        message_id = client.send("main", "task", {"gate": str(gate)}, requires_ack=True)
    (first,) = wait_until(lambda: records(tmp_path), 30, message="the handler running")
    holder, other = (a, b) if first["pid"] in _workers(a) else (b, a)
    name = "a" if holder is a else "b"
    assert other.stop() == 0
    restarted = container("b" if name == "a" else "a").start()
    assert "Recovered" not in restarted.log_since_start(), "the restarted container took the other's live entry"
    assert "1 messages queued at start" not in restarted.log_since_start()
    kill_session(holder.pid)
    holder.wait(10)
    again = container(name).start()
    wait_until(lambda: "Recovered 1 messages this supervisor held before its restart" in again.log_since_start(), 30,
               message="the holder, restarted in place, taking back its own at once")
    gate.touch()
    admin = _raw(url)
    wait_until(lambda: admin.exists(f"twins:ack:main:{message_id}"), 30, message="acked")
    deliveries = [r for r in records(tmp_path) if r["id"] == message_id]
    assert len(deliveries) == 2 and deliveries[0]["pid"] == first["pid"], \
        "run by the holder, then (it was SIGKILLed mid-handler) once more by the holder restarted in place"
    assert restarted.stop() == 0 and again.stop() == 0


def test_a_supervisor_is_back_within_a_quarter_lease_of_redis_however_long_it_was_away(tmp_path, env,
                                                                                        private_redis, hosts):
    """After an outage of everyone no supervisor reclaims for one lease, in which each renews its own: each
    must be back by then, so its back-off between attempts is at most a quarter lease, not 5 s."""
    config = _host(tmp_path, "h", private_redis.url, "quarter", redis={"lease": 2.0})
    sup = _start(tmp_path, env, config, "h", hosts)
    private_redis.kill()
    wait_until(lambda: "is unreachable" in sup.log(), 30, message="the outage seen")
    time.sleep(7.0)  # the outage itself: long enough for an uncapped back-off to reach its 5 s steps
    private_redis.start()
    back = time.monotonic()
    wait_until(lambda: "is back after" in sup.log(), 30, interval=0.01, message="the supervisor back")
    assert time.monotonic() - back < 0.5 + 0.5, "back within a quarter lease (0.5 s), and a little"
    assert sup.stop() == 0


def test_a_supervisor_frozen_past_its_lease_never_starts_what_it_had_queued_and_lost(tmp_path, env, private_redis,
                                                                                     hosts):
    """Host a took over a dead host's entry while its one worker was busy, so it waits in a's queue. Host a
    is then frozen past the lease (its worker finishes meanwhile) and host b takes the entry over. When a
    thaws, with a free worker, it renews before it hands anything out: it finds the entry gone and leaves
    it to b, instead of starting it beside b's run."""
    url, prefix = private_redis.url, "frozen"
    gates = {n: tmp_path / f"gate-{n}" for n in (1, 2)}
    pool = {"prefetch": 1, "handler_timeout": 120.0}
    admin = _raw(url)
    stream = f"{prefix}:stream:main"
    admin.xgroup_create(stream, "ipcpool", id="0", mkstream=True)
    with Client.from_config(_host(tmp_path, "sender", url, prefix)) as client:
        queued = client.send("main", "task", {"gate": str(gates[2])}, requires_ack=True)
        assert len(admin.xreadgroup("ipcpool", "dead-host:0123456789abcdef", {stream: ">"})[0][1]) == 1
        a = _start(tmp_path, env, _host(tmp_path, "a", url, prefix, pool={"workers": 1, **pool}), "a", hosts)
        running = client.send("main", "task", {"gate": str(gates[1])}, requires_ack=True)
    wait_until(lambda: [r["id"] for r in records(tmp_path)] == [running], 30, message="host a running one")
    wait_until(lambda: "reclaimed 1 messages" in a.log(), 30, message="host a taking over the dead host's entry")
    b = _start(tmp_path, env, _host(tmp_path, "b", url, prefix, pool={"workers": 2, **pool}), "b", hosts)
    a.signal(signal.SIGSTOP)
    try:
        gates[1].touch()  # a's worker (not frozen) finishes and reports to its frozen supervisor
        wait_until(lambda: admin.exists(f"{prefix}:ack:main:{running}"), 30, message="the running one acked")
        wait_until(lambda: "reclaimed 1 messages" in b.log(), 30, message="host b taking over a's queued entry")
        wait_until(lambda: [r["id"] for r in records(tmp_path)] == [running, queued], 30, message="b running it")
    finally:
        a.signal(signal.SIGCONT)
    wait_until(lambda: "lost the lease" in a.log(), 30, message="host a finding it lost")
    assert "it is left to that one" in a.log(), "found lost before it was handed to a's free worker"
    assert sum(_lost_lines(a.log()).values()) == 1, "only that one: the one a's worker finished is not lost"
    gates[2].touch()
    wait_until(lambda: admin.exists(f"{prefix}:ack:main:{queued}"), 30, message="acked")
    assert [r["id"] for r in records(tmp_path)] == [running, queued], "b's run the only one"
    assert a.stop() == 0 and b.stop() == 0
    assert [r["id"] for r in records(tmp_path)] == [running, queued]


def test_a_send_with_redis_down_says_at_once_that_it_retries_and_for_how_long(tmp_path, env):
    """It blocked for [redis] outage_timeout (a minute) before saying anything a user could act on."""
    import select as _select
    import socket
    import subprocess
    import sys

    with socket.socket() as unused:  # a loopback port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    config = write_config(tmp_path / "c.toml", tmp_path / "ipc", sections=_sections(
        f"redis://127.0.0.1:{port}/0", "down", redis={"outage_timeout": 600.0}))
    sender = subprocess.Popen([sys.executable, "-m", "ipcpool", "send", "--config", str(config), "--group", "main",
                               "--type", "task"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        assert _select.select([sender.stderr], [], [], 20)[0], "nothing said while it retries (of 600 s)"
        first = sender.stderr.readline()
        assert "is unreachable" in first and "retries with back-off for up to 600s ([redis] outage_timeout)" in first
        assert sender.poll() is None, "it is still retrying, as it said"
    finally:
        kill_session(sender.pid)
        sender.wait(10)


def test_a_redis_back_without_its_data_has_its_groups_made_again_and_the_pool_goes_on(tmp_path, env, hosts):
    """Redis restarted empty (no persistence, a failover to an empty replica): it answers NOGROUP. The
    supervisor makes the consumer groups again and handles what comes next; SIGTERM still drains it."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "no").start()
    try:
        config = _host(tmp_path, "a", server.url, "empty", redis={"outage_timeout": 10.0})
        sup = _start(tmp_path, env, config, "a", hosts)
        client = Client.from_config(config)
        first = client.send("main", "task", {"n": 1}, requires_ack=True, wait=True)
        server.kill()
        server.start()  # empty: nothing was persisted
        # (Until the supervisor announces itself again, an empty Redis knows of none: the sender waits.)
        second = client.send("main", "task", {"n": 2}, requires_ack=True, wait=True, wait_for_supervisor=True)
        assert {first, second} <= {r["id"] for r in records(tmp_path)}
        assert "Redis has lost the consumer groups" in sup.log_since_start()
        assert "unexpected error in the supervisor loop" not in sup.log_since_start()
        assert sup.stop() == 0
    finally:
        server.stop()
