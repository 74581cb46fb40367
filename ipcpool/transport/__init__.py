"""The transport seam: everything that knows where messages live, behind four narrow interfaces.

    supervisor ──Source──────▶ open (recover) · filenos/read_events/poll · backlog · take · renew
                               requeue · failed_delivery · quarantine · finished · stats
    worker     ──Store───────▶ prefetch · read · is_acked · complete · settle · reply · quarantine
    sender     ──Outbox──────▶ publish · present · answer (ack, nack or response) · depth
    operator   ──Inspector───▶ counts · supervisors · ping · dead_letters (list · read · retry · purge)

Two implementations, one sub-package each: ``transport.spool`` (files under
``[spool] root``: the default, needs nothing installed) and
``transport.redis`` (Redis Streams, the ``[redis]`` extra: many supervisors on
many hosts share each group's queue). The supervisor, the worker, the client
and the command line import only this module; which backend they hold is
``[transport] backend``.

What crosses a worker's pipe is a *receipt*, ``(seq, group, ref, deliveries)``:
``ref`` is the backend's name for one message (a file's key in the spool, a
stream entry id in Redis), opaque to everyone else; ``deliveries`` counts this
delivery (1 + the deliveries that killed or hung a worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ipcpool.config import Config
    from ipcpool.message import Summary

Receipt = tuple[int, str, str, int]  # (seq, group, ref, deliveries): all a worker is told of a message
Taken = tuple[str, str, int]  # (group, ref, deliveries): what Source.take hands the supervisor


@dataclass(slots=True)
class Raw:
    """One message's bytes as a worker reads them, with what the transport knows beside them."""

    data: bytes
    fmt: str | None  # "json" or "msgpack"; None: not a format ipcpool reads
    stem: str  # the id its name gives (a legacy message's id)
    inbox: str = "messages"  # where it was dropped: messages, or tasks
    mtime: float = 0.0  # when it last changed (a file still being written is not settled yet); 0: complete
    token: Any = None  # the transport's own, handed back to complete() (the spool: a recyclable inode)


class Source(Protocol):
    """The supervisor's side. Never blocks; never raises for a failed transition (it keeps the
    message tracked and retries it, and says so in stats)."""

    backend: str

    def open(self) -> int:
        """Create what is missing, take back what a previous run held; returns how many came back."""

    def filenos(self) -> list[int]:
        """What the supervisor's loop waits on, with everything else (readable when read_events has news)."""

    def poll(self, now: float) -> None:
        """Turn events into backlog; run rescans, retries and housekeeping, in short slices."""

    def busy(self) -> bool:
        """Sliced work is left: poll again without waiting."""

    def read_events(self, ready: set[int] | None = None) -> None:
        """Some of filenos() are ``ready`` (None: look at each): take in what they say."""

    def backlog(self) -> int:
        """How many messages take() could hand out now."""

    def want(self, room: int) -> None:
        """The pool could take ``room`` more now (a transport that fetches ahead asks for that many)."""

    def take(self, room: int) -> list[Taken]:
        """Claim up to ``room`` messages, oldest first; the supervisor owns them until it says otherwise."""

    def finished(self, group: str, ref: str, outcome: str, info: Any) -> None:
        """A worker is done with it: the transport takes over what the worker could not finish."""

    def requeue(self, group: str, ref: str, *, later: float = 0.0, counted: bool = True) -> None:
        """Back to the queue (a worker returned it, or ended holding it); ``later``: not before then."""

    def failed_delivery(self, group: str, ref: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """One more delivery of it killed or hung a worker: record it (wherever it happened); the history."""

    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None) -> bool:
        """To the dead letters with its record (poison), answering a waiting sender; False when it is
        gone, or could not be moved now (then it is retried)."""

    def summarize(self, group: str, ref: str) -> Summary:
        """What a held message says it is (id, type): read only on rare paths (timeouts, poison)."""

    def renew(self, held: Iterable[tuple[str, str]]) -> None:
        """Still ours: the messages live workers hold (called from the heartbeat timer)."""

    def housekeeping(self, live_pids: set[int]) -> None:
        """Start a pruning pass (acks, responses, dead letters past their retention), run by poll;
        ``live_pids``: the pool's processes (their temp files are kept)."""

    @property
    def holds_acks(self) -> bool:
        """Handled messages wait for their acks: workers' ack checks must look for them too."""

    def stats(self) -> dict[str, Any]:
        """Per group (queued, oldest, errors) and the transport's troubles, for status.json."""

    def announce(self, status: dict[str, Any]) -> None:
        """Publish this supervisor's status where every host can read it (a shared transport)."""

    def close(self) -> None: ...


class Store(Protocol):
    """A worker's side: one message at a time, from a receipt."""

    def prefetch(self, receipts: Sequence[Receipt]) -> None:
        """A batch was handed over: fetch what it needs in one go, where that saves round trips."""

    def read(self, group: str, ref: str) -> Raw:
        """The message's bytes; FileNotFoundError when it vanished, InvalidMessage when it must not be read."""

    def names(self, ref: str) -> tuple[str | None, str]:
        """(format, stem) of a message that could not be read, as far as its ref tells."""

    def is_acked(self, group: str, message_id: str, *, holds: bool = False) -> bool:
        """The dedupe check, before the handler runs (``holds``: some acks wait to be written)."""

    def complete(self, group: str, ref: str, ack_id: str | None, token: Any) -> dict[str, Any] | None:
        """Acknowledge (when asked) and remove, at once; None, or what the supervisor must finish for it."""

    def complete_duplicate(self, group: str, ref: str, ack_id: str, token: Any) -> None:
        """A copy of an acked message: refresh its ack, remove it."""

    def settle(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Completions a transport pipelines, finished: (group, ref) -> what the supervisor must finish.

        Called before the worker reports what it did; a transport whose
        ``complete`` is done when it returns has nothing to settle.
        """

    def reply(self, group: str, request_id: str, data: bytes) -> bool:
        """A response for a waiting requester; False when its group does not exist (dropped); raises
        OSError (TransportUnavailable is one) when it cannot be written now."""

    def error_ref(self, group: str, ref: str) -> str:
        """Where its record would go, named before it goes there (a response may cite it)."""

    def quarantine(self, group: str, ref: str, record: dict[str, Any], nack: dict[str, Any] | None,
                   error_ref: str = "") -> None:
        """To the dead letters with its record; raises FileNotFoundError when gone, OSError when it
        cannot be moved now (the supervisor then retries it)."""

    def close(self) -> None: ...


class Outbox(Protocol):
    """A sender's side."""

    backend: str
    root: Any  # where it sends: a spool root (Redis senders still have a local root)

    def ensure_group(self, group: str) -> None: ...

    def publish(self, group: str, name: str, data: bytes) -> None:
        """Queue one message; MessageExists when a different one has its name, QueueFull past max_queued."""

    def present(self, group: str, name: str, message_id: str) -> bool:
        """Queued, in flight or acked: a re-send is needless."""

    def is_acked(self, group: str, message_id: str) -> bool: ...

    def nack(self, group: str, message_id: str) -> dict[str, Any] | None:
        """The nack of that id, if there is one (the caller judges whether it is its message's)."""

    def wait_answer(self, group: str, message_id: str, timeout: float, accept_nack: Callable[[dict[str, Any]], bool],
                    *, reply_group: str | None = None) -> tuple[str, Any] | None:
        """("ack", None), ("nack", body) or, with ``reply_group``, ("response", bytes); None after timeout.
        A nack ``accept_nack`` refuses (an older one of the same id) is waited past."""

    async def async_wait_answer(self, group: str, message_id: str, timeout: float,
                                accept_nack: Callable[[dict[str, Any]], bool], *,
                                reply_group: str | None = None) -> tuple[str, Any] | None: ...

    def depth(self, group: str) -> int: ...

    def supervisor_running(self) -> bool | None:
        """Whether some supervisor takes this sender's messages now; None where that cannot be told."""

    def close(self) -> None: ...


class Inspector(Protocol):
    """What operators look at without a supervisor: counts per group, and the dead letters."""

    def counts(self) -> dict[str, dict[str, int]]:
        """Per group: queued, processing (claimed), errors (dead letters)."""

    def busy(self) -> bool:
        """Anything queued or in flight, in any group."""

    def dead_letters(self) -> Any:
        """The dead letters (``errors/``, or the dead-letter streams): list, read, retry, purge."""

    def supervisors(self) -> list[dict[str, Any]]:
        """Every live supervisor's status (a shared transport; the spool has one, in status.json)."""

    def ping(self) -> None:
        """Raise TransportUnavailable when the transport cannot be reached."""

    def close(self) -> None: ...


def make_source(config: Config, *, clock: Any, on_hint: Any) -> Source:
    """The supervisor's side of the configured backend."""
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.source import RedisSource

        return RedisSource(config, clock=clock, on_hint=on_hint)
    from ipcpool.transport.spool.source import SpoolSource

    return SpoolSource(config, clock=clock, on_hint=on_hint)


def make_store(config: Config) -> Store:
    """A worker's side of the configured backend (built in the worker process)."""
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.store import RedisStore

        return RedisStore(config)
    from ipcpool.transport.spool.store import SpoolStore

    return SpoolStore(config)


def make_outbox(config: Config) -> Outbox:
    """A sender's side of the configured backend."""
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.outbox import RedisOutbox

        return RedisOutbox(config)
    spool = config.spool
    return spool_outbox(spool.root, durability=spool.durability, mode=spool.mode, max_queued=spool.max_queued)


def spool_outbox(root: Any, **options: Any) -> Outbox:
    """A sender into the spool root ``root`` (``Client(root, ...)``)."""
    from ipcpool.transport.spool.outbox import SpoolOutbox

    return SpoolOutbox(root, **options)


def make_inspector(config: Config) -> Inspector:
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.inspector import RedisInspector

        return RedisInspector(config)
    from ipcpool.transport.spool.inspector import SpoolInspector

    return SpoolInspector(config)


def preflight(config: Config) -> None:
    """What ``ipcpool run`` checks before it starts (unsafe folders; a Redis that would lose messages):
    raises SpoolError or ConfigError with the reason and the fix."""
    if config.transport.backend == "redis":
        from ipcpool.transport.redis.checks import check_server

        check_server(config)
        return
    from ipcpool.transport.spool.preflight import check_spool_permissions

    check_spool_permissions(config)
