"""The bridge: files dropped into a Redis host's local inboxes go into the cluster, and their answers come back.

Agents that can only write files use a fleet through it. It is the one part of
the transport that imports two backends, and says so: the local root is watched,
scanned and claimed by the spool's own source (:mod:`ingest`), each file is
published into its group's stream by Redis's scripts, and the answers of files
that asked for one are written back beside them (:mod:`relay`). The Redis source
is given a :class:`Bridge` by the factory (``make_source``) and drives it from
its poll; it never imports the spool itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from ipcpool.config import Config
from ipcpool.transport.bridge.ingest import Ingest
from ipcpool.transport.bridge.relay import AnswerRelay


class Bridge:
    """The local inboxes of one Redis-backed supervisor: what it sends on, and what it writes back."""

    def __init__(self, config: Config, *, clock: Callable[[], float], on_hint: Callable[[], None]) -> None:
        self.config = config
        self.ingest = Ingest(config, clock=clock, on_hint=on_hint)
        self.relay: AnswerRelay | None = None

    def open(self) -> int:
        """The local root's folders (its state folder exists from here on); the files a previous run claimed."""
        self.ingest.open()
        return 0

    def attach(self, client: Any, keys: Any, scripts: Any, consumer: str) -> int:
        """The Redis side, once this supervisor's consumer name is known; the answers still to write back."""
        ingest = self.ingest
        ingest.client, ingest.scripts, ingest.keys, ingest.consumer = client, scripts, keys, consumer
        self.relay = self.ingest.relay = AnswerRelay(self.config, client, keys, self.ingest.local.spool, consumer)
        return self.relay.load()

    def filenos(self) -> list[int]:
        return self.ingest.filenos()

    def poll(self, now: float, ready: Collection[int]) -> bool:
        """The local inboxes' events, rescans and pruning; True while there is work to come back for at once."""
        return self.ingest.poll(now, ready)

    def forward(self, now: float) -> None:
        """Send on what is claimable now, then write back the answers that came (UNAVAILABLE propagates)."""
        self.ingest.forward(now)
        if self.relay is not None:
            self.relay.check(now)

    def groups(self) -> set[str]:
        return self.ingest.groups()

    def housekeeping(self, live_pids: set[int]) -> None:
        self.ingest.housekeeping(live_pids)

    def stats(self) -> dict[str, Any]:
        return self.ingest.stats()

    def close(self) -> None:
        self.ingest.close()
