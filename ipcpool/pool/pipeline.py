"""One delivery, start to end: read, decode, validate, dedupe, run the handler (retried), reply, ack.

Each delivery ends in exactly one :class:`~ipcpool.pool.protocol.Outcome`,
decided in :meth:`DeliveryPipeline.process`; its info is None, or what the
supervisor must finish for it (the seam's ``AckHeld``: handled, but the ack
could not be written, so the message is kept as the proof; ``DeadLetterLater``:
the move to the dead letters failed), or an outside heartbeat. Bad input is
never lost: what cannot be read, decoded, validated or routed goes to the
dead letters with a readable reason, and a sender waiting for it gets a nack.

The reply comes before the ack: a redelivery after a crash between the two is
deduplicated by the ack, so the ack is the last word. A response that cannot
be written is kept and tried again until ``[spool] response_retention``.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any

from ipcpool.config import Config
from ipcpool.errors import InvalidMessage, SpoolError, TransportUnavailable
from ipcpool.handlers import HandlerTable
from ipcpool.message import (
    ORDERING_KEY,
    IPCMessageType,
    Message,
    Summary,
    decode,
    encode,
    now_iso,
    sniff,
    summarize,
    to_message,
)
from ipcpool.msgtime import EXPIRED, EXPIRES_AT, NOT_BEFORE, read_window
from ipcpool.ordering import MARK, rules_of
from ipcpool.pool.protocol import SLOT_ACK_HOLDS, SLOT_SEQ, SLOT_STARTED, Info, Later, Outcome, OutsideBeat
from ipcpool.records import nack_body
from ipcpool.retry import handler_retrying
from ipcpool.transport.base import AckHeld, DeadLetterLater, MessageGone, Store

log = logging.getLogger(__name__)

FUTURE_MTIME_SLACK = 1.0  # seconds an mtime may be ahead of our clock and still mean "just written"
MAX_RECORD_TEXT = 8192  # a record handed to the supervisor (its write failed) keeps this much traceback
_HEARTBEAT = IPCMessageType.HEARTBEAT.value  # a plain str: compared once per delivery


class DeliveryPipeline:
    """A worker's way through one message; what it ran last, for heartbeats, titles and /metrics."""

    def __init__(self, config: Config, store: Store, handlers: HandlerTable, shared: Any) -> None:
        self.config = config
        self.store = store
        self.handlers = handlers
        self.shared = shared  # the supervisor's view of what runs (see ipcpool.pool.protocol)
        self.current: tuple[str, str, float] | None = None  # (group, name, since) of the running delivery
        self.current_message: dict[str, Any] | None = None  # its seq, id and type, once decoded
        self.pending_replies: list[tuple[str, str, bytes, float]] = []  # (group, id, bytes, give up at)
        self.seq = 0  # the delivery being processed
        self.transport_down = False  # the transport could not be reached (logged once until it can)
        self.handled = 0
        self.failed = 0
        self.last_type: str | None = None  # the finished delivery's type and handler time, for the tally
        self.last_seconds: float | None = None
        self._settle = config.spool.settle_time
        self._log_messages = config.log.messages  # the INFO line per finished message
        self._allowed = {g: set(c.allowed_types) for g, c in config.groups.items() if c.allowed_types}
        # On the spool, a file whose orderingKey the supervisor could not have read first (see ipcpool.ordering)
        self._unsequenced = None if config.transport.backend != "spool" else set(rules_of(config))
        self._record_heartbeats = not handlers.has(_HEARTBEAT)  # outside processes' heartbeats: recorded
        self._pid = os.getpid()
        # One tenacity policy for the worker's life, reused per delivery (building one per message
        # cost more than the rest of the Python on the hot path).
        self._retrying = handler_retrying(config.retry, before_sleep=self._log_retry)
        self._retrying_message: Message | None = None


    def process(self, seq: int, group: str, name: str, deliveries: int) -> tuple[Outcome, Info]:
        """Handle one claimed file; every path out returns its Outcome.

        The running marker is cleared only on a normal return: if anything
        escapes and kills this worker, the supervisor sees which delivery was
        running and counts it against the message (poison detection).
        """
        shared = self.shared
        shared[SLOT_SEQ] = seq
        shared[SLOT_STARTED] = time.monotonic()
        self.current = (group, name, time.time())
        self.seq = seq
        self.last_type = self.last_seconds = None
        try:
            result = self._process(group, name, deliveries)
            self.transport_down = False
        except TransportUnavailable as exc:
            # Redis went away before the handler ran (reading, or the dedupe check): it goes back
            # and is tried again later; after a handler ran, complete() keeps it for the supervisor.
            if not self.transport_down:  # one line per outage, not one per message
                self.transport_down = True
                log.warning("worker %d: %s; what it holds goes back until it is reachable", self._pid, exc)
            result = Outcome.UNREACHABLE, None
        shared[SLOT_STARTED] = 0.0
        self.current = self.current_message = None
        return result

    def _process(self, group: str, name: str, deliveries: int) -> tuple[Outcome, Info]:
        try:
            raw = self.store.read(group, name)
        except MessageGone:
            return Outcome.VANISHED, None
        except InvalidMessage as exc:
            return self._reject(group, name, str(exc), sniff(exc.head, *self.store.names(name)))
        fmt, stem = raw.fmt, raw.stem
        try:
            if fmt is None:
                raise InvalidMessage("unsupported file extension: use .json or .msgpack")
            obj = decode(raw.data, fmt)
        except InvalidMessage as exc:
            # Still changing (a direct writer mid-write)? Put it back. A future mtime
            # (clock skew, touch -d) counts as settled, or it would wait forever.
            if -FUTURE_MTIME_SLACK < time.time() - raw.mtime < self._settle:
                return Outcome.UNSETTLED, None
            return self._reject(group, name, str(exc), sniff(raw.data, fmt, stem), raw.data)
        try:
            message = to_message(obj, group=group, stem=stem, delivery_count=deliveries, inbox=raw.inbox)
            self._check_allowed(message)
        except InvalidMessage as exc:
            return self._reject(group, name, str(exc), summarize(obj, stem), raw.data)
        return self._dispatch(message, name, raw.token)

    def _check_allowed(self, message: Message) -> None:
        allowed = self._allowed.get(message.group)
        if allowed is not None and message.type not in allowed:
            raise InvalidMessage(
                f"type {message.type!r} is not allowed in group {message.group!r} "
                f"([groups.{message.group}] allowed_types)"
            )

    def _dispatch(self, message: Message, name: str, token: Any) -> tuple[Outcome, Info]:
        store, group = self.store, message.group
        self.last_type = message.type
        ack = message.id if message.requires_ack else None
        if ack is not None and store.is_acked(group, ack, holds=bool(self.shared[SLOT_ACK_HOLDS])):
            store.complete(group, name, ack, token, duplicate=True)
            log.info("Duplicate IPC message skipped (already acked) id=%s group=%s type=%s",
                     message.id, group, message.type, extra={"outcome": "duplicate"})
            return Outcome.DUPLICATE, None
        extra = message.extra
        if extra and ORDERING_KEY in extra and self._unsequenced is not None:
            self._warn_unsequenced(message, name)
        if extra and (NOT_BEFORE in extra or EXPIRES_AT in extra):  # {} for every envelope without extra keys
            timed = self._check_window(message, name)
            if timed is not None:
                return timed
        if message.type == _HEARTBEAT and self._record_heartbeats:
            return self._record_heartbeat(message, name, token)
        handler = self.handlers.lookup(message)
        if handler is None:
            return self._reject(group, name, f"no handler for type {message.type}", _summary_of(message))
        self.current_message = {"seq": self.seq, "id": message.id, "type": message.type, "group": group}
        log.debug("Processing IPC message id=%s group=%s type=%s delivery=%d",
                  message.id, group, message.type, message.delivery_count)
        attempts = 1
        started = time.perf_counter()
        try:
            first: Exception | None = None
            try:
                response = self._run_handler(handler, message)
            except Exception as exc:  # noqa: BLE001 - the retry policy retries any Exception
                first = exc
            if first is not None:
                # Only a failure pays for tenacity (its loop cost more than the rest of the hot
                # path); attempt 1 is replayed inside it, so the policy counts it as before.
                # Outside the except block, so a retried handler does not see attempt 1's
                # exception as the one being handled.
                self._retrying_message = message
                for attempt in self._retrying:
                    with attempt:
                        attempts = attempt.retry_state.attempt_number
                        if attempts == 1:
                            raise first
                        response = self._run_handler(handler, message)
        except BaseException as exc:  # noqa: BLE001 - a handler may raise anything, SystemExit included
            self.last_seconds = time.perf_counter() - started
            return self._fail(message, name, exc, attempts, self.last_seconds * 1000)
        self.last_seconds = time.perf_counter() - started
        elapsed_ms = self.last_seconds * 1000
        # The reply before the ack: a redelivery after a crash between the two
        # is deduplicated by the ack, so the ack must be the last word.
        if message.reply_to:
            self._reply(message, response)
        self.handled += 1
        info = self._finish(group, name, message.id, ack, token)
        if self._log_messages:
            log.info("IPC message handled id=%s group=%s type=%s in %.1f ms", message.id, group, message.type,
                     elapsed_ms, extra={"outcome": "handled", "duration_ms": round(elapsed_ms, 3)})
        return Outcome.HANDLED, info

    def _warn_unsequenced(self, message: Message, name: str) -> None:
        """An orderingKey the supervisor never read: an unmarked file in a group without ordering settings
        runs beside its sequence, not in it. Said, so a writer by hand learns the name mark it needs."""
        if MARK not in name and message.group not in self._unsequenced:
            log.warning("IPC message has an orderingKey but is not ordered id=%s group=%s type=%s file=%s: name "
                        "the file <id>.ordered.json (docs/spool-format.md) or set [groups.%s] ordering",
                        message.id, message.group, message.type, name, message.group)

    def _check_window(self, message: Message, name: str) -> tuple[Outcome, Info] | None:
        """notBefore and expiresAt, looked at here, where the body is parsed already: None when it may run now.

        Why here and not in the supervisor: the supervisor never reads bodies, and a byte peek at every file
        would cost every message; a parsed envelope without extra keys skips this on one truthiness check. So
        a delayed message is claimed once like any other, and its early delivery hands it back as
        ``Later(due)``: the transport then holds it (spool: ``delayed/``; Redis: a sorted set) until it is due,
        without a worker. Expired (or a hand-written window whose expiry is at or before its due time, which
        could never open): dead-lettered as ``expired``, its handler never run, its sender nacked at once.
        """
        try:
            due, expires = read_window(message.extra)
        except InvalidMessage as exc:
            return self._reject(message.group, name, str(exc), _summary_of(message))
        now = time.time()
        if expires is not None and (expires <= now or (due is not None and expires <= due)):
            return self._expire(message, name)
        if due is not None and due > now:
            if self._log_messages:
                log.info("IPC message delayed until its notBefore id=%s group=%s type=%s notBefore=%s", message.id,
                         message.group, message.type, message.extra.get(NOT_BEFORE), extra={"outcome": "delayed"})
            self.store.forget(message.group, name)
            return Outcome.DELAYED, Later(due)
        return None

    def _expire(self, message: Message, name: str) -> tuple[Outcome, Info]:
        self.failed += 1
        log.warning("IPC message expired before it was handed out id=%s group=%s type=%s expiresAt=%s",
                    message.id, message.group, message.type, message.extra.get(EXPIRES_AT),
                    extra={"outcome": "expired"})
        record = {"id": message.id, "type": message.type, "reason": EXPIRED, "attempts": 0,
                  "expiresAt": message.extra.get(EXPIRES_AT), "notBefore": message.extra.get(NOT_BEFORE),
                  "workerPid": self._pid}
        return Outcome.EXPIRED, self._quarantine(message.group, name, record, _summary_of(message), "rejected")

    def _finish(self, group: str, ref: str, message_id: str, ack: str | None, token: Any) -> AckHeld | None:
        """Ack (when asked), then remove the handled message; None, or what the supervisor must finish.

        A handler that succeeded is never run again because its ack could not
        be written (a full disk, a removed folder, Redis away): the transport
        keeps it as the proof, and the supervisor writes the ack when it can.
        """
        info = self.store.complete(group, ref, ack, token)
        if info is not None:
            self.ack_failed(group, info)
        elif ack is not None:
            log.debug("ACK sent id=%s group=%s", message_id, group)
        return info

    def ack_failed(self, group: str, info: AckHeld) -> None:
        self.shared[SLOT_ACK_HOLDS] = 1.0  # from now on this worker's ack check looks for held messages
        log.error("IPC message handled but its ACK cannot be written (%s); it is kept as %s and acked as soon "
                  "as it can be id=%s group=%s", info.error, info.hold, info.message_id, group)

    def _run_handler(self, handler: Any, message: Message) -> bytes:
        """One attempt: the handler, then its response encoded (an unencodable result fails the attempt)."""
        self.shared[SLOT_STARTED] = time.monotonic()  # the handler timeout counts per attempt, from here
        result = self.handlers.call(handler, message)
        return self._response_bytes(message, True, result) if message.reply_to else b""

    def _response_bytes(self, message: Message, success: bool, result: Any = None, error: str = "",
                        error_type: str = "", error_file: str = "") -> bytes:
        payload: dict[str, Any] = {"requestId": message.id, "success": success}
        if success:
            payload["result"] = result
        else:
            payload.update(error=error, errorType=error_type, errorFile=error_file)
        envelope = {
            "id": f"{message.id}-response", "type": "response", "groupFolder": message.reply_to,
            "payload": payload, "timestamp": now_iso(),
        }
        try:
            return encode(envelope, "json")
        except InvalidMessage as exc:
            raise TypeError(f"handler result is not JSON-serialisable: {exc}") from exc

    def _reply(self, message: Message, data: bytes) -> None:
        reply_to = message.reply_to
        assert reply_to is not None
        spool_config = self.config.spool
        if spool_config.strict_groups and reply_to not in spool_config.groups:
            log.warning("Response dropped: replyTo group %r is not in [spool] groups ([spool] strict_groups) "
                        "id=%s group=%s", reply_to, message.id, message.group)
            return
        try:
            if not self.store.reply(reply_to, message.id, data):
                log.warning("Response dropped: replyTo group %r does not exist id=%s group=%s",
                            reply_to, message.id, message.group)
            return
        except (OSError, SpoolError) as exc:
            log.error("cannot write the response (%s); it is kept and written when it can id=%s group=%s",
                      getattr(exc, "strerror", None) or exc, message.id, reply_to)
        self.pending_replies.append((reply_to, message.id, data,
                                      time.monotonic() + self.config.spool.response_retention))

    def retry_replies(self, *, final: bool = False) -> None:
        """Responses that could not be written: try again; give up past response_retention or at exit."""
        now = time.monotonic()
        waiting, self.pending_replies = self.pending_replies, []
        for group, request_id, data, give_up_at in waiting:
            if self._write_reply_quietly(group, request_id, data):
                log.info("Response written after a delay id=%s group=%s", request_id, group)
            elif final or now > give_up_at:
                log.error("Response dropped: it could not be written id=%s group=%s", request_id, group)
            else:
                self.pending_replies.append((group, request_id, data, give_up_at))

    def _write_reply_quietly(self, group: str, request_id: str, data: bytes) -> bool:
        try:
            self.store.reply(group, request_id, data)
        except (OSError, SpoolError):
            return False
        return True

    def _fail(self, message: Message, name: str, exc: BaseException, attempts: int,
              elapsed_ms: float) -> tuple[Outcome, Info]:
        self.failed += 1
        reason = f"handler raised {type(exc).__name__}: {exc}"
        log.error("IPC handler failed after %d attempt(s) id=%s group=%s type=%s in %.1f ms: %s",
                  attempts, message.id, message.group, message.type, elapsed_ms, reason,
                  extra={"outcome": "failed", "duration_ms": round(elapsed_ms, 3)})
        record = {
            "id": message.id, "type": message.type, "reason": reason,
            "exception": {"type": type(exc).__name__, "message": str(exc), "traceback": handler_traceback(exc)},
            "attempts": attempts, "deliveries": message.delivery_count, "workerPid": self._pid,
        }
        error_name = None
        if message.reply_to:  # the response first (it names the record), so a requester gets the fuller answer
            try:
                error_name = self.store.error_ref(message.group, name)
            except (OSError, SpoolError):
                pass
            error_file = error_name or ""
            self._reply(message, self._response_bytes(message, False, error=str(exc), error_type=type(exc).__name__,
                                                      error_file=error_file))
        info = self._quarantine(message.group, name, record, _summary_of(message), "failed", error_name)
        return Outcome.FAILED, info

    def _reject(self, group: str, name: str, reason: str, summary: Summary,
                data: bytes | None = None) -> tuple[Outcome, Info]:
        self.failed += 1
        self.last_type = summary.type
        log.warning("IPC message rejected id=%s group=%s type=%s file=%s: %s",
                    summary.shown_id, group, summary.shown_type, name, reason, extra={"outcome": "invalid"})
        record = {"id": summary.id, "type": summary.type, "reason": reason, "attempts": 0, "workerPid": self._pid}
        return Outcome.INVALID, self._quarantine(group, name, record, summary, "rejected", data=data)

    def _quarantine(self, group: str, name: str, record: dict[str, Any], summary: Summary, outcome: str,
                    error_name: str | None = None, data: bytes | None = None) -> DeadLetterLater | None:
        """Move to errors/ with the record and, for a sender that may be waiting, a nack.

        Returns the info for the supervisor: None, or the record to retry
        with when the move could not be made now.
        """
        nack = nack_body(group, record, summary, outcome, data)
        try:
            self.store.quarantine(group, name, record, nack, error_name or "")
        except MessageGone:
            log.warning("message vanished before it could be moved to errors/ id=%s type=%s group=%s file=%s",
                        summary.shown_id, summary.shown_type, group, name)
            return None
        except (OSError, SpoolError) as exc:
            log.error("cannot move the message to errors/ (%s); the supervisor keeps trying id=%s type=%s "
                      "group=%s file=%s", getattr(exc, "strerror", None) or exc, summary.shown_id, summary.shown_type,
                      group, name)
            return DeadLetterLater(_bounded(record), nack, str(exc), getattr(exc, "errno", None))
        return None

    def _record_heartbeat(self, message: Message, name: str, token: Any) -> tuple[Outcome, Info]:
        payload = message.payload if isinstance(message.payload, dict) else {}
        pid = payload.get("processId")
        status = payload.get("status")
        info = (
            pid if isinstance(pid, int) and not isinstance(pid, bool) else str(pid)[:64],
            str(status)[:64] if status is not None else None,
        )
        held = self._finish(message.group, name, message.id, message.id if message.requires_ack else None, token)
        return Outcome.HEARTBEAT, OutsideBeat(*info, held)

    def _log_retry(self, state: Any) -> None:
        message = self._retrying_message
        exc = state.outcome.exception() if state.outcome else None
        log.warning("IPC handler failed (attempt %d), retrying in %.2fs id=%s group=%s: %r",
                    state.attempt_number, state.next_action.sleep if state.next_action else 0.0,
                    message.id if message else None, message.group if message else None, exc)



_NOT_THE_HANDLERS = (f"{os.sep}tenacity{os.sep}", f"{os.sep}concurrent{os.sep}futures{os.sep}")


def handler_traceback(exc: BaseException) -> str:
    """The traceback as text, without the retry machinery's frames (tenacity's, and its futures')."""
    summary = traceback.TracebackException.from_exception(exc)
    for te in _chain(summary):
        te.stack = traceback.StackSummary.from_list(
            [frame for frame in te.stack if not any(part in frame.filename for part in _NOT_THE_HANDLERS)])
    return "".join(summary.format())


def _chain(te: traceback.TracebackException) -> list[traceback.TracebackException]:
    seen: list[traceback.TracebackException] = []
    while te is not None and te not in seen:
        seen.append(te)
        te = te.__cause__ or te.__context__  # type: ignore[assignment]
    return seen


def _summary_of(message: Message) -> Summary:
    return Summary(message.id, message.type, message.requires_ack, message.reply_to, message.timestamp)


def _bounded(record: dict[str, Any]) -> dict[str, Any]:
    """A record small enough to cross the result pipe: the traceback's end is what matters."""
    exception = record.get("exception")
    if isinstance(exception, dict) and len(exception.get("traceback", "")) > MAX_RECORD_TEXT:
        exception = dict(exception, traceback="..." + exception["traceback"][-MAX_RECORD_TEXT:])
        record = dict(record, exception=exception)
    return record
