"""What a supervisor could not finish in Redis (an ack, a dead-lettering), kept on its local root.

A handler that succeeded while Redis was away leaves a completion to finish;
so does a dead-lettering Redis refused. The supervisor keeps them in memory
and finishes them when Redis is back; this file keeps them across a drain, a
restart or a SIGKILL of the supervisor, as the spool keeps ``processing/.ack-<id>``:
``<root>/.ipcpool/redis-unfinished.json``, rewritten atomically (a temp file
and a rename, fsync'd with ``[spool] durability = "power"``) whenever what is
kept changes, and removed once nothing is. It is written only while Redis is
away or refuses writes: never on the way of a message when nothing is wrong.
A start reads it and finishes what it holds before it takes new work.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ipcpool.localroot import LocalRoot

log = logging.getLogger(__name__)

JOURNAL_FILE = "redis-unfinished.json"
Key = tuple[str, str]  # (group, stream entry id)


class Journal:
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool) -> None:
        self.path = LocalRoot(root).state_dir / JOURNAL_FILE
        self.fsync = fsync
        self._failing = False  # a write failed (said once until one succeeds)

    def load(self) -> dict[Key, dict[str, Any]]:
        """What a previous run kept; an unreadable file is said and kept aside, never dropped in silence."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            body = json.loads(data)
            return {(str(item["group"]), str(item["entry"])): dict(item["info"]) for item in body["unfinished"]}
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(f"{JOURNAL_FILE}.unreadable")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            log.error("cannot read %s (%s): kept as %s; what it held is not finished", self.path, exc, aside)
            return {}

    def save(self, work: dict[Key, dict[str, Any]]) -> None:
        """Keep exactly ``work`` (nothing: the file goes). A failed write is said, and work stays in memory."""
        try:
            if work:
                self._write(json.dumps({"version": 1, "unfinished": [
                    {"group": group, "entry": entry, "info": info} for (group, entry), info in work.items()]},
                    default=str).encode())
            else:
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    return
                self._sync_dir()
        except OSError as exc:
            if not self._failing:
                log.error("cannot keep what is left to finish in Redis in %s (%s): it is kept in memory only, "
                          "and lost if this supervisor stops before Redis is back", self.path, exc)
            self._failing = True
            return
        self._failing = False

    def _write(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{JOURNAL_FILE}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            _unlink_quietly(tmp)
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        if self.fsync:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
