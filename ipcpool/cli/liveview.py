"""``ipcpool top`` (``ipcpool status --watch``): the pool on one terminal screen, refreshed every second.

It reads what ``ipcpool status`` reads (status.json, rewritten by the
supervisor every ``[heartbeat] interval``) and keeps the last ten seconds of
it, for each group's rate. Workers: state, the message running and for how
long, RSS, handled/failed, restarts. Groups: queued, in flight, errors,
oldest age, rate. When the supervisor is gone the screen says so and keeps
watching; Ctrl-C ends it with exit 0.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ipcpool.localroot import read_status
from ipcpool.ops.health import judge, pid_alive, transport_name
from ipcpool.ops.terminal import printable

RATE_WINDOW = 10.0  # seconds of history a group's rate is measured over


class Rates:
    """Finished messages per group over the last RATE_WINDOW seconds of snapshots."""

    def __init__(self) -> None:
        self._seen: deque[tuple[float, dict[str, int]]] = deque()

    def add(self, status: dict[str, Any]) -> None:
        at = float(status.get("writtenAt") or 0.0)
        if self._seen and self._seen[-1][0] >= at:
            return  # the same snapshot again
        finished = {name: sum((g.get("finished") or {}).values()) for name, g in status.get("groups", {}).items()}
        self._seen.append((at, finished))
        while len(self._seen) > 2 and at - self._seen[1][0] >= RATE_WINDOW:
            self._seen.popleft()

    def per_second(self, group: str) -> float | None:
        if len(self._seen) < 2:
            return None
        (t0, first), (t1, last) = self._seen[0], self._seen[-1]
        return (last.get(group, 0) - first.get(group, 0)) / (t1 - t0) if t1 > t0 else None


def render(status: dict[str, Any] | None, rates: Rates, now: float) -> Group:
    """One frame. Writers chose some of what it shows (a running message's type and id), so every
    cell is a :class:`~rich.text.Text` (rich markup and emoji codes in it are shown, not obeyed) of
    :func:`~ipcpool.ops.terminal.printable` text (escape sequences shown escaped)."""
    verdict = judge(status, now=now)
    healthy, reason = verdict.healthy, verdict.reason
    if status is None:
        return Group(Text("no supervisor has run on this root yet (no status.json)", style="bold red"))
    sup = status.get("supervisor") or {}
    age = now - float(status.get("writtenAt") or now)
    if status.get("state") != "running" or not pid_alive(int(sup.get("pid") or 0), sup.get("createTime")):
        header = _cell(f"supervisor is gone: pid {sup.get('pid')}, last state {status.get('state')}, "
                       f"last seen {age:.0f}s ago ({reason})", style="bold red")
    elif not healthy:
        header = _cell(f"ipcpool  pid {sup.get('pid')}  UNHEALTHY: {reason}  root {status.get('root')}  "
                       f"snapshot {age:.1f}s old", style="bold yellow")
    else:
        header = _cell(f"ipcpool  pid {sup.get('pid')}  {status.get('state')}  up {sup.get('uptime')}s  "
                       f"root {status.get('root')}  transport {transport_name(status)}  "
                       f"snapshot {age:.1f}s old", style="bold green")
    workers = Table(title="workers", title_justify="left", expand=True)
    for column in ("slot", "pid", "state", "running", "for", "RSS MB", "handled", "failed", "restarts"):
        workers.add_column(column, justify="left" if column in ("state", "running") else "right")
    for w in status.get("workers", []):
        current = w.get("currentMessage") or {}
        running = " ".join(str(v) for v in (current.get("type"), current.get("id")) if v) \
            if isinstance(current, dict) and current else "-"
        workers.add_row(*(_cell(v) for v in (
            w["slot"], w["pid"], w["state"], running,
            f"{w['currentAge']:.1f}s" if w.get("currentAge") is not None else "-",
            _n(w.get("rssMb")), w["handled"], w["failed"], w["restarts"])))
    groups = Table(title="groups", title_justify="left", expand=True)
    for column in ("group", "queued", "in line", "in flight", "errors", "oldest", "delayed", "next due",
                   f"rate/s ({RATE_WINDOW:g}s)"):
        groups.add_column(column, justify="left" if column == "group" else "right")
    for name, g in status.get("groups", {}).items():
        rate = rates.per_second(name)
        groups.add_row(*(_cell(v) for v in (
            name, g.get("queued", 0) + g.get("buffered", 0), g.get("waiting", 0),
            g.get("held", 0) + g.get("running", 0),
            g.get("errors", 0), f"{g['oldestQueuedAge']:.1f}s" if g.get("oldestQueuedAge") is not None else "-",
            g.get("delayed", 0), g.get("nextDue") or "-", f"{rate:.1f}" if rate is not None else "-")))
    totals = status.get("totals", {})
    footer = _cell("totals: " + "  ".join(f"{k} {v}" for k, v in totals.items()) + "    Ctrl-C to leave")
    return Group(header, workers, groups, footer)


def _cell(value: Any, style: str = "") -> Text:
    """Literal text: no markup, no emoji codes, nothing unprintable."""
    return Text(printable(value), style=style)


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def watch(root: str, *, refresh: float = 1.0, console: Console | None = None) -> int:
    """Redraw every ``refresh`` seconds until Ctrl-C; exit code 0."""
    rates = Rates()
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                status = read_status(root)
                if status is not None:
                    rates.add(status)
                live.update(render(status, rates, time.time()), refresh=True)
                time.sleep(refresh)  # a screen redrawn once a second: waiting is the job
    except KeyboardInterrupt:
        return 0
