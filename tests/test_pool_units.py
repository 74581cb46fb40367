"""The pool's parts on the in-memory transport: dispatch, what each result becomes, poison, the pipeline.

No folder, no Redis, no worker process: the supervisor's parts take a
:class:`MemorySource`, and stand-in workers hold deliveries the way
:class:`~ipcpool.pool.handle.WorkerHandle` does. What a real process adds
(pipes, signals, deaths) is tested end to end elsewhere (test_supervision,
test_drain, test_recycling); these pin the rules themselves.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import pytest

from ipcpool.config import Config, parse_config
from ipcpool.handlers import HandlerTable
from ipcpool.ops.tally import Labels, PoolMetrics
from ipcpool.pool.accounting import RETRY_UNAVAILABLE, Accounting
from ipcpool.pool.dispatch import Dispatcher
from ipcpool.pool.handle import Delivery
from ipcpool.pool.pipeline import DeliveryPipeline
from ipcpool.pool.protocol import SHARED_SLOTS, Command, Outcome, OutsideBeat, Run
from ipcpool.pool.state import PoolState, SupervisorState
from ipcpool.transport.base import DeadLetterLater
from ipcpool.transport.memory import MemoryBroker, MemorySource, MemoryStore


def config(**pool: Any) -> Config:
    return parse_config({"spool": {"root": "/nonexistent/never-touched", "groups": ["main"]},
                         "pool": {"workers": 2, **pool}, "retry": {"attempts": 2, "delay": 0.0}})


def message(message_id: str, type_: str = "task", **payload: Any) -> bytes:
    return json.dumps({"id": message_id, "type": type_, "payload": payload, "requiresAck": True,
                       "timestamp": "2026-12-06T00:00:00.000Z"}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class StandIn:
    """What dispatch, accounting and the pool's state read of a worker: its held deliveries, its load, its
    commands; ``running`` is the delivery its handler runs now (what a death blames)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.held: OrderedDict[int, Delivery] = OrderedDict()
        self.sent: list[Command] = []
        self.finished_upto = 0  # deliveries up to this seq are done (not reported yet)
        self.running: Delivery | None = None
        self.handled = self.failed = 0

    def outstanding(self) -> int:
        return sum(1 for seq in self.held if seq > self.finished_upto)

    def send(self, command: Command) -> bool:
        self.sent.append(command)
        return True

    def current(self) -> tuple[Delivery | None, float]:
        return self.running, 1.0 if self.running else 0.0


def queue(broker: MemoryBroker, n: int, group: str = "main") -> list[str]:
    return [broker.put(group, f"m{i}.json", message(f"m{i}")) for i in range(n)]


# -- dispatch -----------------------------------------------------------------------------------------------


def test_a_burst_is_split_evenly_and_no_worker_holds_more_than_its_prefetch():
    broker = MemoryBroker()
    queue(broker, 10)
    workers = [StandIn(1), StandIn(2)]
    dispatcher = Dispatcher(MemorySource(broker))
    dispatcher.dispatch(workers, prefetch=16)
    assert [len(w.held) for w in workers] == [5, 5], "even shares: 10 over 2"
    assert all(isinstance(c, Run) for w in workers for c in w.sent)
    seqs = [r[0] for w in workers for c in w.sent for r in c.receipts]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10, "every delivery numbered once, in order"

    broker2 = MemoryBroker()
    queue(broker2, 100)
    workers2 = [StandIn(1), StandIn(2)]
    Dispatcher(MemorySource(broker2)).dispatch(workers2, prefetch=4)
    assert [len(w.held) for w in workers2] == [4, 4], "prefetch bounds what each worker holds"
    assert MemorySource(broker2).backlog() == 92


def test_a_worker_is_topped_up_only_once_half_its_prefetch_is_free_and_room_says_what_is_left():
    broker = MemoryBroker()
    queue(broker, 20)
    worker = StandIn(1)
    dispatcher = Dispatcher(MemorySource(broker))
    dispatcher.dispatch([worker], prefetch=8)
    assert len(worker.held) == 8 and dispatcher.room == 0, "what was handed out fills the room"
    worker.finished_upto = 3  # 3 done, 5 outstanding: less than half free
    dispatcher.dispatch([worker], prefetch=8)
    assert len(worker.held) == 8 and len(worker.sent) == 1, "no top-up below half free"
    worker.finished_upto = 4  # half free
    dispatcher.dispatch([worker], prefetch=8)
    assert len(worker.held) == 12 and len(worker.sent) == 2
    assert dispatcher.room == 0
    worker.finished_upto = 12
    broker.queues["main"].clear()
    dispatcher.dispatch([worker], prefetch=8)
    assert dispatcher.room == 8, "an empty backlog leaves the room for a fetching transport to ask for"


def test_while_the_pool_first_boots_a_backlog_is_shared_with_workers_still_booting():
    broker = MemoryBroker()
    queue(broker, 9)
    ready = StandIn(1)
    Dispatcher(MemorySource(broker)).dispatch([ready], prefetch=16, booting=2)
    assert len(ready.held) == 3, "its share of 9 over 3 workers, not all 9"


# -- what a result becomes ---------------------------------------------------------------------------------------


def pool_state(broker: MemoryBroker, clock: Clock, **pool: Any) -> PoolState:
    cfg = config(**pool)
    state = PoolState(cfg, MemorySource(broker, clock), PoolMetrics(Labels(cfg)), clock, cfg.pool.workers)
    state.state = SupervisorState.RUNNING
    return state


def hand_out(state: PoolState, worker: StandIn, n: int) -> list[Delivery]:
    Dispatcher(state.source).dispatch([worker], prefetch=n)
    return list(worker.held.values())


def test_each_outcome_ends_in_one_place():
    broker, clock = MemoryBroker(), Clock()
    queue(broker, 6)
    state = pool_state(broker, clock)
    accounting = Accounting(state)
    worker = StandIn(7)
    handled, unsettled, returned, unreachable, failed, beat = hand_out(state, worker, 6)

    accounting.finish(worker, (handled.seq, Outcome.HANDLED, None))
    assert (handled.group, handled.name) not in broker.taken and accounting.totals["handled"] == 1
    accounting.finish(worker, (unsettled.seq, Outcome.UNSETTLED, None))
    assert (unsettled.group, unsettled.name) in broker.later, "offered again once settled, not at once"
    accounting.finish(worker, (returned.seq, Outcome.RETURNED, None))
    assert next(iter(broker.queue("main"))) == returned.name, "a returned one is next again"
    accounting.finish(worker, (unreachable.seq, Outcome.UNREACHABLE, None))
    assert broker.later[(unreachable.group, unreachable.name)] == clock.now + RETRY_UNAVAILABLE
    accounting.finish(worker, (failed.seq, Outcome.FAILED, DeadLetterLater({"id": "m4"}, None, "full")))
    accounting.finish(worker, (beat.seq, Outcome.HEARTBEAT, OutsideBeat(4242, "ok", None)))
    assert accounting.totals == {"handled": 1, "failed": 1, "duplicates": 0, "poisoned": 0, "requeued": 0}
    assert accounting.external[("main", "4242")]["status"] == "ok"
    assert not worker.held, "every result took its delivery out of the worker's hands"
    accounting.finish(worker, (handled.seq, Outcome.HANDLED, None))  # a result reported twice: ignored
    assert accounting.totals["handled"] == 1


def test_a_message_that_kills_its_worker_max_deliveries_times_is_poison():
    broker, clock = MemoryBroker(), Clock()
    queue(broker, 3)
    state = pool_state(broker, clock, max_deliveries=3)
    accounting = Accounting(state)
    for death in range(1, 4):
        worker = StandIn(100 + death)
        deliveries = hand_out(state, worker, 3)
        killer = next(d for d in deliveries if d.name.endswith("m0.json"))
        assert killer.deliveries == death, "the delivery count goes up with each death"
        worker.running = killer
        accounting.release_held(worker, blame=True, how="killed by SIGKILL")
        assert not worker.held
    assert len(broker.dead) == 1, "poison after 3 deliveries, not before"
    record = broker.dead[0].record
    assert record["id"] == "m0" and record["attempts"] == 3 and "max_deliveries = 3" in record["reason"]
    assert [d["workerPid"] for d in record["deliveries"]] == [101, 102, 103]
    assert broker.nacks[("main", "m0")]["reason"].startswith("poison message")
    assert MemorySource(broker).backlog() == 2, "the others it held went back each time, unblamed"
    assert accounting.totals["poisoned"] == 1 and accounting.totals["requeued"] == 8


def test_put_backs_while_draining_are_counted_as_returned():
    broker, clock = MemoryBroker(), Clock()
    queue(broker, 4)
    state = pool_state(broker, clock)
    accounting = Accounting(state)
    worker = StandIn(9)
    hand_out(state, worker, 4)
    state.state = SupervisorState.DRAINING
    accounting.release_held(worker, blame=False)
    assert accounting.returned == 4 and MemorySource(broker).backlog() == 4 and not broker.dead


# -- the delivery pipeline -----------------------------------------------------------------------------------


def pipeline(broker: MemoryBroker, handlers: dict[str, Any], **pool: Any) -> DeliveryPipeline:
    return DeliveryPipeline(config(**pool), MemoryStore(broker), HandlerTable(handlers), [0.0] * SHARED_SLOTS)


def take_one(broker: MemoryBroker, name: str, data: bytes) -> str:
    ref = broker.put("main", name, data)
    MemorySource(broker).take(1)
    return ref


def test_the_pipeline_handles_acks_and_then_skips_the_same_id_as_a_duplicate():
    broker, seen = MemoryBroker(), []
    pipe = pipeline(broker, {"task": lambda m: seen.append(m.id)})
    first = take_one(broker, "a.json", message("a"))
    assert pipe.process(1, "main", first, 1) == (Outcome.HANDLED, None)
    assert ("main", "a") in broker.acks and seen == ["a"]
    again = take_one(broker, "a-copy.json", message("a"))
    assert pipe.process(2, "main", again, 1) == (Outcome.DUPLICATE, None)
    assert seen == ["a"], "the handler never runs for an acked id"
    assert pipe.shared[1] == 0.0, "nothing is running once it returned"


def test_the_pipeline_retries_then_dead_letters_with_the_reason_and_rejects_what_it_cannot_read():
    broker, calls = MemoryBroker(), []

    def flaky(m: Any) -> None:
        calls.append(m.id)
        raise ValueError("always")

    pipe = pipeline(broker, {"task": flaky})
    ref = take_one(broker, "b.json", message("b"))
    outcome, info = pipe.process(1, "main", ref, 1)
    assert (outcome, info) == (Outcome.FAILED, None) and calls == ["b", "b"], "[retry] attempts = 2"
    assert broker.dead[-1].record["reason"] == "handler raised ValueError: always"
    assert broker.nacks[("main", "b")]["id"] == "b"

    bad = take_one(broker, "c.json", b"{not json")
    assert pipe.process(2, "main", bad, 1)[0] is Outcome.INVALID
    unknown = take_one(broker, "d.json", message("d", type_="nobody-handles-this"))
    assert pipe.process(3, "main", unknown, 1)[0] is Outcome.INVALID
    assert broker.dead[-1].record["reason"] == "no handler for type nobody-handles-this"
    gone = broker.put("main", "e.json", message("e"))  # never taken: not in anyone's hands
    assert pipe.process(4, "main", gone, 1) == (Outcome.VANISHED, None)


@pytest.mark.parametrize("outcome", [Outcome.HANDLED, Outcome.UNREACHABLE])
def test_an_outcome_pickles_as_itself_across_the_pipe(outcome):
    import pickle

    from ipcpool.pool.protocol import Done

    report = pickle.loads(pickle.dumps(Done([(1, outcome, None)], None)))
    assert report.results[0][1] is outcome and isinstance(report, Done)
