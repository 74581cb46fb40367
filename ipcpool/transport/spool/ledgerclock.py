"""The dedupe ledger's clock: how old an ack really is when the wall clock jumps.

Acks are pruned by their modification time, a wall-clock time. A wall clock that
jumps forward (a VM resumed, NTP correcting a clock that was days behind) would make
every ack look older than ``[ack] retention`` at once: pruning would drop the whole
ledger, and with it the dedupe of every message a sender still retries.

So the supervisor keeps an anchor in ``<root>/.ipcpool/clock.json``: the wall clock
and the boot clock (``CLOCK_BOOTTIME``: it counts suspend and never jumps) read
together, with the boot's id. At each housekeeping it compares how far each moved
since: what the wall clock ran ahead of the boot clock is *skew*, and acks are pruned
as if the wall clock read that much less, until every ack written before the jump is
truly older than the retention. Errors only ever keep acks longer: a boot clock that
stops during sleep (macOS's monotonic clock) overstates the skew, and a reboot (a
new boot id) adds none.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ipcpool.localroot import write_private
from ipcpool.portable import boot_clock, boot_id

log = logging.getLogger(__name__)

CLOCK_FILE = "clock.json"
JUMP_TOLERANCE = 60.0  # seconds the wall clock may run ahead of the boot clock (NTP slews) before it is a jump


class LedgerClock:
    """``now()`` is the wall time pruning may trust: the wall clock, less any forward jump it made lately."""

    def __init__(self, state_dir: Path, retention: float) -> None:
        self.path = state_dir / CLOCK_FILE
        self.retention = retention
        self.skew = 0.0  # seconds the wall clock jumped ahead, still to be taken off
        self.since = 0.0  # the wall time (after the jump) the latest jump was seen at
        self._anchor: tuple[float, float, str | None] | None = None  # (wall, boot clock, boot id)
        self._load()

    def now(self) -> float:
        """Read both clocks, account for a jump since the last reading, keep the anchor; the trusted wall time."""
        wall, boot, ident = time.time(), boot_clock(), boot_id()
        if self._anchor is not None:
            then_wall, then_boot, then_id = self._anchor
            same_boot = ident == then_id and boot >= then_boot
            ahead = (wall - then_wall) - (boot - then_boot) if same_boot else 0.0
            if ahead > JUMP_TOLERANCE:
                self.skew += ahead
                self.since = wall
                log.warning("the wall clock jumped %.0fs ahead of the time that passed; acks are kept as if it had "
                            "not, for [ack] retention, so dedupe keeps every message a sender may still retry", ahead)
        if self.skew and wall - self.since > self.retention:
            self.skew = 0.0  # every ack from before the jump is truly older than the retention now
        self._anchor = (wall, boot, ident)
        self._save()
        return wall - self.skew

    def _load(self) -> None:
        try:
            state = json.loads(self.path.read_bytes())
            self._anchor = (float(state["wall"]), float(state["boot"]), state.get("bootId"))
            self.skew, self.since = float(state.get("skew", 0.0)), float(state.get("since", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            self._anchor = None

    def _save(self) -> None:
        assert self._anchor is not None
        wall, boot, ident = self._anchor
        body = json.dumps({"wall": wall, "boot": boot, "bootId": ident, "skew": self.skew, "since": self.since})
        try:
            write_private(self.path, body.encode())
        except OSError as exc:
            log.warning("cannot keep the clock anchor %s: %s", self.path, exc)
