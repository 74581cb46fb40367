"""Dead letters on disk: ``errors/``, and what operators do there (list, read, retry, purge).

Each quarantined message is two files: ``<epoch_ms>-<name>`` (the message as it
arrived) and ``<epoch_ms>-<name>.error.json`` (why). The record is written
first and the move comes after, so a crash in between never leaves a message
there without its reason; the nack for a waiting sender comes last. Everything
here is safe while the supervisor runs: retry is a rename back into the
message's inbox (picked up like any new file), purge is unlink.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ipcpool.errors import SpoolError
from ipcpool.message import GROUP_NAME, MESSAGE_ID, now_iso
from ipcpool.portable import rename_noreplace
from ipcpool.records import ErrorEntry
from ipcpool.transport.spool.layout import (
    ACKS,
    ERROR_SUFFIX,
    ERRORS,
    MAX_NAME_BYTES,
    MESSAGES,
    PROCESSING,
    RETRIED_DIR,
    Folders,
    copy_name,
    epoch_ms,
    nack_name,
    shorten,
    split_name,
)
from ipcpool.transport.spool.ledger import Ledger
from ipcpool.transport.spool.writes import Writer, read_regular, unlink_quietly


class DeadLetterFiles:
    """Moving a message into errors/ with its record, and a nack for its sender."""

    def __init__(self, folders: Folders, writer: Writer, ledger: Ledger) -> None:
        self.folders = folders
        self.path = folders.path
        self.writer = writer
        self.ledger = ledger

    def error_name_for(self, group: str, name: str) -> str:
        """The free ``<epoch_ms>-<name>`` a message would get in errors/ (see :meth:`quarantine`).

        A message from another inbox than messages/ gets ``<epoch_ms>-<inbox>~<name>``.
        """
        inbox, name = split_name(name)
        if inbox != MESSAGES:
            name = f"{inbox}~{name}"
        short = shorten(name, MAX_NAME_BYTES)
        if short.endswith(ERROR_SUFFIX):
            short += ".msg"
        errors_dir = self.path(group, ERRORS)
        if not os.path.isdir(errors_dir):
            self.folders.ensure_group(group)  # someone removed errors/: recreate rather than strand the message
        stamp, n = epoch_ms(), 0
        error_name = f"{stamp}-{short}"
        while any(os.path.lexists(f"{errors_dir}/{error_name}{suffix}") for suffix in ("", ERROR_SUFFIX)):
            n += 1
            error_name = f"{stamp}-{n}-{short}"
        return error_name

    def quarantine(self, group: str, name: str, record: dict[str, Any], *, source: str = PROCESSING,
                   nack: dict[str, Any] | None = None, error_name: str | None = None) -> str:
        """Move a message to errors/ with ``<epoch_ms>-<name>.error.json`` beside it.

        The reason is written first, so a crash in between never leaves a
        message in errors/ without one; then the move; then, with ``nack``,
        the negative ack ``acks/<id>.nack`` that answers a waiting sender (see
        :meth:`write_nack`). Any failure undoes what was done and raises, so
        the message is either quarantined and answered or still in ``source``.
        Names never collide or overwrite (a same-millisecond twin gets a
        counter), a long name is shortened, and a message whose own name ends
        in ``.error.json`` gets ``.msg`` appended. Returns the new file name;
        FileNotFoundError when the message is gone. ``error_name`` is one
        :meth:`error_name_for` gave earlier (a response may already name it).
        """
        error_name = error_name or self.error_name_for(group, name)
        errors_dir = self.path(group, ERRORS)
        inbox, base = split_name(name)
        record = {"file": error_name, "originalName": base, "inbox": inbox, "group": group, "time": now_iso(),
                  **record}
        body = json.dumps(record, indent=2, default=str).encode()
        self.writer.write_atomic(group, ERRORS, error_name + ERROR_SUFFIX, body)
        moved = False
        try:
            rename_noreplace(self.path(group, source, name), f"{errors_dir}/{error_name}")
            moved = True
            if nack is not None:  # last: a sender told of the record finds the message there too
                self.ledger.write_nack(group, dict(nack, errorFile=f"{group}/{ERRORS}/{error_name}"))
        except BaseException:
            if moved:  # the nack failed: put the message back, so the whole move is retried
                os.rename(f"{errors_dir}/{error_name}", self.path(group, source, name))
            unlink_quietly(f"{errors_dir}/{error_name}{ERROR_SUFFIX}")
            raise
        if self.writer.fsync:
            self.writer.fsync_dir(errors_dir)
        return error_name


# -- what operators do with errors/ (the records themselves: ipcpool.records) ------------------------

RECORD_LIMIT = 1024 * 1024


def list_errors(spool: Any, group: str | None = None) -> list[ErrorEntry]:
    if group is not None and not GROUP_NAME.match(group):
        return []  # not a group: never a path to look in
    groups = [group] if group else spool.folders.list_groups()
    entries: list[ErrorEntry] = []
    for g in groups:
        directory = spool.folders.path(g, ERRORS)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.endswith(ERROR_SUFFIX):
                continue
            data = read_regular(os.path.join(directory, name), RECORD_LIMIT)
            try:
                record = json.loads(data) if data is not None else {"reason": "unreadable error record"}
            except ValueError:
                record = {"reason": "unreadable error record"}
            entries.append(ErrorEntry(g, name[: -len(ERROR_SUFFIX)], record))
    entries.sort(key=lambda e: (e.epoch_ms, e.group, e.file))
    return entries


def find(spool: Any, wanted: str, group: str | None = None) -> tuple[list[ErrorEntry], set[str]]:
    """Records whose id or file is ``wanted``, else whose id or file starts with it; and their ids.

    Several records may share one id (a message quarantined, retried, and
    quarantined again); several ids mean the prefix was not unique.
    """
    entries = list_errors(spool, group)
    matches = [e for e in entries if wanted in (e.message_id, e.file)]
    if not matches:
        matches = [e for e in entries if e.message_id.startswith(wanted) or e.file.startswith(wanted)]
    return matches, {e.message_id for e in matches}


def read_message(spool: Any, entry: ErrorEntry) -> bytes | None:
    return read_regular(spool.folders.path(entry.group, ERRORS, entry.file), spool.reader.max_message_bytes + 1)


def has_message(spool: Any, entry: ErrorEntry) -> bool:
    """False for a record left without its message (a crash between the two writes)."""
    return os.path.lexists(spool.folders.path(entry.group, ERRORS, entry.file))


def retry(spool: Any, entry: ErrorEntry) -> str:
    """Back into its inbox under its original name (fresh delivery count); record kept in errors/retried/.

    Its nack goes: the message has another chance, and a sender waiting anew must not see the old answer.
    """
    name = entry.original_name
    inbox = entry.inbox
    spool.deliveries.drop(entry.group, name if inbox == MESSAGES else f"{inbox}/{name}")
    source = spool.folders.path(entry.group, ERRORS, entry.file)
    try:  # never replace a newer message that took the name meanwhile
        rename_noreplace(source, spool.folders.path(entry.group, inbox, name))
    except FileExistsError:
        name = copy_name(name, f"retried{entry.epoch_ms}")
        rename_noreplace(source, spool.folders.path(entry.group, inbox, name))
    retried = os.path.join(spool.folders.path(entry.group, ERRORS), RETRIED_DIR)
    try:
        os.mkdir(retried, spool.folders.dir_mode(ERRORS))
        os.chmod(retried, spool.folders.dir_mode(ERRORS))  # the spool's mode, whatever the umask
    except FileExistsError:
        pass
    os.rename(spool.folders.path(entry.group, ERRORS, entry.file + ERROR_SUFFIX),
              os.path.join(retried, entry.file + ERROR_SUFFIX))
    message_id = entry.record.get("id")
    if isinstance(message_id, str) and MESSAGE_ID.match(message_id):
        try:
            os.unlink(spool.folders.path(entry.group, ACKS, nack_name(message_id)))
        except OSError:
            pass
    return name if inbox == MESSAGES else f"{inbox}/{name}"


def purge(spool: Any, entry: ErrorEntry) -> None:
    for name in (entry.file, entry.file + ERROR_SUFFIX):
        try:
            os.unlink(spool.folders.path(entry.group, ERRORS, name))
        except FileNotFoundError:
            pass
        except IsADirectoryError:  # quarantined by an older ipcpool: removed only when empty, never with contents
            try:
                os.rmdir(spool.folders.path(entry.group, ERRORS, name))
            except OSError as exc:
                raise SpoolError(f"{entry.group}/errors/{name} is a folder with files in it: not removed "
                                 f"({exc.strerror}); look inside, then remove it by hand") from exc




class SpoolDeadLetters:
    """``errors/`` of one spool root, for ``ipcpool errors``: the transport's DeadLetters."""

    def __init__(self, spool: Any) -> None:
        self.spool = spool

    def list(self, group: str | None = None) -> list[ErrorEntry]:
        return list_errors(self.spool, group)

    def find(self, wanted: str, group: str | None = None) -> tuple[list[ErrorEntry], set[str]]:
        return find(self.spool, wanted, group)

    def read(self, entry: ErrorEntry) -> bytes | None:
        return read_message(self.spool, entry)

    def has_message(self, entry: ErrorEntry) -> bool:
        return has_message(self.spool, entry)

    def retry(self, entry: ErrorEntry) -> str:
        return retry(self.spool, entry)

    def purge(self, entry: ErrorEntry) -> None:
        purge(self.spool, entry)
