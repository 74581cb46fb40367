"""Every Redis key ipcpool uses, under ``[redis] prefix`` (two deployments on one Redis keep apart).

::

    <p>:groups                       set: every group a sender or supervisor knows
    <p>:stream:<g>                   the group's queue (consumer group "ipcpool"); entries m, f, s, i
    <p>:queued:<g>:<name>            digest of a queued message (a different one of that name is refused)
    <p>:ack:<g>:<id>                 the ack ledger, for [ack] retention
    <p>:nack:<g>:<id>                why it ended in the dead letters, for [ack] retention
    <p>:answer:<g>:<id>              list: "ack" or the nack, for a sender blocked on it
    <p>:resp:<g>:<id>                list: a request's response, for [spool] response_retention
    <p>:deliveries:<g>:<entry>       list: deliveries of an entry that killed or hung a worker
    <p>:dead:<g>                     the group's dead-letter stream (m, f, s, i, r: the record)
    <p>:supervisor:<consumer>        a live supervisor's status (expires unless renewed)
    <p>:ingested:<consumer>:<g>:<file identity>   a local file already moved into the stream
    <p>:relay:<consumer>             hash "<g>/<id>" -> what a bridged file's writer waits for (see relay.py)
    <p>:alive                        set by every supervisor's renewal (each heartbeat), expires a little before
                                     a lease: gone when none renewed lately (Redis down, stalled or restarted,
                                     or every supervisor cut off)
    <p>:reclaim-hold                 set for one lease when <p>:alive was found gone: no reclaims meanwhile
    <p>:schedule:<name>              hash: a [[schedule]]'s since, and its last due time published (due, id, at)
    <p>:delayed:<g>                  sorted set: entries held until their notBefore, scored by due time (ms)
    <p>:delayed-entry:<g>:<entry>    list: a held entry's fields (m, f, s, i, q, ...), XADDed back when due
"""

from __future__ import annotations

CONSUMER_GROUP = "ipcpool"


class Keys:
    def __init__(self, prefix: str) -> None:
        self.p = prefix

    @property
    def groups(self) -> str:
        return f"{self.p}:groups"

    def stream(self, group: str) -> str:
        return f"{self.p}:stream:{group}"

    def queued(self, group: str, name: str) -> str:
        return f"{self.p}:queued:{group}:{name}"

    def ack(self, group: str, message_id: str) -> str:
        return f"{self.p}:ack:{group}:{message_id}"

    def nack(self, group: str, message_id: str) -> str:
        return f"{self.p}:nack:{group}:{message_id}"

    def answer(self, group: str, message_id: str) -> str:
        return f"{self.p}:answer:{group}:{message_id}"

    def response(self, group: str, request_id: str) -> str:
        return f"{self.p}:resp:{group}:{request_id}"

    def deliveries(self, group: str, entry: str) -> str:
        return f"{self.p}:deliveries:{group}:{entry}"

    def sequence(self, group: str, key: str) -> str:
        """A sequence's line: its entries in stream order, the head first (``ipcpool.ordering``)."""
        return f"{self.p}:seq:{group}:{key}"

    def dead(self, group: str) -> str:
        return f"{self.p}:dead:{group}"

    def supervisor(self, consumer: str) -> str:
        return f"{self.p}:supervisor:{consumer}"

    @property
    def supervisors(self) -> str:
        return f"{self.p}:supervisor:*"

    def ingested(self, consumer: str, group: str, identity: str) -> str:
        return f"{self.p}:ingested:{consumer}:{group}:{identity}"

    def relay(self, consumer: str) -> str:
        return f"{self.p}:relay:{consumer}"

    @property
    def alive(self) -> str:
        return f"{self.p}:alive"

    @property
    def reclaim_hold(self) -> str:
        return f"{self.p}:reclaim-hold"

    def schedule(self, name: str) -> str:
        return f"{self.p}:schedule:{name}"

    def delayed(self, group: str) -> str:
        return f"{self.p}:delayed:{group}"

    def delayed_entry(self, group: str, entry: str) -> str:
        return f"{self.p}:delayed-entry:{group}:{entry}"
