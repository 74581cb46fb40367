"""The six scenarios, each run the same way against any system (ipcpool, the bare loop, the peers).

A system is started on a fresh work folder; its consumer (or handler) appends
one record per message; a producer runs in its own process; completion is
the records plus the ack files reaching the count, or the time budget running
out (then the figure covers what was done, and the row says "partial").
Every process started here is stopped by :class:`Measurement` whatever
happens; the work folders are removed together when the suite ends.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench_common import (
    BenchError,
    Proc,
    child_env,
    count_files,
    count_lost,
    count_records,
    group_names,
    percentile,
    read_records,
    target_group,
)


class System(Protocol):
    name: str
    peer: bool

    def skip_reason(self) -> str | None: ...
    def prepare(self, work: Path, groups: list[str]) -> None: ...
    def start(self, work: Path, groups: list[str], records: Path, *, workers: int,
              wait_ready: bool = True) -> Proc: ...
    def producer_argv(self, *args: str) -> list[str]: ...
    def ack_dir(self, work: Path, group: str) -> Path: ...
    def processes(self, proc: Proc) -> dict[str, list[int]]: ...


@dataclass(frozen=True)
class Sizes:
    throughput: int = 20_000
    latency_rate: float = 500.0
    latency_seconds: float = 10.0
    roundtrips: int = 1_000
    drain: int = 100_000
    idle_seconds: float = 10.0
    idle_settle: float = 2.0
    groups: int = 1_000
    budget: float = 120.0  # seconds a peer's measurement may take before it is cut short (then: partial)
    own_budget: float = 600.0  # the same for ipcpool and the bare loop, whose figures the targets use
    workers: int = 2
    idle_workers: int = 4
    rounds: int = 3  # throughput passes, the systems' order rotated each time; each row is the median


ACK_TIMEOUT = 2.0  # seconds a round-trip sender waits for one ack before counting it as never acked
FULL = Sizes()
QUICK = Sizes(throughput=2_000, latency_seconds=2.0, roundtrips=200, drain=5_000, idle_seconds=3.0, idle_settle=0.5,
              groups=100, budget=6.0, own_budget=60.0, rounds=1)


@dataclass
class Row:
    scenario: str
    system: str
    status: str  # ok, partial, skipped, error
    metrics: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


class Measurement:
    """One work folder and the processes started on it; ``close`` stops them all and removes it."""

    def __init__(self, base: Path, label: str, keep: bool) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=base))
        self.records = self.work / "records"
        self.records.mkdir()
        self.keep = keep
        self.procs: list[Proc] = []
        self._n = 0

    def __enter__(self) -> Measurement:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        # The folder stays until the suite ends (bench.py removes the base): deleting
        # tens of thousands of files here would slow the next system's file creation
        # (ext4 without a journal skips recently deleted inodes for a minute or more).

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def producer(self, system: System, role: str, group: str, count: int, *, rate: float = 0.0,
                 timeout: float = 30.0) -> tuple[Proc, Path]:
        self._n += 1
        out = self.work / f"producer-{self._n}.json"
        argv = system.producer_argv(role, "--work", str(self.work), "--group", group, "--count", str(count),
                                    "--rate", str(rate), "--timeout", str(timeout), "--out", str(out))
        proc = self.add(Proc(argv, self.work / f"producer-{self._n}.log", env=child_env(), cwd=self.work))
        return proc, out


def _summary(proc: Proc, out: Path, timeout: float, what: str, consumer: Proc | None = None) -> dict[str, Any]:
    """Wait for a producer (checking the consumer stays up) and read its JSON summary."""
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        if consumer is not None:
            consumer.check_alive("consumer")
        time.sleep(0.02)
    proc.wait(max(0.0, deadline - time.monotonic()), what)
    return json.loads(out.read_text())


@dataclass
class Done:
    acked: int
    lost: int
    t_end: float
    partial: bool


def wait_done(m: Measurement, system: System, consumer: Proc, group: str, count: int, timeout: float,
              producer: Proc | None = None) -> Done:
    """Poll the record files' size, then the ack folder, until every message is acked (or lost)."""
    ack_dir = system.ack_dir(m.work, group)
    deadline = time.monotonic() + timeout
    while True:
        lost = count_lost(m.records)
        if count_records(m.records) + lost >= count and count_files(ack_dir) + lost >= count:
            return Done(count - lost, lost, time.time(), False)
        consumer.check_alive(f"{system.name} consumer")
        if producer is not None and not producer.alive() and producer.popen.returncode != 0:
            raise BenchError(f"producer failed (code {producer.popen.returncode}):\n{producer.log_tail()}")
        if time.monotonic() > deadline:
            return Done(min(count_files(ack_dir), count_records(m.records)), lost, time.time(), True)
        time.sleep(0.01)


def _budget(system: System, sizes: Sizes) -> float:
    return sizes.budget if system.peer else sizes.own_budget


def _lost(n: int) -> str:
    return f"; {n:,} LOST" if n else ""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _n(value: float) -> str:
    return f"{value:,.0f}"


# -- (1) flat-out throughput -----------------------------------------------------------------------


def throughput(system: System, sizes: Sizes, base: Path, keep: bool) -> Row:
    count = sizes.throughput
    with Measurement(base, "throughput", keep) as m:
        system.prepare(m.work, ["main"])
        consumer = m.add(system.start(m.work, ["main"], m.records, workers=sizes.workers))
        roles = system.processes(consumer)
        consumer_cpu = CpuMeter([pid for pids in roles.values() for pid in pids])
        supervisor_cpu = CpuMeter(roles["supervisor"]) if roles.get("supervisor") else None
        producer, out = m.producer(system, "produce", "main", count)
        done = wait_done(m, system, consumer, "main", count, _budget(system, sizes), producer)
        consumer_s = consumer_cpu.seconds()
        supervisor_s = supervisor_cpu.seconds() if supervisor_cpu else None
        summary = _summary(producer, out, 120.0, "producer")
    producer_s = summary["cpu_s"]
    elapsed = done.t_end - summary["t_first"]
    rate = done.acked / elapsed if elapsed > 0 else 0.0
    sent_in = max(summary["t_last"] - summary["t_first"], 1e-9)
    per_msg = {"consumer": round(consumer_s / count * 1e6, 1), "producer": round(producer_s / count * 1e6, 1)}
    if supervisor_s is not None:  # the supervisor alone: what caps one pool however many cores it has
        per_msg["supervisor"] = round(supervisor_s / count * 1e6, 1)
    metrics = {"rate": round(rate, 1), "acked": done.acked, "lost": done.lost, "count": count,
               "seconds": round(elapsed, 3), "producer_rate": round(count / sent_in, 1), "partial": done.partial,
               "cpu_us_per_msg": per_msg, "cpu_complete": consumer_cpu.complete}
    text = (f"{_n(rate)} msg/s ({_n(done.acked)} of {_n(count)} in {elapsed:.2f} s; "
            f"producer {_n(count / sent_in)}/s{_lost(done.lost)}; CPU per message: "
            f"{per_msg['consumer']:.0f} µs consuming{'' if consumer_cpu.complete else ' (a process was gone)'}"
            f" + {per_msg['producer']:.0f} µs producing{_ceiling(per_msg)})")
    return Row("throughput", system.name, "partial" if done.partial else "ok", metrics, text)


def _ceiling(per_msg: dict[str, float]) -> str:
    sup = per_msg.get("supervisor")
    if not sup:
        return ""
    return f"; the supervisor alone {sup:.1f} µs: a ceiling of {1e6 / sup:,.0f} msg/s on one core"


class CpuMeter:
    """User + system CPU a set of running processes used since it was made (the consumer side).

    ``complete`` turns False when one of them was gone before the end (its CPU
    is then missing from the figure) or could not be read at the start.
    """

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self._procs: dict[int, Any] = {}
        for pid in pids:
            try:
                self._procs[pid] = psutil.Process(pid)
            except psutil.Error:
                pass
        self.complete = bool(pids) and len(self._procs) == len(pids)
        self._start = {pid: self._read(pid) for pid in self._procs}

    def _read(self, pid: int) -> float | None:
        try:
            times = self._procs[pid].cpu_times()
        except Exception:  # noqa: BLE001 - gone
            return None
        return float(times.user + times.system)

    def seconds(self) -> float:
        total = 0.0
        for pid, start in self._start.items():
            now = self._read(pid)
            if now is None or start is None:
                self.complete = False
                continue
            total += max(0.0, now - start)
        return total



# -- (2) latency at a fixed offered load, and (6) the same with many groups ------------------------


def latency(system: System, sizes: Sizes, base: Path, keep: bool, *, groups: int = 1) -> Row:
    names = group_names(groups)
    group = target_group(groups)
    count = max(1, round(sizes.latency_rate * sizes.latency_seconds))
    with Measurement(base, f"latency-{groups}", keep) as m:
        system.prepare(m.work, names)
        consumer = m.add(system.start(m.work, names, m.records, workers=sizes.workers))
        producer, out = m.producer(system, "produce", group, count, rate=sizes.latency_rate)
        done = wait_done(m, system, consumer, group, count, sizes.latency_seconds + _budget(system, sizes),
                         producer)
        summary = _summary(producer, out, 60.0, "producer")
        records = read_records(m.records)
    lat = [start - sent for sent, start in records.values()]
    offered = (count - 1) / max(summary["t_last"] - summary["t_first"], 1e-9) if count > 1 else 0.0
    p50, p99, worst = percentile(lat, 50), percentile(lat, 99), max(lat, default=float("nan"))
    metrics = {"p50_ms": _ms(p50), "p99_ms": _ms(p99), "max_ms": _ms(worst), "handled": len(records),
               "lost": done.lost, "count": count, "offered_rate": round(offered, 1), "groups": groups,
               "partial": done.partial}
    where = f"{_n(groups)} groups; " if groups > 1 else ""
    text = (f"p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms  max {worst * 1e3:.1f} ms "
            f"({where}{_n(len(records))} of {_n(count)} at {offered:.0f}/s{_lost(done.lost)})")
    scenario = "groups" if groups > 1 else "latency"
    return Row(scenario, system.name, "partial" if done.partial else "ok", metrics, text)


# -- (3) ack round trip ----------------------------------------------------------------------------


def ack_rtt(system: System, sizes: Sizes, base: Path, keep: bool) -> Row:
    count = sizes.roundtrips
    with Measurement(base, "ackrtt", keep) as m:
        system.prepare(m.work, ["main"])
        consumer = m.add(system.start(m.work, ["main"], m.records, workers=sizes.workers))
        producer, out = m.producer(system, "roundtrip", "main", count, timeout=ACK_TIMEOUT)
        summary = _summary(producer, out, _budget(system, sizes) + 30.0, "round-trip producer", consumer)
    rtts, lost = summary["rtts"], summary["lost"]
    p50, p99, worst = percentile(rtts, 50), percentile(rtts, 99), max(rtts, default=float("nan"))
    metrics = {"p50_ms": _ms(p50), "p99_ms": _ms(p99), "max_ms": _ms(worst), "count": count, "lost": lost}
    missing = f"; {lost} got no ack in {ACK_TIMEOUT:g} s" if lost else ""
    text = (f"p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms  max {worst * 1e3:.1f} ms "
            f"({_n(count)} sequential{missing})")
    return Row("ack_rtt", system.name, "ok", metrics, text)


# -- (4) start-up drain ----------------------------------------------------------------------------


def drain(system: System, sizes: Sizes, base: Path, keep: bool) -> Row:
    count = sizes.drain
    with Measurement(base, "drain", keep) as m:
        system.prepare(m.work, ["main"])
        producer, out = m.producer(system, "produce", "main", count)
        _summary(producer, out, max(300.0, count / 200.0), "prefill producer")
        t0 = time.time()
        consumer = m.add(system.start(m.work, ["main"], m.records, workers=sizes.workers, wait_ready=False))
        done = wait_done(m, system, consumer, "main", count, _budget(system, sizes))
        starts = [start for _sent, start in read_records(m.records).values()]
    elapsed = done.t_end - t0
    rate = done.acked / elapsed if elapsed > 0 else 0.0
    first = (min(starts) - t0) if starts else float("nan")
    after = done.acked / (done.t_end - min(starts)) if starts and done.t_end > min(starts) else float("nan")
    metrics = {"rate": round(rate, 1), "rate_after_first": round(after, 1), "first_handled_s": round(first, 3),
               "acked": done.acked, "lost": done.lost, "count": count, "seconds": round(elapsed, 3),
               "partial": done.partial}
    text = (f"{_n(rate)} msg/s ({_n(done.acked)} of {_n(count)} in {elapsed:.2f} s from start; "
            f"first handled at +{first:.2f} s, {_n(after)}/s after{_lost(done.lost)})")
    return Row("drain", system.name, "partial" if done.partial else "ok", metrics, text)


# -- (5) idle cost ---------------------------------------------------------------------------------


def idle(system: System, sizes: Sizes, base: Path, keep: bool) -> Row:
    import psutil

    with Measurement(base, "idle", keep) as m:
        system.prepare(m.work, ["main"])
        consumer = m.add(system.start(m.work, ["main"], m.records, workers=sizes.idle_workers))
        roles = system.processes(consumer)
        time.sleep(sizes.idle_settle)
        procs = {pid: psutil.Process(pid) for pids in roles.values() for pid in pids}
        before = {pid: sum(p.cpu_times()[:2]) for pid, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(sizes.idle_seconds)
        elapsed = time.monotonic() - t0
        cpu: dict[int, float] = {}
        rss: dict[int, float] = {}
        for pid, proc in procs.items():
            try:
                cpu[pid] = sum(proc.cpu_times()[:2]) - before[pid]
                rss[pid] = proc.memory_info().rss / 2**20
            except psutil.Error as exc:
                raise BenchError(f"process {pid} vanished while idle: {exc}") from exc
        appeared = [p.pid for p in consumer.descendants() if p.pid not in procs]
    total = 100.0 * sum(cpu.values()) / elapsed
    by_role = {role: [{"pid": pid, "cpu_pct": round(100.0 * cpu[pid] / elapsed, 3), "rss_mb": round(rss[pid], 1)}
                      for pid in pids] for role, pids in roles.items()}
    metrics = {"cpu_pct": round(total, 3), "seconds": round(elapsed, 2), "processes": by_role,
               "appeared_during_window": appeared}
    parts = [f"{role} " + "/".join(f"{entry['rss_mb']:.0f}" for entry in entries) + " MB"
             for role, entries in by_role.items() if entries]
    text = f"CPU {total:.2f}% of a core over {elapsed:.0f} s; RSS {', '.join(parts)}"
    if appeared:
        text += f" (+{len(appeared)} new processes)"
    status = "ok" if all(roles.values()) else "partial"
    return Row("idle", system.name, status, metrics, text)


SCENARIOS = ("throughput", "latency", "ack_rtt", "drain", "idle", "groups")
