"""The spool's worker side: read a claimed file, check and write acks, reply, quarantine.

A receipt's ``ref`` is the file's key (``x.json``, or ``tasks/x.json``), claimed
into ``processing/<ref>`` by the supervisor before the worker hears of it.
"""

from __future__ import annotations

from typing import Any

from ipcpool.config import Config
from ipcpool.message import format_for
from ipcpool.transport.base import AckHeld, MessageGone, Raw, Receipt
from ipcpool.transport.spool.layout import MESSAGES, ack_name, message_stem, split_name
from ipcpool.transport.spool.spool import Spool


class SpoolStore:
    """One worker's view of the spool (its own Spool: private staging, its own spare files)."""

    def __init__(self, config: Config) -> None:
        self.spool = Spool.from_config(config)

    def prefetch(self, receipts: list[Receipt]) -> None:
        """Files are read one by one, as they are reached."""

    def read(self, group: str, ref: str) -> Raw:
        try:
            result = self.spool.reader.read_claimed(group, ref)
        except FileNotFoundError as exc:
            raise MessageGone(f"{group}/processing/{ref} is gone") from exc
        return Raw(result.data, format_for(ref), message_stem(ref), split_name(ref)[0] if "/" in ref else MESSAGES,
                   result.mtime, result.recycle)

    def names(self, ref: str) -> tuple[str | None, str]:
        """(format, stem) its name gives, for a message that could not be read."""
        return format_for(ref), message_stem(ref)

    def is_acked(self, group: str, message_id: str, *, holds: bool = False) -> bool:
        """Acked, or (``holds``: some acks wait for room) handled and held for its ack.

        The held file is looked for first: the supervisor writes the ack before
        it removes the file, so no moment is missed.
        """
        spool = self.spool
        return (holds and spool.claims.is_held_for_ack(group, message_id)) or \
            spool.ledger.has_ack_named(group, ack_name(message_id))

    def complete(self, group: str, ref: str, ack_id: str | None, token: Any, *, duplicate: bool = False
                 ) -> AckHeld | None:
        """Ack (when asked), then remove; an ack that cannot be written holds the file instead. A ``duplicate``
        (a copy of what is acked already) refreshes its ack, best effort, and goes."""
        spool = self.spool
        if duplicate:
            try:
                spool.ledger.write_ack_named(group, ack_name(ack_id or ""))
            except OSError:
                pass  # the ack (or the held file that becomes it) is there already
            spool.claims.complete(group, ref, recycle=token)
            return None
        if ack_id is not None:
            try:
                spool.ledger.write_ack_named(group, ack_name(ack_id))
            except OSError as exc:
                held = spool.claims.hold_for_ack(group, ref, ack_id)
                return AckHeld(held, ack_id, exc.strerror or str(exc), exc.errno)
        spool.claims.complete(group, ref, recycle=token)
        return None

    def forget(self, group: str, ref: str) -> None:
        """Nothing is kept of a file once read."""

    def settle(self) -> dict[tuple[str, str], AckHeld]:
        return {}  # complete() is done when it returns

    def reply(self, group: str, request_id: str, data: bytes) -> bool:
        """False when the group has no folder (the response is dropped); OSError when it cannot be written."""
        spool = self.spool
        if not spool.folders.is_group_dir(group):
            return False
        try:
            spool.ledger.write_response(group, request_id, data)
        except FileNotFoundError:
            spool.folders.ensure_group(group)
            spool.ledger.write_response(group, request_id, data)
        return True

    def error_ref(self, group: str, ref: str) -> str:
        return f"{group}/errors/{self.spool.dead.error_name_for(group, ref)}"

    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None,
                   error_ref: str = "") -> None:
        name = error_ref.rsplit("/", 1)[-1] if error_ref else None
        try:
            self.spool.dead.quarantine(group, ref, record, nack=nack, error_name=name)
        except FileNotFoundError as exc:
            raise MessageGone(f"{group}/processing/{ref} is gone") from exc

    def close(self) -> None:
        self.spool.writer.drop_spares()
