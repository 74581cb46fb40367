"""How a spool pool holding many delayed messages behaves: idle CPU, and how long a restart takes.

    python scripts/bench_delayed.py                 # 100,000 delayed messages, 2 workers
    python scripts/bench_delayed.py -n 10000 --idle 10

Steps: publish N messages due in a day (``Client.send(..., delay=86400)``), start a
supervisor and time until every one is held in ``delayed/`` (each is claimed once,
its worker hands it back); then measure the supervisor's and workers' CPU over
``--idle`` seconds with nothing due (the figure the issue bounds: under 1% of a
core); then stop it (SIGTERM), start it again and time until it says it started
and status.json counts all N (the heap rebuilt from one listing, no file opened);
and the idle CPU once more. A pool with nothing delayed is measured the same way
first, for the baseline. Prints the figures with the machine (CPU model).
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


def write_config(work: Path, workers: int) -> Path:
    config = work / "c.toml"
    config.write_text(f'[spool]\nroot = "{work / "ipc"}"\ngroups = ["main"]\n\n[pool]\nworkers = {workers}\n\n'
                      f'[handlers]\ntask = "ipcpool.examples:handle_task"\n')
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
                            env=dict(os.environ, PYTHONPATH=str(REPO), LOG_LEVEL="warning"))


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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="delayed messages (default 100,000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of each idle measurement (default 20)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before an idle measurement starts")
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
        stop(proc)
        results["held_in_delayed_dir"] = held
    print(json.dumps(results, indent=1))
    print(f"\n{args.n:,} delayed messages on {results['cpu_model']} ({results['cpu_count']} cores): "
          f"idle {results['idle_cpu_pct_holding']:.2f}% of a core while holding them "
          f"({results['idle_cpu_pct_after_restart']:.2f}% after a restart; {results['idle_cpu_pct_empty']:.2f}% "
          f"with none); a restart runs in {results['restart_to_running_s']:.1f} s and counts them all in "
          f"{results['restart_to_counted_s']:.1f} s; holding them took {results['hold_all_s']:.1f} s "
          f"(each claimed once and handed back)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
