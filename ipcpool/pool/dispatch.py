"""Handing messages to workers: by their live load, in even shares, in batches.

A worker's load is read live from its shared slots (what it has started is
known without a report). A worker is topped up only once half its prefetch is
free: fewer, larger batches. No worker gets more than its share of all the
work pending and outstanding, so a burst never queues behind one worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from ipcpool.pool.handle import Delivery
from ipcpool.pool.protocol import Command, Run
from ipcpool.transport.base import Receipt, Source

log = logging.getLogger(__name__)


class Taker(Protocol):
    """What dispatch needs of a worker (a :class:`~ipcpool.pool.handle.WorkerHandle`; a stand-in in tests)."""

    pid: int
    held: dict[int, Delivery]

    def outstanding(self) -> int: ...
    def send(self, command: Command) -> bool: ...


class Dispatcher:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.seq = 0  # every delivery's number, ascending in dispatch order (workers run them in order)
        self.room = 0  # what the workers could take after the last dispatch (a fetching transport asks for it)

    def dispatch(self, ready: Sequence[Taker], prefetch: int, *, booting: int = 0) -> None:
        """Hand what the transport has to the ``ready`` workers with room.

        ``booting``: workers not ready yet that get their share all the same
        (until the pool first stands, a backlog at start is split across all
        of them; later, a replacement booting holds no work back).
        """
        refill_at = max(1, prefetch // 2)
        load = {w: w.outstanding() for w in ready}
        hungry = [w for w, n in load.items() if prefetch - n >= refill_at]
        source = self.source
        sequenced = source.sequenced  # messages of sequences: their successors wait for their reports
        wanted = sum(prefetch - load[w] for w in hungry)
        self.room = wanted
        backlog = source.backlog()
        if not hungry or not backlog:
            return
        share = -(-(backlog + sum(load.values())) // (len(load) + booting))
        hungry.sort(key=load.__getitem__)
        for worker in hungry:
            room = min(prefetch, share) - load[worker]
            if room <= 0:
                continue
            batch: list[Receipt] = []
            urgent: set[int] = set()
            for group, ref, deliveries in source.take(room):
                self.seq += 1
                worker.held[self.seq] = Delivery(self.seq, group, ref, deliveries)
                batch.append((self.seq, group, ref, deliveries))
                if (group, ref) in sequenced:
                    urgent.add(self.seq)
            if batch and not worker.send(Run(batch, frozenset(urgent)) if urgent else Run(batch)):
                log.warning("worker pid=%d channel closed while dispatching", worker.pid)
            wanted -= len(batch)
            if not source.backlog():
                break
        # What was handed out fills room: a transport that fetches ahead (Redis) must not read for room that
        # is gone until the next dispatch (with prefetch 1 it took a message into a busy supervisor, out of
        # reach of idle hosts).
        self.room = max(0, wanted)
