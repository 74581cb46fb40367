"""ipcpool on Redis Streams against Celery, rq and dramatiq, on one Redis, in one command.

    pip install -e '.[redis,bench]'
    python scripts/bench.py --backend redis            # the full run (several minutes)
    python scripts/bench.py --backend redis --quick    # small sizes, for development
    python scripts/bench.py --backend redis --tmpdir /dev/shm   # the AOF on tmpfs (default: the temp dir)
    python scripts/bench_redis.py --systems ipcpool-1,celery --only throughput

Every system runs the same no-op handler (it appends one fixed-width record:
the message's index, the sender's timestamp, the handler's start) on messages
``{"i": index, "t": sent}`` in queue/group ``main``, against one private
``redis-server`` (AOF on, ``appendfsync everysec``, no RDB) started here on a
free loopback port and flushed before each measurement. Scenarios:

- **throughput**: N messages queued first (the sender's rate is reported),
  then the consumers start; the figure is the steady state, from 10% to 90%
  handled: messages per second, and CPU per message of the consumer
  processes and of redis-server.
- **latency**: consumers ready, a sender paced at 500/s for 10 s; handler
  start minus the sender's timestamp.
- **ack_rtt**: one sender, one message at a time, waiting for its ack
  (ipcpool) or its result (the peers): send to answer, in the sender.

Systems: ``ipcpool-1``/``-2``/``-3`` (that many supervisors, separate local
roots, 2 workers each), ``celery`` (prefork, 2 processes), ``rq`` (worker pool
of 2, a forked work horse per job), ``rq-simple`` (SimpleWorker), ``dramatiq``
(2 processes). Each peer runs with its own defaults otherwise; what each
acknowledges when is in their modules' docstrings (scripts/peer_*.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import (
    RECORD_FMT,
    SCRIPTS,
    BenchError,
    Proc,
    child_env,
    count_records,
    filesystem_of,
    machine_info,
    percentile,
    read_records,
    run_producer,
    run_roundtrip,
    wait_until,
    write_summary,
)
from bench_ipcpool import HANDLER_MODULE, HANDLER_SOURCE, STARTED
from bench_scenarios import Measurement as SpoolMeasurement
from redis_server_proc import RedisServerProc

PEERS = ("celery", "rq", "rq-simple", "dramatiq")
SYSTEMS = ("ipcpool-1", "ipcpool-2", "ipcpool-3", *PEERS)
SCENARIOS = ("throughput", "latency", "ack_rtt")
TARGETS = "throughput >= 3x the fastest peer; latency p50 <= 2 ms, p99 <= 10 ms at 500/s; ack round trip p50 <= 3 ms"


@dataclass(frozen=True)
class Sizes:
    throughput: int = 30_000
    rate: float = 500.0
    seconds: float = 10.0
    roundtrips: int = 1_000
    budget: float = 180.0
    rounds: int = 3


FULL = Sizes()
QUICK = Sizes(throughput=3_000, seconds=2.0, roundtrips=200, budget=30.0, rounds=1)


@dataclass
class Row:
    scenario: str
    system: str
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    text: str = ""


# -- the systems ------------------------------------------------------------------------------------


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class System:
    """How to start one system's consumers on a work folder, and when they are ready."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.supervisors = int(name.split("-")[1]) if name.startswith("ipcpool-") else 0

    def skip_reason(self) -> str | None:
        needs = {"celery": "celery", "rq": "rq", "rq-simple": "rq", "dramatiq": "dramatiq"}.get(self.name, "redis")
        if not _module_available(needs):
            return f"{needs} is not installed (pip install -e '.[redis,bench]')"
        return None

    def env(self, work: Path, url: str) -> dict[str, str]:
        env = child_env(BENCH_RECORDS=str(work / "records"), BENCH_READY=str(work / "ready"), BENCH_REDIS_URL=url,
                        LOG_LEVEL="warning")
        env["PYTHONPATH"] = f"{work / 'handlers'}:{env['PYTHONPATH']}"
        return env

    def start(self, work: Path, url: str) -> list[Proc]:
        (work / "ready").mkdir(exist_ok=True)
        env = self.env(work, url)
        if self.supervisors:
            handlers = work / "handlers"
            handlers.mkdir(exist_ok=True)
            (handlers / f"{HANDLER_MODULE}.py").write_text(HANDLER_SOURCE.replace("@FMT@", repr(RECORD_FMT)))
            env["LOG_LEVEL"] = "info"  # the start-up line; [log] messages = false keeps the per-message one off
            return [Proc([sys.executable, "-m", "ipcpool", "run", "--config", str(ipcpool_config(work, k, url))],
                         work / f"supervisor-{k}.log", env=env, cwd=work) for k in range(self.supervisors)]
        py = sys.executable
        argv = {
            "celery": [py, "-m", "celery", "-A", "peer_celery", "worker", "-P", "prefork", "-c", "2", "-Q", "main",
                       "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
            "rq": [py, "-m", "rq.cli", "worker-pool", "-n", "2", "-u", url, "--logging-level", "WARNING", "main"],
            "rq-simple": [py, "-m", "rq.cli", "worker-pool", "-n", "2", "-u", url, "-w", "rq.worker.SimpleWorker",
                          "--logging-level", "WARNING", "main"],
            "dramatiq": [py, "-m", "dramatiq", "peer_dramatiq", "--processes", "2"],
        }[self.name]
        return [Proc(argv, work / f"{self.name}.log", env=env, cwd=SCRIPTS)]

    def ready(self, procs: list[Proc], work: Path, url: str) -> bool:
        for proc in procs:
            proc.check_alive(f"{self.name} consumer")
        if self.supervisors:
            return all(STARTED in proc.log_text() for proc in procs)
        if self.name == "celery":
            return any((work / "ready").iterdir())
        if self.name.startswith("rq"):
            from redis import Redis
            from rq import Worker

            with Redis.from_url(url) as client:
                return Worker.count(connection=client) >= 2
        return procs[0].log_text().count("is ready for action") >= 2  # dramatiq: one line per process

    def producer_argv(self, role: str, work: Path, url: str, count: int, rate: float, out: Path) -> list[str]:
        return [sys.executable, str(SCRIPTS / "bench_redis.py"), role, "--system", self.name, "--work", str(work),
                "--url", url, "--count", str(count), "--rate", str(rate), "--out", str(out)]


def ipcpool_config(work: Path, k: int, url: str) -> Path:
    """Supervisor k's config: its own local root (a host of its own), one Redis, one prefix."""
    host = work / f"host{k}"
    host.mkdir(exist_ok=True)
    path = host / "bench.toml"
    workers = int(os.environ.get("BENCH_IPCPOOL_WORKERS", "2"))
    path.write_text(f"""[transport]
backend = "redis"

[redis]
url = {json.dumps(url)}
prefix = "bench"

[spool]
root = {json.dumps(str(host / "ipc"))}
groups = ["main"]

[pool]
workers = {workers}
shutdown_grace = 5.0
kill_grace = 1.0

[heartbeat]
interval = 2.0

[log]
messages = false

[handlers]
task = "{HANDLER_MODULE}:handle"
"*" = "{HANDLER_MODULE}:handle"
""")
    return path


# -- one measurement --------------------------------------------------------------------------------


class Measurement(SpoolMeasurement):
    """scripts/bench.py's work folder and process list, with the Redis systems' start and senders."""

    def __init__(self, base: Path, label: str) -> None:
        super().__init__(base, label, keep=False)

    def start(self, system: System, url: str) -> list[Proc]:
        procs = system.start(self.work, url)
        self.procs.extend(procs)
        return procs

    def produce(self, system: System, role: str, url: str, count: int, rate: float = 0.0,
                timeout: float = 300.0) -> dict[str, Any]:
        self._n += 1
        out = self.work / f"producer-{self._n}.json"
        proc = Proc(system.producer_argv(role, self.work, url, count, rate, out), self.work / f"producer-{self._n}.log",
                    env=system.env(self.work, url), cwd=SCRIPTS)
        self.procs.append(proc)
        proc.wait(timeout, f"{system.name} {role}")
        return json.loads(out.read_text())


def consumer_pids(procs: list[Proc]) -> list[int]:
    return [pid for proc in procs for pid in (proc.pid, *(child.pid for child in proc.descendants()))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and of the children they have reaped (rq's work horses)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def throughput(system: System, redis: RedisServerProc, sizes: Sizes, base: Path) -> Row:
    count = sizes.throughput
    redis.flush()
    with Measurement(base, f"throughput-{system.name}") as m:
        sent = m.produce(system, "produce", redis.url, count)
        t0 = time.monotonic()
        procs = m.start(system, redis.url)
        deadline = t0 + sizes.budget
        goals = [count // 10, count * 9 // 10]
        marks: list[tuple[int, float, float, float]] = []  # (handled, monotonic, consumer CPU, redis CPU)
        pids: list[int] = []
        handled = 0
        while len(marks) < 2:
            handled = count_records(m.records)
            out_of_time = time.monotonic() > deadline
            if handled >= goals[len(marks)] or (out_of_time and marks):
                pids = pids or consumer_pids(procs)
                marks.append((handled, time.monotonic(), cpu_seconds(pids), cpu_seconds([redis.pid])))
                continue
            if out_of_time:
                raise BenchError(f"{handled:,} of {count:,} handled in {sizes.budget:g} s")
            for proc in procs:
                proc.check_alive(f"{system.name} consumer")
            time.sleep(0.005)
        partial = marks[1][0] < goals[1]
        if not partial:
            wait_until(lambda: count_records(m.records) >= count, max(1.0, deadline - time.monotonic()),
                       f"all {count:,} handled")
        total = time.monotonic() - t0
    (n1, t1, c1, r1), (n2, t2, c2, r2) = marks
    handled = max(1, n2 - n1)
    rate = handled / (t2 - t1)
    consumer_us, redis_us = (c2 - c1) / handled * 1e6, (r2 - r1) / handled * 1e6
    send_rate = sent["sent"] / max(sent["t_last"] - sent["t_first"], 1e-9)
    metrics = {"rate": round(rate, 1), "count": count, "seconds_to_all": round(total, 2),
               "consumer_cpu_us": round(consumer_us, 1), "redis_cpu_us": round(redis_us, 1),
               "send_rate": round(send_rate, 1), "processes": len(pids), "partial": partial}
    window = (f"{n2:,} of {count:,} handled in {sizes.budget:g} s, the rate from 10%" if partial else
              f"10%-90% of {count:,}; all in {total:.2f} s from start")
    text = (f"{rate:,.0f} msg/s ({window}); CPU per message: {consumer_us:.0f} µs consumers + {redis_us:.0f} µs "
            f"redis-server; sender {send_rate:,.0f}/s")
    return Row("throughput", system.name, "partial" if partial else "ok", metrics, text)


def _ready(m: Measurement, system: System, redis: RedisServerProc) -> list[Proc]:
    procs = m.start(system, redis.url)
    wait_until(lambda: system.ready(procs, m.work, redis.url), 120.0, f"{system.name} ready", interval=0.05)
    return procs


def latency(system: System, redis: RedisServerProc, sizes: Sizes, base: Path) -> Row:
    count = round(sizes.rate * sizes.seconds)
    redis.flush()
    with Measurement(base, f"latency-{system.name}") as m:
        _ready(m, system, redis)
        sent = m.produce(system, "produce", redis.url, count, sizes.rate, timeout=sizes.seconds + 120)
        wait_until(lambda: count_records(m.records) >= count, sizes.budget, f"all {count:,} handled")
        found = read_records(m.records)
    lat = [start - t_sent for t_sent, start in found.values()]
    offered = (count - 1) / max(sent["t_last"] - sent["t_first"], 1e-9)
    p50, p99, worst = percentile(lat, 50), percentile(lat, 99), max(lat)
    metrics = {"p50_ms": round(p50 * 1e3, 3), "p99_ms": round(p99 * 1e3, 3), "max_ms": round(worst * 1e3, 3),
               "count": count, "offered_rate": round(offered, 1)}
    text = f"p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms  max {worst * 1e3:.1f} ms ({count:,} at {offered:.0f}/s)"
    return Row("latency", system.name, "ok", metrics, text)


def ack_rtt(system: System, redis: RedisServerProc, sizes: Sizes, base: Path) -> Row:
    redis.flush()
    with Measurement(base, f"ackrtt-{system.name}") as m:
        _ready(m, system, redis)
        summary = m.produce(system, "roundtrip", redis.url, sizes.roundtrips, timeout=sizes.budget + 60)
    rtts, lost = summary["rtts"], summary["lost"]
    p50, p99, worst = percentile(rtts, 50), percentile(rtts, 99), max(rtts, default=float("nan"))
    metrics = {"p50_ms": round(p50 * 1e3, 3), "p99_ms": round(p99 * 1e3, 3), "max_ms": round(worst * 1e3, 3),
               "count": sizes.roundtrips, "lost": lost}
    missing = f"; {lost} never answered" if lost else ""
    text = (f"p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms  max {worst * 1e3:.1f} ms "
            f"({sizes.roundtrips:,} sequential{missing})")
    return Row("ack_rtt", system.name, "ok", metrics, text)


RUNNERS: dict[str, Callable[[System, RedisServerProc, Sizes, Path], Row]] = {
    "throughput": throughput, "latency": latency, "ack_rtt": ack_rtt}


# -- the senders (run as their own processes) --------------------------------------------------------


def senders(system: str, work: Path, url: str) -> tuple[Any, Any, tuple[type[Exception], ...], Callable[[], None]]:
    """(send, send and wait, the timeout errors, close) for one system, in this process."""
    if system.startswith("ipcpool"):
        from ipcpool import AckTimeout, Client

        client = Client.from_config(ipcpool_config(work, 0, url))

        def send(index: int, t_sent: float) -> None:
            client.send("main", "task", {"i": index, "t": t_sent}, requires_ack=True)

        def send_wait(index: int, t_sent: float, timeout: float) -> None:
            client.send("main", "task", {"i": index, "t": t_sent}, wait=True, timeout=timeout)

        return send, send_wait, (AckTimeout,), client.close
    module = {"celery": "peer_celery", "rq": "peer_rq", "rq-simple": "peer_rq", "dramatiq": "peer_dramatiq"}[system]
    send, send_wait, errors = __import__(module).senders(url)
    return send, send_wait, errors, lambda: None


def sender_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_redis.py produce|roundtrip")
    parser.add_argument("role", choices=("produce", "roundtrip"))
    parser.add_argument("--system", required=True, choices=SYSTEMS)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="roundtrip: seconds to wait for each answer")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    send, send_wait, errors, close = senders(args.system, args.work, args.url)
    try:
        if args.role == "produce":
            summary = run_producer(send, args.count, args.rate)
        else:
            summary = run_roundtrip(lambda i, t: send_wait(i, t, args.timeout), args.count, errors)
    finally:
        close()
    write_summary(args.out, summary)
    return 0


# -- the report ---------------------------------------------------------------------------------------


def judge(rows: list[Row]) -> list[str]:
    """The issue's targets, each against figures from this run."""
    lines: list[str] = []
    rates = {r.system: r.metrics["rate"] for r in rows if r.scenario == "throughput" and r.status in ("ok", "partial")}
    peers = {name: rate for name, rate in rates.items() if name in PEERS}
    if peers:
        fastest = max(peers, key=peers.__getitem__)
        for name in (n for n in rates if n.startswith("ipcpool")):
            ratio = rates[name] / peers[fastest]
            lines.append(f"throughput {name}: {ratio:.2f}x {fastest} (target 3x): {'met' if ratio >= 3 else 'NOT met'}")
    for row in rows:
        if row.system.startswith("ipcpool") and row.status == "ok":
            if row.scenario == "latency":
                ok = row.metrics["p50_ms"] <= 2 and row.metrics["p99_ms"] <= 10
                lines.append(f"latency {row.system}: p50 {row.metrics['p50_ms']:.2f} ms, p99 "
                             f"{row.metrics['p99_ms']:.2f} ms (targets 2 / 10): {'met' if ok else 'NOT met'}")
            if row.scenario == "ack_rtt":
                ok = row.metrics["p50_ms"] <= 3 and not row.metrics["lost"]
                lines.append(f"ack round trip {row.system}: p50 {row.metrics['p50_ms']:.2f} ms (target 3): "
                             f"{'met' if ok else 'NOT met'}")
    return lines


def report(rows: list[Row], machine: dict[str, Any], redis_version: str, fs: str) -> str:
    out = [f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, Python {machine['python']}, "
           f"{machine['kernel']}; redis-server {redis_version} (AOF everysec on {fs}, loopback TCP)", "",
           "| scenario | system | result |", "|---|---|---|"]
    out += [f"| {r.scenario} | {r.system} | {r.text} |" for r in rows]
    verdicts = judge(rows)
    if verdicts:
        out += ["", *verdicts]
    return "\n".join(out)


def median_row(rows: list[Row]) -> Row:
    ok = sorted((r for r in rows if r.status in ("ok", "partial")), key=lambda r: r.metrics["rate"])
    if not ok:
        return rows[0]
    middle = ok[len(ok) // 2]
    rates = ", ".join(f"{r.metrics['rate']:,.0f}" for r in ok)
    return Row(middle.scenario, middle.system, middle.status, dict(middle.metrics, rounds=rates),
               f"{middle.text} [median of {len(ok)}: {rates}]" if len(ok) > 1 else middle.text)


def run(system: System, scenario: str, redis: RedisServerProc, sizes: Sizes, base: Path) -> Row:
    reason = system.skip_reason()
    if reason:
        row = Row(scenario, system.name, "skipped", text=f"skipped: {reason}")
    else:
        try:
            row = RUNNERS[scenario](system, redis, sizes, base)
        except BenchError as exc:
            row = Row(scenario, system.name, "error", text=f"error: {str(exc).splitlines()[0]}")
    print(f"  {scenario:<10} {system.name:<10} {row.text}", file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("produce", "roundtrip"):
        return sender_main(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated: {','.join(SYSTEMS)}")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated: {','.join(SCENARIOS)}")
    parser.add_argument("--rounds", type=int, help="throughput passes, the systems' order rotated (default 3)")
    parser.add_argument("--out", type=Path, default=Path("bench-results-redis.json"), help="JSON results file")
    parser.add_argument("--tmpdir", type=Path, help="where redis-server's AOF and the work folders go (default: "
                        "the system temp dir). The filesystem matters: on a disk, the AOF's writes and fsyncs "
                        "cost Redis CPU and vary from pass to pass; it is printed")
    args = parser.parse_args(argv)
    systems = [System(name) for name in _pick(args.systems, SYSTEMS)]
    scenarios = _pick(args.only, SCENARIOS)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    machine = machine_info()
    print(f"CPU: {machine['cpu_model']} ({machine['cpu_count']} CPUs)", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(tempfile.mkdtemp(prefix="ipcpool-bench-redis-", dir=args.tmpdir))
    fs = filesystem_of(base)
    rows: list[Row] = []
    redis = RedisServerProc(base / "redis").start()
    try:
        version = redis.version()
        for scenario in scenarios:
            print(f"{scenario} ...", file=sys.stderr, flush=True)
            rounds = sizes.rounds if scenario == "throughput" else 1
            done: dict[str, list[Row]] = {s.name: [] for s in systems}
            for k in range(rounds):
                for system in systems[k % len(systems):] + systems[:k % len(systems)]:
                    done[system.name].append(run(system, scenario, redis, sizes, base))
            rows += [median_row(done[s.name]) if scenario == "throughput" else done[s.name][0] for s in systems]
    finally:
        redis.stop()
        Proc.stop_all()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    text = report(rows, machine, version, fs)
    print(text)
    args.out.write_text(json.dumps({"machine": machine, "redis": version, "sizes": sizes.__dict__,
                                    "fs": fs,
                                    "rows": [r.__dict__ for r in rows]}, indent=2))
    return 0


def _pick(text: str, allowed: tuple[str, ...]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return names


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(SCRIPTS))
    sys.exit(main())
