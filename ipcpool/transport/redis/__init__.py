"""Redis Streams: the same verbs as the file spool, for many supervisors on many hosts (the [redis] extra).

Each group is a stream (``<prefix>:stream:<group>``) read by one consumer
group, ``ipcpool``; each supervisor is one consumer, named after its host and
a random id kept on its local root, so a restarted supervisor takes back what
it held at once, and no other supervisor ever shares its name. A
message a supervisor holds is its own for ``[redis] lease`` seconds,
renewed from its heartbeat for as long as a live worker holds it; a dead
supervisor's messages are reclaimed by the others once their lease lapses
(never right after an outage every supervisor had: each renews first).
A finished message is acknowledged and deleted by one MULTI/EXEC, sent
unanswered and checked once per report. Modules: ``connection`` (connecting, outages), ``keys``, ``scripts``
(the atomic steps), ``checks`` (what ``ipcpool run`` refuses), ``source``,
``store``, ``outbox`` and ``inspector`` (the seam's sides), ``ingest``
(files dropped into the local spool go into the streams), ``journal`` (what
could not be finished in Redis, kept on the local root).
"""
