"""One spool root, assembled from its parts: each a module and an object of its own, sharing only ``folders``.

::

    folders     layout.Folders           paths, modes, the folders themselves, scans
    writer      writes.Writer            temp file then rename; the handled files kept to reuse (staging)
    reader      reads.Reader             safe, size-capped reads of what was claimed
    ledger      ledger.Ledger            acks, nacks, responses
    claims      claims.Claims            claim, put back, complete, ack holds
    dead        deadletters.DeadLetterFiles   errors/ and its records
    deliveries  deliveries.DeliveryRecords    how often each message killed a worker
    local       ipcpool.localroot.LocalRoot   the root's own state: the supervisor's lock, workers' records

A Spool is built per process (a worker builds its own: its temp names and spare files are its own).
"""

from __future__ import annotations

import os
from typing import Any

from ipcpool.localroot import LocalRoot
from ipcpool.transport.spool.claims import Claims
from ipcpool.transport.spool.deadletters import DeadLetterFiles
from ipcpool.transport.spool.deliveries import DeliveryRecords
from ipcpool.transport.spool.layout import MESSAGES, Folders
from ipcpool.transport.spool.ledger import Ledger
from ipcpool.transport.spool.reads import Reader
from ipcpool.transport.spool.writes import Writer


class Spool:
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
        # The supervisor and its workers stage acks, responses and error records in a folder only they can
        # write (private_staging), never in the writers' tmp/.
        self.folders = Folders(root, mode=mode, inboxes=inboxes, private_staging=private_staging)
        self.writer = Writer(self.folders, durability=durability)
        self.reader = Reader(self.folders, max_message_bytes=max_message_bytes)
        self.ledger = Ledger(self.folders, self.writer)
        self.claims = Claims(self.folders, self.writer, self.ledger, max_message_bytes=max_message_bytes)
        self.dead = DeadLetterFiles(self.folders, self.writer, self.ledger)
        self.deliveries = DeliveryRecords(self.folders, self.writer)
        self.local = LocalRoot(self.folders.root)

    @property
    def root(self) -> Any:
        return self.folders.root

    @classmethod
    def from_config(cls, config: Any, *, private_staging: bool = True) -> Spool:
        """The supervisor's and workers' view (private staging); senders use a sender's."""
        spool = config.spool
        return cls(spool.root, durability=spool.durability, mode=spool.mode, inboxes=spool.inboxes,
                   max_message_bytes=spool.max_message_bytes, private_staging=private_staging)
