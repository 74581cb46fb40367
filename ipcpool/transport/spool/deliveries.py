"""Delivery records: how often each message killed or hung a worker, kept across restarts.

One small JSON file per message under ``.ipcpool/deliveries/<group>/``, named by
a hash (any message name fits); the record holds the real name. The poison
decision (``[pool] max_deliveries``) reads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ipcpool.message import GROUP_NAME
from ipcpool.transport.spool.layout import DELIVERIES_DIR, PRIVATE_DIR, Folders
from ipcpool.transport.spool.writes import Writer, unlink_quietly

log = logging.getLogger(__name__)


class DeliveryRecords:
    """How often each message killed or hung a worker, one small file each under ``.ipcpool/deliveries/``."""

    def __init__(self, folders: Folders, writer: Writer) -> None:
        self.state_dir = folders.state_dir
        self.writer = writer

    def path(self, group: str, name: str) -> Path:
        """Hashed, so any message name fits; the record holds the real name."""
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()  # names need not be UTF-8
        return self.state_dir / DELIVERIES_DIR / group / f"{digest}.json"

    def save(self, group: str, name: str, history: list[dict[str, Any]]) -> None:
        """Written whole (a temp file, then a rename); with durability "power", fsync'd file and folder
        first: the poison count must survive what the messages survive."""
        path = self.path(group, name)
        try:
            path.parent.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            pass
        else:
            if self.writer.fsync:
                self.writer.fsync_dir(str(path.parent.parent))
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps({"name": name, "history": history}).encode())
            if self.writer.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.writer.fsync:
            self.writer.fsync_dir(str(path.parent))

    def drop(self, group: str, name: str) -> None:
        unlink_quietly(str(self.path(group, name)))

    def load(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Every message's recorded failed deliveries, keyed by (group, file name)."""
        base = self.state_dir / DELIVERIES_DIR
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if not base.is_dir():
            return found
        for gdir in base.iterdir():
            if not GROUP_NAME.match(gdir.name):
                continue
            for path in gdir.glob("*.json"):
                try:
                    record = json.loads(path.read_bytes())
                    found[(gdir.name, str(record["name"]))] = list(record["history"])
                except (OSError, ValueError, KeyError, TypeError):
                    log.warning("unreadable delivery record %s; ignoring it", path)
        return found
