"""A sender's side on Redis: publish into a group's stream, wait for the answer on a list.

Publishing is one script call (a different message queued under the name is
refused; the same bytes again are the same message; a full queue is
QueueFull). An answer is pushed by whoever finishes the message: ``ack`` or
the nack's JSON on ``answer:<group>:<id>``, a response on
``resp:<own group>:<id>``; the sender blocks on them (BLPOP), after checking
the ledger, so an answer that came before it waited is not missed. While
Redis is away, a sender retries with back-off for ``[redis] outage_timeout``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ipcpool.config import Config
from ipcpool.errors import MessageExists, QueueFull
from ipcpool.message import format_for
from ipcpool.ordering import key_at_publish, rules_of, unmarked
from ipcpool.transport.redis.connection import (
    UNAVAILABLE,
    Lane,
    Outage,
    client_options,
    connect,
    retrying,
    unavailable,
)
from ipcpool.transport.redis.keys import Keys
from ipcpool.transport.redis.scripts import Scripts, publish, publish_due

Answer = tuple[str, Any]
BLOCK_SLICE = 1.0  # seconds one BLPOP waits before the ledger is looked at again


class RedisOutbox:
    backend = "redis"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = Path(config.spool.root).absolute()  # the local root (its status, its files)
        self.client = connect(config, timeout=BLOCK_SLICE + 10.0)
        self.keys = Keys(config.redis.prefix)
        self.scripts = Scripts(self.client)
        self.lane = Lane(self.client)  # publish, once per message
        self.outage = Outage(config, "sender", gives_up_after=config.redis.outage_timeout)
        self.max_queued = config.spool.max_queued
        self.ttl = max(1, int(config.ack.retention))
        self.rules = rules_of(config)  # the groups that order their messages: their lines are kept in Redis

    def _retry(self, operation: Callable[[], Any]) -> Any:
        return retrying(self.outage, self.config.redis.outage_timeout, operation)

    def ensure_group(self, group: str) -> None:
        """Groups are registered by the first publish (and the supervisors' config)."""

    def publish(self, group: str, name: str, data: bytes) -> None:
        stem = unmarked(name.rsplit(".", 1)[0])  # the key goes with the entry (field k): the mark has done its job
        digest = hashlib.sha1(data).hexdigest()
        sequence = key_at_publish(self.rules, group, name, data)
        reply = self._retry(lambda: publish(self.scripts, self.keys, group, stem, stem, data, format_for(name) or "",
                                            "messages", digest, self.max_queued, self.ttl, client=self.lane,
                                            sequence=sequence))
        verdict = reply[0] if reply else b""
        if verdict == b"exists":
            raise MessageExists(group, name)
        if verdict == b"full":
            raise QueueFull(group, self.max_queued)

    def present(self, group: str, name: str, message_id: str) -> bool:
        stem = unmarked(name.rsplit(".", 1)[0])
        return bool(self._retry(lambda: self.client.exists(self.keys.queued(group, stem),
                                                           self.keys.ack(group, message_id))))

    def is_acked(self, group: str, message_id: str) -> bool:
        return bool(self._retry(lambda: self.client.exists(self.keys.ack(group, message_id))))

    def nack(self, group: str, message_id: str) -> dict[str, Any] | None:
        return _json(self._retry(lambda: self.client.get(self.keys.nack(group, message_id))))

    def depth(self, group: str) -> int:
        return int(self._retry(lambda: self.client.xlen(self.keys.stream(group))))

    def schedule_marks(self, names: Sequence[str], *, since: int | None = None) -> dict[str, dict[str, Any]]:
        """Each schedule's hash (HSETNX of ``since`` first: whoever comes first records it)."""
        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                if since is not None:
                    pipe.hsetnx(self.keys.schedule(name), "since", since)
                pipe.hgetall(self.keys.schedule(name))
            return pipe.execute()[1::2] if since is not None else pipe.execute()

        marks: dict[str, dict[str, Any]] = {}
        for name, raw in zip(names, self._retry(read) if names else [], strict=True):
            mark = {k.decode(): v.decode() for k, v in raw.items()}
            for key in ("since", "due"):
                if key in mark:
                    mark[key] = int(mark[key])
            if "at" in mark:
                mark["at"] = float(mark["at"])
            if mark:
                marks[name] = mark
        return marks

    def publish_due(self, schedule: str, due: int, group: str, name: str, data: bytes, mark: dict[str, Any]) -> bool:
        stem = name.rsplit(".", 1)[0]
        reply = self._retry(lambda: publish_due(self.scripts, self.keys, group, stem, data, format_for(name) or "",
                                                hashlib.sha1(data).hexdigest(), self.max_queued, self.ttl,
                                                schedule, due, float(mark.get("at") or time.time())))
        verdict = reply[0] if reply else b""
        if verdict == b"full":
            raise QueueFull(group, self.max_queued)
        return verdict == b"ok"

    def supervisor_running(self) -> bool | None:
        try:
            return any(True for _ in self.client.scan_iter(match=self.keys.supervisors, count=100))
        except UNAVAILABLE:
            return None

    def wait_answer(self, group: str, message_id: str, timeout: float, accept_nack: Callable[[dict[str, Any]], bool],
                    *, reply_group: str | None = None) -> Answer | None:
        deadline = time.monotonic() + timeout
        answer_key = self.keys.answer(group, message_id)
        lists = [self.keys.response(reply_group, message_id), answer_key] if reply_group else [answer_key]
        while True:
            found = self._ledger(group, message_id, accept_nack, reply_group)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                popped = self.client.blpop(lists, timeout=max(0.01, min(remaining, BLOCK_SLICE)))
            except UNAVAILABLE as exc:
                self.outage.failed(exc)
                time.sleep(min(max(0.0, self.outage.next_try - time.monotonic()), max(0.0, remaining)))
                continue
            self.outage.ok()
            found = self._popped(popped, answer_key, accept_nack)
            if found is not None:
                return found

    def _ledger(self, group: str, message_id: str, accept_nack: Callable[[dict[str, Any]], bool],
                reply_group: str | None) -> Answer | None:
        """What the keys say already (an answer that came before anyone waited for it)."""
        try:
            acked, nack = self.client.pipeline(transaction=False).exists(self.keys.ack(group, message_id)) \
                .get(self.keys.nack(group, message_id)).execute()
        except UNAVAILABLE as exc:
            self.outage.failed(exc)
            return None
        body = _json(nack)
        if body is not None and accept_nack(body):
            return "nack", body
        if acked and reply_group is None:
            return "ack", None
        return None

    def _popped(self, popped: Any, answer_key: str, accept_nack: Callable[[dict[str, Any]], bool]) -> Answer | None:
        if not popped:
            return None
        key, value = popped
        if key.decode() != answer_key:
            return "response", value
        if value == b"ack":
            return "ack", None
        body = _json(value)
        if body is not None and accept_nack(body):
            return "nack", body
        return None  # an older message's answer: wait on

    async def async_wait_answer(self, group: str, message_id: str, timeout: float,
                                accept_nack: Callable[[dict[str, Any]], bool], *,
                                reply_group: str | None = None) -> Answer | None:
        """The same, on redis-py's asyncio client: every wait is a coroutine, none a thread."""
        import redis.asyncio

        deadline = time.monotonic() + timeout
        answer_key = self.keys.answer(group, message_id)
        lists = [self.keys.response(reply_group, message_id), answer_key] if reply_group else [answer_key]
        options = client_options(self.config, BLOCK_SLICE + 10.0)  # TLS and its CA as for the blocking client
        async with redis.asyncio.Redis.from_url(self.config.redis.url, **options) as client:
            while True:
                try:
                    acked, nack = await client.pipeline(transaction=False).exists(
                        self.keys.ack(group, message_id)).get(self.keys.nack(group, message_id)).execute()
                    body = _json(nack)
                    if body is not None and accept_nack(body):
                        return "nack", body
                    if acked and reply_group is None:
                        return "ack", None
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    popped = await client.blpop(lists, timeout=max(0.01, min(remaining, BLOCK_SLICE)))
                except UNAVAILABLE as exc:
                    if time.monotonic() > deadline:
                        raise unavailable(exc, self.config) from exc
                    await asyncio.sleep(0.2)
                    continue
                found = self._popped(popped, answer_key, accept_nack)
                if found is not None:
                    return found

    def close(self) -> None:
        self.lane.close()
        self.client.close()


def _json(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        body = json.loads(value)
    except (ValueError, TypeError):
        return None
    return body if isinstance(body, dict) else None
