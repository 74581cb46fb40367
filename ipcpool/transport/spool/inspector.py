"""What operators look at in a spool root without a supervisor: counts per group, and errors/."""

from __future__ import annotations

import os

from ipcpool.config import Config
from ipcpool.transport.spool.deadletters import SpoolDeadLetters
from ipcpool.transport.spool.layout import ERROR_SUFFIX, ERRORS
from ipcpool.transport.spool.spool import Spool


class SpoolInspector:
    def __init__(self, config: Config) -> None:
        self.spool = Spool.from_config(config)

    def counts(self) -> dict[str, dict[str, int]]:
        """What each group's folders hold, counted on disk: true with or without a supervisor."""
        spool = self.spool
        counts = {}
        for group in spool.folders.list_groups():
            try:
                with os.scandir(spool.folders.path(group, ERRORS)) as entries:
                    errors = sum(1 for e in entries if e.name.endswith(ERROR_SUFFIX))
            except FileNotFoundError:
                errors = 0
            counts[group] = {"queued": len(spool.folders.scan_inboxes(group)),
                             "processing": len(spool.folders.scan_processing(group)), "errors": errors}
        return counts

    def busy(self) -> bool:
        folders = self.spool.folders
        return any(folders.scan_inboxes(group) or folders.scan_processing(group) for group in folders.list_groups())

    def dead_letters(self) -> SpoolDeadLetters:
        return SpoolDeadLetters(self.spool)

    def ping(self) -> None:
        """Nothing to reach: the spool is a folder."""

    def supervisors(self) -> list[dict[str, object]]:
        return []

    def close(self) -> None:
        pass
