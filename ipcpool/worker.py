"""The worker process: read a claimed file, decode, validate, run the handler, ack, reply.

A worker is started by the supervisor with its own pair of pipes. It imports
the handlers once (a failure is reported and ends the process with
EXIT_WORKER_BOOT), then loops::

    supervisor --("run", [(seq, group, name, deliveries), ...])--> worker
    worker --("done", [(seq, outcome, info), ...], tally delta)--> supervisor  (the delta: /metrics' counts)
    worker --("hb", heartbeat envelope)--> supervisor      (heartbeat thread)
    worker --("retiring", tasks done)--> supervisor        (max_tasks reached; then it exits 0)

Results are reported every ``prefetch // 2`` deliveries, or once the worker
has had nothing to do for IDLE_REPORT_DELAY_MS: under load, one report per
batch rather than one wake-up of the supervisor per message.

Only paths, ids and small status records cross the pipes. Each delivery ends
in exactly one :class:`Outcome`, decided in :meth:`Worker.process`; its info
is None, or says what the supervisor must finish for it: ``{"ackHold": name,
"id": id}`` (handled, but the ack could not be written: the file is kept as
the proof until the supervisor writes it) or ``{"quarantine": record, "nack":
nack}`` (the move to errors/ failed: the supervisor retries it). The worker
also publishes which delivery it is running, and since when, in a small shared
array: the supervisor reads it to time handlers out without asking.

Stopping: a ``("stop",)`` from the supervisor, or SIGTERM sent to the worker
itself (``kill``, or a signal to the whole process group as systemd and
``timeout`` send), finishes the running delivery and returns the rest. After
SIGTERM the worker gives that delivery ``[pool] shutdown_grace``, timed by its
heartbeat thread (woken by the signal), then exits with EXIT_WORKER_GRACE
and the supervisor puts it back.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ipcpool import portable
from ipcpool.config import Config
from ipcpool.errors import (
    EXIT_OK,
    EXIT_WORKER_BOOT,
    EXIT_WORKER_GRACE,
    HandlerNotFound,
    InvalidMessage,
    SpoolError,
    TransportUnavailable,
)
from ipcpool.handlers import Handler, HandlerTable, resolve_all
from ipcpool.localroot import LocalRoot
from ipcpool.message import (
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
from ipcpool.ops import proctitle
from ipcpool.ops.health import heartbeat_envelope, pid_alive, process_create_time
from ipcpool.ops.tally import Labels, Tally
from ipcpool.records import nack_body
from ipcpool.retry import handler_retrying
from ipcpool.transport import make_store
from ipcpool.transport.base import MessageGone

log = logging.getLogger(__name__)

# Slots of the shared array: the worker publishes its progress in the first two;
# the supervisor sets the third while handled messages wait for their acks
# (then the ack check also looks for those held files).
SLOT_SEQ, SLOT_STARTED, SLOT_ACK_HOLDS = range(3)
SHARED_SLOTS = 3
FUTURE_MTIME_SLACK = 1.0  # seconds an mtime may be ahead of our clock and still mean "just written"
IDLE_REPORT_DELAY_MS = 20  # how long finished results wait for more work before being reported
REPLY_RETRY_MS = 500  # how often a response that could not be written is tried again
MAX_RECORD_TEXT = 8192  # a record handed to the supervisor (its write failed) keeps this much traceback
_HEARTBEAT = IPCMessageType.HEARTBEAT.value  # a plain str: compared once per delivery


class Outcome(enum.StrEnum):
    """Every way one delivery can end."""

    HANDLED = "handled"  # handler succeeded; acked / replied as asked; file removed
    DUPLICATE = "duplicate"  # id already acked: removed and re-acked, handler not run
    HEARTBEAT = "heartbeat"  # an outside process's heartbeat, recorded by the supervisor
    FAILED = "failed"  # handler raised on every attempt: moved to errors/
    INVALID = "invalid"  # cannot be decoded, validated or routed: moved to errors/
    UNSETTLED = "unsettled"  # not decodable yet and still changing: back to messages/ later
    RETURNED = "returned"  # never started: the worker is stopping; back to messages/
    VANISHED = "vanished"  # the claimed file was gone


# The outcomes a worker counts for /metrics, under their metric names (an outside
# heartbeat was handled; unsettled, returned and vanished are not finished).
_TALLIED = {Outcome.HANDLED: "handled", Outcome.DUPLICATE: "duplicate", Outcome.HEARTBEAT: "handled",
            Outcome.FAILED: "failed", Outcome.INVALID: "invalid"}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, passed once at start."""

    config: Config
    slot: int
    supervisor_pid: int
    tasks: Connection
    results: Connection
    shared: Any  # multiprocessing RawArray('d', SHARED_SLOTS)
    handlers: dict[str, Handler] | None = None  # compat API only: callables inherited by fork
    inherited_fds: tuple[int, ...] = ()  # compat API only: the supervisor's descriptors to close after fork
    max_tasks: int = 0  # retire after this many deliveries (0: never), as gunicorn's max_requests


class Worker:
    def __init__(self, spec: WorkerSpec, handlers: HandlerTable) -> None:
        self.spec = spec
        self.config = spec.config
        self.store = make_store(spec.config)
        self.handlers = handlers
        self.shared = spec.shared
        self.tasks = spec.tasks
        self.results = spec.results
        self._send_lock = threading.Lock()
        self._queue: deque[tuple[int, str, str, int]] = deque()
        self._done: list[tuple[int, str, Any]] = []
        self._unsettled: dict[tuple[str, str], int] = {}  # (group, ref) -> its index in _done, until settled
        self._current: tuple[str, str, float] | None = None  # (group, name, since) of the running delivery
        self._current_message: dict[str, Any] | None = None  # its seq, id and type, once decoded
        self._stopping = False
        self._term_at: float | None = None  # when SIGTERM asked this worker itself to stop
        self._retiring = False  # stopping because max_tasks was reached
        self._pending_replies: list[tuple[str, str, bytes, float]] = []  # (group, id, bytes, give up at)
        self._seq = 0  # the delivery being processed
        self._transport_down = False  # the transport could not be reached (logged once until it can)
        self.title = proctitle.Title()
        self._max_tasks = spec.max_tasks
        self.handled = 0
        self.failed = 0
        self._settle = spec.config.spool.settle_time
        self._log_messages = spec.config.log.messages  # the INFO line per finished message
        self._allowed = {g: set(c.allowed_types) for g, c in spec.config.groups.items() if c.allowed_types}
        self._record_heartbeats = not handlers.has(_HEARTBEAT)  # outside processes' heartbeats: recorded, not handled
        self._pid = os.getpid()
        # Counts for /metrics, sent with the results (workers serve no metrics themselves).
        self.tally = Tally(Labels(spec.config))
        self._last_type: str | None = None  # the finished delivery's type and handler time, for the tally
        self._last_seconds: float | None = None
        # Report results once half the prefetch is done, so the supervisor refills
        # this worker's queue before it runs dry: claims overlap with handling.
        self._report_every = max(1, spec.config.pool.prefetch // 2)
        # One tenacity policy for the worker's life, reused per delivery (building one per message
        # cost more than the rest of the Python on the hot path).
        self._retrying = handler_retrying(spec.config.retry, before_sleep=self._log_retry)
        self._retrying_message: Message | None = None
        self._poller = select.poll()  # one object for every non-blocking check of the task pipe
        self._poller.register(self.tasks.fileno(), select.POLLIN)

    # -- channel ----------------------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.results.send(message)

    def flush(self) -> None:
        if self._unsettled:
            self._settle_completions()
        if self._done:
            batch, self._done = self._done, []
            self.send(("done", batch, self.tally.take()))

    # -- main loop ---------------------------------------------------------------------

    def run(self) -> int:
        while True:
            if self._stopping:
                self._return_unstarted()
                self.flush()
                if self._retiring:
                    self.send(("retiring", self.handled + self.failed))
                if self._pending_replies:
                    self._retry_replies(final=True)
                return EXIT_OK
            if self._pending_replies:
                self._retry_replies()
            if not self._queue:
                # Out of work: report what is done, but not at once; under load the next
                # task arrives first, and the supervisor is woken once per batch, not per message.
                if not self._done or not self._poller.poll(IDLE_REPORT_DELAY_MS):
                    self.flush()
                    if self._stopping:
                        continue
                if self._pending_replies and not self._done and not self._poller.poll(REPLY_RETRY_MS):
                    continue
                self._receive(block=not self._done)
                continue
            if self._poller.poll(0):
                self._receive(block=False)
                if self._stopping:
                    continue
            seq, group, name, deliveries = self._queue.popleft()
            outcome, info = self.process(seq, group, name, deliveries)
            if outcome is Outcome.HANDLED:
                self._unsettled[(group, name)] = len(self._done)
            self._done.append((seq, outcome.value, info))
            if outcome in _TALLIED:
                self.tally.record(group, self._last_type, _TALLIED[outcome], self._last_seconds)
            if self._max_tasks and self.handled + self.failed >= self._max_tasks and not self._stopping:
                self._stopping = self._retiring = True
            if len(self._done) >= self._report_every:
                self.flush()

    def _return_unstarted(self) -> None:
        """On stop, deliveries not yet started go back to the supervisor, not to a handler."""
        while self._queue:
            seq = self._queue.popleft()[0]
            self._done.append((seq, Outcome.RETURNED.value, None))

    def on_sigterm(self, _signum: int, _frame: Any) -> None:
        """Graceful stop: finish the current delivery (within shutdown_grace), return the rest. Idle: exit now.

        Only records, as signal handlers should; the heartbeat thread, woken
        by the same signal, tells the supervisor and keeps the time.
        """
        if self._current is None and not self._queue and not self._done and not self._pending_replies:
            self.exit_now(EXIT_OK)
        if self._term_at is None:
            self._term_at = time.monotonic()
        self._stopping = True

    def exit_now(self, code: int) -> None:
        """Leave at once, with what was printed flushed (a handler's output is not lost)."""
        self.store.close()
        _flush_stdio()
        os._exit(code)

    def _receive(self, *, block: bool) -> None:
        while block or self._poller.poll(0):
            block = False
            try:
                command = self.tasks.recv()
            except (EOFError, OSError):
                log.warning("worker %d: supervisor is gone; exiting", self._pid)
                self.exit_now(EXIT_OK)
            if command[0] == "run":
                self._queue.extend(command[1])
                self.store.prefetch(command[1])  # one round trip for the batch, where the transport can
            elif command[0] == "stop":
                self._stopping = True

    # -- one delivery ----------------------------------------------------------------------

    def process(self, seq: int, group: str, name: str, deliveries: int) -> tuple[Outcome, Any]:
        """Handle one claimed file; every path out returns its Outcome.

        The running marker is cleared only on a normal return: if anything
        escapes and kills this worker, the supervisor sees which delivery was
        running and counts it against the message (poison detection).
        """
        shared = self.shared
        shared[SLOT_SEQ] = seq
        shared[SLOT_STARTED] = time.monotonic()
        self._current = (group, name, time.time())
        self._seq = seq
        self._last_type = self._last_seconds = None
        try:
            result = self._process(group, name, deliveries)
            self._transport_down = False
        except TransportUnavailable as exc:
            # Redis went away before the handler ran (reading, or the dedupe check): it goes back
            # and is tried again later; after a handler ran, complete() keeps it for the supervisor.
            if not self._transport_down:  # one line per outage, not one per message
                self._transport_down = True
                log.warning("worker %d: %s; what it holds goes back until it is reachable", self._pid, exc)
            result = Outcome.RETURNED, {"unavailable": True}
        shared[SLOT_STARTED] = 0.0
        self._current = self._current_message = None
        return result

    def _process(self, group: str, name: str, deliveries: int) -> tuple[Outcome, Any]:
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

    def _dispatch(self, message: Message, name: str, token: Any) -> tuple[Outcome, Any]:
        store, group = self.store, message.group
        self._last_type = message.type
        ack = message.id if message.requires_ack else None
        if ack is not None and store.is_acked(group, ack, holds=bool(self.shared[SLOT_ACK_HOLDS])):
            store.complete(group, name, ack, token, duplicate=True)
            log.info("Duplicate IPC message skipped (already acked) id=%s group=%s type=%s",
                     message.id, group, message.type, extra={"outcome": "duplicate"})
            return Outcome.DUPLICATE, None
        if message.type == _HEARTBEAT and self._record_heartbeats:
            return self._record_heartbeat(message, name, token)
        handler = self.handlers.lookup(message)
        if handler is None:
            return self._reject(group, name, f"no handler for type {message.type}", _summary_of(message))
        self._current_message = {"seq": self._seq, "id": message.id, "type": message.type, "group": group}
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
            self._last_seconds = time.perf_counter() - started
            return self._fail(message, name, exc, attempts, self._last_seconds * 1000)
        self._last_seconds = time.perf_counter() - started
        elapsed_ms = self._last_seconds * 1000
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

    def _finish(self, group: str, ref: str, message_id: str, ack: str | None, token: Any) -> Any:
        """Ack (when asked), then remove the handled message; None, or what the supervisor must finish.

        A handler that succeeded is never run again because its ack could not
        be written (a full disk, a removed folder, Redis away): the transport
        keeps it as the proof, and the supervisor writes the ack when it can.
        """
        info = self.store.complete(group, ref, ack, token)
        if info is not None:
            self._ack_failed(group, info)
        elif ack is not None:
            log.debug("ACK sent id=%s group=%s", message_id, group)
        return info

    def _settle_completions(self) -> None:
        """Before reporting: completions the transport pipelined are finished; a failed one is reported as such."""
        for key, info in self.store.settle().items():
            index = self._unsettled.get(key)
            if index is not None:
                seq, outcome, _ = self._done[index]
                self._done[index] = (seq, outcome, info)
                self._ack_failed(key[0], info)
        self._unsettled.clear()

    def _ack_failed(self, group: str, info: dict[str, Any]) -> None:
        self.shared[SLOT_ACK_HOLDS] = 1.0  # from now on this worker's ack check looks for held messages
        log.error("IPC message handled but its ACK cannot be written (%s); it is kept as %s and acked as soon "
                  "as it can be id=%s group=%s", info.get("error"), info.get("ackHold"), info.get("id"), group)

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
        self._pending_replies.append((reply_to, message.id, data,
                                      time.monotonic() + self.config.spool.response_retention))

    def _retry_replies(self, *, final: bool = False) -> None:
        """Responses that could not be written: try again; give up past response_retention or at exit."""
        now = time.monotonic()
        waiting, self._pending_replies = self._pending_replies, []
        for group, request_id, data, give_up_at in waiting:
            if self._write_reply_quietly(group, request_id, data):
                log.info("Response written after a delay id=%s group=%s", request_id, group)
            elif final or now > give_up_at:
                log.error("Response dropped: it could not be written id=%s group=%s", request_id, group)
            else:
                self._pending_replies.append((group, request_id, data, give_up_at))

    def _write_reply_quietly(self, group: str, request_id: str, data: bytes) -> bool:
        try:
            self.store.reply(group, request_id, data)
        except (OSError, SpoolError):
            return False
        return True

    def _fail(self, message: Message, name: str, exc: BaseException, attempts: int,
              elapsed_ms: float) -> tuple[Outcome, Any]:
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
                data: bytes | None = None) -> tuple[Outcome, Any]:
        self.failed += 1
        self._last_type = summary.type
        log.warning("IPC message rejected id=%s group=%s type=%s file=%s: %s",
                    summary.shown_id, group, summary.shown_type, name, reason, extra={"outcome": "invalid"})
        record = {"id": summary.id, "type": summary.type, "reason": reason, "attempts": 0, "workerPid": self._pid}
        return Outcome.INVALID, self._quarantine(group, name, record, summary, "rejected", data=data)

    def _quarantine(self, group: str, name: str, record: dict[str, Any], summary: Summary, outcome: str,
                    error_name: str | None = None, data: bytes | None = None) -> Any:
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
            return {"quarantine": _bounded(record), "nack": nack, "error": str(exc),
                    "errno": getattr(exc, "errno", None)}
        return None

    def _record_heartbeat(self, message: Message, name: str, token: Any) -> tuple[Outcome, Any]:
        payload = message.payload if isinstance(message.payload, dict) else {}
        pid = payload.get("processId")
        status = payload.get("status")
        info = (
            pid if isinstance(pid, int) and not isinstance(pid, bool) else str(pid)[:64],
            str(status)[:64] if status is not None else None,
        )
        held = self._finish(message.group, name, message.id, message.id if message.requires_ack else None, token)
        return Outcome.HEARTBEAT, (*info, held)

    def _log_retry(self, state: Any) -> None:
        message = self._retrying_message
        exc = state.outcome.exception() if state.outcome else None
        log.warning("IPC handler failed (attempt %d), retrying in %.2fs id=%s group=%s: %r",
                    state.attempt_number, state.next_action.sleep if state.next_action else 0.0,
                    message.id if message else None, message.group if message else None, exc)

    # -- heartbeats ----------------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        current = self._current
        return heartbeat_envelope(
            pid=self._pid,
            busy=current is not None,
            current=self._current_message if current else None,
            current_age=time.time() - current[2] if current else None,
            handled=self.handled,
            failed=self.failed,
        )

    def heartbeat_loop(self, interval: float, wake_fd: int) -> None:
        """Heartbeats every ``interval``; after SIGTERM (which wakes it), the shutdown grace too."""
        supervisor = self.spec.supervisor_pid
        try:
            born = process_create_time(supervisor)
        except Exception:  # noqa: BLE001 - already gone
            self.exit_now(EXIT_OK)
        grace = self.config.pool.shutdown_grace
        next_beat = time.monotonic() + interval
        told = False
        title = self.title
        while True:
            now = time.monotonic()
            deadline = None if self._term_at is None else self._term_at + grace
            wait = min(next_beat, deadline if deadline is not None else next_beat) - now
            if wait > 0 and select.select([wake_fd], [], [], wait)[0]:
                _drain(wake_fd)
            now = time.monotonic()
            try:
                if self._term_at is not None and not told:
                    told = True
                    log.info("worker %d: SIGTERM: finishing the current message (grace %gs), returning the rest",
                             self._pid, grace)
                    self.send(("stopping", "SIGTERM"))
                if self._term_at is not None and now >= self._term_at + grace:
                    log.warning("worker %d: shutdown_grace (%gs) ran out mid-handler; exiting, the supervisor "
                                "puts the message back", self._pid, grace)
                    self.exit_now(EXIT_WORKER_GRACE)
                if now >= next_beat:
                    next_beat = now + interval
                    if not pid_alive(supervisor, born):
                        log.warning("worker %d: supervisor %d is gone; exiting", self._pid, supervisor)
                        self.exit_now(EXIT_OK)
                    self.send(("hb", self.heartbeat()))
                    title.set(proctitle.worker(self.spec.slot, self._current_message,
                                               "stopping" if self._stopping else "idle"))
            except (BrokenPipeError, EOFError, OSError):
                self.exit_now(EXIT_OK)


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


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _take_worker_lock(root: LocalRoot) -> None:
    """Hold a shared lock for life: a new supervisor waits on it for old workers to be gone.

    A handler that forks must not pass the lock on to a child that outlives us.
    """
    fd = os.open(root.workers_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.register_at_fork(after_in_child=lambda: _close_quietly(fd))


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


# Signals a worker leaves to its supervisor: Ctrl-C and a closed terminal reach the
# supervisor too, which drains the pool; the others mean nothing to a worker.
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)


def worker_main(spec: WorkerSpec) -> None:
    """Process entry point. Never returns: exits with a code the supervisor understands."""
    for signum in IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until the handlers are loaded
    # A signal also writes to this pipe (a forked compat worker must not write to the
    # supervisor's): it wakes the heartbeat thread, which times the shutdown grace.
    wake_r, wake_w = portable.pipe()
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for fd in spec.inherited_fds:  # nor hold the supervisor's root lock after it dies
        _close_quietly(fd)
    from ipcpool.ops.logs import capture_handler_output, setup_logging

    setup_logging(spec.config.log.format)
    running: list[Worker] = []  # what a handler prints is logged with the message it runs (once there is one)
    if spec.handlers is None:  # not the compat API's workers: their handlers print to the user's own program
        capture_handler_output(lambda: running[0]._current_message if running else None)
    proctitle.Title().set(proctitle.worker(spec.slot, None, "starting"))
    os.umask(0o077 if spec.config.spool.mode == "private" else 0o007)
    try:
        table = spec.handlers if spec.handlers is not None else resolve_all(spec.config.handlers)
        handlers = HandlerTable(table)
    except HandlerNotFound as exc:
        detail = "".join(traceback.format_exception(exc.__cause__ or exc))
        log.error("worker %d cannot boot: %s", os.getpid(), exc)
        try:
            spec.results.send(("boot_error", f"{exc}\n{detail}"))
        except OSError:
            pass
        os._exit(EXIT_WORKER_BOOT)
    worker = Worker(spec, handlers)
    running.append(worker)
    worker.title.set(proctitle.worker(spec.slot, None))
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    _take_worker_lock(LocalRoot(spec.config.spool.root))
    try:
        spec.results.send(("ready", os.getpid()))
        threading.Thread(
            target=worker.heartbeat_loop, args=(spec.config.heartbeat.interval, wake_r), name="heartbeat",
            daemon=True,
        ).start()
        code = worker.run()
    except (BrokenPipeError, EOFError, ConnectionError):
        log.warning("worker %d: supervisor is gone; exiting", os.getpid())
        worker.exit_now(EXIT_OK)
    handlers.close()
    worker.exit_now(code)


