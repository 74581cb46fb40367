"""One spool root's files: the class the spool transport's sides share.

Its jobs live in modules of their own, one each, combined here:
:mod:`layout` (names, modes, folders, scans), :mod:`writes` (atomic writes),
:mod:`reads` (safe reads), :mod:`claims` (claim, requeue, complete, ack
holds), :mod:`ledger` (acks, nacks, responses), :mod:`deadletters`
(errors/), :mod:`deliveries` (delivery records), and the local root's locks
(:mod:`ipcpool.localroot`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ipcpool.localroot import LocalRoot
from ipcpool.transport.spool.claims import Claims
from ipcpool.transport.spool.deadletters import DeadLetterFiles
from ipcpool.transport.spool.deliveries import DeliveryRecords
from ipcpool.transport.spool.layout import MESSAGES, STAGING_DIR, STATE_DIR, Layout
from ipcpool.transport.spool.ledger import Ledger
from ipcpool.transport.spool.reads import Reads
from ipcpool.transport.spool.writes import Writes


class Spool(LocalRoot, Layout, Writes, Reads, Claims, Ledger, DeadLetterFiles, DeliveryRecords):
    """One spool root: ``<root>/<group>/{tmp,messages,processing,acks,responses,errors}``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durability: str = "process",
        mode: str = "private",
        max_message_bytes: int = 1024 * 1024,
        private_staging: bool = False,
        inboxes: tuple[str, ...] = (MESSAGES,),
    ) -> None:
        self.root = Path(root).absolute()
        self.inboxes = inboxes  # where writers drop messages; messages/ first
        self.durability = durability
        self.shared = mode == "shared"
        self.max_message_bytes = max_message_bytes
        self._fsync = durability == "power"
        self._root_s = str(self.root)
        self._tmp_counter = 0
        # The supervisor and workers stage acks, responses and error records in a
        # folder only they can write, never in the writers' tmp/.
        self._staging = f"{self._root_s}/{STATE_DIR}/{STAGING_DIR}" if private_staging else None
        # Handled message files kept (in staging) to become the next acks and
        # responses: see Claims.complete. Only ever filled with private staging.
        self._spares: list[tuple[str, int]] = []  # (path, permission bits)
        self._euid = os.geteuid()
        self._pid = os.getpid()  # a Spool is never shared across a fork: each worker builds its own
        # Temp names in staging: this process's pid (see prune_staging), a token of this Spool's, a counter.
        self._staging_prefix = f"{self._staging}/.{self._pid}-{os.urandom(4).hex()}-" if self._staging else ""

    @classmethod
    def from_config(cls, config: Any, *, private_staging: bool = True) -> Spool:
        """The supervisor's and workers' view (private staging); senders use a sender's."""
        spool = config.spool
        return cls(spool.root, durability=spool.durability, mode=spool.mode, inboxes=spool.inboxes,
                   max_message_bytes=spool.max_message_bytes, private_staging=private_staging)
