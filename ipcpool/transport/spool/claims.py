"""The claim cycle: inbox -> processing/ (the supervisor's claim), back (requeue), and out (complete).

Every move is one ``rename(2)`` inside one filesystem: a message is in exactly
one folder at any instant. A handled file is not unlinked when it can be
recycled into the next ack (no inode allocated or freed per message), and one
whose ack cannot be written is kept as ``processing/.ack-<id>`` until it is.
"""

from __future__ import annotations

import errno
import logging
import os

from ipcpool.portable import rename_noreplace
from ipcpool.transport.spool.layout import ACK_HOLD_PREFIX, PROCESSING, Folders, copy_name, safe_id
from ipcpool.transport.spool.ledger import Ledger
from ipcpool.transport.spool.writes import Writer, _same_content, unlink_quietly

log = logging.getLogger(__name__)


class Claims:
    """Moving claimed messages: one rename each, inside one filesystem."""

    def __init__(self, folders: Folders, writer: Writer, ledger: Ledger, *, max_message_bytes: int) -> None:
        self.folders = folders
        self.path = folders.path
        self.inbox_path = folders.inbox_path
        self.writer = writer
        self.ledger = ledger
        self.max_message_bytes = max_message_bytes  # what a comparison of two copies reads at most

    def claim(self, group: str, name: str) -> bool:
        """messages/ -> processing/; False when the file is gone (handled or removed).

        Never replaces a file stranded in processing/ under the same name
        (FileExistsError: the caller requeues the stranded one first).
        """
        try:
            rename_noreplace(self.inbox_path(group, name), self.path(group, PROCESSING, name))
        except FileNotFoundError:
            return False
        return True

    def requeue(self, group: str, name: str) -> str | None:
        """processing/ -> messages/ (a worker died or the supervisor restarted).

        Never replaces a file that arrived meanwhile under the same name (a
        legacy writer may reuse names): then the requeued one gets a new name.
        Returns the name it has in messages/, or None when it was gone.
        """
        source = self.path(group, PROCESSING, name)
        target = name
        for attempt in range(1, 100):
            try:
                rename_noreplace(source, self.inbox_path(group, target))
                return target
            except FileNotFoundError:
                if not os.path.lexists(source):
                    return None
                self.folders.ensure_group(group)  # messages/ itself was removed: recreate it, then go on
                continue
            except FileExistsError:
                if _same_content(source, self.inbox_path(group, target), self.max_message_bytes):
                    unlink_quietly(source)  # a re-publish of the same bytes: one copy is enough
                    return target
                # Counted names while they are few, then a random one: a collision never strands it.
                suffix = f"requeued{attempt}" if attempt < 10 else f"requeued{attempt}-{os.urandom(4).hex()}"
                target = copy_name(name, suffix)
        raise FileExistsError(errno.EEXIST, "cannot find a free name in messages/", name)

    def complete(self, group: str, name: str, *, recycle: int | None = None) -> None:
        """Remove a handled message from processing/.

        With ``recycle`` (the permission bits :meth:`read_claimed` returns for a
        file that may be reused), the file moves to private staging instead of
        being unlinked, and the next ack or response is written into it: one rename instead of an unlink
        plus a create. Freeing and allocating inodes per message is the
        dominant cost on some filesystems (ext4 without a journal scans past
        every recently deleted inode on each create).
        """
        source = self.path(group, PROCESSING, name)
        if recycle is None or not self.writer.keep_spare(source, recycle):
            unlink_quietly(source)

    def hold_for_ack(self, group: str, name: str, message_id: str) -> str:
        """A handled message whose ack could not be written: keep it, renamed, as the proof.

        ``processing/.ack-<id>`` is never requeued (a dot-file); whoever
        writes the ack later (the supervisor, now or at its next start)
        removes it. Returns the name it now has (its own if even the rename
        failed).
        """
        marker = f"{ACK_HOLD_PREFIX}{safe_id(message_id)}"
        try:
            os.rename(self.path(group, PROCESSING, name), self.path(group, PROCESSING, marker))
            if self.writer.fsync:  # the proof that it was handled must outlive a power loss as an ack would
                self.writer.fsync_dir(self.path(group, PROCESSING))
        except OSError:
            return name if os.path.lexists(self.path(group, PROCESSING, name)) else marker
        return marker

    def ack_holds(self, group: str) -> list[str]:
        """Markers left by :meth:`hold_for_ack` in a group's processing/."""
        try:
            with os.scandir(self.path(group, PROCESSING)) as entries:
                return [e.name for e in entries if e.name.startswith(ACK_HOLD_PREFIX)]
        except FileNotFoundError:
            return []

    def is_held_for_ack(self, group: str, message_id: str) -> bool:
        return os.path.lexists(self.path(group, PROCESSING, f"{ACK_HOLD_PREFIX}{message_id}"))

    def release_ack_hold(self, group: str, held: str, message_id: str | None = None) -> None:
        """Write the held message's ack, then drop the held file (in that order: the dedupe never lapses)."""
        self.ledger.write_ack(group, message_id or held[len(ACK_HOLD_PREFIX):])
        unlink_quietly(self.path(group, PROCESSING, held))
