"""The pool's parts on the in-memory transport: dispatch, what each result becomes, poison, the pipeline.

No folder, no Redis, no worker process: the supervisor's parts take a
:class:`MemorySource`, and stand-in workers hold deliveries the way
:class:`~ipcpool.pool.handle.WorkerHandle` does. What a real process adds
(pipes, signals, deaths) is tested end to end elsewhere (test_supervision,
test_drain, test_recycling); these pin the rules themselves.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

import pytest

from ipcpool.config import Config, parse_config
from ipcpool.handlers import HandlerTable
from ipcpool.ops.tally import Labels, PoolMetrics
from ipcpool.ordering import Expiries, Sequencer, rules_of
from ipcpool.pool.accounting import RETRY_UNAVAILABLE, Accounting
from ipcpool.pool.dispatch import Dispatcher
from ipcpool.pool.handle import Delivery
from ipcpool.pool.pipeline import DeliveryPipeline
from ipcpool.pool.protocol import SHARED_SLOTS, Command, Later, Outcome, OutsideBeat, Run
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


# -- ordering: one message of a sequence at a time, in order (ipcpool.ordering) ---------------------------------------


def ordered(broker: MemoryBroker, key: str | None, n: int, *, field: str = "", group: str = "main",
            marked: bool = True) -> list[str]:
    """``n`` messages of sequence ``key`` (an orderingKey; with ``field``, that payload field instead)."""
    refs = []
    for i in range(n):
        body = json.loads(message(f"{key or 'x'}{i}-{len(broker.queue(group))}", **({field: key} if field else {})))
        if key is not None and not field:
            body["orderingKey"] = key
        name = f"{body['id']}.ordered.json" if marked and key is not None and not field else f"{body['id']}.json"
        refs.append(broker.put(group, name, json.dumps(body).encode()))
    return refs


def ordering_state(broker: MemoryBroker, clock: Clock, groups: dict[str, Any] | None = None,
                   **pool: Any) -> PoolState:
    cfg = parse_config({"spool": {"root": "/nonexistent/never-touched", "groups": ["main"]},
                        "pool": {"workers": 2, **pool}, "retry": {"attempts": 2, "delay": 0.0},
                        "groups": groups or {}})
    source = MemorySource(broker, clock, rules_of(cfg))
    state = PoolState(cfg, source, PoolMetrics(Labels(cfg)), clock, cfg.pool.workers)
    state.state = SupervisorState.RUNNING
    return state


def held_names(*workers: StandIn) -> list[str]:
    return [d.name for w in workers for d in w.held.values()]


def test_a_sequence_has_one_message_out_at_a_time_in_order_while_the_rest_keep_the_pool_busy():
    broker, clock = MemoryBroker(), Clock()
    a, b = ordered(broker, "chat-a", 3), ordered(broker, "chat-b", 2)
    free = queue(broker, 4)
    state = ordering_state(broker, clock)
    accounting, workers = Accounting(state), [StandIn(1), StandIn(2)]
    dispatcher = Dispatcher(state.source)
    dispatcher.dispatch(workers, prefetch=16)
    assert sorted(held_names(*workers)) == sorted([a[0], b[0], *free]), "one per sequence, every free one"
    assert state.source.stats()["groups"]["main"]["waiting"] == 3, "what waits behind a busy sequence is shown"
    urgent = {seq for w in workers for run in w.sent for seq in run.urgent}
    assert urgent == {d.seq for w in workers for d in w.held.values() if d.name in (a[0], b[0])}, \
        "a sequence's message is reported at once (its successor waits for it); the others in batches"
    order = []
    for _ in range(3):
        for worker in workers:
            for delivery in list(worker.held.values()):
                order.append(delivery.name)
                accounting.finish(worker, (delivery.seq, Outcome.HANDLED, None))
        dispatcher.dispatch(workers, prefetch=16)
    assert [r for r in order if r in a] == a and [r for r in order if r in b] == b, "publish order, per key"
    assert not broker.taken and not state.source.backlog() and not state.source.lines.lines


def test_a_head_that_killed_its_worker_goes_again_before_what_is_behind_it_and_poison_moves_the_line_on():
    broker, clock = MemoryBroker(), Clock()
    a = ordered(broker, "k", 3)
    state = ordering_state(broker, clock, max_deliveries=2)
    accounting = Accounting(state)
    for death in (1, 2):
        worker = StandIn(10 + death)
        Dispatcher(state.source).dispatch([worker], prefetch=8)
        assert held_names(worker) == [a[0]], "the redelivery, and nothing behind it"
        worker.running = next(iter(worker.held.values()))
        assert worker.running.deliveries == death
        accounting.release_held(worker, blame=True, how="killed by SIGKILL")
    assert [e.file for e in broker.dead] == [a[0]], "poison goes to the dead letters"
    worker = StandIn(20)
    Dispatcher(state.source).dispatch([worker], prefetch=8)
    assert held_names(worker) == [a[1]], "and the sequence moves on, in order"
    accounting.finish(worker, (next(iter(worker.held)), Outcome.FAILED, None))
    Dispatcher(state.source).dispatch([worker], prefetch=8)
    assert held_names(worker) == [a[2]], "a message that failed after its retries moves it on too"


def test_fifo_puts_a_whole_group_in_line_legacy_bodies_included_and_a_field_keys_plain_json():
    broker, clock = MemoryBroker(), Clock()
    line = [broker.put("main", f"legacy{i}.json", b'{"chatJid": "x", "text": "hi"}') for i in range(2)]
    own = ordered(broker, "own", 1, marked=False)
    state = ordering_state(broker, clock, {"main": {"ordering": "fifo"}})
    worker = StandIn(1)
    Dispatcher(state.source).dispatch([worker], prefetch=8)
    assert held_names(worker) == [line[0], own[0]], "the group is one line; an orderingKey is its own line"

    broker2 = MemoryBroker()
    by_chat = [broker2.put("main", f"p{i}.json", json.dumps({"chatJid": c}).encode()) for i, c in enumerate("xxy")]
    keyless = broker2.put("main", "q.json", b'{"other": 1}')
    state2 = ordering_state(broker2, clock, {"main": {"ordering_field": "chatJid"}})
    worker2 = StandIn(2)
    Dispatcher(state2.source).dispatch([worker2], prefetch=8)
    assert held_names(worker2) == [by_chat[0], by_chat[2], keyless], "per chat; a body without it is free"


def test_an_unmarked_message_in_a_group_without_ordering_is_never_read_for_a_key():
    broker, clock = MemoryBroker(), Clock()
    refs = ordered(broker, "k", 3, marked=False)
    state = ordering_state(broker, clock)
    worker = StandIn(1)
    Dispatcher(state.source).dispatch([worker], prefetch=8)
    assert held_names(worker) == refs and not state.source.lines.seq_of, "today's path: no body is parsed"


def test_a_delayed_message_of_a_sequence_steps_out_and_rejoins_its_line_at_its_end_when_due_and_expiry_moves_it_on():
    """Order and time together: a message handed back before its notBefore holds no line (what is behind it
    goes on) and, once due, joins the end of its line as a new arrival; an expired one moves the line on."""
    broker, clock = MemoryBroker(), Clock()
    a = ordered(broker, "k", 3)
    state = ordering_state(broker, clock)
    accounting, worker = Accounting(state), StandIn(1)
    source = state.source

    def step(outcome: Outcome = Outcome.HANDLED, info: Any = None) -> str:
        Dispatcher(source).dispatch([worker], prefetch=8)
        [(seq, delivery)] = worker.held.items()
        accounting.finish(worker, (seq, outcome, info))
        return delivery.name

    assert step(Outcome.DELAYED, Later(time.time() + 30)) == a[0], "the head, handed back before its time"
    assert source.stats()["groups"]["main"]["waiting"] == 1, "the line went on without it"
    assert step() == a[1], "what was behind the delayed one is not held back by it"
    a += ordered(broker, "k", 1)  # published while a[0] waits for its time: ahead of it in the line
    Dispatcher(source).dispatch([worker], prefetch=8)
    clock.now += 60
    source.poll(clock.now)  # a[0] is due: a new arrival
    order = []
    for _ in range(3):
        Dispatcher(source).dispatch([worker], prefetch=8)
        assert len(worker.held) == 1, "still one message of the sequence out at a time"
        [(seq, delivery)] = worker.held.items()
        order.append(delivery.name)
        accounting.finish(worker, (seq, Outcome.HANDLED, None))
    assert order == [a[2], a[3], a[0]], "the delayed one took its place at its due time: the end of its line"

    b = ordered(broker, "e", 2)
    assert step(Outcome.EXPIRED, None) == b[0]
    assert step() == b[1], "an expired message (dead-lettered by its worker) moves its sequence on"
    assert not broker.taken and not source.lines.lines


def test_a_waiting_message_past_its_expiry_leaves_its_line_out_of_turn_and_the_head_is_untouched():
    """Issue 27 (order and expiry): the line's bookkeeping behind the out-of-turn hand-out of an expired one."""
    lines, expiries = Sequencer(), Expiries()
    seq = ("main", "k")
    refs = [("main", f"m{n}") for n in range(4)]
    assert lines.admit(refs[0], seq), "the head runs"
    for n, ref in enumerate(refs[1:], 1):
        assert not lines.admit(ref, seq)
        if n != 3:
            expiries.add(100.0 + n, ref, lines.waiting)
    assert expiries.next_at() == 101.0
    assert expiries.due(100.5, lines.waiting) == [], "none past its expiry yet"
    assert expiries.due(101.0, lines.waiting) == [refs[1]]
    assert lines.out_of_turn(refs[1]) and refs[1] not in lines and list(lines.lines[seq]) == [refs[0], *refs[2:]]
    assert not lines.out_of_turn(refs[0]), "a head is never taken out of turn"
    assert lines.finish(refs[1]) is None, "its own end moves nothing"
    assert lines.finish(refs[0]) == refs[2], "the head's end hands the next in line on"
    assert expiries.due(200.0, lines.waiting) == [], "2 no longer waits (it heads its line): skipped"
    assert expiries.next_at() is None


def test_the_memory_transport_hands_an_expired_waiting_message_out_out_of_turn_beside_its_running_head():
    broker, clock = MemoryBroker(), Clock()
    head, behind = ordered(broker, "k", 2)
    body = json.loads(message("late"))
    body.update(orderingKey="k", expiresAt="2000-01-01T00:00:00Z")
    late = broker.put("main", "late.ordered.json", json.dumps(body).encode())
    last = ordered(broker, "k", 1)[0]
    state = ordering_state(broker, clock)
    workers = [StandIn(1), StandIn(2)]
    dispatcher = Dispatcher(state.source)
    dispatcher.dispatch(workers, prefetch=16)
    assert held_names(*workers) == [head], "the head alone; the rest wait in line"
    assert state.source.wake_at() is not None, "the loop wakes for the expiry"
    state.source.poll(clock())
    dispatcher.dispatch(workers, prefetch=16)
    assert sorted(held_names(*workers)) == sorted([head, late]), "the expired one out of turn, nothing else"
    assert list(state.source.lines.lines[("main", "k")]) == [("main", head), ("main", behind), ("main", last)]
