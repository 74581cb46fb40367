"""``ipcpool schedule list``: each ``[[schedule]]``, its next due times in its timezone, the last one published.

Read from the config and the transport's records (``<root>/.ipcpool/schedules.json``, or the schedule's hash
on Redis): no supervisor needs to run. ``status --json`` carries the same list under ``schedules``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ipcpool.config import Config, load_config
from ipcpool.errors import EXIT_OK
from ipcpool.ops.terminal import printable
from ipcpool.schedule import views


def schedule_views(config: Config, now: float | None = None) -> list[dict[str, Any]]:
    """Every configured schedule as ``schedule list --json`` shows it (an empty list without any)."""
    if not config.schedules:
        return []
    from ipcpool.transport import make_outbox

    outbox = make_outbox(config)
    try:
        marks = outbox.schedule_marks([spec.name for spec in config.schedules])
    finally:
        outbox.close()
    return views(config.schedules, marks, time.time() if now is None else now)


def cmd_schedule(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    shown = schedule_views(config)
    if args.json:
        print(json.dumps(shown, indent=1))
        return EXIT_OK
    if not shown:
        print(f"{args.config}: no [[schedule]] tables")
        return EXIT_OK
    print("\n".join(render(shown)))
    return EXIT_OK


def render(shown: list[dict[str, Any]]) -> list[str]:
    """A few lines a schedule; what the config's author wrote (names, types) goes through printable()."""
    lines: list[str] = []
    for s in shown:
        when = f'cron "{s["cron"]}" ({s["timezone"]})' if s["cron"] else f'every {s["every"]}s ({s["timezone"]})'
        lines.append(printable(f'{s["name"]}: {s["type"]} to {s["group"]}, {when}, missed = "{s["missed"]}"'))
        lines.append(f"  next: {', '.join(s['next']) or 'never'}")
        last = s["lastPublished"]
        if last is None:
            lines.append("  last published: never")
        else:
            at = f", at {last['at']}" if last.get("at") else ""
            lines.append(printable(f"  last published: {last['due']} (id {last['id']}{at})"))
    return lines
