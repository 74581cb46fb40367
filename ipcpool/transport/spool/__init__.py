"""The file spool: messages are files in ``<root>/<group>/`` folders (the default transport).

One module a job: ``layout`` (names, modes, folders), ``writes`` (atomic
writes), ``reads`` (safe reads), ``claims`` (claim, requeue, complete, ack
holds), ``ledger`` (acks, nacks, responses), ``deadletters`` (errors/),
``deliveries`` (delivery records), ``watcher`` (inotify or polling),
``waiter`` (a sender's waits), ``stranded`` (transitions retried), combined
by ``spool.Spool``; and the three sides the seam asks for: ``source`` (the
supervisor's), ``store`` (a worker's), ``outbox`` (a sender's).
"""
