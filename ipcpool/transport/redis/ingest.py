"""Files dropped into the local spool's inboxes go into their group's stream: a container that can
only write files can use a fleet.

The local root is watched, scanned and claimed exactly as the file spool does
it (a :class:`SpoolSource`: the same guarantees up to this point). Each
claimed file is read safely and published with a marker of its identity
(name, inode, modification time, size), in the same script call, so a
restart between publishing and removing the file never publishes it twice;
then the file is removed. A file that must not be read (a link, a FIFO, too
large) is quarantined locally, in ``errors/``, with the reason. While Redis
is away, files wait where they are.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from typing import Any

from ipcpool.config import Config
from ipcpool.errors import InvalidMessage
from ipcpool.message import format_for
from ipcpool.transport.redis.connection import UNAVAILABLE
from ipcpool.transport.redis.keys import Keys
from ipcpool.transport.redis.scripts import Scripts, publish
from ipcpool.transport.spool.layout import MESSAGES, PROCESSING, message_stem, split_name
from ipcpool.transport.spool.source import SpoolSource

log = logging.getLogger(__name__)

BATCH = 256  # files moved per poll
RETRY_LATER = 1.0  # seconds before a file Redis refused (queue full, away) is tried again


class Ingest:
    def __init__(self, config: Config, client: Any, keys: Keys, scripts: Scripts, consumer: str, *,
                 clock: Callable[[], float], on_hint: Callable[[], None]) -> None:
        self.config = config
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.consumer = consumer
        self.local = SpoolSource(config, clock=clock, on_hint=on_hint)
        self.moved = 0

    def open(self) -> None:
        recovered = self.local.open()
        if recovered:
            log.info("%d local files claimed before a restart go to Redis now", recovered)

    def fileno(self) -> int | None:
        return self.local.fileno()

    def read_events(self) -> None:
        self.local.read_events()

    def poll(self, now: float) -> None:
        self.local.poll(now)

    def busy(self) -> bool:
        return self.local.busy() or bool(self.local.backlog())

    def groups(self) -> set[str]:
        return set(self.local.groups)

    def forward(self, now: float) -> None:
        """Move what is claimable now into the streams (UNAVAILABLE propagates: the files wait)."""
        spool = self.local.spool
        for group, name, _deliveries in self.local.take(BATCH):
            try:
                result = spool.read_claimed(group, name)
                st = os.stat(spool.path(group, PROCESSING, name))
            except FileNotFoundError:
                self.local.finished(group, name, "vanished", None)
                continue
            except InvalidMessage as exc:
                self._refuse(group, name, str(exc))
                continue
            inbox = split_name(name)[0] if "/" in name else MESSAGES
            identity = f"{name}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
            marker = self.keys.ingested(self.consumer, group, hashlib.sha1(identity.encode()).hexdigest())
            try:
                reply = publish(self.scripts, self.keys, group, identity, message_stem(name), result.data,
                                format_for(name) or "", inbox, hashlib.sha1(result.data).hexdigest(),
                                self.config.spool.max_queued, max(1, int(self.config.ack.retention)), marker)
            except UNAVAILABLE:
                self.local.requeue(group, name, later=RETRY_LATER, counted=False)
                raise
            if reply and reply[0] == b"full":
                self.local.requeue(group, name, later=RETRY_LATER, counted=False)
                continue
            spool.complete(group, name)
            self.local.finished(group, name, "handled", None)
            self.moved += 1

    def _refuse(self, group: str, name: str, reason: str) -> None:
        record = {"id": None, "type": None, "reason": reason, "attempts": 0}
        self.local.quarantine(group, name, record, None)
        log.warning("local file refused, not sent to Redis group=%s file=%s: %s", group, name, reason)

    def housekeeping(self, live_pids: set[int]) -> None:
        self.local.housekeeping(live_pids)

    def stats(self) -> dict[str, Any]:
        local = self.local.stats()
        return {"localQueued": sum(g["queued"] for g in local["groups"].values()), "moved": self.moved,
                "localStranded": local["transport"]["stranded"]}

    def close(self) -> None:
        self.local.close()
