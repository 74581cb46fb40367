"""Pruning what outlived its retention, in slices the supervisor's loop can afford.

Acks and nacks past ``[ack] retention`` (by the dedupe ledger's clock, which a
wall-clock jump cannot fool: see :mod:`ledgerclock`), uncollected responses,
temp files crashed writers left in ``tmp/``, records of retried messages, and
staging files of processes that are gone. A day of acks is many files: the
work is a generator, one folder entry per step, and the loop runs it for at
most :data:`SLICE` seconds at a time, so a new message never waits behind it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator

from ipcpool.config import Config
from ipcpool.transport.spool.layout import ACKS, RESPONSES, RETRIED, TMP
from ipcpool.transport.spool.spool import Spool

log = logging.getLogger(__name__)

SLICE = 0.0002  # seconds of rescanning or pruning per poll


def prune_steps(spool: Spool, config: Config, groups: Iterable[str], ledger_now: float,
                live_pids: set[int]) -> Iterator[None]:
    """One step per folder entry looked at; ``ledger_now``: the time acks are judged by."""
    wall = time.time()
    for group in list(groups):
        for sub, age in ((ACKS, config.ack.retention), (RESPONSES, config.spool.response_retention),
                         (TMP, config.spool.tmp_max_age), (RETRIED, config.spool.retried_retention)):
            for name in spool.folders.scan_ages(group, sub, (ledger_now if sub == ACKS else wall) - age):
                if name is not None:
                    spool.folders.unlink_quietly(group, sub, name)
                yield
    spool.writer.prune_staging({os.getpid(), *live_pids})


def run_slice(steps: Iterator[None]) -> bool:
    """Advance ``steps`` for at most :data:`SLICE`; True while steps are left."""
    deadline = time.monotonic() + SLICE
    try:
        while time.monotonic() < deadline:
            next(steps)
    except StopIteration:
        return False
    except OSError as exc:
        log.error("housekeeping failed: %s", exc)
        return False
    return True
