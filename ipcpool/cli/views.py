"""``ipcpool status``: the status record as a readable table (the folders alone when the supervisor is down).

Writers chose some of what it shows (a running message's type and id, what an
external heartbeat says, a file name in an error): every such value goes
through :func:`~ipcpool.ops.terminal.printable`.
"""

from __future__ import annotations

import time
from typing import Any

from ipcpool.ops.health import Verdict, transport_stats
from ipcpool.ops.terminal import printable


def render_table(status: dict[str, Any], verdict: Verdict, *, now: float | None = None) -> str:
    """``ipcpool status``: the record as a readable table (the folders alone when the supervisor is down).

    Writers chose some of it (a running message's type and id, what an external heartbeat says, a file
    name in an error): every such value goes through :func:`~ipcpool.ops.terminal.printable`.
    """
    now = time.time() if now is None else now
    if "folders" in status:
        return _render_down(status, verdict, now)
    sup = status.get("supervisor", {})
    lines = [
        f"supervisor pid {sup.get('pid')}  state {status.get('state')}  up {sup.get('uptime')}s  "
        f"root {status.get('root')}",
        f"health: {'OK' if verdict.healthy else 'UNHEALTHY'} - {printable(verdict.reason)}",
        f"snapshot: {now - float(status.get('writtenAt', now)):.1f}s old (written every {status.get('interval')}s)",
        "",
        f"{'WORKER':>8} {'SLOT':>4} {'STATE':<9} {'HB AGE':>7} {'RSS MB':>7} {'CPU%':>6} "
        f"{'HANDLED':>8} {'FAILED':>7} {'RESTARTS':>8} {'HELD':>5}  RUNNING",
    ]
    for w in status.get("workers", []):
        lines.append(
            f"{w['pid']:>8} {w['slot']:>4} {w['state']:<9} {w['heartbeatAge']:>7} {_n(w.get('rssMb')):>7} "
            f"{_n(w.get('cpuPercent')):>6} {w['handled']:>8} {w['failed']:>7} {w['restarts']:>8} "
            f"{w.get('held', 0):>5}  {_running(w)}"
        )
    lines += ["", f"{'GROUP':<24} {'QUEUED':>7} {'HELD':>6} {'RUNNING':>8} {'ERRORS':>7} {'OLDEST':>8} "
                  f"{'DELAYED':>8}  {'NEXT DUE':<24} {'IN LINE':>7}"]  # IN LINE: behind a busy sequence
    for name, g in status.get("groups", {}).items():
        lines.append(f"{printable(name):<24} {g['queued']:>7} {g.get('held', 0):>6} {g.get('running', 0):>8} "
                     f"{g['errors']:>7} {_n(g.get('oldestQueuedAge')):>8} {g.get('delayed', 0):>8}  "
                     f"{printable(g.get('nextDue') or '-'):<24} {g.get('waiting', 0):>7}")
    external = status.get("externalHeartbeats", [])
    if external:
        lines += ["", f"{'EXTERNAL HEARTBEAT':<24} {'PROCESS':>10} {'STATUS':<10} {'AGE':>7}"]
        for h in external:
            lines.append(f"{printable(h['group']):<24} {printable(h['processId']):>10} {printable(h['status']):<10} "
                         f"{h['age']:>7}")
    totals = status.get("totals", {})
    lines += ["", "totals: " + "  ".join(f"{k} {v}" for k, v in totals.items())]
    lines += _render_cluster(status.get("cluster"))
    transport = transport_stats(status)
    if transport.get("stranded") or transport.get("full"):
        lines.append(f"spool: {'FULL; ' if transport.get('full') else ''}{transport.get('stranded')} stranded "
                     f"({transport.get('ackHolds')} acks waiting): {printable(transport.get('error'))}")
    for group, why in (transport.get("unservedGroups") or {}).items():
        lines.append(f"NOT SERVED: group {printable(group)}: {printable(why)}")
    return "\n".join(lines)


def _running(worker: dict[str, Any]) -> str:
    current = worker.get("currentMessage")
    if not current:
        return "-"
    if isinstance(current, str):  # a record from an older ipcpool
        return f"{printable(current)} ({printable(str(worker.get('currentAge')))}s)"
    return (f"{printable(current.get('type') or '?')} {printable(current.get('id'))} "
            f"({printable(str(worker.get('currentAge')))}s)")


def _render_cluster(cluster: dict[str, Any] | None) -> list[str]:
    """Redis: every live supervisor sharing the queues, and each group's queue as Redis holds it.

    Those records are anyone's to write who may send on that Redis: each field is checked and escaped.
    """
    if not cluster:
        return []
    lines = ["", f"{'SUPERVISOR (cluster)':<40} {'STATE':<9} {'WORKERS':>7} {'HANDLED':>8} {'UP S':>8}"]
    rows = [_cluster_row(sup) for sup in cluster.get("supervisors", []) if isinstance(sup, dict)]
    lines += [row for _name, row in sorted(rows)]
    lines += ["", f"{'GROUP (cluster)':<24} {'QUEUED':>7} {'PENDING':>8} {'DEAD':>6} {'DELAYED':>8}"]
    for name, g in cluster.get("groups", {}).items():
        lines.append(f"{printable(name):<24} {g['queued']:>7} {g['processing']:>8} {g['errors']:>6} "
                     f"{g.get('delayed', 0):>8}")
    return lines


def _cluster_row(sup: dict[str, Any]) -> tuple[str, str]:
    workers = [w for w in sup.get("workers") or [] if isinstance(w, dict)] if isinstance(sup.get("workers"), list) \
        else []
    handled = sum(_whole(w.get("handled")) for w in workers)
    owner = sup.get("supervisor") if isinstance(sup.get("supervisor"), dict) else {}
    name = printable(str(transport_stats(sup).get("consumer", "?")))
    return name, (f"{name:<40} {printable(str(sup.get('state', '?'))):<9} {len(workers):>7} {handled:>8} "
                  f"{printable(str(owner.get('uptime', '-'))):>8}")


def _whole(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _render_down(status: dict[str, Any], verdict: Verdict, now: float) -> str:
    """No supervisor running (or a stale record): say so, and count what the folders hold."""
    sup = status.get("supervisor") or {}
    if sup:
        seen = f"last record: pid {sup.get('pid')}, state {status.get('state')}, " \
               f"{now - float(status.get('writtenAt', now)):.1f}s ago"
    else:
        seen = "no status.json: it never ran on this root"
    lines = [f"supervisor: DOWN ({printable(verdict.reason)})", seen, "",
             f"{'GROUP':<24} {'QUEUED':>7} {'PROCESSING':>10} {'ERRORS':>7} {'DELAYED':>8}"]
    for name, g in status["folders"].items():
        lines.append(f"{printable(name):<24} {g['queued']:>7} {g['processing']:>10} {g['errors']:>7} "
                     f"{g.get('delayed', 0):>8}")
    if not status["folders"]:
        lines.append("(no group folders)")
    lines += _render_cluster(status.get("cluster"))
    return "\n".join(lines)


def _n(value: Any) -> str:
    return "-" if value is None else str(value)
