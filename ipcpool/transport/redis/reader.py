"""The one blocking ``XREADGROUP`` a supervisor keeps outstanding, on a connection of its own.

Its socket is among what the supervisor's loop waits on, so a new entry
reaches a worker without polling; the reply is read only once the socket is
readable. The source decides when to read and for how many (its room).
"""

from __future__ import annotations

from typing import Any

from redis import Redis

from ipcpool.ordering import expiry_of_bytes
from ipcpool.transport.redis.keys import CONSUMER_GROUP, Keys
from ipcpool.transport.redis.store import _text


class StreamReader:
    def __init__(self, client: Redis, keys: Keys, block_ms: int) -> None:
        self.client = client
        self.keys = keys
        self.block_ms = block_ms
        self._connection: Any = None  # its own: it blocks
        self.fd = -1
        self.outstanding = False  # a read is in flight

    def issue(self, consumer: str, groups: list[str], count: int) -> None:
        if self._connection is None:
            self._connection = self.client.connection_pool.make_connection()
            self._connection.connect()
        self._connection.send_command("XREADGROUP", "GROUP", CONSUMER_GROUP, consumer, "COUNT", count,
                                      "BLOCK", self.block_ms, "STREAMS", *(self.keys.stream(g) for g in groups),
                                      *([">"] * len(groups)))
        self.fd = self._connection._sock.fileno()
        self.outstanding = True

    def read(self) -> list[tuple[str, str, str | None, float | None]]:
        """The entries the read took, as (group, entry id, its sequence's key or None: ``lines``, its expiresAt
        when in a sequence); raises what Redis raises (the read is over)."""
        self.outstanding = False
        reply = self._connection.read_response()
        prefix = len(self.keys.stream(""))
        return [(_text(stream)[prefix:], _text(entry_id), sequence, None if sequence is None else expiry_of(fields))
                for stream, entries in reply or () for entry_id, fields in entries
                for sequence in (sequence_of(fields),)]

    def drop(self) -> None:
        """The connection failed (or we close): entries a read may have taken unread come back to this
        consumer when it recovers (its own pending entries), or to anyone after the lease."""
        if self._connection is None:
            return
        self.outstanding = False
        self._connection.disconnect()
        self._connection = None


def expiry_of(fields: Any) -> float | None:
    """An entry's ``expiresAt`` (its body's, decoded only when it names one), or None; asked only of an entry
    of a sequence (one that may wait in a line: ``ipcpool.ordering``)."""
    if not fields:
        return None
    if isinstance(fields, dict):
        data, fmt = fields.get(b"m"), fields.get(b"f")
    else:
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        data, fmt = pairs.get(b"m"), pairs.get(b"f")
    if not isinstance(data, bytes) or fmt is None:
        return None
    return expiry_of_bytes(data, _text(fmt))


def sequence_of(fields: Any) -> str | None:
    """An entry's sequence key (its field ``k``, set by the publish script, last), or None. ``fields``: a dict
    (redis-py's reply), or the flat list a raw connection reads."""
    if not fields:
        return None
    if isinstance(fields, dict):
        key = fields.get(b"k")
    else:
        key = fields[-1] if len(fields) >= 2 and fields[-2] == b"k" else None
    return None if key is None else _text(key)
