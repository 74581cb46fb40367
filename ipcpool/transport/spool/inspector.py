"""What operators look at in a spool root without a supervisor: counts per group, and errors/."""

from __future__ import annotations

from ipcpool.config import Config
from ipcpool.transport.spool.deadletters import SpoolDeadLetters
from ipcpool.transport.spool.layout import DELAYED
from ipcpool.transport.spool.spool import Spool


class SpoolInspector:
    def __init__(self, config: Config) -> None:
        self.spool = Spool.from_config(config)

    def counts(self) -> dict[str, dict[str, int]]:
        """What each group's folders hold, counted on disk: true with or without a supervisor."""
        folders = self.spool.folders
        return {group: {"queued": len(folders.scan_inboxes(group)), "processing": len(folders.scan_processing(group)),
                        "errors": folders.count_dead_letters(group), "delayed": folders.count(group, DELAYED)}
                for group in folders.list_groups()}

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
