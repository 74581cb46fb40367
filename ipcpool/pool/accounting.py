"""Every message a worker held ends in exactly one place: finished, back in the queue, or poison.

When a worker reports a result, the transport is told the message is done (with
what the worker could not finish), or it goes back (never started, or not
settled yet). When a worker ends, all it held goes back, except the delivery
that was running if its death is blamed: that one counts against the message,
and after ``[pool] max_deliveries`` such deliveries it goes to the dead letters
as poison, with each delivery's end in its record. A worker that ended itself
past its own handler limit (its supervisor stopped or frozen) is blamed as a
timeout kill is.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from ipcpool.message import now_iso
from ipcpool.pool.handle import Delivery, WorkerHandle
from ipcpool.pool.protocol import BACK_TO_QUEUE, FAILURES, Later, Outcome, OutsideBeat, Result
from ipcpool.pool.state import PoolState
from ipcpool.records import nack_body

log = logging.getLogger(__name__)

RETRY_UNAVAILABLE = 1.0  # seconds before a message a worker could not read (its transport away) is handed out again
EXTERNAL_HEARTBEAT_TTL = 3600.0
MAX_EXTERNAL_HEARTBEATS = 1000


class Accounting:
    def __init__(self, pool: PoolState) -> None:
        self.pool = pool
        self.totals = {"handled": 0, "failed": 0, "duplicates": 0, "poisoned": 0, "requeued": 0}
        self.returned = 0  # messages put back since the drain began
        self.external: dict[tuple[str, str], dict[str, Any]] = {}  # (group, pid) -> outside heartbeats

    # -- results -----------------------------------------------------------------------------------------

    def finish(self, worker: WorkerHandle, result: Result) -> None:
        """One result a worker reported: done, or back to the queue."""
        seq, outcome, info = result
        delivery = worker.held.pop(seq, None)
        if delivery is None:
            return
        if outcome in BACK_TO_QUEUE:
            if outcome is Outcome.UNSETTLED:  # not decodable yet, and still changing: offered again when settled
                self.requeue(delivery, counted=False, later=self.pool.config.spool.settle_time, returned=False)
            else:  # never started: the worker is stopping, or the transport was away
                self.requeue(delivery, counted=False,
                             later=RETRY_UNAVAILABLE if outcome is Outcome.UNREACHABLE else 0.0)
            return
        if isinstance(info, Later):  # came before its notBefore: the transport holds it, no worker does
            self.pool.source.delay(delivery.group, delivery.name, info.until)
            return
        self._count(worker, outcome, delivery.group, info)
        unfinished = info.unfinished if isinstance(info, OutsideBeat) else info
        self.pool.source.done(delivery.group, delivery.name, unfinished)

    def _count(self, worker: WorkerHandle, outcome: Outcome, group: str, info: Any) -> None:
        totals = self.totals
        if outcome is Outcome.HANDLED:
            worker.handled += 1
            totals["handled"] += 1
        elif outcome is Outcome.DUPLICATE:
            worker.handled += 1
            totals["duplicates"] += 1
        elif outcome in FAILURES:
            worker.failed += 1
            totals["failed"] += 1
        elif isinstance(info, OutsideBeat):
            self.external[(group, str(info.pid))] = {"status": info.status, "at": time.time()}
            if len(self.external) > MAX_EXTERNAL_HEARTBEATS:  # bounded: writers choose the keys
                del self.external[min(self.external, key=lambda k: self.external[k]["at"])]

    def forget_old_heartbeats(self) -> None:
        cutoff = time.time() - EXTERNAL_HEARTBEAT_TTL
        for key in [k for k, v in self.external.items() if v["at"] < cutoff]:
            del self.external[key]

    # -- what goes back ----------------------------------------------------------------------------------

    def release_held(self, worker: WorkerHandle, *, blame: bool, how: str = "") -> None:
        """Everything an ended worker held goes back; the running delivery is blamed if asked."""
        current, _started = worker.current() if blame else (None, 0.0)
        held, worker.held = list(worker.held.values()), OrderedDict()
        for delivery in held:
            try:
                if delivery is current:
                    self.record_failed_delivery(delivery, worker, how)
                else:
                    self.requeue(delivery)
            except Exception:  # one message's fault never strands the others the worker held
                log.exception("cannot put back group=%s file=%s (held by worker pid=%d); if it is left in "
                              "processing/, the next rescans put it back", delivery.group, delivery.name, worker.pid)

    def requeue(self, delivery: Delivery, *, counted: bool = True, later: float = 0.0,
                returned: bool = True) -> None:
        self.pool.source.requeue(delivery.group, delivery.name, later=later)
        if returned:  # not a file still being written (unsettled): that one was never a delivery
            self.pool.metrics.returned_to_queue(delivery.group)
        if counted:
            self.totals["requeued"] += 1
        if not self.pool.running:
            self.returned += 1

    def record_failed_delivery(self, delivery: Delivery, worker: WorkerHandle, how: str) -> None:
        """This delivery killed or hung its worker: counted against the message; poison at the limit."""
        source, group, ref = self.pool.source, delivery.group, delivery.name
        history = source.record_failure(group, ref, {
            "delivery": delivery.deliveries, "workerPid": worker.pid, "ended": how, "time": now_iso()})
        limit = self.pool.config.pool.max_deliveries
        if len(history) < limit:
            self.requeue(delivery)
            return
        summary = source.summarize(group, ref)
        record = {"id": summary.id, "type": summary.type, "attempts": len(history),
                  "reason": f"poison message: {len(history)} deliveries killed or hung a worker "
                            f"([pool] max_deliveries = {limit})",
                  "deliveries": history}
        if source.quarantine(group, ref, record, nack_body(group, record, summary, "poisoned")):
            log.error("Poison message moved to errors/ id=%s type=%s group=%s file=%s after %d deliveries",
                      summary.shown_id, summary.shown_type, group, ref, len(history), extra={"outcome": "poisoned"})
            self.totals["poisoned"] += 1
            self.pool.metrics.count(group, summary.type, "poisoned")
