"""Working with ``errors/``: list, show, retry and purge quarantined messages.

Each quarantined message is two files: ``<epoch_ms>-<name>`` (the message as
it arrived) and ``<epoch_ms>-<name>.error.json`` (why). Everything here is
safe while the supervisor runs: retry is a rename back into ``messages/``
(which the supervisor then picks up like any new file), purge is unlink.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

from ipcpool.config import INBOXES
from ipcpool.message import MESSAGE_ID
from ipcpool.spool import ACKS, ERROR_SUFFIX, ERRORS, MESSAGES, RETRIED_DIR, Spool, nack_name, rename_noreplace

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RECORD_LIMIT = 1024 * 1024


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``24h``, ``7d`` to seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, like 30s, 15m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class ErrorEntry:
    group: str
    file: str  # <epoch_ms>-<name> in errors/
    record: dict[str, Any]

    @property
    def epoch_ms(self) -> int:
        head = self.file.split("-", 1)[0]
        return int(head) if head.isdigit() else 0

    @property
    def original_name(self) -> str:
        """The name to retry under: the record's, if it is a plain file name; else the errors/ file's own."""
        recorded = self.record.get("originalName")
        if isinstance(recorded, str) and _plain_name(recorded):
            return recorded
        name = self.file.split("-", 1)[-1]
        return name.split("~", 1)[1] if self.inbox != MESSAGES and "~" in name else name

    @property
    def inbox(self) -> str:
        """The inbox it came from and goes back to (messages/, unless its record names another we know)."""
        recorded = self.record.get("inbox")
        return recorded if isinstance(recorded, str) and recorded in INBOXES else MESSAGES

    @property
    def message_id(self) -> str:
        return str(self.record.get("id") or self.original_name.rsplit(".", 1)[0])

    def summary(self) -> dict[str, Any]:
        return {
            "time": self.record.get("time"),
            "group": self.group,
            "id": self.message_id,
            "type": self.record.get("type"),
            "reason": self.record.get("reason"),
            "attempts": self.record.get("attempts"),
            "file": self.file,
        }


def list_errors(spool: Spool, group: str | None = None) -> list[ErrorEntry]:
    groups = [group] if group else spool.list_groups()
    entries: list[ErrorEntry] = []
    for g in groups:
        directory = spool.path(g, ERRORS)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.endswith(ERROR_SUFFIX):
                continue
            data = _read_regular(os.path.join(directory, name), RECORD_LIMIT)
            try:
                record = json.loads(data) if data is not None else {"reason": "unreadable error record"}
            except ValueError:
                record = {"reason": "unreadable error record"}
            entries.append(ErrorEntry(g, name[: -len(ERROR_SUFFIX)], record))
    entries.sort(key=lambda e: (e.epoch_ms, e.group, e.file))
    return entries


def find(spool: Spool, wanted: str, group: str | None = None) -> tuple[list[ErrorEntry], set[str]]:
    """Records whose id or file is ``wanted``, else whose id or file starts with it; and their ids.

    Several records may share one id (a message quarantined, retried, and
    quarantined again); several ids mean the prefix was not unique.
    """
    entries = list_errors(spool, group)
    matches = [e for e in entries if wanted in (e.message_id, e.file)]
    if not matches:
        matches = [e for e in entries if e.message_id.startswith(wanted) or e.file.startswith(wanted)]
    return matches, {e.message_id for e in matches}


def render(entry: ErrorEntry, message: str | None) -> str:
    """One record as an operator reads it: fields, each delivery, the traceback as text, the message."""
    record = entry.record
    lines = [f"{entry.group}/errors/{entry.file}"]
    fields = [("id", entry.message_id), ("type", record.get("type") or "-"), ("time", record.get("time")),
              ("reason", record.get("reason")), ("attempts", record.get("attempts")),
              ("deliveries", record.get("deliveries") if not isinstance(record.get("deliveries"), list)
               else len(record["deliveries"])),
              ("worker pid", record.get("workerPid"))]
    if entry.inbox != MESSAGES:
        fields.insert(2, ("inbox", entry.inbox))
    lines += [f"  {name:<11} {value}" for name, value in fields if value is not None]
    history = record.get("deliveries")
    if isinstance(history, list):
        lines.append("  deliveries that killed or hung a worker:")
        lines += [f"    {d.get('delivery')}. pid {d.get('workerPid')}: {d.get('ended')} ({d.get('time')})"
                  for d in history if isinstance(d, dict)]
    exception = record.get("exception")
    if isinstance(exception, dict) and exception.get("traceback"):
        lines.append("  traceback:")
        lines += [f"    {line}" for line in str(exception["traceback"]).rstrip("\n").splitlines()]
    lines.append("  message:" if message is not None else "  message: (not in errors/ any more)")
    if message is not None:
        lines += [f"    {line}" for line in _pretty(message).splitlines()]
    return "\n".join(lines)


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def _read_regular(path: str, limit: int) -> bytes | None:
    """Read a file only if it is a regular file (quarantined links and FIFOs are never opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def read_message(spool: Spool, entry: ErrorEntry) -> bytes | None:
    return _read_regular(spool.path(entry.group, ERRORS, entry.file), spool.max_message_bytes + 1)


def has_message(spool: Spool, entry: ErrorEntry) -> bool:
    """False for a record left without its message (a crash between the two writes)."""
    return os.path.lexists(spool.path(entry.group, ERRORS, entry.file))


def retry(spool: Spool, entry: ErrorEntry) -> str:
    """Back into its inbox under its original name (fresh delivery count); record kept in errors/retried/.

    Its nack goes: the message has another chance, and a sender waiting anew must not see the old answer.
    """
    name = entry.original_name
    inbox = entry.inbox
    spool.drop_deliveries(entry.group, name if inbox == MESSAGES else f"{inbox}/{name}")
    source = spool.path(entry.group, ERRORS, entry.file)
    try:  # never replace a newer message that took the name meanwhile
        rename_noreplace(source, spool.path(entry.group, inbox, name))
    except FileExistsError:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem}.retried{entry.epoch_ms}.{ext}" if dot else f"{name}.retried{entry.epoch_ms}"
        rename_noreplace(source, spool.path(entry.group, inbox, name))
    retried = os.path.join(spool.path(entry.group, ERRORS), RETRIED_DIR)
    try:
        os.mkdir(retried, spool.dir_mode(ERRORS))
        os.chmod(retried, spool.dir_mode(ERRORS))  # the spool's mode, whatever the umask
    except FileExistsError:
        pass
    os.rename(spool.path(entry.group, ERRORS, entry.file + ERROR_SUFFIX),
              os.path.join(retried, entry.file + ERROR_SUFFIX))
    message_id = entry.record.get("id")
    if isinstance(message_id, str) and MESSAGE_ID.match(message_id):
        try:
            os.unlink(spool.path(entry.group, ACKS, nack_name(message_id)))
        except OSError:
            pass
    return name if inbox == MESSAGES else f"{inbox}/{name}"


def purge(spool: Spool, entry: ErrorEntry) -> None:
    for name in (entry.file, entry.file + ERROR_SUFFIX):
        try:
            os.unlink(spool.path(entry.group, ERRORS, name))
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            import shutil

            shutil.rmtree(spool.path(entry.group, ERRORS, name))


def older_than(entries: list[ErrorEntry], seconds: float, now: float | None = None) -> list[ErrorEntry]:
    cutoff_ms = ((time.time() if now is None else now) - seconds) * 1000
    return [e for e in entries if e.epoch_ms < cutoff_ms]


def _plain_name(name: str) -> bool:
    """One directory entry of messages/: never a path (a forged record must not move files elsewhere)."""
    return (bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")
            and not name.startswith(".") and len(os.fsencode(name)) <= 255)
