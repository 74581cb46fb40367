"""A message's time window: ``notBefore`` (delayed delivery) and ``expiresAt`` (expiry), ISO-8601 UTC on the wire.

Both are optional envelope keys, kept in :attr:`Message.extra` like any other
unknown key, so a message without them costs nothing more than today: the
worker's pipeline looks here only when ``extra`` is not empty. Senders build
the window with :func:`window` (a delay or a time, a ttl or a time), which
refuses one that can never be handed out (expiry at or before the due time);
a writer's hand-made window like that is expired at hand-out instead.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

from ipcpool.errors import InvalidMessage

NOT_BEFORE = "notBefore"
EXPIRES_AT = "expiresAt"
EXPIRED = "expired"  # the dead-letter reason, and what a sender's MessageRejected says
LATEST = 253_402_300_799.999  # 9999-12-31T23:59:59.999Z: the last time an ISO-8601 string can write


class BadWindow(InvalidMessage, ValueError):
    """A sender's time window that can never be handed out, or is not a time: fix the input (CLI exit 2)."""


def format_iso(epoch: float) -> str:
    """Seconds since the epoch as ``2026-12-24T08:00:00.000Z`` (what JavaScript's toISOString() writes)."""
    ms = round(epoch * 1000)
    seconds, millis = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def parse_iso(text: Any, key: str = NOT_BEFORE) -> float:
    """An ISO-8601 time with its zone (``Z`` or ``+00:00``) to seconds since the epoch; InvalidMessage otherwise.

    A time without a zone is refused rather than guessed: the wire says UTC, and a local time read as UTC
    would deliver hours early or late.
    """
    if not isinstance(text, str) or len(text) > 64:
        raise InvalidMessage(f"invalid envelope: {key} must be an ISO-8601 UTC time string, like "
                             f"2026-12-24T08:00:00Z")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidMessage(f"invalid envelope: {key} {text[:64]!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise InvalidMessage(f"invalid envelope: {key} {text[:64]!r} has no zone: end it in Z (UTC)")
    return parsed.timestamp()


def read_window(extra: dict[str, Any]) -> tuple[float | None, float | None]:
    """(due, expires) of an envelope's extra keys, each None when absent; InvalidMessage for a bad value."""
    due = extra.get(NOT_BEFORE)
    expires = extra.get(EXPIRES_AT)
    return (None if due is None else parse_iso(due, NOT_BEFORE),
            None if expires is None else parse_iso(expires, EXPIRES_AT))


def _as_epoch(value: Any, key: str) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise BadWindow(f"{key} must be an aware datetime (datetime.now(UTC) + ...), not a naive one")
        return value.timestamp()
    if isinstance(value, str):
        try:
            return parse_iso(value, key)
        except InvalidMessage as exc:
            raise BadWindow(str(exc)) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise BadWindow(f"{key} must be a datetime, an ISO-8601 string or seconds since the epoch")


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BadWindow(f"{key} must be a number of seconds, 0 or more")
    return float(value)


def _writable(epoch: float, key: str) -> float:
    """A time the wire can carry: from 1970 to the year 9999 (a time past it cannot be written back)."""
    if not math.isfinite(epoch) or not 0 <= epoch <= LATEST:
        raise BadWindow(f"{key} must fall between 1970-01-01 and 9999-12-31 (UTC)")
    return epoch


def window(*, delay: float | None = None, not_before: Any = None, ttl: float | None = None,
           expires_at: Any = None, now: float | None = None) -> dict[str, str]:
    """The envelope keys for a sender's options (empty when none is given); BadWindow when they clash.

    ``delay`` and ``ttl`` count from now (the send), so ``delay=30, ttl=60`` leaves a 30 s window.
    """
    if delay is not None and not_before is not None:
        raise BadWindow("give delay or not_before, not both")
    if ttl is not None and expires_at is not None:
        raise BadWindow("give ttl or expires_at, not both")
    now = time.time() if now is None else now
    keys: dict[str, str] = {}
    due: float | None = None
    if delay is not None and _seconds(delay, "delay") > 0:
        due = now + float(delay)
    elif not_before is not None:
        due = _as_epoch(not_before, "not_before")
    if due is not None:
        keys[NOT_BEFORE] = format_iso(_writable(due, "not_before" if delay is None else "delay"))
    expires: float | None = None
    if ttl is not None:
        if _seconds(ttl, "ttl") <= 0:
            raise BadWindow("ttl must be more than 0 seconds")
        expires = now + float(ttl)
    elif expires_at is not None:
        expires = _as_epoch(expires_at, "expires_at")
    if expires is not None:
        _writable(expires, "expires_at" if ttl is None else "ttl")
        if due is not None and expires <= due:
            raise BadWindow(f"the message would expire ({format_iso(expires)}) before it is due "
                            f"({format_iso(due)}): it could never be handed out")
        keys[EXPIRES_AT] = format_iso(expires)
    return keys
