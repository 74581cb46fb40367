"""Delayed entries on Redis: a sorted set per group, scored by due time, moved back into the stream when due.

A worker that reads an entry before its ``notBefore`` hands it back; the
supervisor then runs ``HOLD``: the entry's fields into a list of their own, its
id into the group's sorted set scored by the due time (ms, rounded up: never
early), XACK and XDEL, in one script, so it is in the stream or in the set,
never both, never neither. ``RELEASE`` moves what is due back into the stream
(XADD: a new entry, read by whichever supervisor reads next; an entry of a
sequence is pushed onto the end of its line with it: it takes its place in the
sequence at its due time), also in one script: whichever supervisor runs it
first moves an entry, the others find it gone, so each is handed out once
however many supervisors look.

Nothing scans the set: each supervisor runs ``RELEASE`` when the earliest due
time it knows of has come (what it held itself, and what the last ``RELEASE``
answered as the next), and once every ``CHECK_EVERY`` seconds for what other
supervisors held (one round trip for all groups, each an O(log n) range).
"""

from __future__ import annotations

import math
from typing import Any

from ipcpool.msgtime import format_iso
from ipcpool.transport.redis.keys import CONSUMER_GROUP, Keys

CHECK_EVERY = 1.0  # seconds between looks for what other supervisors held (a due time this one did not set)
RELEASE_COUNT = 256  # entries one RELEASE moves per group; more due: released again at once

# KEYS: stream, delayed set, the entry's list, its deliveries; ARGV: consumer group, entry id, due (ms).
HOLD = """
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #found == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], unpack(found[1][2]))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[4])
return 1
"""

# KEYS: delayed set, stream; ARGV: now (ms), count, the entries' list key prefix, the group's lines' key prefix.
# Returns {moved, more due (1/0), the next due time (ms) or false}. An entry of a sequence (its field k) joins
# the end of its line with its new id, in the same step as the XADD (ipcpool.ordering: its place at its due time).
RELEASE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local moved = 0
for _, entry in ipairs(due) do
  local list = ARGV[3] .. entry
  local fields = redis.call('LRANGE', list, 0, -1)
  if #fields > 0 then
    local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
    for i = 1, #fields - 1, 2 do
      if fields[i] == 'k' then redis.call('RPUSH', ARGV[4] .. fields[i + 1], id) end
    end
    moved = moved + 1
  end
  redis.call('DEL', list)
  redis.call('ZREM', KEYS[1], entry)
end
local after = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local more = 0
if after[2] and tonumber(after[2]) <= tonumber(ARGV[1]) then more = 1 end
return {moved, more, after[2] or false}
"""


class DelayedSets:
    """One supervisor's side of the groups' delayed sets: hold, release when due, figures."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._hold = client.register_script(HOLD)
        self._release = client.register_script(RELEASE)
        self.next_due = 0.0  # wall-clock seconds: the earliest due time known (0: look at once)
        self.next_check = 0.0  # when to look again for due times other supervisors set

    def hold(self, group: str, entry: str, until: float) -> bool:
        """The entry out of the stream into the group's set until ``until``; False when it was gone."""
        due_ms = math.ceil(until * 1000)
        done = self._hold(keys=[self.keys.stream(group), self.keys.delayed(group),
                                self.keys.delayed_entry(group, entry), self.keys.deliveries(group, entry)],
                          args=[CONSUMER_GROUP, entry, due_ms])
        if done:
            self.next_due = min(self.next_due, until) if self.next_due else until
        return bool(done)

    def due(self, wall: float) -> bool:
        """Whether a RELEASE is due: a due time known has come, or it is time to look for others'."""
        return (bool(self.next_due) and wall >= self.next_due) or wall >= self.next_check

    def release(self, groups: list[str], wall: float) -> int:
        """What is due in every group back into its stream (one round trip); how many moved. Raises what
        Redis raises."""
        now_ms = int(wall * 1000)
        self.next_check, self.next_due = wall + CHECK_EVERY, 0.0  # a failure never leaves a past due to spin on
        pipe = self.client.pipeline(transaction=False)
        for group in groups:
            self._release(keys=[self.keys.delayed(group), self.keys.stream(group)],
                          args=[now_ms, RELEASE_COUNT, self.keys.delayed_entry(group, ""),
                                self.keys.sequence(group, "")], client=pipe)
        replies = pipe.execute() if groups else []
        moved, more, nexts = 0, False, []
        for count, left, after in replies:
            moved += int(count)
            more = more or bool(left)
            if after:
                nexts.append(float(after) / 1000)
        self.next_due = wall if more else (min(nexts) if nexts else 0.0)
        return moved

    def figures(self, groups: list[str]) -> dict[str, dict[str, Any]]:
        """Per group: how many are held, and when the next is due (ISO-8601 UTC, or None)."""
        pipe = self.client.pipeline(transaction=False)
        for group in groups:
            pipe.zcard(self.keys.delayed(group))
            pipe.zrange(self.keys.delayed(group), 0, 0, withscores=True)
        replies = pipe.execute() if groups else []
        out: dict[str, dict[str, Any]] = {}
        for index, group in enumerate(groups):
            count, first = replies[2 * index], replies[2 * index + 1]
            out[group] = {"delayed": int(count), "nextDue": format_iso(first[0][1] / 1000) if first else None}
        return out
