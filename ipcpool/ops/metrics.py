"""/metrics: one snapshot of the supervisor's counts and status, in Prometheus's text format.

The counting happens in ``ipcpool.ops.tally``; this module only renders, and
is the one that imports prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ipcpool.msgtime import parse_iso
from ipcpool.ops.health import transport_stats
from ipcpool.ops.tally import BUCKETS, WORKER_STATES, Labels, PoolMetrics, Scrape


class _Collector:
    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.scrape))


def render(scrape: Scrape) -> bytes:
    """The text exposition format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(scrape))  # type: ignore[arg-type]
    return generate_latest(registry)


def families(scrape: Scrape) -> list[Metric]:
    """Every family of one scrape: messages, queues, workers, the transport and the loop."""
    return [*_message_families(scrape.metrics), *_queue_families(scrape.metrics.labels, scrape.status),
            *_worker_families(scrape.metrics, scrape.status), *_transport_families(scrape)]


def _message_families(metrics: PoolMetrics) -> list[Metric]:
    messages = CounterMetricFamily("ipcpool_messages", "Messages finished, by group, type and outcome.",
                                   labels=["group", "type", "outcome"])
    for (group, type_, outcome), n in sorted(metrics.outcomes.items()):
        messages.add_metric([group, type_, outcome], n)
    returned = CounterMetricFamily("ipcpool_messages_returned",
                                   "Messages put back unfinished (their worker died or stopped, or the transport "
                                   "was away) to be handed out again, by group.", labels=["group"])
    for group, n in sorted(metrics.returned.items()):
        returned.add_metric([group], n)
    duration = HistogramMetricFamily("ipcpool_handler_duration_seconds",
                                     "Handler time per delivery (all its attempts and the retry waits between "
                                     "them), by group and type.",
                                     labels=["group", "type"])
    for (group, type_), row in sorted(metrics.durations.items()):
        cumulative, buckets = 0.0, []
        for bound, n in zip((*[str(b) for b in BUCKETS], "+Inf"), row[:-1], strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        duration.add_metric([group, type_], buckets, row[-1])
    return [messages, returned, duration]


def _queue_families(labels: Labels, status: dict[str, Any]) -> list[Metric]:
    depth = GaugeMetricFamily("ipcpool_queue_depth", "Messages waiting in the queue, by group.", labels=["group"])
    inflight = GaugeMetricFamily("ipcpool_in_flight", "Messages handed to workers (running or prefetched), by group.",
                                 labels=["group"])
    oldest = GaugeMetricFamily("ipcpool_oldest_queued_age_seconds",
                               "Age of the oldest waiting message, by group (0 when none waits).", labels=["group"])
    errors = GaugeMetricFamily("ipcpool_dead_letters", "Messages in the group's errors/ (dead letters).",
                               labels=["group"])
    delayed = GaugeMetricFamily("ipcpool_delayed", "Messages held until their notBefore, by group.",
                                labels=["group"])
    next_due = GaugeMetricFamily("ipcpool_delayed_next_due_timestamp_seconds",
                                 "When the group's next delayed message is due (Unix time; absent when none is held).",
                                 labels=["group"])
    waiting = GaugeMetricFamily("ipcpool_sequence_waiting",
                                "Queued messages waiting behind a busy sequence (ordering), by group.",
                                labels=["group"])
    folded: dict[str, list[float]] = {}
    dues: dict[str, float] = {}
    for name, group in status.get("groups", {}).items():
        if group.get("nextDue"):
            due = parse_iso(group["nextDue"], "nextDue")
            dues[labels.group(name)] = min(due, dues.get(labels.group(name), due))
        row = folded.setdefault(labels.group(name), [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        row[5] += group.get("waiting") or 0
        row[0] += (group.get("queued") or 0) + (group.get("buffered") or 0)  # Redis: read ahead, not handed out
        row[1] += (group.get("held") or 0) + (group.get("running") or 0)
        row[2] = max(row[2], group.get("oldestQueuedAge") or 0.0)
        row[3] += group.get("errors") or 0
        row[4] += group.get("delayed") or 0
    for name, (queued, held, age, dead, held_back, behind) in sorted(folded.items()):
        waiting.add_metric([name], behind)
        depth.add_metric([name], queued)
        inflight.add_metric([name], held)
        oldest.add_metric([name], age)
        errors.add_metric([name], dead)
        delayed.add_metric([name], held_back)
        if name in dues:
            next_due.add_metric([name], dues[name])
    return [depth, inflight, oldest, errors, delayed, next_due, waiting]


def _worker_families(metrics: PoolMetrics, status: dict[str, Any]) -> list[Metric]:
    workers = GaugeMetricFamily("ipcpool_workers", "Worker processes, by state.", labels=["state"])
    states = dict.fromkeys(WORKER_STATES, 0)
    for worker in status.get("workers", []):
        states[worker["state"]] = states.get(worker["state"], 0) + 1
    for state, n in states.items():
        workers.add_metric([state], n)
    restarts = CounterMetricFamily("ipcpool_worker_restarts", "Workers replaced, by reason.", labels=["reason"])
    for reason, n in sorted(metrics.restarts.items()):
        restarts.add_metric([reason], n)
    return [workers, restarts]


def _transport_families(scrape: Scrape) -> list[Metric]:
    transport = transport_stats(scrape.status)
    holds = GaugeMetricFamily("ipcpool_ack_holds",
                              "Handled messages whose ack could not be written yet (kept, acked when it can be).")
    holds.add_metric([], transport.get("ackHolds") or 0)
    stranded = GaugeMetricFamily("ipcpool_completions_waiting",
                                 "Acks, nacks and moves to the dead letters the supervisor is still finishing for "
                                 "its workers (their write failed: a full disk, Redis away).")
    stranded.add_metric([], transport.get("stranded") or 0)
    lag = GaugeMetricFamily("ipcpool_loop_lag_seconds", "How long the supervisor loop took to answer this scrape.")
    lag.add_metric([], scrape.loop_lag)
    up = GaugeMetricFamily("ipcpool_transport_up", "1 when the transport (spool folder or Redis) is reachable.")
    up.add_metric([], 1 if scrape.verdict.transport_up else 0)
    unserved = GaugeMetricFamily("ipcpool_groups_unserved",
                                 "Group folders the supervisor refuses to serve (another user owns one, ...): "
                                 "`ipcpool health` names each and the command that fixes it.")
    unserved.add_metric([], len(transport.get("unservedGroups") or {}))
    return [holds, stranded, lag, up, unserved]
