"""Scenario (1) of scripts/bench.py on two revisions, back to back, alternating: did a change cost speed?

    python scripts/bench_compare.py --before e2216e8~1 --after HEAD            # on the system temp dir
    python scripts/bench_compare.py --before e2216e8~1 --after HEAD --tmpdir /dev/shm --passes 4

Each revision is checked out into a temporary git worktree (removed at the end)
and runs its own ``scripts/bench.py --only throughput --systems ipcpool,bare``,
one round per pass, the revisions alternating (before, after, after, before,
...) so drift on the machine falls on both. The bare loop runs in the same
command each time: its figures say how much the machine itself moved between
passes. Printed per pass and as medians: msg/s and CPU per message (consumer
side, which is what a change to ipcpool moves), and after ÷ before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_common import REPO, filesystem_of, machine_info


def worktree(rev: str, where: Path) -> Path:
    path = where / rev.replace("/", "_").replace("~", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    return path


def one_pass(tree: Path, out: Path, tmpdir: Path | None, quick: bool) -> dict[str, dict[str, Any]]:
    argv = [sys.executable, str(tree / "scripts" / "bench.py"), "--only", "throughput", "--systems", "ipcpool,bare",
            "--rounds", "1", "--out", str(out)]
    if tmpdir is not None:
        argv += ["--tmpdir", str(tmpdir)]
    if quick:
        argv.append("--quick")
    # Each revision's own package, not the one installed in this interpreter (an editable install points at
    # the checkout): its benchmark imports it, and so do the supervisors and workers it starts.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, env=env)
    if not out.exists():
        raise SystemExit(f"bench.py in {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rows = json.loads(out.read_text())["rows"]
    return {r["system"]: r["metrics"] for r in rows if r["scenario"] == "throughput" and r.get("metrics")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision (the baseline)")
    parser.add_argument("--after", default="HEAD", help="git revision (the change)")
    parser.add_argument("--passes", type=int, default=3, help="passes per revision (default 3)")
    parser.add_argument("--tmpdir", type=Path, help="where the benchmark's work folders go (the filesystem matters)")
    parser.add_argument("--quick", action="store_true", help="bench.py --quick sizes")
    args = parser.parse_args(argv)
    machine = machine_info()
    where = Path(tempfile.mkdtemp(prefix="ipcpool-compare-"))
    trees = {"before": worktree(args.before, where), "after": worktree(args.after, where)}
    results: dict[str, list[dict[str, dict[str, Any]]]] = {"before": [], "after": []}
    try:
        order = []
        for k in range(args.passes):
            order += ["before", "after"] if k % 2 == 0 else ["after", "before"]
        for n, side in enumerate(order):
            found = one_pass(trees[side], where / f"pass-{n}.json", args.tmpdir, args.quick)
            results[side].append(found)
            ip, bare = found.get("ipcpool", {}), found.get("bare loop", {})
            print(f"pass {n + 1:>2} {side:<6} ipcpool {ip.get('rate', 0):>8,.0f} msg/s "
                  f"{ip.get('cpu_us_per_msg', {}).get('consumer', 0):>6.1f} µs/msg consuming | bare "
                  f"{bare.get('rate', 0):>8,.0f} msg/s {bare.get('cpu_us_per_msg', {}).get('consumer', 0):>6.1f} µs",
                  file=sys.stderr, flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        subprocess.run(["rm", "-rf", str(where)], check=False)

    def median(side: str, system: str, key: str) -> float:
        values = []
        for found in results[side]:
            metrics = found.get(system, {})
            value = metrics.get("cpu_us_per_msg", {}).get("consumer") if key == "cpu" else metrics.get(key)
            if value:
                values.append(float(value))
        return statistics.median(values) if values else float("nan")

    fs = filesystem_of(args.tmpdir or Path(tempfile.gettempdir()))
    print(f"CPU: {machine['cpu_model']} ({machine['cpu_count']} CPUs), Python {machine['python']}, work on {fs}; "
          f"{args.passes} passes each, alternating; medians")
    print(f"| system | before ({args.before}) | after ({args.after}) | after ÷ before |")
    print("|---|---|---|---|")
    for system in ("ipcpool", "bare loop"):
        for key, label in (("rate", "msg/s"), ("cpu", "µs CPU/msg consuming")):
            b, a = median("before", system, key), median("after", system, key)
            print(f"| {system} {label} | {b:,.1f} | {a:,.1f} | {a / b:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
