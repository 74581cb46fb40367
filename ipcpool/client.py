"""Sending: atomic publish, waiting for acks with retries, request/response.

A :class:`Client` belongs to one group, its own: replies to its requests come
back to ``<root>/<group>/responses/``. Every publish is tmp + rename, so a
receiver never sees half a message, and never replaces a different queued
message of the same name. Waiting uses one inotify descriptor per client,
shared by its threads (with a slow poll as fallback), never a busy loop.
Re-sends keep the same id and bytes, and happen only when the message is no
longer queued, in flight, acknowledged or refused, so a slow handler never
gets a second copy.

A message that ends in ``errors/`` answers its sender at once: the worker
(or the supervisor, for poison) writes ``acks/<id>.nack`` with the reason, and
a waiting ``send_and_wait`` or ``request`` raises :class:`MessageRejected` or
:class:`MessageFailed`. With no supervisor holding the root, the first
attempt's time-out says so and the wait ends there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipcpool.config import AckConfig, Config, load_config
from ipcpool.errors import (
    AckTimeout,
    InvalidMessage,
    IpcpoolError,
    MessageFailed,
    MessageNotHandled,
    MessageRejected,
    QueueFull,
    ResponseTimeout,
    UnknownGroup,
)
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
from ipcpool.spool import ACKS, MESSAGES, PROCESSING, Spool, ack_name, nack_name
from ipcpool.watcher import POLL_FALLBACK, FileWaiter

log = logging.getLogger(__name__)

ErrorCallback = Callable[[Message], Any]


class _NotAcked(Exception):
    """One attempt's wait for the ack ran out (drives the tenacity policy)."""


class Prepared:
    """One message ready to publish: its id, file name, bytes, and the timestamp inside (for nacks)."""

    __slots__ = ("data", "group", "message_id", "name", "timestamp")

    def __init__(self, group: str, envelope: dict[str, Any], fmt: str, data: bytes) -> None:
        self.group = group
        self.message_id: str = envelope["id"]
        self.name = self.message_id + extension_for(fmt)
        self.data = data
        self.timestamp: str = envelope["timestamp"]


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
        groups: tuple[str, ...] | None = None,
        strict_groups: bool = False,
    ) -> None:
        self.configured_groups = groups  # [spool] groups, when known: others are warned of (or refused)
        self.strict_groups = strict_groups
        self._warned: set[str] = set()
        self.group = self._check_group(check_group_name(group))
        self.format = format
        self.max_queued = max_queued
        self.max_message_bytes = max_message_bytes
        self.ack_policy = ack or AckConfig()
        self.on_give_up = on_give_up
        self.spool = Spool(root, durability=durability, mode=mode)
        self.spool.ensure_root()
        self.spool.ensure_group(self.group)
        self._waiter = FileWaiter()
        self._known_groups: set[str] = {self.group}

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], group: str = "main", **overrides: Any) -> Client:
        cfg = config if isinstance(config, Config) else load_config(config)
        options: dict[str, Any] = dict(
            format=cfg.spool.format, durability=cfg.spool.durability, mode=cfg.spool.mode,
            max_queued=cfg.spool.max_queued, max_message_bytes=cfg.spool.max_message_bytes, ack=cfg.ack,
            groups=cfg.spool.groups, strict_groups=cfg.spool.strict_groups,
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

    def prepare(self, group: str, type_: str | IPCMessageType, payload: Any, *, requires_ack: bool = False,
                reply_to: str | None = None, message_id: str | None = None, fmt: str | None = None) -> Prepared:
        """Build and encode a message as the receiver will validate it (nothing is published)."""
        envelope = build_envelope(group, str(type_), payload, requires_ack=requires_ack,
                                  reply_to=reply_to, message_id=message_id)
        self._check_group(group)
        fmt = fmt or self.format
        data = encode(envelope, fmt)
        if len(data) > self.max_message_bytes:
            raise InvalidMessage(f"message is {len(data)} bytes, over the receiver's limit of "
                                 f"{self.max_message_bytes} ([spool] max_message_bytes)")
        return Prepared(group, envelope, fmt, data)

    def _check_group(self, group: str) -> str:
        """A group missing from [spool] groups is most likely a typo: say so once (or refuse, when strict)."""
        known = self.configured_groups
        if known is None or group in known:
            return group
        if self.strict_groups:
            raise UnknownGroup(group, known)
        if group not in self._warned:
            self._warned.add(group)
            log.warning("group %r is not in [spool] groups (%s); a typo? Its folder is created, and served only "
                        "because the supervisor picks up new group folders", group, ", ".join(known))
        return group

    def _ensure_group(self, group: str) -> None:
        if group not in self._known_groups:
            self.spool.ensure_group(group)
            self._known_groups.add(group)

    def _check_room(self, group: str) -> None:
        if self.max_queued and self.spool.count(group, MESSAGES) >= self.max_queued:
            raise QueueFull(group, self.max_queued)

    def publish(self, message: Prepared) -> None:
        """Place a prepared message in its group's messages/ (MessageExists if a different one has its name)."""
        self._ensure_group(message.group)
        self._check_room(message.group)
        self.spool.publish(message.group, message.name, message.data)  # the callers log "IPC message sent", once

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
        message = self.prepare(group, type, payload, requires_ack=requires_ack, reply_to=reply_to,
                               message_id=message_id, fmt=format)
        self.publish(message)
        log.debug("IPC message sent id=%s group=%s type=%s", message.message_id, group, type)
        return message.message_id

    # -- acknowledgements -------------------------------------------------------------------------

    def is_acked(self, group: str, message_id: str) -> bool:
        return self.spool.has_ack(group, message_id)

    def _ack_paths(self, message: Prepared) -> tuple[str, str]:
        acks = self.spool.path(message.group, ACKS)
        return f"{acks}/{ack_name(message.message_id)}", f"{acks}/{nack_name(message.message_id)}"

    def _present_or_acked(self, message: Prepared) -> bool:
        """Queued, in flight or acked: checked in lifecycle order so no move slips between checks."""
        spool, group, name = self.spool, message.group, message.name
        return (os.path.exists(spool.path(group, MESSAGES, name))
                or os.path.exists(spool.path(group, PROCESSING, name))
                or spool.has_ack(group, message.message_id))

    def ensure_present(self, message: Prepared, attempt: int) -> None:
        """Attempt 1 publishes; later ones re-publish only what is neither there, acked nor refused."""
        group, message_id = message.group, message.message_id
        if attempt == 1:
            self.publish(message)
            log.info("IPC message sent id=%s group=%s (waiting for ACK)", message_id, group)
            return
        nack = self._nack_path(message)
        if os.path.exists(nack) and self.nack_matches(message)(nack):
            raise self.nacked(message, nack)
        if not self._present_or_acked(message):
            self.publish(message)
            log.warning("Retrying IPC message id=%s group=%s attempt=%d: re-published", message_id, group, attempt)
        else:
            log.warning("Retrying IPC message id=%s group=%s attempt=%d: still queued or in flight, not re-sent",
                        message_id, group, attempt)

    def _nack_path(self, message: Prepared) -> str:
        return self._ack_paths(message)[1]

    @staticmethod
    def nack_matches(message: Prepared) -> Callable[[str], bool]:
        """Whether a nack file answers this very message (not an older one with the same id)."""
        def matches(path: str) -> bool:
            body = _read_json(path)
            return body is not None and body.get("timestamp") in (None, message.timestamp)

        return matches

    def nacked(self, message: Prepared, path: str) -> MessageNotHandled:
        """The typed error a nack stands for, reported to the give-up hook and logged."""
        body = _read_json(path) or {}
        error = error_from_nack(message.message_id, message.group, body)
        log.error("IPC message not handled id=%s group=%s: %s", message.message_id, message.group, error.reason)
        self._give_up(error)
        return error

    def wait_for_ack(self, group: str, message_id: str, timeout: float) -> bool:
        return self._waiter.wait(self.spool.path(group, ACKS), ack_name(message_id), timeout)

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
        """Publish with requiresAck and wait for ``acks/<id>.ack``.

        Raises MessageRejected / MessageFailed as soon as the message ends in
        errors/, AckTimeout after every retry (or after the first, when no
        supervisor is running for the root).
        """
        message = self.prepare(group, type, payload, requires_ack=True, reply_to=reply_to,
                               message_id=message_id, fmt=format)
        return self.wait_acked(message, timeout, published=False)

    def wait_acked(self, message: Prepared, timeout: float | None, *, published: bool) -> str:
        """The ack loop of :meth:`send_and_wait`; ``published``: attempt 1 was published already."""
        per_attempt = self.ack_policy.timeout if timeout is None else timeout
        ack, nack = self._ack_paths(message)
        attempts = 0
        try:
            for attempt in ack_retrying(self.ack_policy, retry_on=_NotAcked):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if not (published and attempts == 1):
                        self.ensure_present(message, attempts)
                    found = self._waiter.wait_for([ack, nack], per_attempt, accept=self._accept(ack, message))
                    if found == nack:
                        raise self.nacked(message, nack)
                    if found is None:
                        raise self.ack_timed_out(message, attempts, per_attempt)
        except _NotAcked:
            error = AckTimeout(message.message_id, message.group, attempts, per_attempt, self.waiting_hint())
            self._give_up(error)
            raise error from None
        log.info("ACK received id=%s group=%s attempt=%d", message.message_id, message.group, attempts)
        return message.message_id

    def _accept(self, ack: str, message: Prepared) -> Callable[[str], bool]:
        matches = self.nack_matches(message)
        return lambda path: path == ack or matches(path)

    def ack_timed_out(self, message: Prepared, attempt: int, per_attempt: float) -> Exception:
        """Log one attempt's timeout; the exception ends the wait (no supervisor) or drives tenacity."""
        log.warning("ACK timeout id=%s group=%s attempt=%d of %d (%gs)", message.message_id, message.group,
                    attempt, self.ack_policy.max_retries + 1, per_attempt)
        if self.spool.supervisor_running() is False:
            error = AckTimeout(message.message_id, message.group, attempt, per_attempt, self.waiting_hint())
            log.error("%s", error.hint)
            self._give_up(error)
            return error
        return _NotAcked()

    def waiting_hint(self) -> str:
        """Why nothing answered, when that can be told from here."""
        running = self.spool.supervisor_running()
        if running is False:
            return (f"no ipcpool supervisor is running for {self.spool.root}; "
                    "the message stays queued and will be handled when one starts")
        if running:
            return "the supervisor is running: its handler may take longer than the timeout (see [ack] timeout)"
        return "is `ipcpool run` up for this root?"

    def _give_up(self, error: IpcpoolError) -> None:
        message_id = getattr(error, "message_id", "")
        group = getattr(error, "group", "")
        if isinstance(error, AckTimeout):
            log.error("IPC message not acknowledged, giving up id=%s group=%s attempts=%d",
                      message_id, group, error.attempts)
        if self.on_give_up is None:
            return
        payload: dict[str, Any] = {"error": str(error), "messageId": message_id, "recoverable": False}
        if isinstance(error, AckTimeout):
            payload["attempts"] = error.attempts
        if isinstance(error, MessageNotHandled):
            payload.update(reason=error.reason, errorFile=error.error_file, outcome=error.outcome)
        message = Message(id=f"{message_id}-error", type=IPCMessageType.ERROR.value, group=group,
                          payload=payload, timestamp=now_iso())
        try:
            self.on_give_up(message)
        except Exception:
            log.exception("error handler raised while reporting %s", message_id)

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

        Raises MessageFailed (a HandlerError) when the handler failed,
        MessageRejected when no handler took it, ResponseTimeout when nothing
        came in ``timeout`` seconds.
        """
        message = self.prepare(group, type, payload, reply_to=self.group, fmt=format)
        self.publish(message)
        log.info("IPC message sent id=%s group=%s (waiting for the response)", message.message_id, group)
        response = self.spool.response_path(self.group, message.message_id)
        nack = self._nack_path(message)
        found = self._waiter.wait_for([response, nack], timeout, accept=self._accept(response, message))
        return self.answer(message, found, timeout)

    def answer(self, message: Prepared, found: str | None, timeout: float) -> Any:
        """The result of a request, from whichever of its answers arrived (None: none did)."""
        if found is None:
            raise ResponseTimeout(message.message_id, message.group, timeout, self.waiting_hint())
        if found == self._nack_path(message):
            raise self.nacked(message, found)
        return self._take_response(message)

    def _take_response(self, message: Prepared) -> Any:
        path = self.spool.response_path(self.group, message.message_id)
        with open(path, "rb") as handle:
            body = handle.read()
        try:
            os.unlink(path)
        except OSError:
            pass  # shared mode: left for the supervisor's pruning
        return unpack_response(message.message_id, body, message.group)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            body = json.loads(handle.read(1024 * 1024))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def error_from_nack(message_id: str, group: str, body: dict[str, Any]) -> MessageNotHandled:
    """``acks/<id>.nack`` as the typed error for its sender."""
    reason = str(body.get("reason") or "moved to errors/")
    outcome = str(body.get("outcome") or "rejected")
    error_file = str(body.get("errorFile") or "")
    if outcome == "rejected":
        return MessageRejected(message_id, group, reason, error_file, outcome)
    return MessageFailed(message_id, group, reason, error_file, outcome, str(body.get("errorType") or ""))


def unpack_response(message_id: str, body: bytes, group: str = "") -> Any:
    try:
        envelope = json.loads(body)
        payload = envelope["payload"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidMessage(f"unreadable response to {message_id}: {exc}") from exc
    if payload.get("success"):
        log.info("Response received id=%s", message_id)
        return payload.get("result")
    error_type = str(payload.get("errorType", ""))
    reason = f"handler raised {error_type}: {payload.get('error', 'unknown error')}" if error_type else \
        str(payload.get("error", "unknown error"))
    raise MessageFailed(message_id, group, reason, str(payload.get("errorFile") or ""), "failed", error_type)


class AsyncClient:
    """The asyncio flavour: the same operations as coroutines, all waits sharing one descriptor."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._wakeups: set[asyncio.Future[None]] = set()  # the waits now asleep, woken by any event
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], group: str = "main", **overrides: Any) -> AsyncClient:
        return cls(Client.from_config(config, group, **overrides))

    def _on_readable(self) -> None:
        self.client._waiter.read_events()
        for future in self._wakeups:
            if not future.done():
                future.set_result(None)

    async def _wait_for(self, paths: list[str], timeout: float, accept: Callable[[str], bool]) -> str | None:
        loop = asyncio.get_running_loop()
        waiter = self.client._waiter
        if self._loop is not loop and waiter.fileno() >= 0:
            loop.add_reader(waiter.fileno(), self._on_readable)
            self._loop = loop
        directories = {os.path.dirname(path) for path in paths}
        waiter.watch_dirs(directories)
        try:
            deadline = loop.time() + timeout
            while True:
                for path in paths:
                    if os.path.exists(path) and accept(path):
                        return path
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                future: asyncio.Future[None] = loop.create_future()
                self._wakeups.add(future)
                try:
                    await asyncio.wait_for(future, min(remaining, POLL_FALLBACK))
                except TimeoutError:
                    pass
                finally:
                    self._wakeups.discard(future)  # a wait that timed out is forgotten
        finally:
            waiter.unwatch_dirs(directories)

    async def send(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                   requires_ack: bool = False, reply_to: str | None = None, **kwargs: Any) -> str:
        return self.client.send(group, type, payload, requires_ack, reply_to, **kwargs)

    async def send_and_wait(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                            *, timeout: float | None = None, message_id: str | None = None) -> str:
        message = self.client.prepare(group, type, payload, requires_ack=True, message_id=message_id)
        return await self.wait_acked(message, timeout, published=False)

    async def wait_acked(self, message: Prepared, timeout: float | None = None, *, published: bool) -> str:
        """:meth:`Client.wait_acked` as a coroutine: every wait shares the one descriptor."""
        c = self.client
        per_attempt = c.ack_policy.timeout if timeout is None else timeout
        ack, nack = c._ack_paths(message)
        attempts = 0
        try:
            async for attempt in async_ack_retrying(c.ack_policy, retry_on=_NotAcked):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if not (published and attempts == 1):
                        c.ensure_present(message, attempts)
                    found = await self._wait_for([ack, nack], per_attempt, c._accept(ack, message))
                    if found == nack:
                        raise c.nacked(message, nack)
                    if found is None:
                        raise c.ack_timed_out(message, attempts, per_attempt)
        except _NotAcked:
            error = AckTimeout(message.message_id, message.group, attempts, per_attempt, c.waiting_hint())
            c._give_up(error)
            raise error from None
        log.info("ACK received id=%s group=%s attempt=%d", message.message_id, message.group, attempts)
        return message.message_id

    async def request(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                      timeout: float = 30.0) -> Any:
        c = self.client
        message = c.prepare(group, type, payload, reply_to=c.group)
        c.publish(message)
        log.info("IPC message sent id=%s group=%s (waiting for the response)", message.message_id, group)
        response = c.spool.response_path(c.group, message.message_id)
        found = await self._wait_for([response, c._nack_path(message)], timeout, c._accept(response, message))
        return c.answer(message, found, timeout)

    def close(self) -> None:
        if self._loop is not None and self.client._waiter.fileno() >= 0:
            self._loop.remove_reader(self.client._waiter.fileno())
        self.client.close()
