"""Messages left in ``processing/`` by a transition that failed half-way, retried until done.

A requeue can fail (EIO, ENOSPC, a folder an operator removed), so can a
move to ``errors/`` or the ack of a handled message on a full disk. None of
them may lose track of the message or hide the failure: each becomes an
entry here, logged once when it starts failing and once when it is done,
and retried every ``RETRY_INTERVAL`` by the supervisor's timers. Until then
the file stays where it is, so a restart finds it too.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ipcpool.errors import SpoolError
from ipcpool.transport.spool.spool import Spool

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (group, file name in processing/)
RETRY_INTERVAL = 1.0
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

REQUEUE, QUARANTINE, ACK = "requeue", "quarantine", "ack"
_VERBS = {REQUEUE: "return it to messages/", QUARANTINE: "move it to errors/", ACK: "write its ack"}


@dataclass(slots=True)
class Entry:
    action: str  # REQUEUE, QUARANTINE or ACK
    error: str
    no_space: bool
    record: dict[str, Any] | None = None  # QUARANTINE: the error record
    nack: dict[str, Any] | None = None  # QUARANTINE: the answer for a waiting sender
    message_id: str | None = None  # ACK: whose ack


class Stranded:
    """The entries, and the one place that retries them."""

    def __init__(self, spool: Spool, requeue: Callable[[Key], Any]) -> None:
        self.spool = spool
        self._requeue = requeue  # the supervisor's requeue: keeps delivery histories and queues the file
        self.entries: dict[Key, Entry] = {}

    def __contains__(self, key: Key) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ack_holds(self) -> int:
        """Handled messages whose acks are not written yet (workers then also look for held files)."""
        return sum(1 for e in self.entries.values() if e.action == ACK)

    @property
    def no_space(self) -> bool:
        """Whether the latest failure of any entry was a full filesystem (ENOSPC, EDQUOT)."""
        return any(e.no_space for e in self.entries.values())

    def add(self, key: Key, action: str, error: BaseException | str, *, errno_: int | None = None,
            record: dict[str, Any] | None = None, nack: dict[str, Any] | None = None,
            message_id: str | None = None) -> None:
        code = getattr(error, "errno", None) if errno_ is None else errno_
        text = getattr(error, "strerror", None) or str(error)
        if key not in self.entries:
            log.error("cannot %s (%s) group=%s file=%s id=%s type=%s; it stays in processing/ and is retried "
                      "every %gs", _VERBS[action], text, key[0], key[1],
                      message_id or (record or {}).get("id") or "unknown", (record or {}).get("type") or "unknown",
                      RETRY_INTERVAL)
        self.entries[key] = Entry(action, text, code in NO_SPACE, record, nack, message_id)

    def retry(self) -> list[Key]:
        """Try every entry once; returns the keys that are done (or whose file is gone)."""
        done: list[Key] = []
        for key, entry in list(self.entries.items()):
            try:
                if entry.action == REQUEUE:
                    self._requeue(key)
                elif entry.action == QUARANTINE:
                    assert entry.record is not None
                    self.spool.dead.quarantine(key[0], key[1], entry.record, nack=entry.nack)
                else:
                    self.spool.claims.release_ack_hold(key[0], key[1], entry.message_id)
            except FileNotFoundError as exc:
                if entry.action == ACK:  # the held file is ours: acks/ is missing; recreated, then retried
                    self._retry_failed(key, entry, exc)
                    self._recreate(key[0])
                    continue
                log.warning("stranded message is gone group=%s file=%s", *key)
                del self.entries[key]
                done.append(key)
                continue
            except OSError as exc:
                self._retry_failed(key, entry, exc)
                continue
            del self.entries[key]
            done.append(key)
            log.info("stranded message recovered: managed to %s group=%s file=%s (it had failed: %s)",
                     _VERBS[entry.action], key[0], key[1], entry.error)
        return done

    def _recreate(self, group: str) -> None:
        try:
            self.spool.folders.ensure_group(group)
        except (OSError, SpoolError) as exc:
            log.warning("cannot recreate the folders of group %s: %s", group, exc)

    @staticmethod
    def _retry_failed(key: Key, entry: Entry, exc: OSError) -> None:
        entry.error = exc.strerror or str(exc)
        entry.no_space = exc.errno in NO_SPACE
