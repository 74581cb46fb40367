"""ipcpool's benchmark suite: one command, six scenarios, every figure next to its baselines.

    pip install -e '.[bench]'        # kombu and dirq, the peers (rows are skipped without them)
    python scripts/bench.py          # the full suite (several minutes)
    python scripts/bench.py --backend redis   # on Redis Streams, against Celery, rq and dramatiq
    python scripts/bench.py --quick  # small sizes, for development
    python scripts/bench.py --only latency,groups --systems ipcpool,bare --out my.json

Scenarios: (1) flat-out throughput with acks, (2) latency at a fixed 500/s,
(3) sequential ack round trips, (4) start-up drain of a pre-filled queue,
(5) idle cost (CPU and RSS of the supervisor and 4 idle workers), (6) the
latency of (2) with 1,000 groups watched. Each runs against ipcpool, the
bare loop (scripts/bare_loop.py), kombu's filesystem transport and dirq
(scripts/bench_peers.py). Prints a table (with the machine) and writes the
same as JSON (``--out``, default bench-results.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bare_loop import BareSystem
from bench_common import BenchError, Proc, filesystem_of, machine_info
from bench_ipcpool import IpcpoolSystem, log_line_cost_us
from bench_peers import PeerSystem
from bench_report import evaluate, table, write_json
from bench_scenarios import FULL, QUICK, SCENARIOS, Row, Sizes, System, ack_rtt, drain, idle, latency, throughput

ALIASES = {"ack": "ack_rtt", "rtt": "ack_rtt", "groups1000": "groups", "1": "throughput", "2": "latency",
           "3": "ack_rtt", "4": "drain", "5": "idle", "6": "groups"}
SYSTEM_KEYS = ("ipcpool", "bare", "kombu", "dirq")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole suite in about a minute")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--systems", default=",".join(SYSTEM_KEYS), help="comma-separated: ipcpool,bare,kombu,dirq")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON results file")
    parser.add_argument("--workers", type=int, help="ipcpool [pool] workers (default 2)")
    parser.add_argument("--budget", type=float, help="seconds one measurement may run before it is cut short "
                                                     "(default 120, 15 with --quick)")
    parser.add_argument("--peer-poll", type=float, default=0.01, help="kombu/dirq polling interval (s)")
    parser.add_argument("--tmpdir", type=Path, help="where the work folders go (default: the system temp dir; "
                                                    "the filesystem matters, and is printed)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs, spools)")
    parser.add_argument("--rounds", type=int, help="throughput passes per system, order rotated; the median is "
                                                   "reported (default 3, 1 with --quick)")
    return parser.parse_args(argv)


def pick(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = []
    for raw in (t.strip() for t in text.split(",")):
        if not raw:
            continue
        name = ALIASES.get(raw, raw)
        if name not in allowed:
            raise SystemExit(f"bench.py: unknown {what} {raw!r}; choose from {', '.join(allowed)}")
        if name not in chosen:
            chosen.append(name)
    return sorted(chosen, key=allowed.index) or list(allowed)


def make_systems(keys: list[str], poll: float) -> list[System]:
    made: dict[str, System] = {"ipcpool": IpcpoolSystem(), "bare": BareSystem(),
                               "kombu": PeerSystem("kombu", poll), "dirq": PeerSystem("dirq", poll)}
    return [made[k] for k in SYSTEM_KEYS if k in keys]


def run_row(scenario: str, system: System, run: Callable[[], Row]) -> Row:
    reason = system.skip_reason()
    if reason:
        return Row(scenario, system.name, "skipped", text=reason)
    started = time.monotonic()
    try:
        row = run()
    except BenchError as exc:
        row = Row(scenario, system.name, "error", text=f"error: {str(exc).splitlines()[0]}",
                  metrics={"error": str(exc)})
    except Exception as exc:  # noqa: BLE001 - one broken row must not stop the suite
        row = Row(scenario, system.name, "error", text=f"error: {type(exc).__name__}: {exc}",
                  metrics={"error": traceback.format_exc()})
    row.metrics.setdefault("wall_s", round(time.monotonic() - started, 2))
    print(f"  {scenario:<10} {system.name:<18} {row.text}", file=sys.stderr, flush=True)
    if row.status == "error":
        print("    " + str(row.metrics["error"]).replace("\n", "\n    "), file=sys.stderr, flush=True)
    return row


def run_rounds(scenario: str, systems: list[System], rounds: int, run: Callable[[System], Row]) -> list[Row]:
    """``rounds`` passes over the systems, the order rotated each pass; one row each, the median pass.

    On this kind of machine a measurement is slowed by whatever deleted many
    files in the minute before it (ext4 without a journal), so whichever
    system runs first or after a heavy one is disadvantaged: rotating the
    order and taking the median evens that out. A system whose first pass did
    not finish (skipped, error, partial) is not run again.
    """
    passes: dict[str, list[Row]] = {s.name: [] for s in systems}
    order = list(systems)
    for _ in range(rounds):
        for system in order:
            done = passes[system.name]
            if done and done[0].status != "ok":
                continue
            done.append(run_row(scenario, system, lambda s=system: run(s)))
        order = order[1:] + order[:1]
    return [_median_row(passes[s.name]) for s in systems]


def _median_row(rows: list[Row]) -> Row:
    if len(rows) == 1:
        return rows[0]
    ranked = sorted(rows, key=lambda r: r.metrics.get("rate", 0.0))
    row = ranked[len(ranked) // 2]
    rates = [r.metrics.get("rate", 0.0) for r in rows]
    row.metrics["rounds"] = rates
    row.text += f"; median of {len(rows)} passes: " + ", ".join(f"{r:,.0f}" for r in rates)
    return row


def run_suite(scenarios: list[str], systems: list[System], sizes: Sizes, base: Path, keep: bool,
              rows: list[Row], single: dict[str, Row]) -> None:
    """Append a row per scenario and system to ``rows``; ``single`` gets each system's one-group latency."""
    for scenario in scenarios:
        print(f"{scenario} ...", file=sys.stderr, flush=True)
        if scenario == "throughput":
            rows.extend(run_rounds(scenario, systems, sizes.rounds, lambda s: throughput(s, sizes, base, keep)))
            continue
        for system in systems:
            if scenario == "groups" and system.name not in single and system.skip_reason() is None:
                ref = run_row("latency", system, lambda s=system: latency(s, sizes, base, keep))
                if ref.status in ("ok", "partial"):
                    single[system.name] = ref
            runners: dict[str, Callable[[], Row]] = {
                "throughput": lambda s=system: throughput(s, sizes, base, keep),
                "latency": lambda s=system: latency(s, sizes, base, keep),
                "ack_rtt": lambda s=system: ack_rtt(s, sizes, base, keep),
                "drain": lambda s=system: drain(s, sizes, base, keep),
                "idle": lambda s=system: idle(s, sizes, base, keep),
                "groups": lambda s=system: latency(s, sizes, base, keep, groups=sizes.groups),
            }
            row = run_row(scenario, system, runners[scenario])
            rows.append(row)
            if scenario == "latency" and row.status in ("ok", "partial"):
                single[system.name] = row


# The latency scenarios run first, and (6) right after (2), which it is compared with: every
# file a scenario leaves (they are kept until the end, see Measurement) makes the kernel's
# lookups a little slower, and the timing of a few hundred microseconds feels it first.
RUN_ORDER = ("latency", "groups", "ack_rtt", "idle", "throughput", "drain")
assert sorted(RUN_ORDER) == sorted(SCENARIOS), "RUN_ORDER must list every scenario once"


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--backend" in argv:  # the Redis suite has its own systems and scenarios (scripts/bench_redis.py)
        at = argv.index("--backend")
        backend = argv[at + 1] if at + 1 < len(argv) else ""
        rest = argv[:at] + argv[at + 2:]
        if backend == "redis":
            import bench_redis

            return bench_redis.main(rest)
        if backend != "spool":
            print(f"bench.py: --backend must be spool or redis, got {backend!r}", file=sys.stderr)
            return 2
        argv = rest
    args = parse_args(argv)
    scenarios = pick(args.only, SCENARIOS, "scenario")
    systems = make_systems(pick(args.systems, SYSTEM_KEYS, "system"), args.peer_poll)
    sizes = QUICK if args.quick else FULL
    overrides = {k: v for k, v in (("workers", args.workers), ("budget", args.budget), ("rounds", args.rounds))
                 if v is not None}
    sizes = dataclasses.replace(sizes, **overrides)
    mode = "quick" if args.quick else "full"
    machine = machine_info()
    signal.signal(signal.SIGTERM, _terminate)
    base = Path(tempfile.mkdtemp(prefix="ipcpool-bench-", dir=args.tmpdir))
    machine["work_fs"] = filesystem_of(base)
    print(f"ipcpool benchmark ({mode}); work folders under {base}", file=sys.stderr, flush=True)
    started = time.time()
    rows: list[Row] = []
    single: dict[str, Row] = {}  # each system's one-group latency: the reference for (6)
    interrupted = False
    try:
        run_suite(sorted(scenarios, key=RUN_ORDER.index), systems, sizes, base, args.keep, rows, single)
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        print("interrupted: stopping every process started", file=sys.stderr)
    finally:
        Proc.stop_all()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["log_line_us"] = round(log_line_cost_us(), 2)
    rows.sort(key=lambda r: SCENARIOS.index(r.scenario))  # reported (1) to (6), whatever order they ran in
    evaluate(rows, single)
    print(table(rows, machine, mode))
    extra = {"started": started, "seconds": round(time.time() - started, 1), "interrupted": interrupted,
             "scenarios": scenarios, "peer_poll_s": args.peer_poll,
             "reference_latency": {name: r.metrics for name, r in single.items()}}
    write_json(args.out, rows, machine, mode, dataclasses.asdict(sizes), extra)
    print(f"\nresults written to {args.out} ({extra['seconds']} s)")
    if interrupted:
        return 130
    return 1 if any(r.status == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
