"""The transport seam on one page: what the pool, the workers, senders and operators ask of where messages live.

    supervisor ─ Source ─▶ open · filenos · poll · backlog · wake_at · take · renew · done · requeue · delay
                            · record_failure
                            · quarantine · summarize · housekeeping · holds_acks · sequenced · stats · announce
                            · close
    worker     ─ Store ──▶ prefetch · read · names · is_acked · complete · settle · forget · reply · error_ref
                            · quarantine · close
    sender     ─ Outbox ─▶ ensure_group · publish · present · is_acked · nack · wait_answer · async_wait_answer
                            · depth · supervisor_running · schedule_marks · publish_due · close
    operator   ─ Inspector ▶ counts · supervisors · ping · dead_letters (list · read · retry · purge) · close

Backends, one sub-package each: ``spool`` (files under ``[spool] root``), ``redis`` (Redis Streams, many
hosts), ``memory`` (one process: the pool's unit tests). A worker learns of a message by a :data:`Receipt`;
``ref`` is the backend's own name for it (a file's key, a stream entry id), opaque above this line.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ipcpool.errors import TransportUnavailable as TransportDown  # noqa: F401 - the seam's name for it
from ipcpool.message import Summary
from ipcpool.records import ErrorEntry

Receipt = tuple[int, str, str, int]  # (seq, group, ref, deliveries): all a worker is told of a message
Taken = tuple[str, str, int]  # (group, ref, deliveries): what Source.take hands the supervisor
Answer = tuple[str, Any]  # ("ack", None), ("nack", body) or ("response", bytes)


class MessageGone(LookupError):
    """The message is not where its receipt says any more (handled, removed, taken over)."""


@dataclass(frozen=True, slots=True)
class AckHeld:
    """Handled, but its ack could not be written (a full disk, Redis away): kept as ``hold`` until it can be."""

    hold: str
    message_id: str | None
    error: str
    errno: int | None = None
    name: str = ""  # Redis: the message's name, which its ack needs


@dataclass(frozen=True, slots=True)
class DeadLetterLater:
    """Failed or rejected, but the move to the dead letters could not be made: retried by the supervisor."""

    record: dict[str, Any]
    nack: dict[str, Any] | None
    error: str
    errno: int | None = None


Unfinished = AckHeld | DeadLetterLater  # what a worker hands back to be finished: Source.done's second word


@dataclass(slots=True)
class Raw:
    """One message's bytes as a worker reads them, with what the transport knows beside them."""

    data: bytes
    fmt: str | None  # "json" or "msgpack"; None: not a format ipcpool reads
    stem: str  # the id its name gives (a legacy message's id)
    inbox: str = "messages"  # where it was dropped: messages, or tasks
    mtime: float = 0.0  # when it last changed (a file still being written has not settled); 0: complete
    token: Any = None  # the backend's own, handed back to complete() (the spool: a recyclable inode)


class Source(Protocol):
    """The supervisor's side. Never blocks; a failed transition keeps its message tracked and retried."""

    backend: str

    def open(self) -> int: """Create what is missing, take back what a previous run held; how many came back."""
    def filenos(self) -> list[int]: """What the loop waits on, with everything else."""
    def poll(self, now: float, ready: set[int], room: int) -> bool:
        """Take in what ``ready`` says, run timers in short slices; ``room``: what the pool could take (a backend
        that fetches ahead asks for that much). True: sliced work is left, poll again without waiting."""
    def backlog(self) -> int: """How many messages take() could hand out now."""
    def wake_at(self) -> float | None: """When (wall clock) a delayed message is next due: the loop's wait ends then."""
    def take(self, n: int) -> list[Taken]: """Claim up to ``n``, oldest first: the supervisor's until it says."""
    def renew(self, held: Iterable[tuple[str, str]]) -> None: """Still ours: what live workers hold."""
    def done(self, group: str, ref: str, unfinished: Unfinished | None = None) -> None:
        """A worker finished it; ``unfinished``: what it could not (an ack, a dead-lettering), done here."""
    def requeue(self, group: str, ref: str, *, later: float = 0.0) -> None: """Back to the queue (not before later)."""
    def delay(self, group: str, ref: str, until: float) -> None:
        """Its notBefore is ahead: hold it, durably and without a worker, until ``until`` (epoch seconds), then
        queue it again; no scan of what is held meanwhile (a timer heap, a sorted set)."""
    def record_failure(self, group: str, ref: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """A delivery of it killed or hung a worker: recorded wherever it happened; the whole history."""
    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None) -> bool:
        """To the dead letters (poison), answering its sender; False when gone or deferred (retried)."""
    def summarize(self, group: str, ref: str) -> Summary: """What a held message says it is (rare paths)."""
    def housekeeping(self, live_pids: set[int]) -> None: """Start pruning what outlived its retention."""
    @property
    def holds_acks(self) -> bool: """Handled messages wait for their acks: workers' ack checks look for them."""
    @property
    def sequenced(self) -> Container[tuple[str, str]]:
        """The (group, ref) of messages of sequences (``ipcpool.ordering``): their results are wanted at once."""
    def stats(self) -> dict[str, Any]:
        """Per group (queued, oldest, errors, delayed, nextDue: ISO time or None, waiting: behind a busy
        sequence) and the backend's troubles."""
    def announce(self, status: dict[str, Any]) -> None: """Publish this supervisor's status (a shared backend)."""
    def close(self) -> None: """Hand back what no worker started."""


class Store(Protocol):
    """A worker's side: one message at a time, from a receipt."""

    def prefetch(self, receipts: Sequence[Receipt]) -> None: """A batch came: fetch it in one go, where it pays."""
    def read(self, group: str, ref: str) -> Raw: """Its bytes; MessageGone, or InvalidMessage (must not be read)."""
    def names(self, ref: str) -> tuple[str | None, str]: """(format, stem) its ref gives, when it cannot be read."""
    def is_acked(self, group: str, message_id: str, *, holds: bool = False) -> bool: """The dedupe check."""
    def complete(self, group: str, ref: str, ack_id: str | None, token: Any, *, duplicate: bool = False
                 ) -> AckHeld | None:
        """Ack (when asked) and remove, at once; None, or what the supervisor must finish for it."""
    def settle(self) -> dict[tuple[str, str], AckHeld]: """Pipelined completions, finished: what failed."""
    def forget(self, group: str, ref: str) -> None: """Handed back unfinished (not due yet): drop what is kept of it."""
    def reply(self, group: str, request_id: str, data: bytes) -> bool:
        """A response for a waiting requester; False: no such group; TransportDown, OSError: not now."""
    def error_ref(self, group: str, ref: str) -> str: """Where its dead letter will be (a response may cite it)."""
    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None,
                   error_ref: str = "") -> None: """To the dead letters; MessageGone; TransportDown, OSError: later."""
    def close(self) -> None: ...


class Outbox(Protocol):
    """A sender's side."""

    backend: str
    root: Any  # its local root (a spool root; on Redis, where status.json tells of the local supervisor)

    def ensure_group(self, group: str) -> None: """The group exists to send to and to be answered in."""
    def publish(self, group: str, name: str, data: bytes) -> None: """Queue it; MessageExists, QueueFull."""
    def present(self, group: str, name: str, message_id: str) -> bool: """Queued, in flight or acked."""
    def is_acked(self, group: str, message_id: str) -> bool: ...
    def nack(self, group: str, message_id: str) -> dict[str, Any] | None: """That id's nack, if any."""
    def wait_answer(self, group: str, message_id: str, timeout: float, accept_nack: Callable[[dict[str, Any]], bool],
                    *, reply_group: str | None = None) -> Answer | None:
        """The ack (or, with ``reply_group``, the response), or a nack ``accept_nack`` takes; None: timeout."""
    async def async_wait_answer(self, group: str, message_id: str, timeout: float,
                                accept_nack: Callable[[dict[str, Any]], bool], *,
                                reply_group: str | None = None) -> Answer | None: """The same, awaited."""
    def depth(self, group: str) -> int: ...
    def supervisor_running(self) -> bool | None: """Whether some supervisor takes these messages now."""
    def schedule_marks(self, names: Sequence[str], *, since: int | None = None) -> dict[str, dict[str, Any]]:
        """What is recorded of each ``[[schedule]]``: ``since`` (first seen) and the last due time published,
        ``due`` (whole seconds since the epoch), with its ``id`` and ``at`` (when). ``since``: record it for a
        schedule that has no record yet (one atomic set-if-absent, whoever comes first)."""
    def publish_due(self, schedule: str, due: int, group: str, name: str, data: bytes, mark: dict[str, Any]) -> bool:
        """Publish one due time of a schedule once, however many supervisors try, and record it (``mark``: its
        id and when) with it; False when this call did not publish it: that due time, or a later one, is recorded
        already, or it was published but not recorded (a SIGKILL between the two) and is found under its name."""
    def close(self) -> None: ...


class DeadLetters(Protocol):
    """``errors/``, or the dead-letter streams: what ``ipcpool errors`` lists, shows, retries and purges."""

    def list(self, group: str | None = None) -> list[ErrorEntry]: ...
    def read(self, entry: ErrorEntry) -> bytes | None: """The message itself; None when only its record is left."""
    def retry(self, entry: ErrorEntry) -> str: """Back into its queue (a fresh delivery count); its new name."""
    def purge(self, entry: ErrorEntry) -> None: ...


class Inspector(Protocol):
    """What operators look at, with or without a supervisor."""

    def counts(self) -> dict[str, dict[str, int]]: """Per group: queued, processing, errors."""
    def supervisors(self) -> list[dict[str, Any]]: """Every live supervisor's status (a shared backend)."""
    def ping(self) -> None: """TransportDown when it cannot be reached."""
    def dead_letters(self) -> DeadLetters: ...
    def close(self) -> None: ...
