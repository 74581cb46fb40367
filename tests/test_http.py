"""/metrics, /healthz and /readyz of a real pool, through a real HTTP client, on both transports.

Scrapes are parsed with prometheus_client's own parser; the counters are
watched moving as messages are handled, fail, are rejected and turn poison.
"""

from __future__ import annotations

import json
import os
import resource
import select
import selectors
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import backend_config, ipcpool_cli, records, wait_until, write_config
from prometheus_text import parse, total

from ipcpool import Client, MessageFailed, MessageRejected
from ipcpool.config import HttpConfig
from ipcpool.ops import probes
from ipcpool.ops.probes import LoopProbe, ProbeServer


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
        # On Redis the queue's figures are read from Redis a moment apart from the workers' states: wait for
        # one scrape in which both are current (a running message counted as queued too would never get there).
        samples = scrape_until(address, lambda s: total(s, "ipcpool_in_flight") == 1
                               and total(s, "ipcpool_queue_depth") == 0
                               and total(s, "ipcpool_oldest_queued_age_seconds") == 0,
                               "the running one in flight, not queued")
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
    from ipcpool.ops.health import Verdict
    from ipcpool.ops.probes import Answer
    from ipcpool.ops.tally import Labels, PoolMetrics, Scrape

    asked = threading.Event()
    probe = LoopProbe(wake=asked.set)
    verdict = Verdict(healthy=True, reason="ok", ready=True, ready_reason="ok", transport_up=True)
    answer = Answer(Scrape(PoolMetrics(Labels(Config())), {"state": "running"}, 0.0, verdict))
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


# -- hostile clients (issue 23, item 9): half-open connections must not take the supervisor down -------------


FLOOD_NOFILE = 256  # the supervisor's RLIMIT_NOFILE in the flood test: a few hundred sockets reach it
ANSWERED_WITHIN = 2.0  # seconds a fresh client's /healthz may take while the flood goes on
MAX_THREADS = 4  # the supervisor's threads, at most, whatever the clients do (the loop, HTTP, a spare)


def nofile(limit: int) -> Callable[[], None]:
    """A preexec function: the child's RLIMIT_NOFILE, soft and hard, set to ``limit``."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Flood:
    """``count`` clients that each connect, send half a request line (``GET /hea``) and wait.

    A few connects are under way at a time (``CONNECTING``), so the flood goes at the pace the
    server accepts, as clients that keep arriving do, and a server that stops accepting leaves
    them pending instead of stalling the test. With ``refill``, a client the server drops is
    replaced, as an attacker would, so the pressure lasts until :meth:`close`; without it,
    each of the ``count`` clients connects once.
    """

    CONNECTING = 8

    def __init__(self, address: str, count: int, *, refill: bool = False) -> None:
        self.address = host_port(address)
        self.count = count
        self.refill = refill
        self.sent = 0  # connections that got their half request out
        self.dropped = 0  # connections the server closed
        self.last_progress = time.monotonic()
        self._started = 0
        self._connecting = 0
        self.open = 0
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def start(self) -> Flood:
        self._thread.start()
        return self

    def wait_sent(self, count: int, stalled: float = 2.0, timeout: float = 60.0) -> None:
        """Until ``count`` half requests are out, or the server has accepted none for ``stalled`` seconds."""
        wait_until(lambda: self.sent >= count or time.monotonic() - self.last_progress > stalled, timeout,
                   message=f"{count} half requests sent")

    def _connect(self) -> None:
        while self._connecting < self.CONNECTING and self.open < self.count \
                and (self.refill or self._started < self.count):
            sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET)
            sock.setblocking(False)
            sock.connect_ex(self.address)
            self._selector.register(sock, selectors.EVENT_WRITE, "connecting")
            self._started += 1
            self._connecting += 1
            self.open += 1

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        sock.close()
        self.open -= 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._connect()
            for key, _mask in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "connecting":
                    self._connecting -= 1
                    try:
                        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            raise ConnectionRefusedError
                        sock.send(b"GET /hea")  # half a request line: no end of line, ever
                    except OSError:
                        self._drop(sock)
                        continue
                    self.sent += 1
                    self.last_progress = time.monotonic()
                    self._selector.modify(sock, selectors.EVENT_READ, "sent")
                else:  # readable: the server closed it (or said something before closing)
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        self.dropped += 1
                        self._drop(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


def timed_get(address: str, path: str, within: float) -> tuple[int, float]:
    """(status code, seconds taken) of a GET from a fresh client that gives up after ``within`` seconds."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=within) as reply:
            code = reply.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except OSError as exc:  # refused, reset, or timed out
        raise AssertionError(f"GET {path} failed after {time.monotonic() - started:.2f}s: {exc!r}") from None
    return code, time.monotonic() - started


def test_half_open_connections_past_the_fd_limit_leave_healthz_and_worker_replacement_working(
        tmp_path, root, supervisor_factory):
    """A thousand clients each sending half a request line once exhausted the supervisor's descriptors
    (a thread each): /healthz stopped answering and a killed worker could not be replaced (EMFILE)."""
    config = write_config(tmp_path / "c.toml", root, sections={"http": {"listen": "127.0.0.1:0"}})
    sup = supervisor_factory(config, preexec=nofile(FLOOD_NOFILE))
    address = address_of(sup)
    assert psutil.Process(sup.pid).rlimit(resource.RLIMIT_NOFILE) == (FLOOD_NOFILE, FLOOD_NOFILE)
    flood = Flood(address, FLOOD_NOFILE + 100, refill=True).start()
    try:
        flood.wait_sent(FLOOD_NOFILE)
        code, _took = timed_get(address, "/healthz", ANSWERED_WITHIN)
        assert code == 200, f"/healthz answered {code} under the flood"
        killed = sup.worker_pids()[0]
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: killed not in sup.worker_pids() and len(sup.worker_pids()) == 2
                   and all(w["state"] in ("ready", "busy") for w in sup.status()["workers"]), 30,
                   message="the killed worker replaced while the flood goes on")
        with Client.from_config(config) as client:
            client.send_and_wait("main", "task", {"n": 1}, timeout=30)
        assert records(tmp_path)[-1]["payload"] == {"n": 1}
        code, _took = timed_get(address, "/healthz", ANSWERED_WITHIN)
        assert code == 200
        threads = psutil.Process(sup.pid).num_threads()
        assert threads <= MAX_THREADS, f"{threads} threads in the supervisor under {flood.sent} clients"
        assert flood.dropped, "the server never let go of a connection that did not finish its request"
    finally:
        flood.close()
    assert "Too many open files" not in sup.log()
    assert sup.stop() == 0


def server_connections(pid: int, port: int) -> int:
    """The client connections process ``pid`` holds open on its listening ``port``."""
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_connections_past_the_cap_close_the_oldest_unfinished_at_once(tmp_path, root, supervisor_factory):
    """With descriptors to spare, MAX_CONNECTIONS still bounds what clients hold; past it the oldest
    connection still sending its request is closed at once (not at its timeout), and a fresh probe gets in."""
    config = write_config(tmp_path / "c.toml", root, sections={"http": {"listen": "127.0.0.1:0"}})
    sup = supervisor_factory(config, preexec=nofile(4096))
    address = address_of(sup)
    port = host_port(address)[1]
    excess = 100
    flood = Flood(address, probes.MAX_CONNECTIONS + excess).start()
    try:
        flood.wait_sent(probes.MAX_CONNECTIONS + excess)
        assert flood.sent == probes.MAX_CONNECTIONS + excess
        # Well before any of them reaches its REQUEST_TIMEOUT: the cap, not the timeout, closed them.
        wait_until(lambda: flood.dropped >= excess, probes.REQUEST_TIMEOUT - 1.5,
                   message=f"the {excess} oldest connections closed to keep to MAX_CONNECTIONS")
        assert server_connections(sup.pid, port) <= probes.MAX_CONNECTIONS
        assert flood.open == probes.MAX_CONNECTIONS
        code, _took = timed_get(address, "/healthz", ANSWERED_WITHIN)
        assert code == 200
        assert server_connections(sup.pid, port) <= probes.MAX_CONNECTIONS
        assert psutil.Process(sup.pid).num_threads() <= MAX_THREADS
    finally:
        flood.close()
    assert sup.stop() == 0


def test_a_request_not_finished_in_request_timeout_is_closed_even_if_it_trickles(tmp_path, root,
                                                                                  supervisor_factory):
    """Half a request line, and a request sent one byte every half second: both are closed once
    REQUEST_TIMEOUT has passed since they connected (a deadline, not a timeout per read)."""
    config = write_config(tmp_path / "c.toml", root, sections={"http": {"listen": "127.0.0.1:0"}})
    sup = supervisor_factory(config)
    address = address_of(sup)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 64  # never the blank line
    half = socket.create_connection(host_port(address))
    trickle = socket.create_connection(host_port(address))
    started = time.monotonic()
    closed: dict[str, float] = {}
    try:
        half.sendall(b"GET /hea")
        sent = 0
        limit = probes.REQUEST_TIMEOUT + 3.0
        while len(closed) < 2 and time.monotonic() - started < limit:
            open_ = [s for name, s in (("half", half), ("trickle", trickle)) if name not in closed]
            readable, _, _ = select.select(open_, [], [], 0.5)  # the server closing one, or time for a byte
            for sock in readable:
                try:
                    gone = sock.recv(4096) == b""
                except ConnectionResetError:  # closed with a byte of ours unread: a reset, not a FIN
                    gone = True
                if gone:
                    closed["half" if sock is half else "trickle"] = time.monotonic() - started
            if "trickle" not in closed and sent < len(request):
                try:
                    trickle.send(request[sent:sent + 1])
                    sent += 1
                except OSError:
                    closed["trickle"] = time.monotonic() - started
        assert set(closed) == {"half", "trickle"}, f"still open after {limit:g}s: the request timeout is gone"
        for name, after in closed.items():
            assert probes.REQUEST_TIMEOUT - 0.5 <= after <= probes.REQUEST_TIMEOUT + 2.0, (name, after)
        assert sent < len(request), "the trickle never ran out of bytes to send"
    finally:
        half.close()
        trickle.close()
    assert timed_get(address, "/healthz", ANSWERED_WITHIN)[0] == 200
    assert sup.stop() == 0


def test_many_probes_at_once_against_a_stuck_loop_cost_no_thread_and_each_gets_503_in_time():
    """Fifty complete requests while the loop does not answer: one thread serves them all (the server
    starts none per connection), and each is answered 503 after its own loop_timeout, not in turn."""
    probe = LoopProbe(wake=lambda: None)
    server = ProbeServer(HttpConfig(listen="127.0.0.1:0", loop_timeout=1.0), probe)
    server.start()
    threads = threading.active_count()
    clients = [socket.create_connection(host_port(server.address)) for _ in range(50)]
    replies = {c: b"" for c in clients}
    started = time.monotonic()
    try:
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        most_threads = threading.active_count()
        open_ = list(clients)
        while open_ and time.monotonic() - started < 10:
            for sock in select.select(open_, [], [], 0.5)[0]:
                data = sock.recv(65536)
                replies[sock] += data
                if not data:
                    open_.remove(sock)
            most_threads = max(most_threads, threading.active_count())
        took = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
        server.close()
    assert most_threads == threads, "a thread per request"
    assert all(r.startswith(b"HTTP/1.1 503 ") for r in replies.values()), set(replies.values())
    assert all(b'"the supervisor loop did not answer within 1s"' in r for r in replies.values())
    assert took < 3.0, f"answered one after another: {took:.1f}s for 50 probes with loop_timeout 1s"


def test_open_fds_counts_through_its_fallback_listing_too():
    """/proc/self/fd on Linux; where there is none (macOS), /dev/fd. Each listing sees the same count
    and the same change, and with neither there is no count (the connection cap alone applies)."""
    if not os.path.isdir("/dev/fd"):
        pytest.skip("no /dev/fd on this machine")
    fallback = ("/nonexistent-proc/self/fd", "/dev/fd")
    before = probes.open_fds(fallback)
    assert before is not None and before > 3
    pipes = [os.pipe() for _ in range(20)]
    try:
        during = probes.open_fds(fallback)
        first = probes.open_fds()
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert during is not None and first is not None
    assert abs(during - before - 40) <= 2, (before, during)  # another thread may open or close one meanwhile
    assert abs(first - during) <= 2
    assert probes.open_fds(("/nonexistent-proc/self/fd",)) is None
