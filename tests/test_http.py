"""/metrics, /healthz and /readyz of a real pool, through a real HTTP client, on both transports.

Scrapes are parsed with prometheus_client's own parser; the counters are
watched moving as messages are handled, fail, are rejected and turn poison.
"""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import backend_config, ipcpool_cli, records, wait_until, write_config

from ipcpool import Client, MessageFailed, MessageRejected
from ipcpool.config import HttpConfig
from ipcpool.metrics import parse, total
from ipcpool.probes import LoopProbe, ProbeServer


def get(address: str, path: str) -> tuple[int, str, str]:
    """(status code, body, content type) of a GET, 503s included."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=30) as reply:
            return reply.status, reply.read().decode(), reply.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers["Content-Type"]


def address_of(sup: Any) -> str:
    return wait_until(lambda: (sup.status() or {}).get("http"), 30, message="the HTTP address in status.json")


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body, kind = get(address, "/metrics")
    assert code == 200 and kind.startswith("text/plain"), body
    return parse(body)


def scrape_until(address: str, enough: Any, message: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape until ``enough(samples)``: counts reach the supervisor with a worker's next report."""
    seen: list[Any] = []

    def ready() -> bool:
        seen[:] = [scrape(address)]
        return bool(enough(seen[0]))

    wait_until(ready, 30, message=message)
    return seen[0]


def test_metrics_move_as_messages_are_handled_fail_and_turn_poison(tmp_path, root, backend, supervisor_factory):
    config = backend_config(tmp_path, root, backend, http={"listen": "127.0.0.1:0"}, pool={"max_deliveries": 1})
    sup = supervisor_factory(config)
    address = address_of(sup)
    before = scrape(address)
    assert total(before, "ipcpool_messages_total") == 0
    assert total(before, "ipcpool_workers", state="ready") == 2
    with Client.from_config(config) as client:
        for n in range(5):
            client.send_and_wait("main", "task", {"n": n})
        with pytest.raises(MessageFailed):
            client.send_and_wait("main", "task", {"raise": "boom"})
        with pytest.raises(MessageRejected):
            client.send_and_wait("main", "nohandler", {})
        # Reported before the crash below: a worker killed mid-batch takes its unreported counts with it.
        scrape_until(address, lambda s: total(s, "ipcpool_messages_total") == 7, "seven counted")
        with pytest.raises(MessageFailed) as poisoned:
            client.send_and_wait("main", "task", {"exit": 3}, timeout=60)
        assert poisoned.value.outcome == "poisoned"
    samples = scrape_until(address, lambda s: total(s, "ipcpool_messages_total", outcome="poisoned")
                           and total(s, "ipcpool_dead_letters") == 3, "the poison and three dead letters counted")
    assert total(samples, "ipcpool_messages_total", group="main", type="task", outcome="handled") == 5
    assert total(samples, "ipcpool_messages_total", type="task", outcome="failed") == 1
    assert total(samples, "ipcpool_messages_total", type="other", outcome="invalid") == 1, "unknown types fold"
    assert total(samples, "ipcpool_messages_total", type="task", outcome="poisoned") == 1
    assert total(samples, "ipcpool_worker_restarts_total", reason="crash") == 1
    # Every attempt of the failed handler and every success was timed (1 ms .. 5 min buckets).
    assert total(samples, "ipcpool_handler_duration_seconds_count", type="task") == 6
    assert total(samples, "ipcpool_handler_duration_seconds_bucket", type="task", le="300.0") == 6
    assert total(samples, "ipcpool_dead_letters", group="main") == 3
    assert total(samples, "ipcpool_transport_up") == 1
    names = {name for name, _labels in samples}
    assert {"ipcpool_queue_depth", "ipcpool_in_flight", "ipcpool_oldest_queued_age_seconds",
            "ipcpool_loop_lag_seconds", "ipcpool_ack_holds", "ipcpool_completions_waiting"} <= names
    for _name, labels in samples:  # low cardinality: no pids, hosts or ids in any label
        assert {key for key, _ in labels} <= {"group", "type", "outcome", "state", "reason", "le"}
    sup.stop()


def test_queue_depth_in_flight_and_oldest_age_while_a_handler_holds(tmp_path, root, backend, supervisor_factory):
    config = backend_config(tmp_path, root, backend, http={"listen": "127.0.0.1:0"},
                            pool={"workers": 1, "prefetch": 1})
    sup = supervisor_factory(config)
    address = address_of(sup)
    gate = tmp_path / "gate"
    with Client.from_config(config) as client:
        client.send("main", "task", {"gate": str(gate)}, requires_ack=True)
        wait_until(lambda: records(tmp_path), 30, message="the gated handler started")
        samples = scrape_until(address, lambda s: total(s, "ipcpool_in_flight") == 1, "the running one in flight")
        assert total(samples, "ipcpool_queue_depth") == 0
        assert total(samples, "ipcpool_oldest_queued_age_seconds") == 0, "in flight is not waiting"
        waiting = [client.send("main", "task", {"n": n}, requires_ack=True) for n in range(3)]
        samples = scrape_until(address, lambda s: total(s, "ipcpool_queue_depth") == 3, "three queued behind the gate")
        assert total(samples, "ipcpool_in_flight", group="main") == 1
        assert total(samples, "ipcpool_oldest_queued_age_seconds", group="main") > 0
        assert total(samples, "ipcpool_workers", state="busy") == 1
        gate.touch()
        wait_until(lambda: all(client.is_acked("main", i) for i in waiting), 30, message="all handled")
    sup.stop()


def test_readyz_and_healthz_answer_as_kubernetes_expects(tmp_path, root, env, supervisor_factory):
    config = write_config(tmp_path / "c.toml", root, sections={"http": {"listen": "127.0.0.1:0"},
                                                               "pool": {"workers": 1, "shutdown_grace": 30.0}})
    sup = supervisor_factory(config)
    address = address_of(sup)
    code, body, kind = get(address, "/healthz")
    assert code == 200 and kind == "application/json" and json.loads(body)["ok"] is True
    code, body, _ = get(address, "/readyz")
    assert code == 200 and json.loads(body) == {"ok": True, "reason": "1 of 1 workers ready"}
    assert get(address, "/nothing")[0] == 404
    gate = tmp_path / "gate"
    with Client.from_config(config) as client:
        client.send("main", "task", {"gate": str(gate)})
        wait_until(lambda: records(tmp_path), 30, message="the gated handler started")
        sup.signal(signal.SIGTERM)  # draining: alive, but no longer ready
        wait_until(lambda: get(address, "/readyz")[0] == 503, 30, message="not ready while draining")
        code, body, _ = get(address, "/readyz")
        assert json.loads(body) == {"ok": False, "reason": "the supervisor is draining"}
        assert get(address, "/healthz")[0] == 200
        gate.touch()
    assert sup.wait(30) == 0


def test_a_loop_that_does_not_answer_fails_healthz_in_bounded_time():
    """The server with no loop behind it, as a stuck loop looks from outside: 503 within loop_timeout."""
    probe = LoopProbe(wake=lambda: None)
    server = ProbeServer(HttpConfig(listen="127.0.0.1:0", loop_timeout=0.2), probe)
    server.start()
    try:
        code, body, _ = get(server.address, "/healthz")
        assert code == 503
        assert json.loads(body) == {"ok": False, "reason": "the supervisor loop did not answer within 0.2s"}
        assert get(server.address, "/metrics")[0] == 503  # nothing answered yet: no stale page to show
    finally:
        server.close()


def test_a_taken_port_stops_run_before_it_starts(tmp_path, root, env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "c.toml", root, sections={"http": {"listen": f"127.0.0.1:{port}"}})
        out = ipcpool_cli(env, tmp_path, "run", "--config", str(config))
    assert out.returncode == 2, out.stderr
    assert f"[http] listen 127.0.0.1:{port}: cannot listen" in out.stderr
    assert not (Path(root) / "main" / "processing").exists(), "no transport opened, no worker started"


@pytest.mark.parametrize("listen", ["9464", "localhost:", "127.0.0.1:99999", ":80"])
def test_a_bad_listen_address_is_exit_2_with_the_key_named(tmp_path, root, env, listen):
    config = write_config(tmp_path / "c.toml", root, sections={"http": {"listen": listen}})
    out = ipcpool_cli(env, tmp_path, "run", "--config", str(config))
    assert out.returncode == 2 and "[http] listen" in out.stderr, out.stderr
    out = ipcpool_cli(env, tmp_path, "run", "--config", str(config), "--http", listen)
    assert out.returncode == 2 and "--http" in out.stderr, out.stderr


def test_readyz_fails_while_redis_is_away_and_recovers(tmp_path, root, private_redis, supervisor_factory):
    backend = {"transport": {"backend": "redis"}, "redis": {"url": private_redis.url, "prefix": "probes",
                                                            "lease": 3.0}}
    config = backend_config(tmp_path, root, backend, http={"listen": "127.0.0.1:0"})
    sup = supervisor_factory(config)
    address = address_of(sup)
    assert get(address, "/readyz")[0] == 200
    private_redis.kill()
    wait_until(lambda: get(address, "/readyz")[0] == 503, 30, message="not ready without Redis")
    code, body, _ = get(address, "/readyz")
    assert code == 503 and "Redis is unreachable" in json.loads(body)["reason"]
    assert get(address, "/healthz")[0] == 200, "the loop itself is alive"
    assert total(scrape(address), "ipcpool_transport_up") == 0
    private_redis.restart()
    wait_until(lambda: get(address, "/readyz")[0] == 200, 60, message="ready again once Redis is back")
    with Client.from_config(config) as client:
        client.send_and_wait("main", "task", {"n": 1}, timeout=30)
    assert sup.stop() == 0


def test_a_worker_killed_with_work_in_hand_counts_it_returned_not_finished(tmp_path, root, supervisor_factory):
    import os

    config = write_config(tmp_path / "c.toml", root, sections={"http": {"listen": "127.0.0.1:0"},
                                                               "pool": {"workers": 1, "prefetch": 8}})
    sup = supervisor_factory(config)
    address = address_of(sup)
    gate = tmp_path / "gate"
    with Client.from_config(config) as client:
        ids = [client.send("main", "task", {"gate": str(gate), "n": n}, requires_ack=True) for n in range(4)]
        wait_until(lambda: records(tmp_path), 30, message="the first handler at its gate")
        wait_until(lambda: sum(w["held"] + w["running"] for w in sup.status()["workers"]) == 4, 30,
                   message="all four in the worker's hands")
        os.kill(records(tmp_path)[0]["pid"], signal.SIGKILL)
        gate.touch()
        wait_until(lambda: all(client.is_acked("main", i) for i in ids), 30, message="all four handled")
    samples = scrape_until(address, lambda s: total(s, "ipcpool_messages_total", outcome="handled") == 4,
                           "four handled")
    assert total(samples, "ipcpool_messages_returned_total", group="main") == 4, "the killed worker's four"
    assert total(samples, "ipcpool_messages_total") == 4, "returned is not a way of finishing"
    assert total(samples, "ipcpool_worker_restarts_total", reason="crash") == 1
    assert sup.stop() == 0


def test_concurrent_probes_share_one_answer_and_none_waits_past_its_timeout():
    """Four probes at once against a loop that answers once a second: all four answered by the same step."""
    import threading

    from ipcpool.config import Config
    from ipcpool.probes import Answer
    from ipcpool.tally import Labels, PoolMetrics, Scrape

    asked = threading.Event()
    probe = LoopProbe(wake=asked.set)
    answer = Answer(Scrape(PoolMetrics(Labels(Config())), {"state": "running"}, 0.0), True, "ok")
    stop = threading.Event()

    def loop() -> None:  # a slow loop: one step a second
        while not stop.wait(1.0):
            if probe.asked():
                probe.answer(lambda lag: answer)

    threading.Thread(target=loop, daemon=True).start()
    results: list[Any] = []
    askers = [threading.Thread(target=lambda: results.append(probe.ask(1.8))) for _ in range(4)]
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    stop.set()
    assert [r[0] for r in results] == [answer] * 4, "queued one behind another, the last would time out"


def test_an_ipv6_listen_address_serves(tmp_path, root, supervisor_factory):
    try:
        with socket.socket(socket.AF_INET6) as probe6:
            probe6.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    config = write_config(tmp_path / "c.toml", root, sections={"http": {"listen": "[::1]:0"}})
    sup = supervisor_factory(config)
    address = address_of(sup)
    assert address.startswith("[::1]:")
    assert get(address, "/readyz")[0] == 200
    assert sup.stop() == 0
