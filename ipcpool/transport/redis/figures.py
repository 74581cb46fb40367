"""A group's queue as ``ipcpool status`` shows it on Redis: queued, pending, dead letters, the oldest age.

``queued`` is what no supervisor has taken yet (the same figure on every
host); ``buffered`` is what this one took and has not handed to a worker; the
oldest age is that of the oldest message waiting in either. Two round trips;
while Redis is away the last figures stand.
"""

from __future__ import annotations

import time
from typing import Any

import redis.exceptions
from redis import Redis

from ipcpool.transport.redis.connection import UNAVAILABLE
from ipcpool.transport.redis.keys import CONSUMER_GROUP, Keys
from ipcpool.transport.redis.store import _text


class QueueFigures:
    def __init__(self, client: Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._last: dict[str, dict[str, Any]] = {}  # the last figures Redis gave, shown while it is away

    def read(self, names: list[str], buffered: dict[str, list[str]], *, skip: bool = False
             ) -> dict[str, dict[str, Any]]:
        """Per group; ``buffered``: the entry ids this supervisor holds unhanded; ``skip``: Redis is away."""
        replies = [] if skip or not names else self._replies(names)
        now_ms = time.time() * 1000
        groups: dict[str, dict[str, Any]] = {}
        for n, group in enumerate(names):
            if not replies:
                last = self._last.get(group, {"queued": 0, "pending": 0, "errors": 0})
                groups[group] = dict(last, oldestQueuedAge=None, buffered=len(buffered[group]))
                continue
            depth, pending, dead, first = replies[n]
            count = pending.get("pending", 0) if isinstance(pending, dict) else 0
            stamps = [entry_ms(ref) for ref in buffered[group]] + ([entry_ms(_text(first[0][0]))] if first else [])
            stamps = [t for t in stamps if t is not None]
            oldest = round(max(0.0, now_ms - min(stamps)) / 1000, 3) if stamps else None
            groups[group] = {"queued": max(0, depth - count), "pending": count, "errors": dead,
                             "oldestQueuedAge": oldest, "buffered": len(buffered[group])}
        if replies:
            self._last = groups
        return groups

    def _replies(self, names: list[str]) -> list[tuple[Any, Any, Any, Any]]:
        """Per group: (length, pending summary, dead letters, the first entry no supervisor has taken)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for group in names:
                pipe.xlen(self.keys.stream(group))
                pipe.xpending(self.keys.stream(group), CONSUMER_GROUP)
                pipe.xlen(self.keys.dead(group))
                pipe.xinfo_groups(self.keys.stream(group))
            first = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for n, group in enumerate(names):
                info = next((g for g in first[4 * n + 3] if _text(g.get("name")) == CONSUMER_GROUP), {})
                after = _text(info.get("last-delivered-id")) or "0-0"
                pipe.xrange(self.keys.stream(group), f"({after}", "+", count=1)
            waiting = pipe.execute()
        except (*UNAVAILABLE, redis.exceptions.ResponseError):
            return []
        return [(first[4 * n], first[4 * n + 1], first[4 * n + 2], waiting[n]) for n in range(len(names))]


def entry_ms(entry_id: str) -> int | None:
    """A stream entry id's milliseconds (``1700000000000-0``), or None for anything else."""
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None
