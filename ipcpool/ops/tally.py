"""Counting finished messages for /metrics, in the process where they finish.

Workers never serve metrics (no multiprocess directory to leak, the known
failure of prometheus_client's multiprocess mode): each keeps a
:class:`Tally` of what it finished and sends the delta with the results it
already reports; the supervisor adds the deltas into :class:`PoolMetrics`,
with what only it sees (poison, returned messages, worker restarts). Plain
dicts: nothing here imports prometheus_client, so a worker does not pay for it.

Labels stay low-cardinality: groups come from the config (past
``MAX_GROUP_LABELS`` the rest fold into ``other``), types are the known ones
(the original five, the handler table's, the groups' ``allowed_types``) with
every other string folded into ``other``; no pids, hosts or message ids.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ipcpool.config import Config
from ipcpool.message import IPCMessageType

if TYPE_CHECKING:
    from ipcpool.ops.health import Verdict

# Handler durations, seconds: 1 ms to 5 min.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MAX_GROUP_LABELS = 50  # more groups than this: the rest are reported as "other"
OTHER = "other"
UNKNOWN = "unknown"  # the type of a message that could not be decoded
RESTART_REASONS = ("crash", "hung", "timeout", "recycle-tasks", "recycle-memory", "boot")
WORKER_STATES = ("starting", "ready", "busy", "stopping")


class Labels:
    """Folds group and type strings into a bounded label set, decided once from the config."""

    def __init__(self, config: Config) -> None:
        groups = sorted(set(config.spool.groups) | set(config.groups))
        self.groups = frozenset(groups[:MAX_GROUP_LABELS])
        types = {t.value for t in IPCMessageType} | {t for t in config.handlers if t != "*"}
        for group in config.groups.values():
            types.update(group.allowed_types)
        self.types = frozenset(types)

    def group(self, name: str) -> str:
        return name if name in self.groups else OTHER

    def type(self, name: str | None) -> str:
        if name is None or name == UNKNOWN:
            return UNKNOWN
        return name if name in self.types else OTHER


class Tally:
    """A worker's counts since it last reported: outcomes by (group, type), handler durations."""

    __slots__ = ("durations", "labels", "outcomes")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.outcomes: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], list[float]] = {}  # bucket counts..., then the sum

    def record(self, group: str, type_: str | None, outcome: str, seconds: float | None) -> None:
        key = (self.labels.group(group), self.labels.type(type_))
        full = (*key, outcome)
        self.outcomes[full] = self.outcomes.get(full, 0) + 1
        if seconds is not None:
            row = self.durations.get(key)
            if row is None:
                row = self.durations[key] = [0.0] * (len(BUCKETS) + 2)
            row[bisect.bisect_left(BUCKETS, seconds)] += 1  # the last bucket index is +Inf
            row[-1] += seconds

    def take(self) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], list[float]]] | None:
        """The delta to send (None when nothing happened), and a fresh start."""
        if not self.outcomes:
            return None
        delta = (self.outcomes, self.durations)
        self.outcomes, self.durations = {}, {}
        return delta


@dataclass
class PoolMetrics:
    """The supervisor's running totals; only its loop thread touches them."""

    labels: Labels
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    durations: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_REASONS, 0))
    returned: dict[str, int] = field(default_factory=dict)  # by group: put back unfinished, handed out again

    def absorb(self, delta: Any) -> None:
        """A worker's Tally delta, as it came over the channel."""
        outcomes, durations = delta
        for key, n in outcomes.items():
            self.outcomes[key] = self.outcomes.get(key, 0) + n
        for key, row in durations.items():
            mine = self.durations.get(key)
            if mine is None:
                self.durations[key] = list(row)
            else:
                for i, value in enumerate(row):
                    mine[i] += value

    def count(self, group: str, type_: str | None, outcome: str) -> None:
        """An outcome only the supervisor sees (poisoned)."""
        key = (self.labels.group(group), self.labels.type(type_), outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def returned_to_queue(self, group: str) -> None:
        """Put back unfinished (a worker died or stopped, Redis was away): not a finished message."""
        key = self.labels.group(group)
        self.returned[key] = self.returned.get(key, 0) + 1

    def restart(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1

    def by_group(self) -> dict[str, dict[str, int]]:
        """Finished messages per group and outcome (the live view's rates)."""
        groups: dict[str, dict[str, int]] = {}
        for (group, _type, outcome), n in self.outcomes.items():
            row = groups.setdefault(group, {})
            row[outcome] = row.get(outcome, 0) + n
        return groups

    def snapshot(self) -> PoolMetrics:
        """A copy the HTTP thread may read while the loop goes on."""
        return PoolMetrics(self.labels, dict(self.outcomes), {k: list(v) for k, v in self.durations.items()},
                           dict(self.restarts), dict(self.returned))


@dataclass(frozen=True)
class Scrape:
    """What one scrape shows: the counters, the status record of the same moment and its verdict, the loop's lag."""

    metrics: PoolMetrics
    status: dict[str, Any]
    loop_lag: float
    verdict: Verdict
