"""Sending: publish, wait for acks with retries, request/response — on whichever transport.

A :class:`Client` belongs to one group, its own: replies to its requests come back to it. Publishing
never shows a receiver half a message and never replaces a different queued message of the same name.
Re-sends keep the same id and bytes, and happen only when the message is no longer queued, in flight,
acknowledged or refused, so a slow handler never gets a second copy.

A message that ends in the dead letters answers its sender at once (a nack, with the reason), and a
waiting ``send_and_wait`` or ``request`` raises :class:`MessageRejected` or :class:`MessageFailed`. With
no supervisor for the root (spool), the first attempt's time-out says so and the wait ends there. Where
messages go and how answers come back is the transport's (its Outbox); the retries, the errors and the
log lines are here, the same for both.

A little over 500 lines on purpose: the blocking and the asyncio client share one ack wait (``_AckWait``),
one nack judgement and one set of send options (the time window and the ordering key included); apart, each
would reach into the other's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
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
    NoSupervisor,
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
from ipcpool.msgtime import NOT_BEFORE, parse_iso, window
from ipcpool.ordering import ORDERING_KEY, marked_name
from ipcpool.retry import ack_retrying, async_ack_retrying
from ipcpool.transport import Outbox, make_outbox, spool_outbox

log = logging.getLogger(__name__)

ErrorCallback = Callable[[Message], Any]


class _NotAcked(Exception):
    """One attempt's wait for the ack ran out (drives the tenacity policy)."""


class Prepared:
    """One message ready to publish: its id, file name, bytes, and the timestamp inside (for nacks)."""

    __slots__ = ("data", "due", "group", "message_id", "name", "timestamp")

    def __init__(self, group: str, envelope: dict[str, Any], fmt: str, data: bytes) -> None:
        self.group = group
        self.message_id: str = envelope["id"]
        ext = extension_for(fmt)  # a message of a sequence is marked: the supervisor reads its key (ipcpool.ordering)
        self.name = marked_name(self.message_id, ext) if ORDERING_KEY in envelope else self.message_id + ext
        self.data = data
        self.timestamp: str = envelope["timestamp"]
        due = envelope.get(NOT_BEFORE)  # its ack cannot come sooner: the wait for it is longer by as much
        self.due = parse_iso(due) if due else None


class Client:
    """Publish messages and wait for their acks or responses.

    ``Client(root, group)`` sends into a spool root; :meth:`from_config` uses
    the config's transport (``[transport] backend``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        group: str = "main",
        *,
        format: str = "json",  # noqa: A002 - matches the config key
        durability: str = "process",
        mode: str | None = None,  # the root's own when not given: shared when it is setgid (a shared root)
        max_queued: int = 0,
        max_message_bytes: int = 1024 * 1024,
        ack: AckConfig | None = None,
        on_give_up: ErrorCallback | None = None,
        groups: tuple[str, ...] | None = None,
        strict_groups: bool = False,
        outbox: Outbox | None = None,
    ) -> None:
        self.configured_groups = groups  # [spool] groups, when known: others are warned of (or refused)
        self.strict_groups = strict_groups
        self._warned: set[str] = set()
        self.group = self._check_group(check_group_name(group))
        self.format = format
        self.max_message_bytes = max_message_bytes
        self.ack_policy = ack or AckConfig()
        self.on_give_up = on_give_up
        if outbox is None:
            if root is None:
                raise TypeError("Client needs a spool root (or an outbox: see Client.from_config)")
            outbox = spool_outbox(root, durability=durability, mode=mode, max_queued=max_queued)
        self.outbox = outbox
        self.outbox.ensure_group(self.group)  # its own: where its responses come back

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], group: str = "main", **overrides: Any) -> Client:
        cfg = config if isinstance(config, Config) else load_config(config)
        options: dict[str, Any] = dict(
            format=cfg.spool.format, max_message_bytes=cfg.spool.max_message_bytes, ack=cfg.ack,
            groups=cfg.spool.groups, strict_groups=cfg.spool.strict_groups,
        )
        options.update(overrides)
        return cls(group=group, outbox=make_outbox(cfg), **options)

    @property
    def root(self) -> Path:
        return Path(self.outbox.root)

    def close(self) -> None:
        self.outbox.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing ----------------------------------------------------------------------------

    def prepare(self, group: str, type_: str | IPCMessageType, payload: Any, *, requires_ack: bool = False,
                reply_to: str | None = None, message_id: str | None = None, fmt: str | None = None,
                timing: dict[str, str] | None = None, ordering_key: str | None = None) -> Prepared:
        """Build and encode a message as the receiver will validate it (nothing is published)."""
        envelope = build_envelope(group, str(type_), payload, requires_ack=requires_ack,
                                  reply_to=reply_to, message_id=message_id, ordering_key=ordering_key)
        envelope.update(timing or {})  # notBefore / expiresAt (ipcpool.msgtime.window)
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
            log.warning("group %r is not in [spool] groups (%s); a typo? Its queue is created, and served only "
                        "because supervisors pick up new groups", group, ", ".join(known))
        return group

    def publish(self, message: Prepared) -> None:
        """Queue a prepared message (MessageExists if a different one has its name, QueueFull past the limit)."""
        self.outbox.publish(message.group, message.name, message.data)  # the callers log "IPC message sent"

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
        wait_for_supervisor: bool = False,
        delay: float | None = None, not_before: Any = None, ttl: float | None = None, expires_at: Any = None,
        ordering_key: str | None = None,
    ) -> str:
        """Publish one message; returns its id. ``wait=True`` also waits for the ack (with retries). ``delay`` or
        ``not_before``, ``ttl`` or ``expires_at``: its time window (:func:`ipcpool.msgtime.window`).
        ``ordering_key``: its sequence (handled one at a time, in publish order, with the others of the key)."""
        timing = window(delay=delay, not_before=not_before, ttl=ttl, expires_at=expires_at)
        if wait:
            return self.send_and_wait(group, type, payload, timeout=timeout, reply_to=reply_to,
                                      message_id=message_id, format=format, wait_for_supervisor=wait_for_supervisor,
                                      timing=timing, ordering_key=ordering_key)
        message = self.prepare(group, type, payload, requires_ack=requires_ack, reply_to=reply_to,
                               message_id=message_id, fmt=format, timing=timing, ordering_key=ordering_key)
        self.publish(message)
        log.debug("IPC message sent id=%s group=%s type=%s", message.message_id, group, type)
        return message.message_id

    # -- acknowledgements -------------------------------------------------------------------------

    def is_acked(self, group: str, message_id: str) -> bool:
        return self.outbox.is_acked(group, message_id)

    def ensure_present(self, message: Prepared, attempt: int) -> None:
        """Attempt 1 publishes; later ones re-publish only what is neither there, acked nor refused."""
        group, message_id = message.group, message.message_id
        if attempt == 1:
            self.publish(message)
            log.info("IPC message sent id=%s group=%s (waiting for ACK)", message_id, group)
            return
        nack = self.outbox.nack(group, message_id)
        if nack is not None and self.nack_matches(message)(nack):
            raise self.nacked(message, nack)
        if not self.outbox.present(group, message.name, message_id):
            self.publish(message)
            log.warning("Retrying IPC message id=%s group=%s attempt=%d: re-published", message_id, group, attempt)
        else:
            log.warning("Retrying IPC message id=%s group=%s attempt=%d: still queued or in flight, not re-sent",
                        message_id, group, attempt)

    @staticmethod
    def nack_matches(message: Prepared) -> Callable[[dict[str, Any]], bool]:
        """Whether a nack answers this very message: its timestamp (not an older message's with the same id),
        or, for a file that did not decode, the digest of our very bytes (not another writer's file dropped
        under our id)."""
        digest = hashlib.sha256(message.data).hexdigest()
        return lambda body: body.get("timestamp") == message.timestamp or (
            body.get("timestamp") is None and body.get("sha256") == digest)

    def nacked(self, message: Prepared, body: dict[str, Any]) -> MessageNotHandled:
        """The typed error a nack stands for, reported to the give-up hook and logged."""
        error = error_from_nack(message.message_id, message.group, body)
        log.error("IPC message not handled id=%s group=%s: %s", message.message_id, message.group, error.reason)
        self._give_up(error)
        return error

    def wait_for_ack(self, group: str, message_id: str, timeout: float) -> bool:
        answer = self.outbox.wait_answer(group, message_id, timeout, lambda _body: False)
        return answer is not None and answer[0] == "ack"

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
        wait_for_supervisor: bool = False,
        timing: dict[str, str] | None = None,
        ordering_key: str | None = None,
    ) -> str:
        """Publish with requiresAck and wait for its ack (``timing``: see :meth:`send`).

        Raises MessageRejected / MessageFailed as soon as the message ends in
        the dead letters, AckTimeout after every retry, NoSupervisor at once
        when no supervisor runs for the root (the message stays queued; with
        ``wait_for_supervisor``, the wait goes on for one to start).
        """
        message = self.prepare(group, type, payload, requires_ack=True, reply_to=reply_to,
                               message_id=message_id, fmt=format, timing=timing, ordering_key=ordering_key)
        return self.wait_acked(message, timeout, published=False, wait_for_supervisor=wait_for_supervisor)

    def wait_acked(self, message: Prepared, timeout: float | None, *, published: bool,
                   wait_for_supervisor: bool = False) -> str:
        """The ack loop of :meth:`send_and_wait`; ``published``: attempt 1 was published already."""
        wait = _AckWait(self, message, timeout, published=published, patient=wait_for_supervisor)
        try:
            for attempt in ack_retrying(self.ack_policy, retry_on=_NotAcked):
                with attempt:
                    answer = wait.begin(attempt.retry_state.attempt_number)
                    if answer is None:
                        answer = self.outbox.wait_answer(*wait.question())
                    wait.judge(answer)
        except _NotAcked:
            raise wait.gave_up() from None
        return wait.acked()

    def answer_or_no_supervisor(self, message: Prepared, reply_group: str | None = None) -> Any:
        """Published: with no supervisor running, its answer if one came already (a supervisor that handled it
        and stopped), else NoSupervisor at once, rather than waiting out the timeout. None: one runs."""
        if self.outbox.supervisor_running() is not False:
            return None
        answer = self.outbox.wait_answer(message.group, message.message_id, 0, self.nack_matches(message),
                                         reply_group=reply_group)
        if answer is not None:
            return answer
        error = NoSupervisor(message.message_id, message.group, self.outbox.root)
        log.error("%s", error.hint)
        self._give_up(error)
        raise error

    def judge(self, message: Prepared, answer: Any, attempt: int, per_attempt: float, *,
              patient: bool = False) -> None:
        """An attempt's answer: an ack returns; a nack or a time-out raises (tenacity retries _NotAcked).
        ``patient``: waiting for a supervisor to start, so none running is no reason to stop."""
        if answer is None:
            raise self.ack_timed_out(message, attempt, per_attempt, patient=patient)
        if answer[0] == "nack":
            raise self.nacked(message, answer[1])

    def ack_timed_out(self, message: Prepared, attempt: int, per_attempt: float, *, patient: bool = False
                      ) -> Exception:
        """Log one attempt's timeout; the exception ends the wait (no supervisor) or drives tenacity."""
        log.warning("ACK timeout id=%s group=%s attempt=%d of %d (%gs)", message.message_id, message.group,
                    attempt, self.ack_policy.max_retries + 1, per_attempt)
        if not patient and self.outbox.supervisor_running() is False:
            error = AckTimeout(message.message_id, message.group, attempt, per_attempt, self.waiting_hint())
            log.error("%s", error.hint)
            self._give_up(error)
            return error
        return _NotAcked()

    def waiting_hint(self) -> str:
        """Why nothing answered, when that can be told from here."""
        running = self.outbox.supervisor_running()
        if running is False:
            return (f"no ipcpool supervisor is running for {self.outbox.root}; "
                    "the message stays queued and will be handled when one starts")
        if running:
            return ("the supervisor is running: its handler may take longer than the timeout (see [ack] timeout), or "
                    "it could not read the file (written by another user without shared mode? see errors/)")
        return "is `ipcpool run` up for this root?"

    def _give_up(self, error: IpcpoolError) -> None:
        message_id = getattr(error, "message_id", "")
        group = getattr(error, "group", "")
        if isinstance(error, AckTimeout) and not isinstance(error, NoSupervisor):  # that one said so already
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
        wait_for_supervisor: bool = False,
    ) -> Any:
        """Send with replyTo = this client's group and return the handler's result.

        Raises MessageFailed (a HandlerError) when the handler failed,
        MessageRejected when no handler took it, ResponseTimeout when nothing
        came in ``timeout`` seconds, NoSupervisor at once when no supervisor
        runs for the root (unless ``wait_for_supervisor``).
        """
        message, answer = self.send_request(group, type, payload, fmt=format, wait_for_supervisor=wait_for_supervisor)
        if answer is None:
            answer = self.outbox.wait_answer(group, message.message_id, timeout, self.nack_matches(message),
                                             reply_group=self.group)
        return self.answer(message, answer, timeout)

    def send_request(self, group: str, type_: str | IPCMessageType, payload: Any, *, fmt: str | None = None,
                     wait_for_supervisor: bool = False) -> tuple[Prepared, Any]:
        """Publish a request (replyTo: this client's group); with it, its answer when one is known already
        (:meth:`answer_or_no_supervisor`), else None: wait for one."""
        message = self.prepare(group, type_, payload, reply_to=self.group, fmt=fmt)
        self.publish(message)
        log.info("IPC message sent id=%s group=%s (waiting for the response)", message.message_id, group)
        return message, None if wait_for_supervisor else self.answer_or_no_supervisor(message, self.group)

    def answer(self, message: Prepared, answer: Any, timeout: float) -> Any:
        """The result of a request, from whichever of its answers arrived (None: none did)."""
        if answer is None:
            raise ResponseTimeout(message.message_id, message.group, timeout, self.waiting_hint())
        if answer[0] == "nack":
            raise self.nacked(message, answer[1])
        return unpack_response(message.message_id, answer[1], message.group)


def error_from_nack(message_id: str, group: str, body: dict[str, Any]) -> MessageNotHandled:
    """A nack as the typed error for its sender."""
    reason = str(body.get("reason") or "moved to the dead letters")
    outcome = str(body.get("outcome") or "rejected")
    error_file = str(body.get("errorFile") or "")
    if outcome == "rejected":
        return MessageRejected(message_id, group, reason, error_file, outcome)
    return MessageFailed(message_id, group, reason, error_file, outcome, str(body.get("errorType") or ""))


def unpack_response(message_id: str, body: bytes, group: str = "") -> Any:
    import json

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


class _AckWait:
    """One message's wait for its ack, attempt by attempt: what :meth:`Client.wait_acked` and
    :meth:`AsyncClient.wait_acked` share (they differ only in how they wait).
    """

    def __init__(self, client: Client, message: Prepared, timeout: float | None, *, published: bool,
                 patient: bool) -> None:
        self.client = client
        self.message = message
        self.per_attempt = client.ack_policy.timeout if timeout is None else timeout
        self.published = published  # attempt 1 was published already
        self.patient = patient  # waiting for a supervisor to start: none running is no reason to stop
        self.attempts = 0

    def begin(self, attempt: int) -> Any:
        """Publish (or re-publish) for this attempt; the answer when it is known already, else None."""
        self.attempts = attempt
        if not (self.published and attempt == 1):
            self.client.ensure_present(self.message, attempt)
        return None if self.patient or attempt > 1 else self.client.answer_or_no_supervisor(self.message)

    def question(self) -> tuple[str, str, float, Callable[[dict[str, Any]], bool]]:
        """What to wait for: (group, id, seconds, which nack answers this very message)."""
        message = self.message
        early = max(0.0, message.due - time.time()) if message.due else 0.0  # not handed out before then
        return message.group, message.message_id, self.per_attempt + early, self.client.nack_matches(message)

    def judge(self, answer: Any) -> None:
        """An ack returns; a nack or a time-out raises (tenacity retries _NotAcked)."""
        self.client.judge(self.message, answer, self.attempts, self.per_attempt, patient=self.patient)

    def gave_up(self) -> AckTimeout:
        """Every attempt timed out: reported to the give-up hook, to be raised."""
        message = self.message
        error = AckTimeout(message.message_id, message.group, self.attempts, self.per_attempt,
                           self.client.waiting_hint())
        self.client._give_up(error)
        return error

    def acked(self) -> str:
        message = self.message
        log.info("ACK received id=%s group=%s attempt=%d", message.message_id, message.group, self.attempts)
        return message.message_id


class AsyncClient:
    """The asyncio flavour: the same operations as coroutines, every wait sharing one descriptor."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], group: str = "main", **overrides: Any) -> AsyncClient:
        return cls(Client.from_config(config, group, **overrides))

    async def send(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                   requires_ack: bool = False, reply_to: str | None = None, **kwargs: Any) -> str:
        return self.client.send(group, type, payload, requires_ack, reply_to, **kwargs)

    async def send_and_wait(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                            *, timeout: float | None = None, message_id: str | None = None,
                            wait_for_supervisor: bool = False, delay: float | None = None, not_before: Any = None,
                            ttl: float | None = None, expires_at: Any = None, ordering_key: str | None = None) -> str:
        """:meth:`Client.send_and_wait` awaited; the time window and the ordering key as :meth:`Client.send`
        takes them."""
        timing = window(delay=delay, not_before=not_before, ttl=ttl, expires_at=expires_at)
        message = self.client.prepare(group, type, payload, requires_ack=True, message_id=message_id, timing=timing,
                                      ordering_key=ordering_key)
        return await self.wait_acked(message, timeout, published=False, wait_for_supervisor=wait_for_supervisor)

    async def wait_acked(self, message: Prepared, timeout: float | None = None, *, published: bool,
                         wait_for_supervisor: bool = False) -> str:
        """:meth:`Client.wait_acked` as a coroutine."""
        c = self.client
        wait = _AckWait(c, message, timeout, published=published, patient=wait_for_supervisor)
        try:
            async for attempt in async_ack_retrying(c.ack_policy, retry_on=_NotAcked):
                with attempt:
                    answer = wait.begin(attempt.retry_state.attempt_number)
                    if answer is None:
                        answer = await c.outbox.async_wait_answer(*wait.question())
                    wait.judge(answer)
        except _NotAcked:
            raise wait.gave_up() from None
        return wait.acked()

    async def request(self, group: str, type: str | IPCMessageType, payload: Any,  # noqa: A002
                      timeout: float = 30.0, *, wait_for_supervisor: bool = False) -> Any:
        c = self.client
        message, answer = c.send_request(group, type, payload, wait_for_supervisor=wait_for_supervisor)
        if answer is None:
            answer = await c.outbox.async_wait_answer(group, message.message_id, timeout, c.nack_matches(message),
                                                      reply_group=c.group)
        return c.answer(message, answer, timeout)

    def close(self) -> None:
        self.client.close()
