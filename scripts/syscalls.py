#!/usr/bin/env python3
"""System calls per message on the consumer side: ipcpool and the bare loop, side by side.

    python scripts/syscalls.py                       # 10,000 messages each, work folders in the temp dir
    python scripts/syscalls.py --tmpdir /dev/shm --count 20000

For each system: start it (scripts/bench.py's setup: the generated handler, acks
on), wait until it is ready, attach ``strace -c -f`` to every consumer process
(ipcpool: the supervisor and its workers; the bare loop: its one process), publish
``--count`` messages from an untraced producer, wait until every one is handled,
detach and print each system call's count per message, with the difference. Start-up
is not traced, so what is left is the per-message path plus the idle loop's few
wake-ups (heartbeats, status writes) over the run. Needs ``strace`` (apt-get install strace).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bare_loop import BareSystem
from bench_common import BenchError, count_records, filesystem_of, machine_info, wait_until
from bench_ipcpool import IpcpoolSystem

ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def parse_summary(text: str) -> dict[str, int]:
    """strace -c's table: syscall -> calls."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match and match.group(2) != "total":
            calls[match.group(2)] = int(match.group(1))
    return calls


def _traced(pid: int) -> bool:
    """Whether a tracer is attached to ``pid`` (its TracerPid in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in status)


def trace_one(system: IpcpoolSystem | BareSystem, count: int, tmpdir: Path | None) -> dict[str, int]:
    work = Path(tempfile.mkdtemp(prefix="ipcpool-syscalls-", dir=tmpdir))
    records = work / "records"
    records.mkdir()
    groups = ["main"]
    try:
        system.prepare(work, groups)
        proc = system.start(work, groups, records, workers=2)
        try:
            pids = [pid for role in system.processes(proc).values() for pid in role]
            summary = work / "strace.txt"
            argv = ["strace", "-c", "-f", "-o", str(summary)]
            for pid in pids:
                argv += ["-p", str(pid)]
            tracer = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
            wait_until(lambda: tracer.poll() is not None or all(_traced(pid) for pid in pids), 30.0,
                       "strace attached to every consumer process")
            if tracer.poll() is not None:
                raise BenchError(f"strace could not attach: {tracer.stderr.read() if tracer.stderr else ''}")
            producer = subprocess.run(system.producer_argv("produce", "--work", str(work), "--group", "main",
                                                           "--count", str(count), "--out", str(work / "p.json")),
                                      cwd=work, capture_output=True, text=True)
            if producer.returncode != 0:
                raise BenchError(f"producer failed: {producer.stderr[-2000:]}")
            wait_until(lambda: count_records(records) >= count, 300.0, f"{count} messages handled", interval=0.1)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            return parse_summary(summary.read_text())
        finally:
            proc.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--tmpdir", type=Path, help="where the work folders go (default: the system temp dir)")
    args = parser.parse_args(argv)
    if shutil.which("strace") is None:
        print("strace is not installed: apt-get install strace", file=sys.stderr)
        return 2
    info = machine_info()
    where = args.tmpdir or Path(tempfile.gettempdir())
    print(f"CPU: {info['cpu_model']} ({info['cpu_count']} CPUs); work folders on {filesystem_of(where)}; "
          f"{args.count:,} messages with acks, 2 workers")
    ipcpool = trace_one(IpcpoolSystem(), args.count, args.tmpdir)
    bare = trace_one(BareSystem(), args.count, args.tmpdir)
    names = sorted(set(ipcpool) | set(bare), key=lambda n: -(ipcpool.get(n, 0) + bare.get(n, 0)))
    print("\n| syscall | ipcpool per message | bare loop per message | difference |\n|---|---|---|---|")
    for name in names:
        a, b = ipcpool.get(name, 0) / args.count, bare.get(name, 0) / args.count
        if a < 0.005 and b < 0.005:
            continue
        print(f"| {name} | {a:.2f} | {b:.2f} | {a - b:+.2f} |")
    total_a, total_b = sum(ipcpool.values()) / args.count, sum(bare.values()) / args.count
    print(f"| **all** | **{total_a:.2f}** | **{total_b:.2f}** | **{total_a - total_b:+.2f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
