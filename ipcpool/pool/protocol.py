"""Everything that crosses a pipe between the supervisor and a worker, as records, and the shared-array slots.

As CPython's ``concurrent.futures.process`` keeps ``_CallItem`` and ``_ResultItem``::

    supervisor ──▶ worker   Run(receipts) · Stop()
    worker ──▶ supervisor   Ready(pid) · BootError(text) · Heartbeat(envelope) · Done(results, counts)
                            · Stopping(why) · Retiring(tasks)

Each record is a NamedTuple: typed, and pickled as cheaply as the bare tuples
they replace (one batch of results crosses per half prefetch; a dataclass per
result cost five times as much). A result is ``(seq, Outcome, info)``; info is
None, or what the supervisor must finish (the seam's :class:`Unfinished`), or
an outside process's heartbeat (:class:`OutsideBeat`), or when a message that
came early is due (:class:`Later`).

Beside the pipes, each worker shares a small array of doubles with the
supervisor, written without a lock: the worker publishes which delivery runs
and since when (the supervisor times handlers out without asking), the
supervisor raises a flag while handled messages wait for their acks, says when its loop last ran (a
worker starts nothing more while it has not for a heartbeat interval) and, in a drain, until when running
handlers may go on (the worker's own limit, see :mod:`ipcpool.pool.worker`, waits for that too).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from ipcpool.transport.base import Receipt, Unfinished

# -- the shared array: one double per slot -----------------------------------------------------------------------

SLOT_SEQ = 0  # worker: the seq of the delivery running, or last run
SLOT_STARTED = 1  # worker: when (monotonic) its current attempt started; 0.0 while none runs
SLOT_ACK_HOLDS = 2  # supervisor: 1.0 while handled messages wait for their acks (the dedupe check looks for them)
SLOT_DRAIN_BY = 3  # supervisor: when (monotonic) a drain's shutdown_grace ends; 0.0 while not draining
SLOT_LOOP_AT = 4  # supervisor: when (monotonic) its loop last ran; 0.0 before the first time
SHARED_SLOTS = 5


# -- how one delivery ended ------------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """Every way one delivery can end (decided in the worker's delivery pipeline)."""

    HANDLED = "handled"  # handler succeeded; acked / replied as asked; removed
    DUPLICATE = "duplicate"  # id already acked: removed and re-acked, handler not run
    HEARTBEAT = "heartbeat"  # an outside process's heartbeat, recorded by the supervisor
    FAILED = "failed"  # handler raised on every attempt: to the dead letters
    INVALID = "invalid"  # cannot be decoded, validated or routed: to the dead letters
    UNSETTLED = "unsettled"  # not decodable yet and still changing: back, offered again once settled
    RETURNED = "returned"  # never started: the worker is stopping; back to the queue
    UNREACHABLE = "unreachable"  # never started: the transport was away; back, offered again a little later
    VANISHED = "vanished"  # the message was gone
    DELAYED = "delayed"  # its notBefore is ahead: the transport holds it until then (info: Later)
    EXPIRED = "expired"  # its expiresAt passed before hand-out: to the dead letters, handler never run


BACK_TO_QUEUE = frozenset({Outcome.UNSETTLED, Outcome.RETURNED, Outcome.UNREACHABLE})  # not finished: requeued
FAILURES = frozenset({Outcome.FAILED, Outcome.INVALID, Outcome.EXPIRED})


class OutsideBeat(NamedTuple):
    """An outside process's heartbeat message, for status.json, and what its ack left unfinished."""

    pid: int | str
    status: str | None
    unfinished: Unfinished | None


class Later(NamedTuple):
    """A delivery that came before its notBefore: the transport holds it until ``until`` (epoch seconds)."""

    until: float


Info = Unfinished | OutsideBeat | Later | None
Result = tuple[int, Outcome, Info]  # (seq, outcome, info): a plain tuple, so a batch pickles fast


# -- supervisor -> worker -------------------------------------------------------------------------------------


class Run(NamedTuple):
    """Deliver these, in this order. ``urgent``: the seqs of messages of a sequence, reported as soon as each
    is done (the next of its sequence waits for that report; others are reported in batches)."""

    receipts: list[Receipt]
    urgent: frozenset[int] = frozenset()


class Stop(NamedTuple):
    """Finish the running delivery, return the rest, exit."""


# -- worker -> supervisor -------------------------------------------------------------------------------------


class Ready(NamedTuple):
    """Handlers imported: it takes deliveries."""

    pid: int


class BootError(NamedTuple):
    """Handlers could not be imported (the message and traceback); the worker exits EXIT_WORKER_BOOT."""

    text: str


class Heartbeat(NamedTuple):
    """Every [heartbeat] interval, from the worker's heartbeat thread."""

    envelope: dict[str, Any]

    @property
    def current_message(self) -> dict[str, Any] | None:
        return self.envelope.get("payload", {}).get("currentMessage")


class Done(NamedTuple):
    """Finished deliveries, reported in batches (every half prefetch, or when idle), and /metrics' counts."""

    results: list[Result]
    counts: Any  # ops.tally's delta, or None


class Stopping(NamedTuple):
    """SIGTERM reached the worker itself: it finishes its current delivery and returns the rest."""

    why: str


class Retiring(NamedTuple):
    """It reached its max_tasks: it returned the rest and exits by itself."""

    tasks: int


Command = Run | Stop
Report = Ready | BootError | Heartbeat | Done | Stopping | Retiring
