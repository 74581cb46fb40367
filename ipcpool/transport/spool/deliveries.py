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
from ipcpool.transport.spool.layout import DELIVERIES_DIR, PRIVATE_DIR
from ipcpool.transport.spool.writes import unlink_quietly

log = logging.getLogger(__name__)


class DeliveryRecords:
    """Part of Spool."""

    state_dir: Path

    def delivery_path(self, group: str, name: str) -> Path:
        """Hashed, so any message name fits; the record holds the real name."""
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()  # names need not be UTF-8
        return self.state_dir / DELIVERIES_DIR / group / f"{digest}.json"

    def save_deliveries(self, group: str, name: str, history: list[dict[str, Any]]) -> None:
        path = self.delivery_path(group, name)
        path.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(json.dumps({"name": name, "history": history}).encode())
        os.replace(tmp, path)

    def drop_deliveries(self, group: str, name: str) -> None:
        unlink_quietly(str(self.delivery_path(group, name)))

    def load_deliveries(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
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
