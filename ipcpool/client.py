"""Sending: atomic publish, waiting for acks with retries, request/response.

A :class:`Client` belongs to one group, its own: replies to its requests come
back to ``<root>/<group>/responses/``. Every publish is tmp + rename, so a
receiver never sees half a message. Waiting uses one inotify watch per client
(with a slow poll as fallback), never a busy loop. Re-sends keep the same id
and bytes, and happen only when the message is no longer queued, in flight or
acknowledged, so a slow handler never gets a second copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipcpool.config import AckConfig, Config, load_config
from ipcpool.errors import AckTimeout, HandlerError, InvalidMessage, QueueFull, ResponseTimeout
from ipcpool.message import (
    IPCMessageType,
    Message,
    build_envelope,
    check_group_name,
    encode,
    extension_for,
    now_iso,
)
from ipcpool.retry import ack_retrying, async_ack_retrying
from ipcpool.spool import ACKS, MESSAGES, PROCESSING, RESPONSES, Spool
from ipcpool.watcher import POLL_FALLBACK, FileWaiter

log = logging.getLogger(__name__)

ErrorCallback = Callable[[Message], Any]


class _NotAcked(Exception):
    """One attempt's wait for the ack ran out (drives the tenacity policy)."""


class Client:
    """Publish messages into a spool root and wait for their acks or responses."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        group: str = "main",
        *,
        format: str = "json",  # noqa: A002 - matches the config key
        durability: str = "process",
        mode: str = "private",
        max_queued: int = 0,
        max_message_bytes: int = 1024 * 1024,
        ack: AckConfig | None = None,
        on_give_up: ErrorCallback | None = None,
    ) -> None:
        self.group = check_group_name(group)
        self.format = format
        self.max_queued = max_queued
        self.max_message_bytes = max_message_bytes
        self.ack_policy = ack or AckConfig()
        self.on_give_up = on_give_up
        self.spool = Spool(root, durability=durability, mode=mode)
        self.spool.ensure_root()
        self.spool.ensure_group(self.group)
        self._waiter = FileWaiter()
        self._waiter_lock = threading.Lock()
        self._known_groups: set[str] = {self.group}

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], group: str = "main", **overrides: Any) -> Client:
        cfg = config if isinstance(config, Config) else load_config(config)
        options: dict[str, Any] = dict(
            format=cfg.spool.format, durability=cfg.spool.durability, mode=cfg.spool.mode,
            max_queued=cfg.spool.max_queued, max_message_bytes=cfg.spool.max_message_bytes, ack=cfg.ack,
        )
        options.update(overrides)
        return cls(cfg.spool.root, group, **options)

    @property
    def root(self) -> Path:
        return self.spool.root

    def close(self) -> None:
        self._waiter.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing ----------------------------------------------------------------------------

    def _prepare(self, group: str, type_: str | IPCMessageType, payload: Any, *, requires_ack: bool,
                 reply_to: str | None, message_id: str | None, fmt: str | None) -> tuple[str, str, bytes]:
        envelope = build_envelope(group, str(type_), payload, requires_ack=requires_ack,
                                  reply_to=reply_to, message_id=message_id)
        fmt = fmt or self.format
        data = encode(envelope, fmt)
        if len(data) > self.max_message_bytes:
            raise InvalidMessage(f"message is {len(data)} bytes, over the receiver's limit of "
                                 f"{self.max_message_bytes} ([spool] max_message_bytes)")
        return envelope["id"], envelope["id"] + extension_for(fmt), data

    def _ensure_group(self, group: str) -> None:
        if group not in self._known_groups:
            self.spool.ensure_group(group)
            self._known_groups.add(group)

    def _check_room(self, group: str) -> None:
        if self.max_queued and self.spool.count(group, MESSAGES) >= self.max_queued:
            raise QueueFull(group, self.max_queued)

    def _publish(self, group: str, name: str, data: bytes) -> None:
        self._ensure_group(group)
        self._check_room(group)
        self.spool.publish(group, name, data)  # the callers log "IPC message sent", once

    def send(
        self,
        group: str,
        type: str | IPCMessageType,  # noqa: A002 - the original API's name
        payload: Any,
        requires_ack: bool = False,
        reply_to: str | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        message_id: str | None = None,
        format: str | None = None,  # noqa: A002
    ) -> str:
        """Publish one message; returns its id. ``wait=True`` also waits for the ack (with retries)."""
        if wait:
            return self.send_and_wait(group, type, payload, timeout=timeout, reply_to=reply_to,
                                      message_id=message_id, format=format)
        message_id, name, data = self._prepare(group, type, payload, requires_ack=requires_ack,
                                               reply_to=reply_to, message_id=message_id, fmt=format)
        self._publish(group, name, data)
        log.debug("IPC message sent id=%s group=%s type=%s", message_id, group, type)
        return message_id

    # -- acknowledgements -------------------------------------------------------------------------

    def is_acked(self, group: str, message_id: str) -> bool:
        return self.spool.has_ack(group, message_id)

    def _present_or_acked(self, group: str, name: str, message_id: str) -> bool:
        """Queued, in flight or acked: checked in lifecycle order so no move slips between checks."""
        spool = self.spool
        return (os.path.exists(spool.path(group, MESSAGES, name))
                or os.path.exists(spool.path(group, PROCESSING, name))
                or spool.has_ack(group, message_id))

    def _ensure_present(self, group: str, name: str, data: bytes, message_id: str, attempt: int) -> None:
        if attempt == 1:
            self._publish(group, name, data)
            log.info("IPC message sent id=%s group=%s (waiting for ACK)", message_id, group)
        elif not self._present_or_acked(group, name, message_id):
            self._publish(group, name, data)
            log.warning("Retrying IPC message id=%s group=%s attempt=%d: re-published", message_id, group, attempt)
        else:
            log.warning("Retrying IPC message id=%s group=%s attempt=%d: still queued or in flight, not re-sent",
                        message_id, group, attempt)

    def wait_for_ack(self, group: str, message_id: str, timeout: float) -> bool:
        with self._waiter_lock:
            return self._waiter.wait(self.spool.path(group, ACKS), f"{message_id}.ack", timeout)

    def send_and_wait(
        self,
        group: str,
        type: str | IPCMessageType,  # noqa: A002
        payload: Any,
        *,
        timeout: float | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
        format: str | None = None,  # noqa: A002
    ) -> str:
        """Publish with requiresAck and wait for ``acks/<id>.ack``; AckTimeout after every retry."""
        message_id, name, data = self._prepare(group, type, payload, requires_ack=True, reply_to=reply_to,
                                               message_id=message_id, fmt=format)
        per_attempt = self.ack_policy.timeout if timeout is None else timeout
        attempts = 0
        try:
            for attempt in ack_retrying(self.ack_policy, retry_on=_NotAcked):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    self._ensure_present(group, name, data, message_id, attempts)
                    if not self.wait_for_ack(group, message_id, per_attempt):
                        raise self._ack_timed_out(message_id, group, attempts, per_attempt)
        except _NotAcked:
            error = AckTimeout(message_id, group, attempts, per_attempt)
            self._give_up(error)
            raise error from None
        log.info("ACK received id=%s group=%s attempt=%d", message_id, group, attempts)
        return message_id

    def _ack_timed_out(self, message_id: str, group: str, attempt: int, per_attempt: float) -> _NotAcked:
        """Log one attempt's timeout; the returned exception drives the tenacity policy."""
        log.warning("ACK timeout id=%s group=%s attempt=%d of %d (%gs)", message_id, group,
                    attempt, self.ack_policy.max_retries + 1, per_attempt)
        return _NotAcked()

    def _give_up(self, error: AckTimeout) -> None:
        log.error("IPC message not acknowledged, giving up id=%s group=%s attempts=%d",
                  error.message_id, error.group, error.attempts)
        if self.on_give_up is None:
            return
        message = Message(
            id=f"{error.message_id}-error", type=IPCMessageType.ERROR.value, group=error.group,
            payload={"error": str(error), "messageId": error.message_id, "recoverable": False,
                     "attempts": error.attempts},
            timestamp=now_iso(),
        )
        try:
            self.on_give_up(message)
        except Exception:
            log.exception("error handler raised while reporting %s", error.message_id)

    # -- request / response -------------------------------------------------------------------------------

    def request(
        self,
        group: str,
        type: str | IPCMessageType,  # noqa: A002
        payload: Any,
        timeout: float = 30.0,
        *,
        format: str | None = None,  # noqa: A002
    ) -> Any:
        """Send with replyTo = this client's group and return the handler's result.

        Raises HandlerError when the handler failed, ResponseTimeout when no
        response came in ``timeout`` seconds.
        """
        message_id = self.send(group, type, payload, reply_to=self.group, format=format)
        directory = self.spool.path(self.group, RESPONSES)
        with self._waiter_lock:
            arrived = self._waiter.wait(directory, f"{message_id}.json", timeout)
        if not arrived:
            raise ResponseTimeout(message_id, group, timeout)
        return self._take_response(message_id)

    def _take_response(self, message_id: str) -> Any:
        path = self.spool.response_path(self.group, message_id)
        with open(path, "rb") as handle:
            body = handle.read()
        try:
            os.unlink(path)
        except OSError:
            pass  # shared mode: left for the supervisor's pruning
        return unpack_response(message_id, body)


def unpack_response(message_id: str, body: bytes) -> Any:
    try:
        envelope = json.loads(body)
        payload = envelope["payload"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidMessage(f"unreadable response to {message_id}: {exc}") from exc
    if payload.get("success"):
        log.info("Response received id=%s", message_id)
        return payload.get("result")
    raise HandlerError(message_id, str(payload.get("error", "unknown error")), str(payload.get("errorType", "")))


class AsyncClient:
    """The asyncio flavour: the same operations as coroutines, all waits sharing one watch."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], group: str = "main", **overrides: Any) -> AsyncClient:
        return cls(Client.from_config(config, group, **overrides))

    def _on_readable(self) -> None:
        for key in self.client._waiter.read_events():
            for future in self._waiters.pop(key, []):
                if not future.done():
                    future.set_result(None)

    async def _wait_file(self, directory: str, name: str, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        waiter = self.client._waiter
        if self._loop is not loop and waiter.fileno() >= 0:
            loop.add_reader(waiter.fileno(), self._on_readable)
            self._loop = loop
        waiter.watch_dir(directory)
        target = os.path.join(directory, name)
        deadline = loop.time() + timeout
        while not os.path.exists(target):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault((directory, name), []).append(future)
            try:
                await asyncio.wait_for(future, min(remaining, POLL_FALLBACK))
            except TimeoutError:
                pass
        return True

    async def send(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                   requires_ack: bool = False, reply_to: str | None = None, **kwargs: Any) -> str:
        return self.client.send(group, type, payload, requires_ack, reply_to, **kwargs)

    async def send_and_wait(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                            *, timeout: float | None = None, message_id: str | None = None) -> str:
        c = self.client
        message_id, name, data = c._prepare(group, type, payload, requires_ack=True, reply_to=None,
                                            message_id=message_id, fmt=None)
        per_attempt = c.ack_policy.timeout if timeout is None else timeout
        attempts = 0
        try:
            async for attempt in async_ack_retrying(c.ack_policy, retry_on=_NotAcked):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    c._ensure_present(group, name, data, message_id, attempts)
                    if not await self._wait_file(c.spool.path(group, ACKS), f"{message_id}.ack", per_attempt):
                        raise c._ack_timed_out(message_id, group, attempts, per_attempt)
        except _NotAcked:
            error = AckTimeout(message_id, group, attempts, per_attempt)
            c._give_up(error)
            raise error from None
        log.info("ACK received id=%s group=%s attempt=%d", message_id, group, attempts)
        return message_id

    async def request(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                      timeout: float = 30.0) -> Any:
        c = self.client
        message_id = c.send(group, type, payload, reply_to=c.group)
        if not await self._wait_file(c.spool.path(c.group, RESPONSES), f"{message_id}.json", timeout):
            raise ResponseTimeout(message_id, group, timeout)
        return c._take_response(message_id)

    def close(self) -> None:
        if self._loop is not None and self.client._waiter.fileno() >= 0:
            self._loop.remove_reader(self.client._waiter.fileno())
        self.client.close()
