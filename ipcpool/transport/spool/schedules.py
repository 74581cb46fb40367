"""Each ``[[schedule]]``'s record on a spool root: ``<root>/.ipcpool/schedules.json``.

``{"<name>": {"since": 1764662400, "due": 1764666000, "id": "schedule-<name>-20261202T090000Z",
"at": 1764666000.012}}``: when the schedule was first seen, and the last due time published (whole
seconds since the epoch), its message's id and when it was published. Only the supervisor holding the
root's lock writes it (a temp file, then a rename: readers such as ``ipcpool schedule list`` see the old
record or the new one, never half); with durability "power" the file and the folder are fsync'd.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from ipcpool.transport.spool.layout import Folders
from ipcpool.transport.spool.writes import Writer, unlink_quietly

log = logging.getLogger(__name__)

SCHEDULES_FILE = "schedules.json"


class ScheduleMarks:
    def __init__(self, folders: Folders, writer: Writer) -> None:
        self.path = folders.state_dir / SCHEDULES_FILE
        self.writer = writer
        self.mode = 0o640 if folders.shared else 0o600

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): every schedule starts from now", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {name: mark for name, mark in data.items() if isinstance(mark, dict)}

    def marks(self, names: Sequence[str], since: int | None) -> dict[str, dict[str, Any]]:
        marks = self.read()
        new = [name for name in names if name not in marks]
        if since is not None and new:
            for name in new:
                marks[name] = {"since": since}
            self.write(marks)
        return {name: marks[name] for name in names if name in marks}

    def record(self, name: str, mark: dict[str, Any]) -> None:
        marks = self.read()
        marks[name] = {**marks.get(name, {}), **mark}
        self.write(marks)

    def write(self, marks: dict[str, dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{SCHEDULES_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, self.mode)
        try:
            try:
                os.fchmod(fd, self.mode)
                data = memoryview(json.dumps(marks, sort_keys=True).encode())
                while data:
                    data = data[os.write(fd, data):]
                if self.writer.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            unlink_quietly(str(tmp))
            raise
        if self.writer.fsync:
            self.writer.fsync_dir(str(self.path.parent))
