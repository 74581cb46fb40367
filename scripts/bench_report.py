"""Ratios, targets and the output: the stdout table and the JSON file.

Every baseline row gets ``ipcpool ÷ row`` on its scenario's main figure
(msg/s for throughput and drain, p50 for the latency-like scenarios, CPU for
idle); the ipcpool rows of (4) and (6) get their ratio to (1) and (2). The
targets are the issue's, each judged only on figures from this one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench_scenarios import Row

IPCPOOL = "ipcpool"
MAIN_METRIC = {"throughput": "rate", "latency": "p50_ms", "ack_rtt": "p50_ms", "drain": "rate", "idle": "cpu_pct",
               "groups": "p50_ms"}
TITLES = {"throughput": "(1) throughput", "latency": "(2) latency 500/s", "ack_rtt": "(3) ack round trip",
          "drain": "(4) start-up drain", "idle": "(5) idle cost", "groups": "(6) many groups"}
IDLE_CPU_PCT, SUPERVISOR_MB, WORKER_MB = 1.0, 50.0, 40.0


def _find(rows: list[Row], scenario: str, system: str = IPCPOOL) -> Row | None:
    for row in rows:
        if row.scenario == scenario and row.system == system and row.status in ("ok", "partial"):
            return row
    return None


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def _fmt(value: float, suffix: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}x{suffix}"


def evaluate(rows: list[Row], reference_latency: dict[str, Row]) -> None:
    """Fill in ratio, target and met? on every row, in place."""
    for row in rows:
        if row.status not in ("ok", "partial"):
            continue
        mine = _find(rows, row.scenario)
        key = MAIN_METRIC[row.scenario]
        if row.system != IPCPOOL and mine is not None:
            value = _ratio(mine.metrics[key], row.metrics[key])
            row.ratio = _fmt(value)
            if row.scenario == "throughput":
                need = 1.0 if row.system.startswith("bare") else 3.0
                row.target = f"ipcpool >= {need:g}x"
                row.met = "n/a" if math.isnan(value) else _met(value >= need)
        elif row.system == IPCPOOL:
            _judge_ipcpool(row, rows, reference_latency.get(IPCPOOL))
            if row.metrics.get("lost") and row.met:
                row.met = "NO (lost)"


def _judge_ipcpool(row: Row, rows: list[Row], reference: Row | None) -> None:
    m = row.metrics
    if row.scenario == "latency":
        row.target = "p50 <= 1 ms, p99 <= 5 ms"
        row.met = _met(m["p50_ms"] <= 1.0 and m["p99_ms"] <= 5.0 and row.status == "ok")
    elif row.scenario == "ack_rtt":
        row.target = "p50 <= 2 ms"
        row.met = _met(m["p50_ms"] <= 2.0)
    elif row.scenario == "drain":
        row.target = ">= 0.8x of (1)"
        one = _find(rows, "throughput")
        value = _ratio(m["rate"], one.metrics["rate"]) if one else float("nan")
        row.ratio = _fmt(value, " of (1)")
        row.met = "n/a" if math.isnan(value) else _met(value >= 0.8 and row.status == "ok")
    elif row.scenario == "idle":
        row.target = f"CPU < {IDLE_CPU_PCT:g}%, sup <= {SUPERVISOR_MB:g} MB, worker <= {WORKER_MB:g} MB"
        procs = m["processes"]
        sup = max((p["rss_mb"] for p in procs.get("supervisor", [])), default=float("inf"))
        workers = [p["rss_mb"] for p in procs.get("workers", [])]
        row.met = _met(m["cpu_pct"] < IDLE_CPU_PCT and sup <= SUPERVISOR_MB and bool(workers)
                       and max(workers) <= WORKER_MB)
    elif row.scenario == "groups":
        row.target = "p50, p99 <= 1.5x of (2)"
        if reference is None:
            row.ratio, row.met = "n/a", "n/a"
            return
        r50 = _ratio(m["p50_ms"], reference.metrics["p50_ms"])
        r99 = _ratio(m["p99_ms"], reference.metrics["p99_ms"])
        row.ratio = f"p50 {_fmt(r50)}, p99 {_fmt(r99)} of (2)"
        row.met = _met(r50 <= 1.5 and r99 <= 1.5 and row.status == "ok")


def machine_lines(machine: dict[str, Any]) -> list[str]:
    return [
        f"machine: {machine['cpu_count']} CPUs, {machine['cpu_model']}; Python {machine['python']} "
        f"({machine['python_impl']}); {machine['kernel']}",
        f"work folders on {machine.get('work_fs', '?')}; load average at start {machine['loadavg_start']}, "
        f"at end {machine.get('loadavg_end', '?')}",
        f"ipcpool runs with [log] messages = false; that INFO line would add "
        f"{machine.get('log_line_us', '?')} µs of CPU per message (measured here)",
    ]


def table(rows: list[Row], machine: dict[str, Any], mode: str) -> str:
    header = ("scenario", "system", "result", "ipcpool ÷ this", "target", "met?")
    cells = [header] + [(TITLES.get(r.scenario, r.scenario), r.system, r.text if r.text else r.status, r.ratio,
                         r.target, r.met) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = [f"ipcpool benchmark ({mode})", *machine_lines(machine), ""]
    for n, cell in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], machine: dict[str, Any], mode: str, sizes: dict[str, Any],
               extra: dict[str, Any]) -> None:
    data = {"mode": mode, "machine": machine, "sizes": sizes, **extra,
            "rows": [{"scenario": r.scenario, "title": TITLES.get(r.scenario, r.scenario), "system": r.system,
                      "status": r.status, "result": r.text, "ratio": r.ratio, "target": r.target, "met": r.met,
                      "metrics": r.metrics} for r in rows]}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
