"""The atomic steps, as Lua scripts: each is one round trip, and all of it happens or none.

Their KEYS and ARGV are spelled out where they are called (``calls`` below).

- ``publish``: refuse a different message queued under the name (``exists``), a
  full queue (``full``); the same bytes again are the same message (``same``);
  else XADD (fields m: the bytes, f: the format, s: the stem, i: the inbox, q:
  the name it is queued under), remember the name, register the group. A
  local file moved in (``marker``) is published once per file identity
  (``same`` for that file again), and, as the spool holds back a file whose
  namesake is claimed, not while its name is queued or in flight (``busy``:
  the file waits, and is published once that one is done; then its id meets
  the ack ledger).
- ``publish_due``: one due time of a ``[[schedule]]``: nothing (``same``) when the
  schedule's hash records that due time or a later one, or the ack ledger holds
  its id (then recorded); else as ``publish``
  (``full``, XADD, the name, the group) and the due time recorded with it, at
  once: supervisors sharing the Redis publish each due time once between them.
- ``fetch``: a worker's batch of entries, each with whether the ack ledger
  already holds its stem (the dedupe check, answered ahead in the same trip).
- ``complete`` (not a script: a MULTI/EXEC of fixed commands, so a worker can
  send it without asking for a reply, and a Redis restarted with an empty
  script cache cannot refuse it): the ack (ledger, and the sender's answer),
  XACK, XDEL, forget the name: a handled message is acknowledged and deleted
  at once, so the stream holds only what is queued or in flight.
- ``quarantine``: the message and its record into the dead-letter stream, the
  nack (and the sender's answer), XACK, XDEL, forget the name and its deliveries.
- ``heads``: which entries of sequences head their lines (``ipcpool.ordering``: a line is a list per
  sequence, pushed by ``publish`` in stream order; only its head may run, on any supervisor).
- ``renew``: extend the lease on entries this consumer still owns (XCLAIM to
  itself, JUSTID: the delivery counter is untouched); entries another
  consumer took meanwhile are left alone and named in the reply. An entry no
  longer pending at all was finished (most often by its own worker, just
  before the supervisor read that worker's report): nothing to renew, and
  nothing lost.
- ``release``: make entries this consumer holds claimable by anyone at once
  (a drain: what no worker started goes back to the queue).
- ``tick``: every supervisor's every renewal: Redis was reached. ``alive``
  expires after a *gap* (the lease less one and a half heartbeat intervals:
  longer than renewals are ever apart, shorter than what would let a live
  entry's idle time reach the lease); found gone, nobody reached Redis for
  that long (it was down, stalled or restarted, or every supervisor was cut
  off), so every entry's idle time includes a time nobody could renew it in,
  and ``reclaim-hold`` is set for one lease.
- ``reclaim``: one XAUTOCLAIM page of entries idle for a lease, unless
  ``alive`` is gone (then ``reclaim-hold`` is set, as a tick would) or
  ``reclaim-hold`` is set: after such a gap each supervisor gets a whole
  lease to renew what it holds before anyone may take it. The check and the
  claim are one step, so a Redis that stalls between them cannot slip a stale
  claim through.
"""

from __future__ import annotations

from typing import Any

from ipcpool.transport.redis.keys import CONSUMER_GROUP

PUBLISH = """
if ARGV[9] == '1' then
  if redis.call('EXISTS', KEYS[4]) == 1 then return {'same'} end
  if redis.call('EXISTS', KEYS[2]) == 1 then return {'busy'} end
else
  local held = redis.call('GET', KEYS[2])
  if held then
    if held == ARGV[5] then return {'same'} end
    return {'exists'}
  end
end
local limit = tonumber(ARGV[6])
if limit > 0 and redis.call('XLEN', KEYS[1]) >= limit then return {'full'} end
if ARGV[9] == '1' then redis.call('SET', KEYS[4], '1', 'EX', 86400) end
local id
if ARGV[13] == '1' then  -- a message of a sequence: its line gets it in stream order, in the same step
  id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'f', ARGV[2], 's', ARGV[3], 'i', ARGV[4], 'q', ARGV[10],
                  'k', ARGV[14])
  redis.call('RPUSH', KEYS[6], id)
else
  id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'f', ARGV[2], 's', ARGV[3], 'i', ARGV[4], 'q', ARGV[10])
end
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[7])
redis.call('SADD', KEYS[3], ARGV[8])
if ARGV[12] ~= '' then  -- a bridged file whose writer waits for answers in its local root (relay.py)
  redis.call('HSET', KEYS[5], ARGV[11], ARGV[12])
  redis.call('EXPIRE', KEYS[5], ARGV[7])
end
return {'ok', id}
"""

PUBLISH_DUE = """
local last = redis.call('HGET', KEYS[4], 'due')
if last and tonumber(last) >= tonumber(ARGV[8]) then return {'same'} end
if redis.call('EXISTS', KEYS[5]) == 1 then  -- handled already (the hash restored older than the ledger): recorded
  redis.call('HSET', KEYS[4], 'due', ARGV[8], 'id', ARGV[3], 'at', ARGV[9])
  return {'same'}
end
local limit = tonumber(ARGV[5])
if limit > 0 and redis.call('XLEN', KEYS[1]) >= limit then return {'full'} end
local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'f', ARGV[2], 's', ARGV[3], 'i', 'messages', 'q', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[6])
redis.call('SADD', KEYS[3], ARGV[7])
redis.call('HSET', KEYS[4], 'due', ARGV[8], 'id', ARGV[3], 'at', ARGV[9])
return {'ok', id}
"""

FETCH = """
local out = {}
for i = 2, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 0 then
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    local fields = found[1][2]
    local stem = fields[6]  -- where publish puts it (m, f, s, ...); else looked for
    if fields[5] ~= 's' then
      stem = false
      for j = 1, #fields, 2 do if fields[j] == 's' then stem = fields[j + 1] end end
    end
    out[#out + 1] = fields
    out[#out + 1] = stem and redis.call('EXISTS', ARGV[1] .. stem) or 0
  end
end
return out
"""

QUARANTINE = """
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #found == 0 then return 0 end
local fields = found[1][2]
local entry = {}
for i = 1, #fields, 2 do entry[fields[i]] = fields[i + 1] end
redis.call('XADD', KEYS[2], '*', 'm', entry['m'] or '', 'f', entry['f'] or '', 's', entry['s'] or '',
           'i', entry['i'] or 'messages', 'r', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
  redis.call('LPUSH', KEYS[4], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[5], KEYS[6])
if entry['q'] then redis.call('DEL', ARGV[7] .. entry['q']) end
return 1
"""

# KEYS: per entry asked, its sequence's line and its stream; ARGV: the entries. Per entry: 1 when it heads its
# line (or has none: a line lost with Redis's data never holds anything back), else 0. A head no longer in
# its stream (handled, dead-lettered or removed: the completion does not touch the line) leaves it first.
HEADS = """
local out = {}
for i = 1, #ARGV do
  local line, stream, entry = KEYS[2 * i - 1], KEYS[2 * i], ARGV[i]
  local verdict = 0
  while true do
    local head = redis.call('LINDEX', line, 0)
    if not head or head == entry then verdict = 1 break end
    if #redis.call('XRANGE', stream, head, head) > 0 then break end
    redis.call('LPOP', line)
  end
  out[i] = verdict
end
return out
"""

RENEW = """
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] then
    if pending[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      table.insert(lost, ARGV[i])
    end
  end
end
return lost
"""

# KEYS: alive, reclaim-hold; ARGV: the gap, a lease (ms). Returns the ms reclaims must still wait (<= 0: none).
TICK = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return redis.call('PTTL', KEYS[2])
"""

# KEYS: alive, reclaim-hold, stream; ARGV: the gap, a lease (ms), consumer group, consumer, cursor, count.
# Returns {'hold', ms} while reclaims wait, else {'ok', next cursor, the claimed entries' ids}. Only renewals
# keep alive alive: a reclaim is no proof that the others could renew.
RECLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
local hold = redis.call('PTTL', KEYS[2])
if hold > 0 then return {'hold', hold} end
local reply = redis.call('XAUTOCLAIM', KEYS[3], ARGV[3], ARGV[4], ARGV[2], ARGV[5], 'COUNT', ARGV[6])
local ids = {}
for _, entry in ipairs(reply[2]) do
  if entry then ids[#ids + 1] = entry[1] end
end
return {'ok', reply[1], ids}
"""

RELEASE = """
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID', 'IDLE', ARGV[3])
  end
end
return 1
"""


class Scripts:
    """The scripts registered on one client (redis-py reloads one the server forgot: NOSCRIPT)."""

    def __init__(self, client: Any) -> None:
        self.publish = client.register_script(PUBLISH)
        self.publish_due = client.register_script(PUBLISH_DUE)
        self.fetch = client.register_script(FETCH)
        self.quarantine = client.register_script(QUARANTINE)
        self.renew = client.register_script(RENEW)
        self.release = client.register_script(RELEASE)
        self.tick = client.register_script(TICK)
        self.reclaim = client.register_script(RECLAIM)
        self.heads = client.register_script(HEADS)


def publish(scripts: Scripts, keys: Any, group: str, name: str, stem: str, data: bytes, fmt: str, inbox: str,
            digest: str, max_queued: int, ttl: int, marker: str | None = None, *, client: Any = None,
            relay: tuple[str, str, str] | None = None, sequence: str | None = None) -> list[Any]:
    """``relay``: (the relay hash, its field, its value) for a bridged file whose writer waits for answers;
    ``sequence``: its sequence's key (``ipcpool.ordering``), kept as its field ``k`` and put in that line."""
    relay_key, relay_field, relay_value = relay or (keys.groups, "", "")
    line = keys.sequence(group, sequence) if sequence is not None else keys.groups
    return scripts.publish(keys=[keys.stream(group), keys.queued(group, name), keys.groups,
                                 marker or keys.queued(group, name), relay_key, line],
                           args=[data, fmt, stem, inbox, digest, max_queued, ttl, group, "1" if marker else "0",
                                 name, relay_field, relay_value, "0" if sequence is None else "1", sequence or ""],
                           client=client)


def heads(scripts: Scripts, keys: Any, entries: list[tuple[str, str, str]], *, client: Any = None) -> Any:
    """Which of ``entries`` ((group, sequence key, entry id)) head their lines: one 0 or 1 each."""
    names = [name for group, key, _entry in entries for name in (keys.sequence(group, key), keys.stream(group))]
    return scripts.heads(keys=names, args=[entry for _group, _key, entry in entries], client=client)


def publish_due(scripts: Scripts, keys: Any, group: str, stem: str, data: bytes, fmt: str, digest: str,
                max_queued: int, ttl: int, schedule: str, due: int, at: float) -> list[Any]:
    """One due time of a [[schedule]]: published (as publish does) and recorded at once, unless that due time or
    a later one is recorded already: N supervisors publish it once between them."""
    return scripts.publish_due(keys=[keys.stream(group), keys.queued(group, stem), keys.groups,
                                     keys.schedule(schedule), keys.ack(group, stem)],
                               args=[data, fmt, stem, digest, max_queued, ttl, group, due, repr(at)])


def fetch_call(keys: Any, group: str, entries: list[str]) -> tuple[list[str], list[str]]:
    """The fetch script's KEYS and ARGV; it replies [fields or 0, 1 if the ledger holds the stem else 0] per entry."""
    return [keys.stream(group)], [keys.ack(group, ""), *entries]


def complete_commands(keys: Any, group: str, entry: str, name: str, ack_id: str | None, ack_value: str,
                      retention: int, answer_ttl: int) -> list[tuple[Any, ...]]:
    """A completion's commands, to be run inside MULTI/EXEC: all of them happen or none."""
    stream = keys.stream(group)
    acked: list[tuple[Any, ...]] = []
    if ack_id:
        answer = keys.answer(group, ack_id)
        acked = [("SET", keys.ack(group, ack_id), ack_value, "EX", retention), ("LPUSH", answer, "ack"),
                 ("EXPIRE", answer, answer_ttl)]
    return [*acked, ("XACK", stream, CONSUMER_GROUP, entry), ("XDEL", stream, entry),
            ("DEL", keys.queued(group, name), keys.deliveries(group, entry))]


def complete(client: Any, keys: Any, group: str, entry: str, name: str, ack_id: str | None, ack_value: str,
             retention: int, answer_ttl: int) -> None:
    """The same completion through a redis-py client, answered (the supervisor's, and a worker's retry)."""
    pipe = client.pipeline(transaction=True)
    for command in complete_commands(keys, group, entry, name, ack_id, ack_value, retention, answer_ttl):
        pipe.execute_command(*command)
    pipe.execute()


def quarantine(scripts: Scripts, keys: Any, group: str, entry: str, name: str, message_id: str | None,
               record: bytes, nack: bytes | None, retention: int, answer_ttl: int) -> Any:
    nack_key = keys.nack(group, message_id) if message_id else keys.queued(group, name)
    answer = keys.answer(group, message_id) if message_id else keys.queued(group, name)
    return scripts.quarantine(keys=[keys.stream(group), keys.dead(group), nack_key, answer, keys.queued(group, name),
                                    keys.deliveries(group, entry)],
                              args=["ipcpool", entry, record, nack if nack is not None else b"", retention,
                                    answer_ttl, keys.queued(group, "")])
