"""Files dropped into the local spool's inboxes go into their group's stream: a container that can
only write files can use a fleet.

The local root is watched, scanned and claimed exactly as the file spool does
it (a :class:`SpoolSource`: the same guarantees up to this point). Each
claimed file is read safely and published with a marker of its identity
(name, inode, modification time, size, bytes), in the same script call, so
a restart between publishing and removing the file never publishes it
twice; then the file is removed, and the marker with it (a file sent again
later under the same name is a new message). A file that must not be read (a link, a FIFO, too
large) is quarantined locally, in ``errors/``, with the reason. While Redis
is away, files wait where they are.

Nothing partial is sent on (guarantee 1): a file that does not decode while
it changed within ``[spool] settle_time`` (a writer may still be writing it
in place) goes back to its inbox until it has settled, as a worker puts such
a file back on the spool; settled and still not decodable, it is quarantined
locally, with the reason.

As on the spool, a file whose name is queued or in flight in the cluster (a
namesake dropped earlier, here or on any host, or sent under that id) waits
in its inbox until that one is done: it is never handed to a second handler
meanwhile, and once it is published its id meets the first one's ack. The
same publish call says so (``busy``): one round trip per file, as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection
from typing import Any

from ipcpool.config import Config
from ipcpool.errors import InvalidMessage
from ipcpool.message import Summary, decode, format_for, sniff, summarize
from ipcpool.ordering import key_at_publish
from ipcpool.records import nack_body
from ipcpool.transport.bridge.relay import AnswerRelay, relay_field, relay_value
from ipcpool.transport.redis.connection import UNAVAILABLE
from ipcpool.transport.redis.keys import Keys
from ipcpool.transport.redis.scripts import Scripts, publish
from ipcpool.transport.spool.layout import MESSAGES, PROCESSING, message_stem, split_name
from ipcpool.transport.spool.source import SpoolSource

log = logging.getLogger(__name__)


def stem_of(name: str) -> str:
    """A file's stem as Redis holds it: valid UTF-8 always (a name that is not UTF-8 shows its bytes escaped)."""
    return os.fsencode(message_stem(name)).decode("utf-8", "backslashreplace")

BATCH = 256  # files moved per poll
RETRY_LATER = 1.0  # seconds before a file Redis refused (queue full, away, its name in flight) is tried again
FUTURE_MTIME_SLACK = 1.0  # seconds an mtime may be ahead of our clock and still mean "just written" (the worker's)


class Ingest:
    def __init__(self, config: Config, *, clock: Callable[[], float], on_hint: Callable[[], None]) -> None:
        self.config = config
        self.keys: Keys = Keys(config.redis.prefix)
        self.client: Any = None  # the Redis side, once attached (see Bridge.attach)
        self.scripts: Scripts | None = None
        self.consumer = ""
        self.local = SpoolSource(config, clock=clock, on_hint=on_hint)
        self.moved = 0
        self.waiting: set[tuple[str, str]] = set()  # files whose name is in flight in the cluster (said once)
        self.relay: AnswerRelay | None = None  # writes answers back beside the files (set once the consumer is)

    def open(self) -> None:
        recovered = self.local.open()
        if recovered:
            log.info("%d local files claimed before a restart go to Redis now", recovered)

    def filenos(self) -> list[int]:
        return self.local.filenos()

    def poll(self, now: float, ready: Collection[int] = ()) -> bool:
        """The local inboxes' events, rescans and pruning; True while there is work to come back for at once."""
        return self.local.poll(now, ready) or bool(self.local.backlog())

    def groups(self) -> set[str]:
        return set(self.local.groups)

    def forward(self, now: float) -> None:
        """Move what is claimable now into the streams (UNAVAILABLE propagates: the files wait)."""
        batch = self.local.take(BATCH)
        for n, (group, name, _deliveries) in enumerate(batch):
            try:
                self._forward(group, name)
            except UNAVAILABLE:
                for rest_group, rest_name, _d in batch[n + 1:]:  # claimed with it: they wait in their inbox too
                    self.local.requeue(rest_group, rest_name, later=RETRY_LATER)
                raise
            except Exception as exc:
                log.exception("cannot send a local file on to Redis group=%s file=%s; it is quarantined locally",
                              group, name)
                self.waiting.discard((group, name))
                self._refuse(group, name, f"cannot be sent on to Redis: {type(exc).__name__}: {exc}")

    def _forward(self, group: str, name: str) -> None:
        spool = self.local.spool
        try:
            result = spool.reader.read_claimed(group, name)
            st = os.stat(spool.folders.path(group, PROCESSING, name))
        except FileNotFoundError:
            self.waiting.discard((group, name))
            self.local.done(group, name)
            return
        except InvalidMessage as exc:
            self.waiting.discard((group, name))
            self._refuse(group, name, str(exc), sniff(exc.head, format_for(name), message_stem(name)))
            return
        fmt = format_for(name)
        try:
            if fmt is None:
                raise InvalidMessage("unsupported file extension: use .json or .msgpack")
            said = summarize(decode(result.data, fmt), stem_of(name))
        except InvalidMessage as exc:
            # Still being written? Back until it has not changed for settle_time (a future mtime, from
            # clock skew or touch -d, counts as settled, or it would wait for ever); then it is refused.
            settle = self.config.spool.settle_time
            if -FUTURE_MTIME_SLACK < time.time() - result.mtime < settle:
                self.local.requeue(group, name, later=settle)
            else:
                self.waiting.discard((group, name))
                self._refuse(group, name, str(exc), sniff(result.data, fmt, message_stem(name)), result.data)
            return
        inbox = split_name(name)[0] if "/" in name else MESSAGES
        digest = hashlib.sha1(result.data).hexdigest()
        marker = self._marker(group, name, st, digest)
        stem = stem_of(name)
        wants = said.id is not None and (said.requires_ack or said.reply_to is not None)
        relay = (self.keys.relay(self.consumer), relay_field(group, said.id), relay_value(said.reply_to,
                 said.requires_ack, said.timestamp)) if wants and said.id is not None else None
        try:
            assert self.scripts is not None
            reply = publish(self.scripts, self.keys, group, stem, stem, result.data,
                            fmt, inbox, digest,
                            self.config.spool.max_queued, max(1, int(self.config.ack.retention)), marker,
                            relay=relay, sequence=key_at_publish(self.local.sequences.rules, group, name,
                                                                 result.data))
        except UNAVAILABLE:
            self.local.requeue(group, name, later=RETRY_LATER)
            raise
        verdict = reply[0] if reply else b""
        if verdict in (b"full", b"busy"):
            if verdict == b"busy" and (group, name) not in self.waiting:
                self.waiting.add((group, name))
                log.info("local file waits: a message named %s is queued or in flight in the cluster; it is "
                         "sent once that one is done group=%s file=%s", stem, group, name)
            self.local.requeue(group, name, later=RETRY_LATER)
            return
        self.waiting.discard((group, name))
        if relay is not None and self.relay is not None and said.id is not None and verdict == b"ok":
            self.relay.add(group, said.id, said.reply_to, said.requires_ack, said.timestamp)  # answers come here
        spool.claims.complete(group, name)
        self.local.done(group, name)
        self.moved += 1
        self._forget_marker(marker)

    def _marker(self, group: str, name: str, st: os.stat_result, digest: str) -> str:
        """The key that says this very file was published. Its bytes too: where times are whole seconds, a
        name reused within one on a reused inode is another file."""
        identity = os.fsencode(name) + f":{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:{digest}".encode()
        return self.keys.ingested(self.consumer, group, hashlib.sha1(identity).hexdigest())

    def _forget_marker(self, marker: str) -> None:
        """The file is gone: its marker has done its job (a restart between publishing and removing it). Kept,
        a file reusing its name, inode and bytes later (a writer sending the same message again) would be
        taken for it and dropped."""
        try:
            self.client.delete(marker)
        except UNAVAILABLE:
            pass  # it expires within a day; nothing is lost meanwhile but a resend of identical bytes

    def _refuse(self, group: str, name: str, reason: str, said: Summary | None = None,
                data: bytes | None = None) -> None:
        """Quarantined here, in the local errors/, with a nack beside it for its writer, as the spool does."""
        record = {"id": said.id if said else None, "type": said.type if said else None, "reason": reason,
                  "attempts": 0}
        nack = nack_body(group, record, said, "rejected", data) if said is not None else None
        self.local.quarantine(group, name, record, nack)
        log.warning("local file refused, not sent to Redis group=%s file=%s: %s", group, name, reason)

    def housekeeping(self, live_pids: set[int]) -> None:
        self.local.housekeeping(live_pids)

    def stats(self) -> dict[str, Any]:
        local = self.local.stats()
        return {"localQueued": sum(g["queued"] for g in local["groups"].values()), "moved": self.moved,
                "localStranded": local["transport"]["stranded"]}

    def close(self) -> None:
        self.local.close()
