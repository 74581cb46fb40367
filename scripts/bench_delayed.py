"""How a spool pool holding many delayed messages behaves: idle CPU, and how long a restart takes.

    python scripts/bench_delayed.py                 # 100,000 delayed messages, 2 workers
    python scripts/bench_delayed.py -n 10000 --idle 10

Steps: publish N messages due in a day (``Client.send(..., delay=86400)``), start a
supervisor and time until every one is held in ``delayed/`` (each is claimed once,
its worker hands it back); then measure the supervisor's and workers' CPU over
``--idle`` seconds with nothing due (the figure the issue bounds: under 1% of a
core); then stop it (SIGTERM), start it again and time until it says it started
and status.json counts all N (the heap rebuilt from one listing, no file opened);
and the idle CPU once more. Then, with the N still held, ``--late`` messages due
over the next few seconds: how late after its notBefore each handler starts
(the issue asks for within half a second under normal load). A pool with nothing
delayed is measured the same way first, for the baseline. Prints the figures
with the machine (CPU model).
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
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ipcpool import Client  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


HANDLER = """
import os, time
from ipcpool.msgtime import parse_iso

def late(message):
    due = message.extra.get("notBefore")
    if due and message.payload.get("late"):
        with open(os.environ["BENCH_LATE"], "a") as out:
            out.write(f"{time.time() - parse_iso(due)}\\n")
"""


def write_config(work: Path, workers: int) -> Path:
    config = work / "c.toml"
    (work / "benchhandler.py").write_text(HANDLER)
    config.write_text(f'[spool]\nroot = "{work / "ipc"}"\ngroups = ["main"]\n\n[pool]\nworkers = {workers}\n\n'
                      f'[handlers]\ntask = "benchhandler:late"\n')
    return config


def status(work: Path) -> dict[str, Any]:
    try:
        return json.loads((work / "ipc" / ".ipcpool" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def delayed(work: Path) -> int:
    return int(((status(work).get("groups") or {}).get("main") or {}).get("delayed") or 0)


def wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def start(work: Path, config: Path) -> subprocess.Popen[bytes]:
    log = open(work / "supervisor.log", "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([sys.executable, "-m", "ipcpool", "run", "--config", str(config)], cwd=work,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=f"{work}{os.pathsep}{REPO}", LOG_LEVEL="warning",
                                     BENCH_LATE=str(work / "late.txt")))


def started(work: Path) -> bool:
    return status(work).get("state") == "running" and all(w.get("state") in ("ready", "busy")
                                                         for w in status(work).get("workers", [{}]))


def idle_cpu(proc: subprocess.Popen[bytes], seconds: float) -> float:
    """Percent of one core the supervisor and its workers used over ``seconds``."""
    root = psutil.Process(proc.pid)
    procs = [root, *root.children(recursive=True)]
    before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    used = sum(sum(p.cpu_times()[:2]) - before[p.pid] for p in procs if p.is_running())
    return 100.0 * used / elapsed


def lateness(work: Path, count: int) -> dict[str, Any]:
    """``count`` messages due over the next seconds: how long after its notBefore each handler started."""
    late = work / "late.txt"
    with Client(work / "ipc", "main") as client:
        start_at = time.time() + 2.0
        for n in range(count):
            client.send("main", "task", {"late": True}, not_before=start_at + n * 5.0 / count)
    wait(lambda: late.exists() and len(late.read_text().splitlines()) >= count, 120, "the due messages handled")
    values = sorted(float(line) for line in late.read_text().splitlines())
    return {"late_count": count, "late_min_ms": round(values[0] * 1000, 1),
            "late_p50_ms": round(values[len(values) // 2] * 1000, 1),
            "late_p99_ms": round(values[int(len(values) * 0.99) - 1] * 1000, 1),
            "late_max_ms": round(values[-1] * 1000, 1)}


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="delayed messages (default 100,000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of each idle measurement (default 20)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before an idle measurement starts")
    parser.add_argument("--late", type=int, default=200, help="messages due soon, for the lateness (default 200)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "n": args.n,
                               "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="bench-delayed-") as tmp:
        work = Path(tmp)
        config = write_config(work, args.workers)
        proc = start(work, config)
        wait(lambda: started(work), 60, "the empty pool to start")
        time.sleep(args.settle)
        results["idle_cpu_pct_empty"] = round(idle_cpu(proc, args.idle), 3)
        stop(proc)
        with Client(work / "ipc", "main") as client:
            t0 = time.monotonic()
            for n in range(args.n):
                client.send("main", "task", {"n": n}, delay=86400)
            results["publish_s"] = round(time.monotonic() - t0, 2)
        proc = start(work, config)
        results["hold_all_s"] = round(wait(lambda: delayed(work) == args.n, 3600, "every message held"), 2)
        time.sleep(args.settle)
        results["idle_cpu_pct_holding"] = round(idle_cpu(proc, args.idle), 3)
        stop(proc)
        held = len(os.listdir(work / "ipc" / "main" / "delayed"))
        proc = start(work, config)
        results["restart_to_running_s"] = round(wait(lambda: started(work), 600, "the restart"), 2)
        results["restart_to_counted_s"] = round(wait(lambda: delayed(work) == args.n, 600, "the count") +
                                                results["restart_to_running_s"], 2)
        time.sleep(args.settle)
        results["idle_cpu_pct_after_restart"] = round(idle_cpu(proc, args.idle), 3)
        results.update(lateness(work, args.late))
        stop(proc)
        results["held_in_delayed_dir"] = held
    print(json.dumps(results, indent=1))
    print(f"\n{args.n:,} delayed messages on {results['cpu_model']} ({results['cpu_count']} cores): "
          f"idle {results['idle_cpu_pct_holding']:.2f}% of a core while holding them "
          f"({results['idle_cpu_pct_after_restart']:.2f}% after a restart; {results['idle_cpu_pct_empty']:.2f}% "
          f"with none); a restart runs in {results['restart_to_running_s']:.1f} s and counts them all in "
          f"{results['restart_to_counted_s']:.1f} s; holding them took {results['hold_all_s']:.1f} s "
          f"(each claimed once and handed back). With them held, {args.late} messages due over 5 s started "
          f"{results['late_p50_ms']:.0f} ms after their notBefore at the median, {results['late_p99_ms']:.0f} ms "
          f"at p99, {results['late_max_ms']:.0f} ms at most (never before: min {results['late_min_ms']:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
